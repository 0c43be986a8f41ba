package auth

// ForgetUser drops the SCRAM keys derived for user (for every password it
// had), so that a configuration reload that changes or removes the user
// leaves no key of the old password behind. Logins in progress keep the
// keys they already hold. Safe for concurrent use.
func ForgetUser(user string) {
	keyCache.Range(func(k, _ any) bool {
		if k.(keyCacheID).user == user {
			if _, loaded := keyCache.LoadAndDelete(k); loaded {
				keyCacheLen.Add(-1)
			}
		}
		return true
	})
}
