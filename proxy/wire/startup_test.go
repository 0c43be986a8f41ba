package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"maps"
	"runtime"
	"slices"
	"testing"
	"testing/iotest"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

// packet builds a startup-phase packet: Int32 length, Int32 code, body.
func packet(code uint32, body string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(8+len(body)))
	b = binary.BigEndian.AppendUint32(b, code)
	return append(b, body...)
}

func TestReadStartup(t *testing.T) {
	pgxStartup, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "alice", "database": "shop", "application_name": "psql"}}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	pgxCancel, _ := (&pgproto3.CancelRequest{ProcessID: 4242, SecretKey: []byte{0xde, 0xad, 0xbe, 0xef}}).Encode(nil)
	pgxSSL, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	pgxGSS, _ := (&pgproto3.GSSEncRequest{}).Encode(nil)

	hugeLen := binary.BigEndian.AppendUint32(nil, 0x7fffffff)
	hugeLen = binary.BigEndian.AppendUint32(hugeLen, ProtocolVersion30)
	negLen := binary.BigEndian.AppendUint32(nil, 0xfffffff0)

	tests := []struct {
		name    string
		in      []byte
		maxLen  int
		want    Startup
		code    string // expected SQLSTATE, "" for success
		message string
	}{
		{name: "pgx startup", in: pgxStartup,
			want: Startup{Kind: StartupMessage, Params: map[string]string{"user": "alice", "database": "shop", "application_name": "psql"}}},
		{name: "minimal user only", in: packet(ProtocolVersion30, "user\x00bob\x00\x00"),
			want: Startup{Kind: StartupMessage, Params: map[string]string{"user": "bob"}}},
		{name: "duplicate last wins", in: packet(ProtocolVersion30, "user\x00a\x00user\x00b\x00\x00"),
			want: Startup{Kind: StartupMessage, Params: map[string]string{"user": "b"}}},
		{name: "options and replication", in: packet(ProtocolVersion30, "user\x00u\x00options\x00-c search_path=x\x00replication\x00database\x00\x00"),
			want: Startup{Kind: StartupMessage, Params: map[string]string{"user": "u", "options": "-c search_path=x", "replication": "database"}}},
		{name: "minor 3.2 with _pq_ options", in: packet(ProtocolVersion30+2, "user\x00u\x00_pq_.foo\x001\x00_pq_.bar\x00\x00\x00"),
			want: Startup{Kind: StartupMessage, MinorVersion: 2, Params: map[string]string{"user": "u"}, UnsupportedOptions: []string{"_pq_.foo", "_pq_.bar"}}},
		{name: "empty value ok", in: packet(ProtocolVersion30, "user\x00u\x00application_name\x00\x00\x00"),
			want: Startup{Kind: StartupMessage, Params: map[string]string{"user": "u", "application_name": ""}}},
		{name: "ssl request", in: pgxSSL, want: Startup{Kind: SSLRequest}},
		{name: "gssenc request", in: pgxGSS, want: Startup{Kind: GSSENCRequest}},
		{name: "cancel request", in: pgxCancel, want: Startup{Kind: CancelRequest, ProcessID: 4242, SecretKey: 0xdeadbeef}},
		{name: "at maxLen", in: packet(ProtocolVersion30, "user\x00uu\x00\x00"), maxLen: 8 + 9,
			want: Startup{Kind: StartupMessage, Params: map[string]string{"user": "uu"}}},

		{name: "over maxLen", in: packet(ProtocolVersion30, "user\x00uuu\x00\x00"), maxLen: 8 + 9,
			code: "08P01", message: "invalid length of startup packet"},
		{name: "huge length", in: hugeLen, code: "08P01", message: "invalid length of startup packet"},
		{name: "negative length", in: negLen, code: "08P01", message: "invalid length of startup packet"},
		{name: "length 7", in: []byte{0, 0, 0, 7, 0, 3, 0, 0}, code: "08P01", message: "invalid length of startup packet"},
		{name: "length 4", in: []byte{0, 0, 0, 4}, code: "08P01", message: "invalid length of startup packet"},
		{name: "empty body", in: packet(ProtocolVersion30, ""), code: "08P01",
			message: "invalid startup packet layout: expected terminator as last byte"},
		{name: "no terminator", in: packet(ProtocolVersion30, "user\x00bob\x00"), code: "08P01",
			message: "invalid startup packet layout: expected terminator as last byte"},
		{name: "missing value", in: packet(ProtocolVersion30, "user\x00"), code: "08P01",
			message: "invalid startup packet layout: expected terminator as last byte"},
		{name: "unterminated value", in: packet(ProtocolVersion30, "user\x00bob"), code: "08P01",
			message: "invalid startup packet layout: expected terminator as last byte"},
		{name: "trailing garbage", in: packet(ProtocolVersion30, "user\x00bob\x00\x00xx"), code: "08P01",
			message: "invalid startup packet layout: expected terminator as last byte"},
		{name: "protocol 2.0", in: packet(2<<16, "user\x00bob\x00\x00"), code: "0A000",
			message: "unsupported frontend protocol 2.0: server supports 3.0 to 3.0"},
		{name: "protocol 1.0", in: packet(1<<16, "\x00"), code: "0A000",
			message: "unsupported frontend protocol 1.0: server supports 3.0 to 3.0"},
		{name: "protocol 4.0", in: packet(4<<16, "user\x00bob\x00\x00"), code: "0A000",
			message: "unsupported frontend protocol 4.0: server supports 3.0 to 3.0"},
		{name: "no user", in: packet(ProtocolVersion30, "database\x00d\x00\x00"), code: "28000",
			message: "no PostgreSQL user name specified in startup packet"},
		{name: "empty user", in: packet(ProtocolVersion30, "user\x00\x00\x00"), code: "28000",
			message: "no PostgreSQL user name specified in startup packet"},
		{name: "bad replication", in: packet(ProtocolVersion30, "user\x00u\x00replication\x00o\x00\x00"), code: "22023",
			message: `invalid value for parameter "replication": "o"`},
		{name: "ssl request with body", in: packet(SSLRequestCode, "xxxx"), code: "08P01", message: "invalid length of startup packet"},
		{name: "cancel too short", in: packet(CancelRequestCode, "xxxx"), code: "08P01", message: "invalid length of cancel request packet"},
		{name: "truncated body", in: packet(ProtocolVersion30, "user\x00bob\x00\x00")[:12], code: "08P01", message: "incomplete startup packet"},
		{name: "truncated header", in: []byte{0, 0}, code: "08P01", message: "incomplete startup packet"},
		{name: "truncated code", in: []byte{0, 0, 0, 8, 4}, code: "08P01", message: "incomplete startup packet"},
		{name: "truncated cancel", in: packet(CancelRequestCode, "12345678")[:12], code: "08P01", message: "incomplete startup packet"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// One byte at a time proves ReadStartup copes with short reads.
			r := bytes.NewReader(tt.in)
			got, err := ReadStartup(iotest.OneByteReader(r), tt.maxLen)
			if tt.code == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if got.Kind != tt.want.Kind || got.MinorVersion != tt.want.MinorVersion ||
					got.ProcessID != tt.want.ProcessID || got.SecretKey != tt.want.SecretKey ||
					!maps.Equal(got.Params, tt.want.Params) || !slices.Equal(got.UnsupportedOptions, tt.want.UnsupportedOptions) {
					t.Fatalf("got %+v\nwant %+v", got, tt.want)
				}
				if r.Len() != 0 {
					t.Fatalf("%d bytes left unread", r.Len())
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, got %+v", got)
			}
			if !errors.Is(err, pgerr.ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			e := pgerr.ToError(err)
			if e.Code != tt.code || e.Message != tt.message || e.Severity != "FATAL" {
				t.Fatalf("got %s %s %q, want FATAL %s %q", e.Severity, e.Code, e.Message, tt.code, tt.message)
			}
		})
	}
}

