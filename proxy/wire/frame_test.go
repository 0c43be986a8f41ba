package wire

import (
	"bufio"
	"bytes"
	"errors"
	"testing"

	"github.com/pgsluice/pgsluice/proxy/pgerr"
)

func TestPeekHeader(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []byte
		max     int
		typ     byte
		n       int
		wantErr error
	}{
		{"query", []byte{'Q', 0, 0, 0, 6, 'x', 0}, 100, 'Q', 2, nil},
		{"empty body", []byte{'S', 0, 0, 0, 4}, 100, 'S', 0, nil},
		{"length below 4", []byte{'Q', 0, 0, 0, 3}, 100, 0, 0, pgerr.ErrProtocol},
		{"over max", []byte{'Q', 0, 0, 1, 0}, 100, 0, 0, pgerr.ErrMessageTooLarge},
		{"huge length", []byte{'Q', 0xff, 0xff, 0xff, 0xff}, 1 << 30, 0, 0, pgerr.ErrMessageTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			typ, n, err := PeekHeader(bufio.NewReader(bytes.NewReader(tc.in)), tc.max)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || typ != tc.typ || n != tc.n {
				t.Fatalf("got %q %d %v", typ, n, err)
			}
		})
	}
}

// FuzzFrames reads a stream of frames: the decoder never panics, never
// returns a body longer than the limit, and Forward reproduces the input.
func FuzzFrames(f *testing.F) {
	f.Add([]byte{'Q', 0, 0, 0, 6, 'x', 0, 'X', 0, 0, 0, 4})
	f.Add([]byte{'P', 0, 0, 0, 4})
	f.Add([]byte{'d', 0, 0, 0x40, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 4096
		r := bufio.NewReaderSize(bytes.NewReader(data), 16)
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		consumed := 0
		for {
			_, n, err := PeekHeader(r, max)
			if err != nil {
				break
			}
			if n > max {
				t.Fatalf("body %d over limit", n)
			}
			if err := Forward(w, r, n); err != nil {
				break
			}
			consumed += HeaderLen + n
		}
		w.Flush()
		// A truncated last frame may be partly forwarded; every whole
		// frame before it must come out unchanged.
		if out.Len() < consumed || !bytes.Equal(out.Bytes()[:consumed], data[:consumed]) {
			t.Fatalf("forwarded bytes differ from input")
		}
	})
}

// WriteMessage frames into the writer's buffer: no allocation per message,
// and the same bytes as AppendHeader + body.
func TestWriteMessageNoAlloc(t *testing.T) {
	var out bytes.Buffer
	w := bufio.NewWriterSize(&out, 64)
	body := []byte("SELECT 1\x00")
	if n := testing.AllocsPerRun(100, func() {
		if err := WriteMessage(w, 'Q', body); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("WriteMessage: %v allocations per message, want 0", n)
	}
	w.Flush()
	want := append(AppendHeader(nil, 'Q', len(body)), body...)
	got := out.Bytes()
	if len(got) == 0 || len(got)%len(want) != 0 {
		t.Fatalf("wrote %d bytes, want a multiple of %d", len(got), len(want))
	}
	for i := 0; i < len(got); i += len(want) {
		if !bytes.Equal(got[i:i+len(want)], want) {
			t.Fatalf("message at %d = %q, want %q", i, got[i:i+len(want)], want)
		}
	}
}
