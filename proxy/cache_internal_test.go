package proxy

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/pgsluice/pgsluice/cachelayer"
)

// fpTable and cacheKey are built without fmt or a hasher per call; their
// values must stay those of the straightforward form, since instances of
// different versions share Redis entries and generation keys.
func TestCacheKeyAndFPTableStable(t *testing.T) {
	for _, fp := range []uint64{0, 1, 0x2fcd54e4a1b8c0f3, ^uint64(0)} {
		if got, want := fpTable(fp), fmt.Sprintf("\x00fp:%016x", fp); got != want {
			t.Errorf("fpTable(%x) = %q, want %q", fp, got, want)
		}
	}
	s := &session{database: "app", user: "alice"}
	ref := func(sig string, kind byte, parts ...[]byte) cachelayer.Key {
		h := sha256.New()
		for _, p := range append([][]byte{[]byte(s.database), []byte(s.user), []byte(sig), {kind}}, parts...) {
			h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(p))))
			h.Write(p)
		}
		var k cachelayer.Key
		h.Sum(k[:0])
		return k
	}
	for i, c := range []struct {
		sig   string
		kind  byte
		parts [][]byte // the first is the statement
	}{
		{"", 'Q', [][]byte{[]byte("SELECT 1\x00")}},
		{"search_path=public", 'E', [][]byte{[]byte("SELECT $1\x00\x00\x01\x00\x00\x00\x17"), nil, {1}}},
		{"x", 'E', [][]byte{append(make([]byte, 100<<10), 0)}}, // larger than the kept buffer
	} {
		for range 2 { // the second time with the buffer reused
			if got, want := s.cacheKey(c.sig, c.kind, c.parts[0], c.parts[1:]...), ref(c.sig, c.kind, c.parts...); got != want {
				t.Errorf("case %d: cacheKey = %x, want %x", i, got, want)
			}
		}
	}
	// Comments are not part of the key (routing.AppendCacheText); the
	// parameter types after the text are.
	for _, c := range []struct {
		a, b string
		same bool
	}{
		{"SELECT 1 /*traceparent='00-aa-01'*/\x00", "SELECT 1\x00", true},
		{"/* app:shop */ SELECT 1 -- req 7\x00", "SELECT 1 /* req 8 */\x00", true},
		{"SELECT $1 /* x */\x00\x00\x01\x00\x00\x00\x17", "SELECT $1\x00\x00\x01\x00\x00\x00\x17", true},
		{"SELECT $1\x00\x00\x01\x00\x00\x00\x17", "SELECT $1\x00\x00\x01\x00\x00\x00\x14", false},
		{"SELECT '/* x */'\x00", "SELECT ''\x00", false},
		{"SELECT 1\x00", "SELECT  1\x00", false}, // whitespace is kept: a miss, never a wrong answer
	} {
		ka, kb := s.cacheKey("", 'E', []byte(c.a)), s.cacheKey("", 'E', []byte(c.b))
		if (ka == kb) != c.same {
			t.Errorf("cacheKey(%q) == cacheKey(%q) is %v, want %v", c.a, c.b, ka == kb, c.same)
		}
	}
}
