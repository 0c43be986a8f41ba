package cachelayer

import (
	"bytes"
	"slices"
	"testing"
	"time"
)

func TestEntryCodecRoundTrip(t *testing.T) {
	cases := []struct {
		name   string
		db     string
		tables []string
		frames []byte
	}{
		{"empty", "", nil, nil},
		{"one table", "app", []string{"public.users"}, []byte("T\x00\x00\x00\x04D")},
		{"odd names", "d:b{x}", []string{"", "a:b", "\"Weird\".\"T\"", string(make([]byte, 300))}, bytes.Repeat([]byte{0xff}, 1000)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			remote := make([]uint64, len(tc.tables)+2)
			for i := range remote {
				remote[i] = uint64(i)*0x9e3779b97f4a7c15 + 1
			}
			created := time.Unix(1700000000, 123)
			e, err := decodeEntry(encodeEntry(tc.db, tc.tables, remote, created, tc.frames))
			if err != nil {
				t.Fatal(err)
			}
			if e.db != tc.db || !slices.Equal(e.tables, tc.tables) && len(tc.tables) > 0 || !slices.Equal(e.remote, remote) ||
				!e.created.Equal(created) || !bytes.Equal(e.frames, tc.frames) {
				t.Fatalf("round trip mismatch: %+v", e)
			}
		})
	}
	for _, bad := range [][]byte{nil, {}, {2}, {1}, {1, 5, 'a'}, {1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}, {1, 0, 0, 1, 2, 3}} {
		if _, err := decodeEntry(bad); err == nil {
			t.Errorf("decodeEntry(%q) accepted", bad)
		}
	}
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add(encodeEntry("db", []string{"a", "b"}, []uint64{1, 2, 3, 4}, time.Unix(1, 0), []byte("frames")))
	f.Add(encodeEntry("", nil, []uint64{0, 0}, time.Unix(0, 0), nil))
	f.Add([]byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEntry(b)
		if err != nil {
			return
		}
		if len(e.remote) != len(e.tables)+2 {
			t.Fatalf("%d generations for %d tables", len(e.remote), len(e.tables))
		}
		// Whatever decodes re-encodes to the same bytes.
		if again := encodeEntry(e.db, e.tables, e.remote, e.created, e.frames); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%q\n%q", again, b)
		}
	})
}
