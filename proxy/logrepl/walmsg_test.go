package logrepl

import (
	"bytes"
	"encoding/hex"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// CopyData payloads captured from a PostgreSQL 15.18 walsender streaming
// pgoutput (one INSERT INTO other DEFAULT VALUES).
const (
	capKeepalive      = "6b00000000019413b800030428a9fcac8200"
	capKeepaliveReply = "6b00000000019413b800030428a9fcac8201" // same, reply flag set
	capXLogBegin      = "7700000000019413b800000000019413b800030428aa0c4b13" + "42000000000194143800030428aa0c4300000002fa"
	capXLogRelation   = "770000000000000000000000000000000000030428aa0c4d06" + "52000040177075626c6963006f74686572006400010169640000000017ffffffff"
	capXLogInsert     = "7700000000019413b800000000019413b800030428aa0c4e3a" + "49000040174e0001740000000133"
	capXLogCommit     = "770000000001941468000000000194146800030428aa0c4ee0" + "43000000000001941438000000000194146800030428aa0c4300"
)

func TestDecodeWALMessage(t *testing.T) {
	cases := []struct {
		name     string
		hex      string
		want     walMessage
		wantData string // hex of Data
		wantErr  string
	}{
		{name: "keepalive", hex: capKeepalive, want: walMessage{Keepalive: true, WALEnd: 0x19413B8}},
		{name: "keepalive asking for a reply", hex: capKeepaliveReply, want: walMessage{Keepalive: true, WALEnd: 0x19413B8, ReplyRequested: true}},
		{name: "xlogdata begin", hex: capXLogBegin, want: walMessage{WALStart: 0x19413B8, WALEnd: 0x19413B8}, wantData: capXLogBegin[50:]},
		{name: "xlogdata relation has zero positions", hex: capXLogRelation, want: walMessage{}, wantData: capXLogRelation[50:]},
		{name: "xlogdata commit", hex: capXLogCommit, want: walMessage{WALStart: 0x1941468, WALEnd: 0x1941468}, wantData: capXLogCommit[50:]},
		{name: "xlogdata with empty payload", hex: capXLogBegin[:50], want: walMessage{WALStart: 0x19413B8, WALEnd: 0x19413B8}, wantData: ""},

		{name: "empty", hex: "", wantErr: "empty CopyData"},
		{name: "unknown type", hex: "7a00", wantErr: "unknown CopyData type 'z'"},
		{name: "xlogdata header cut", hex: capXLogBegin[:48], wantErr: "XLogData of 24 bytes"},
		{name: "keepalive too short", hex: capKeepalive[:34], wantErr: "keepalive of 17 bytes"},
		{name: "keepalive too long", hex: capKeepalive + "00", wantErr: "keepalive of 19 bytes"},
		{name: "keepalive bad flag", hex: capKeepalive[:34] + "02", wantErr: "reply flag 2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeWALMessage(unhex(t, tc.hex))
			if tc.wantErr != "" {
				if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want ErrMalformed containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got.Data) != tc.wantData {
				t.Fatalf("data %x, want %s", got.Data, tc.wantData)
			}
			got.Data = nil
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestAppendStandbyStatus(t *testing.T) {
	now := pgEpoch.Add(3*time.Second + 5*time.Microsecond)
	got := appendStandbyStatus([]byte("x"), 0x1_0000_0002, 0x3, now, true)
	want := unhex(t, "78"+"72"+"0000000100000002"+"0000000000000003"+"0000000000000003"+"00000000002dc6c5"+"01")
	if !bytes.Equal(got, want) {
		t.Fatalf("got %x\nwant %x", got, want)
	}
	if got := appendStandbyStatus(nil, 0, 0, now, false); len(got) != standbyStatusLen || got[len(got)-1] != 0 {
		t.Fatalf("no-reply status %x", got)
	}
}

func TestLSN(t *testing.T) {
	for _, tc := range []struct {
		s    string
		lsn  lsn
		fail bool
	}{
		{s: "0/0", lsn: 0},
		{s: "16/B374D848", lsn: 0x16_B374D848},
		{s: "FFFFFFFF/FFFFFFFF", lsn: ^lsn(0)},
		{s: "0/1941468", lsn: 0x1941468},
		{s: "", fail: true},
		{s: "12", fail: true},
		{s: "1/2/3", fail: true},
		{s: "100000000/0", fail: true},
		{s: "g/0", fail: true},
	} {
		got, err := parseLSN(tc.s)
		if tc.fail {
			if err == nil {
				t.Errorf("parseLSN(%q) = %v, want error", tc.s, got)
			}
			continue
		}
		if err != nil || got != tc.lsn || got.String() != tc.s {
			t.Errorf("parseLSN(%q) = %v (%s), %v; want %#x", tc.s, got, got, err, uint64(tc.lsn))
		}
	}
}

// FuzzWALMessage: arbitrary CopyData payloads decode or fail with
// ErrMalformed, never panic; XLogData payloads go on to the pgoutput
// decoder.
func FuzzWALMessage(f *testing.F) {
	for _, h := range []string{capKeepalive, capKeepaliveReply, capXLogBegin, capXLogRelation, capXLogInsert, capXLogCommit} {
		f.Add(unhex(f, h))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeWALMessage(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		if m.Keepalive {
			return
		}
		if len(m.Data) != len(data)-xLogDataHeaderLen {
			t.Fatalf("payload of %d bytes from a %d-byte message", len(m.Data), len(data))
		}
		if _, err := decodePgoutput(m.Data); err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("pgoutput error does not wrap ErrMalformed: %v", err)
		}
	})
}
