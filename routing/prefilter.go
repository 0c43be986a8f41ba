package routing

import "unsafe"

// ReasonNotClassified is the Reason of SessionNeutralDecision: the text
// was not classified (routing off and nothing in it can change the
// session).
const ReasonNotClassified = "not_classified"

// SessionNeutralDecision is what a caller uses instead of Classify for a
// text MayAffectSession rejects when it does not route: run on the
// primary, nothing to pin, track or replay.
func SessionNeutralDecision() Decision {
	return Decision{Target: TargetPrimary, Reason: ReasonNotClassified, Command: "other", Statements: 1}
}

// sessionNeedles are the words without which no statement can set a GUC
// (SET, RESET, set_config, SET ROLE/SESSION AUTHORIZATION), pin a session
// (LISTEN, pg_advisory_lock, TEMP tables, WITH HOLD cursors, PREPARE,
// LOAD), drop prepared statements (DISCARD, DEALLOCATE) or carry a
// pgsluice hint. Lower case; matched case-insensitively anywhere.
var sessionNeedles = [...]string{"set", "listen", "advisory", "temp", "hold", "prepare", "load", "discard", "deallocate", "pgsluice", "u&"}

// needlesBy lists the needles by their first byte, upper and lower case.
var needlesBy = func() (t [256][]string) {
	for _, n := range sessionNeedles {
		t[n[0]] = append(t[n[0]], n[1:])
		if 'a' <= n[0] && n[0] <= 'z' {
			t[n[0]-'a'+'A'] = t[n[0]]
		}
	}
	return t
}()

// MayAffectSession reports whether sql might set, pin or reset anything in
// the session, or carry a routing hint: a cheap case-insensitive substring
// test, with false positives (UPDATE ... SET) but no false negatives. A
// caller that does not route (routing.enabled false) needs Classify only
// when it returns true. U& identifiers (which can spell any name with
// escapes) always count.
func MayAffectSession(sql string) bool {
	for i := 0; i < len(sql); i++ {
		for _, rest := range needlesBy[sql[i]] {
			if hasFoldPrefix(sql[i+1:], rest) {
				return true
			}
		}
	}
	return false
}

// MayHaveHint reports whether text may carry a pgsluice hint: whether
// "pgsluice" occurs in it in any case (hints may stand in any comment).
func MayHaveHint(text []byte) bool {
	return containsHintWord(unsafe.String(unsafe.SliceData(text), len(text)))
}

func containsHintWord(s string) bool {
	for i := 0; i+len("pgsluice") <= len(s); i++ {
		if s[i]|0x20 == 'p' && hasFoldPrefix(s[i+1:], "gsluice") {
			return true
		}
	}
	return false
}

// hasFoldPrefix reports whether s starts with lower-case ASCII prefix p,
// ignoring ASCII case.
func hasFoldPrefix(s, p string) bool {
	if len(s) < len(p) {
		return false
	}
	for j := 0; j < len(p); j++ {
		c := s[j]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != p[j] {
			return false
		}
	}
	return true
}
