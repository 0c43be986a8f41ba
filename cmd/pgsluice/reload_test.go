package main

import "testing"

func TestProblemKey(t *testing.T) {
	for _, c := range []struct{ in, key, msg string }{
		{"pool.size: want >= 1, got 0", "pool.size", "want >= 1, got 0"},
		{"'pool' has invalid keys: sise", "pool.sise", "unknown key"},
		{"'' has invalid keys: foo, bar", "foo,bar", "unknown key"},
		{"'pool.acquire_timeout' time: invalid duration \"abc\"", "pool.acquire_timeout", "time: invalid duration \"abc\""},
		{"tls: cert_file and key_file must be set together", "tls", "cert_file and key_file must be set together"},
		{"something odd", "", "something odd"},
	} {
		key, msg := problemKey(c.in)
		if key != c.key || msg != c.msg {
			t.Errorf("problemKey(%q) = %q, %q; want %q, %q", c.in, key, msg, c.key, c.msg)
		}
	}
}
