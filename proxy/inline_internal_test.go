package proxy

import (
	"testing"

	"github.com/pgsluice/pgsluice/proxy/wire"
)

func TestEndsInFlushPoint(t *testing.T) {
	frame := func(typ byte, body string) []byte {
		return append(wire.AppendHeader(nil, typ, len(body)), body...)
	}
	cat := func(fs ...[]byte) []byte {
		var out []byte
		for _, f := range fs {
			out = append(out, f...)
		}
		return out
	}
	for _, c := range []struct {
		name string
		msg  []byte
		want bool
	}{
		{"empty", nil, false},
		{"sync", frame('S', ""), true},
		{"query", frame('Q', "SELECT 1\x00"), true},
		{"flush", frame('H', ""), true},
		{"function call", frame('F', "xxxx"), true},
		{"copy done", frame('c', ""), true},
		{"copy fail", frame('f', "oops\x00"), true},
		{"copy data", frame('d', "1\t2\n"), false},
		{"parse", frame('P', "\x00SELECT 1\x00\x00\x00"), false},
		{"extended batch", cat(frame('P', "\x00SELECT 1\x00\x00\x00"), frame('B', "\x00\x00\x00\x00\x00\x00\x00\x00"), frame('E', "\x00\x00\x00\x00\x00"), frame('S', "")), true},
		{"batch without sync", cat(frame('P', "\x00x\x00\x00\x00"), frame('B', "\x00\x00\x00\x00\x00\x00\x00\x00"), frame('E', "\x00\x00\x00\x00\x00")), false},
		{"sync then parse", cat(frame('S', ""), frame('P', "\x00x\x00\x00\x00")), false},
		{"truncated last frame", cat(frame('P', "\x00x\x00\x00\x00"), frame('S', "")[:3]), false},
		{"length past the end", []byte{'S', 0, 0, 0, 9}, false},
		{"length below 4", []byte{'S', 0, 0, 0, 3}, false},
	} {
		if got := endsInFlushPoint(c.msg); got != c.want {
			t.Errorf("%s: endsInFlushPoint = %v, want %v", c.name, got, c.want)
		}
	}
}
