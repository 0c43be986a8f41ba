package auth

// ForgetUser drops the SCRAM keys derived for user (for every password it
// had), so that a configuration reload that changes or removes the user
// leaves no key of the old password behind. Logins in progress keep the
// keys they already hold. It also empties the cache of keys the proxy
// derived to log in to PostgreSQL (see loginKeys), which is not kept per
// user, and the ClientKeys remembered for the user's SCRAM secrets. Safe
// for concurrent use.
func ForgetUser(user string) {
	forgetClientKeys(user)
	loginKeyCache.mu.Lock()
	loginKeyCache.m = nil
	loginKeyCache.mu.Unlock()
	keyCache.Range(func(k, _ any) bool {
		if k.(keyCacheID).user == user {
			if _, loaded := keyCache.LoadAndDelete(k); loaded {
				keyCacheLen.Add(-1)
			}
		}
		return true
	})
}
