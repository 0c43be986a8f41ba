package auth

import (
	"bytes"
	"testing"
)

// ForgetUser drops every cached key of one user and no other's.
func TestForgetUser(t *testing.T) {
	cached := func(user, password string) bool {
		_, ok := keyCache.Load(keyCacheKey(user, password, false))
		return ok
	}
	for _, c := range []struct{ user, password string }{{"forget_a", "one"}, {"forget_a", "two"}, {"forget_b", "one"}} {
		if _, err := NewSCRAMServer(c.user, c.password); err != nil {
			t.Fatal(err)
		}
		if !cached(c.user, c.password) {
			t.Fatalf("keys of %s/%s not cached", c.user, c.password)
		}
	}
	before := keyCacheLen.Load()
	ForgetUser("forget_a")
	if cached("forget_a", "one") || cached("forget_a", "two") {
		t.Error("forget_a's keys survive ForgetUser")
	}
	if !cached("forget_b", "one") {
		t.Error("forget_b's keys dropped by ForgetUser(forget_a)")
	}
	if got := keyCacheLen.Load(); got != before-2 {
		t.Errorf("keyCacheLen %d, want %d", got, before-2)
	}
}

// loginKeys returns what scramKeys derives, from the cache the second time,
// keyed by password, salt and iterations; ForgetUser empties the cache.
func TestLoginKeysCache(t *testing.T) {
	ForgetUser("anyone") // start empty: other tests log in too
	salt := []byte("0123456789abcdef")
	want := func(pw string, iter int) [3][]byte {
		s, sv, c, err := scramKeys(pw, salt, iter)
		if err != nil {
			t.Fatal(err)
		}
		return [3][]byte{s, sv, c}
	}
	for round := 0; round < 2; round++ {
		for _, tc := range []struct {
			pw   string
			iter int
		}{{"secret", 4096}, {"secret", 4097}, {"other", 4096}} {
			s, sv, c, err := loginKeys(tc.pw, salt, tc.iter)
			if err != nil {
				t.Fatal(err)
			}
			w := want(tc.pw, tc.iter)
			if !bytes.Equal(s, w[0]) || !bytes.Equal(sv, w[1]) || !bytes.Equal(c, w[2]) {
				t.Fatalf("round %d %+v: cached keys differ from derived ones", round, tc)
			}
		}
	}
	loginKeyCache.mu.Lock()
	n := len(loginKeyCache.m)
	loginKeyCache.mu.Unlock()
	if n != 3 {
		t.Fatalf("%d cached login keys, want 3 (one per password, salt, iterations)", n)
	}
	ForgetUser("anyone")
	loginKeyCache.mu.Lock()
	n = len(loginKeyCache.m)
	loginKeyCache.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d cached login keys after ForgetUser, want 0", n)
	}
}
