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
		parts [][]byte
	}{
		{"", 'Q', [][]byte{[]byte("SELECT 1\x00")}},
		{"search_path=public", 'E', [][]byte{[]byte("SELECT $1"), nil, {1}}},
		{"x", 'E', [][]byte{make([]byte, 100<<10)}}, // larger than the kept buffer
	} {
		for range 2 { // the second time with the buffer reused
			if got, want := s.cacheKey(c.sig, c.kind, c.parts...), ref(c.sig, c.kind, c.parts...); got != want {
				t.Errorf("case %d: cacheKey = %x, want %x", i, got, want)
			}
		}
	}
}
