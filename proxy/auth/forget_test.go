package auth

import "testing"

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