func TestReadStartupEOF(t *testing.T) {
	_, err := ReadStartup(bytes.NewReader(nil), 0)
	if err != io.EOF {
		t.Fatalf("empty stream: got %v, want io.EOF", err)
	}
	_, err = ReadStartup(bytes.NewReader([]byte{0, 0, 0}), 0)
	if !errors.Is(err, io.ErrUnexpectedEOF) || !errors.Is(err, pgerr.ErrProtocol) {
		t.Fatalf("partial: got %v", err)
	}
	boom := errors.New("boom")
	_, err = ReadStartup(iotest.ErrReader(boom), 0)
	if !errors.Is(err, boom) || errors.Is(err, pgerr.ErrProtocol) {
		t.Fatalf("read error: got %v", err)
	}
}

func TestReadStartupSequence(t *testing.T) {
	// SSLRequest, then (after the proxy answers 'N') the StartupMessage on the same stream.
	var buf bytes.Buffer
	buf.Write(packet(SSLRequestCode, ""))
	buf.Write(packet(ProtocolVersion30, "user\x00u\x00\x00"))
	s1, err := ReadStartup(&buf, 0)
	if err != nil || s1.Kind != SSLRequest {
		t.Fatalf("first: %+v %v", s1, err)
	}
	s2, err := ReadStartup(&buf, 0)
	if err != nil || s2.Kind != StartupMessage || s2.User() != "u" || s2.Database() != "u" {
		t.Fatalf("second: %+v %v", s2, err)
	}
	if s2.NeedsNegotiation() {
		t.Fatal("3.0 without _pq_ needs no negotiation")
	}
	s3 := Startup{Kind: StartupMessage, MinorVersion: 2}
	if !s3.NeedsNegotiation() {
		t.Fatal("3.2 needs negotiation")
	}
}

func TestReadStartupDoesNotAllocateClaimedLength(t *testing.T) {
	in := binary.BigEndian.AppendUint32(nil, MaxStartupPacketLen)
	in = binary.BigEndian.AppendUint32(in, ProtocolVersion30)
	// The body never arrives: only the bounded buffer may be allocated.
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < 100; i++ {
		if _, err := ReadStartup(bytes.NewReader(in), 0); err == nil {
			t.Fatal("expected error")
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / 100; per > 2*MaxStartupPacketLen {
		t.Fatalf("allocated %d bytes per call", per)
	}
}

func TestParseOptions(t *testing.T) {
	tests := []struct {
		in      string
		want    map[string]string
		code    string
		message string
	}{
		{in: "", want: map[string]string{}},
		{in: "   ", want: map[string]string{}},
		{in: "-c search_path=app", want: map[string]string{"search_path": "app"}},
		{in: "-csearch_path=app", want: map[string]string{"search_path": "app"}},
		{in: "--search-path=app", want: map[string]string{"search_path": "app"}},
		{in: "--Statement_Timeout=5s -c lock_timeout=1s", want: map[string]string{"statement_timeout": "5s", "lock_timeout": "1s"}},
		{in: `-c application_name=my\ app -c x.y=a\\b`, want: map[string]string{"application_name": "my app", "x.y": `a\b`}},
		{in: "\t-c\ta=1\n-c b=2=3 ", want: map[string]string{"a": "1", "b": "2=3"}},
		{in: "-c a=1 -c a=2", want: map[string]string{"a": "2"}},
		{in: "-c a=", want: map[string]string{"a": ""}},
		{in: `-c a=x\`, want: map[string]string{"a": "x"}},
		{in: "-c", code: "42601", message: "invalid command-line argument for server process: -c"},
		{in: "-c a", code: "42601", message: "-c a requires a value"},
		{in: "--a", code: "42601", message: "--a requires a value"},
		{in: "-c =1", code: "42601", message: "invalid command-line argument for server process: -c"},
		{in: "foo", code: "42601", message: "invalid command-line argument for server process: foo"},
		{in: "-F", code: "0A000", message: `unsupported switch "-F" in startup parameter "options"`},
		{in: "-B 100", code: "0A000", message: `unsupported switch "-B" in startup parameter "options"`},
	}
	for _, tt := range tests {
		got, err := ParseOptions(tt.in)
		if tt.code == "" {
			if err != nil || !maps.Equal(got, tt.want) {
				t.Errorf("ParseOptions(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			continue
		}
		e := pgerr.ToError(err)
		if err == nil || e.Code != tt.code || e.Message != tt.message {
			t.Errorf("ParseOptions(%q) error = %v; want %s %q", tt.in, err, tt.code, tt.message)
		}
	}
}

// countingReader counts the bytes a decoder pulls from its source.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func FuzzReadStartup(f *testing.F) {
	f.Add(packet(ProtocolVersion30, "user\x00bob\x00database\x00db\x00\x00"), 0)
	f.Add(packet(ProtocolVersion30+2, "user\x00u\x00_pq_.x\x00y\x00\x00"), 100)
	f.Add(packet(SSLRequestCode, ""), 0)
	f.Add(packet(CancelRequestCode, "\x00\x00\x00\x01\x00\x00\x00\x02"), 0)
	f.Add([]byte{0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0}, 0)
	f.Add(packet(ProtocolVersion30, "user\x00"), 16)
	f.Fuzz(func(t *testing.T, data []byte, maxLen int) {
		maxLen %= 4 * MaxStartupPacketLen
		limit := maxLen
		if limit <= 0 {
			limit = MaxStartupPacketLen
		}
		cr := &countingReader{r: bytes.NewReader(data)}
		st, err := ReadStartup(cr, maxLen)
		// The 4-byte length is always read; nothing beyond limit ever is.
		if cr.n > max(limit, 4) {
			t.Fatalf("read %d bytes with limit %d", cr.n, limit)
		}
		if len(data) >= 4 {
			claimed := int64(int32(binary.BigEndian.Uint32(data)))
			if claimed > int64(limit) && cr.n != 4 {
				t.Fatalf("read %d bytes of a packet claiming %d > %d", cr.n, claimed, limit)
			}
		}
		if err != nil {
			if err != io.EOF && pgerr.ToError(err).Code == pgerr.InternalError {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		switch st.Kind {
		case StartupMessage:
			if st.User() == "" {
				t.Fatal("StartupMessage without user accepted")
			}
		case SSLRequest, GSSENCRequest, CancelRequest:
		default:
			t.Fatalf("bad kind %v", st.Kind)
		}
	})
}
