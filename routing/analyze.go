package routing

import (
	"regexp"
	"sort"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
)

// This file turns a pg_query parse tree into a Decision. It runs only when a
// shape is seen for the first time (or for full-text keys), so clarity wins
// over speed here.

// maxNormalized bounds Decision.Normalized.
const maxNormalized = 1024

// stmtText returns the statement's own text: trimmed, without trailing ';'.
func stmtText(sql string, raw *pg.RawStmt) string {
	start := int(raw.StmtLocation)
	end := len(sql)
	if raw.StmtLen > 0 {
		end = start + int(raw.StmtLen)
	}
	if start < 0 || start > len(sql) || end > len(sql) || end < start {
		return strings.TrimSpace(sql)
	}
	s := skipLeadingComments(sql[start:end])
	s = s[:codeEnd(s)]
	for strings.HasSuffix(s, ";") {
		s = s[:codeEnd(strings.TrimSuffix(s, ";"))]
	}
	return s
}

// skipLeadingComments trims whitespace and leading comments (which may hold
// hints meant for the original statement only).
func skipLeadingComments(s string) string {
	for {
		s = strings.TrimSpace(s)
		switch {
		case strings.HasPrefix(s, "--"):
			i := strings.IndexAny(s, "\r\n")
			if i < 0 {
				return ""
			}
			s = s[i:]
		case strings.HasPrefix(s, "/*"):
			depth, i := 1, 2
			for i < len(s) && depth > 0 {
				switch {
				case strings.HasPrefix(s[i:], "/*"):
					depth, i = depth+1, i+2
				case strings.HasPrefix(s[i:], "*/"):
					depth, i = depth-1, i+2
				default:
					i++
				}
			}
			s = s[i:]
		default:
			return s
		}
	}
}

// codeEnd returns the end of the last character of s that is neither
// whitespace nor inside a comment, so that trailing comments can be cut (a
// trailing -- comment would swallow whatever the proxy appends).
func codeEnd(s string) int {
	end := 0
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case isSpace(c):
			i++
			continue
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			for i < len(s) && s[i] != '\n' && s[i] != '\r' {
				i++
			}
			continue
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			depth := 1
			i += 2
			for i < len(s) && depth > 0 {
				switch {
				case strings.HasPrefix(s[i:], "/*"):
					depth, i = depth+1, i+2
				case strings.HasPrefix(s[i:], "*/"):
					depth, i = depth-1, i+2
				default:
					i++
				}
			}
			continue
		case c == '\'':
			i, _, _ = scanQuoted(s, i+1, modePlain)
		case (c == 'e' || c == 'E') && i+1 < len(s) && s[i+1] == '\'' && (i == 0 || !isIdentCont(s[i-1])):
			i, _, _ = scanQuoted(s, i+2, modeEscape)
		case c == '"':
			i++
			for i < len(s) {
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						i += 2
						continue
					}
					i++
					break
				}
				i++
			}
		case c == '$' && (i == 0 || !isIdentCont(s[i-1])):
			if e, ok := dollarDelim(s, i); ok {
				if k := strings.Index(s[e:], s[i:e]); k >= 0 {
					i = e + k + (e - i)
				} else {
					i = len(s)
				}
			} else {
				i++
			}
		default:
			i++
		}
		end = i
	}
	return end
}

// analyze parses sql with pg_query and builds its Decision (without hints
// applied).
func analyze(cat Catalog, sql string) Decision {
	if strings.IndexByte(sql, 0) >= 0 {
		return unparseable(sql)
	}
	tree, err := pg.Parse(sql)
	if err != nil {
		if d, ok := pgsluiceSet(sql); ok {
			return d
		}
		return unparseable(sql)
	}
	d := Decision{Statements: len(tree.Stmts)}
	if fp, err := pg.FingerprintToUInt64(sql); err == nil {
		d.Fingerprint = fp
	}
	if norm, err := pg.Normalize(sql); err == nil {
		d.Normalized = truncateUTF8(withoutComments(norm), maxNormalized)
	}
	if len(tree.Stmts) == 0 {
		d.Target, d.Reason, d.Command, d.Normalized = TargetPrimary, ReasonEmpty, "empty", ""
		return d
	}
	reads := map[string]bool{}
	written := map[string]bool{}
	var decided, anyPrimary, neutralPrimary bool
	var firstReason string
	for i, raw := range tree.Stmts {
		r := classifyStmt(cat, sql, raw)
		if i == 0 {
			d.Command, d.Cacheable, firstReason = r.command, r.cacheable, r.reason
		}
		if !r.neutral {
			decided = true
			if r.target == TargetPrimary {
				anyPrimary = true
			}
		} else if r.target == TargetPrimary {
			neutralPrimary = true
		}
		if d.Pin == PinNone {
			d.Pin = r.pin
		}
		if r.txn != TxnNone {
			d.Txn = r.txn
		}
		d.Sets = append(d.Sets, r.sets...)
		for _, t := range r.reads {
			reads[t] = true
		}
		for _, t := range r.written {
			written[t] = true
		}
		if r.writes {
			d.writes = true
		}
	}
	d.ReadTables = sortedKeys(reads)
	d.WriteTables = sortedKeys(written)
	d.Reason = firstReason
	d.Target = TargetReplica
	if anyPrimary || !decided && neutralPrimary {
		d.Target = TargetPrimary
	}
	if len(tree.Stmts) > 1 {
		d.Cacheable = false
		if d.Target == TargetPrimary {
			d.Reason = ReasonMultiStatement
		} else {
			d.Reason = ReasonRead
		}
	}
	return d
}

// pgsluiceSetRE matches the proxy's own settings with an unquoted value that
// PostgreSQL's grammar rejects because it is a reserved word
// (SET pgsluice.route = primary).
var pgsluiceSetRE = regexp.MustCompile(`(?is)^\s*SET\s+(?:SESSION\s+)?(pgsluice\.[a-z_][a-z0-9_]*)\s*(?:=|\s+TO\s+)\s*([a-z_][a-z0-9_]*)\s*;?\s*$`)

func pgsluiceSet(sql string) (Decision, bool) {
	m := pgsluiceSetRE.FindStringSubmatch(skipLeadingComments(sql))
	if m == nil {
		return Decision{}, false
	}
	name := strings.ToLower(m[1])
	fp, _ := pg.FingerprintToUInt64("SET " + name + " = 'v'")
	text := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(skipLeadingComments(sql)), ";"))
	return Decision{
		Target: TargetPrimary, Reason: ReasonSet, Command: "set", Statements: 1, Fingerprint: fp,
		Normalized: truncateUTF8(withoutComments(text), maxNormalized),
		Sets:       []SessionSet{{Kind: SetValue, Name: name, SQL: text}},
	}, true
}

func unparseable(sql string) Decision {
	n := 1
	if parts, err := pg.SplitWithScanner(sql, true); err == nil && len(parts) > 0 && strings.IndexByte(sql, 0) < 0 {
		n = len(parts)
	}
	return Decision{Target: TargetPrimary, Reason: ReasonUnparseable, ParseError: true, Command: "other", Statements: n}
}

func sortedKeys(m map[string]bool) []string {
	if len(m) == 0 {
		return nil
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// truncateUTF8 cuts s to at most max bytes without splitting a rune.
func truncateUTF8(s string, max int) string {
	if len(s) <= max {
		return s
	}
	i := max
	for i > 0 && s[i]&0xC0 == 0x80 {
		i--
	}
	return s[:i]
}

// lexComments finds the comments of sql with PostgreSQL's own lexer
// (pg_query's scanner); false on a lexer error.
func lexComments(sql string) (spanList, bool) {
	var comments spanList
	res, err := pg.Scan(sql)
	if err != nil {
		return comments, false
	}
	for _, t := range res.Tokens {
		if t.Token == pg.Token_C_COMMENT || t.Token == pg.Token_SQL_COMMENT {
			if start, end := int(t.Start), int(t.End); 0 <= start && start+2 <= end && end <= len(sql) {
				comments.add(textSpan{start, end})
			}
		}
	}
	return comments, true
}

// withoutComments returns sql without any of its comments. Decision.
// Normalized is shown (SHOW QUERIES, /queries, the slow-query log) for
// every text of its shape, and comments differ between those texts: a
// per-request traceparent, or a tag naming a user, would be shown as if
// it belonged to all of them, and the slow-query log promises no
// literals. On a lexer error it returns sql.
func withoutComments(sql string) string {
	if !strings.Contains(sql, "--") && !strings.Contains(sql, "/*") {
		return sql
	}
	comments, ok := lexComments(sql)
	if !ok || comments.n == 0 {
		return sql
	}
	return string(dropComments(nil, sql, &comments, func(textSpan) bool { return true }))
}

// scanHints reads the hints of every comment in sql with PostgreSQL's own
// lexer, for texts the shape scanner gave up on (full-text keys: it stops
// at the first token it does not follow). On a lexer error it returns h.
func scanHints(sql string, h Hints) Hints {
	comments, ok := lexComments(sql)
	if !ok {
		return h
	}
	var out Hints
	for k := 0; k < comments.n; k++ {
		parseHintComment(commentBody(sql, comments.at(k)), &out)
	}
	return out
}

// applyHints applies route and cache hints to a decision.
func applyHints(d *Decision, h Hints) {
	d.Hints = h
	if h.NoCache || h.Route == "primary" {
		d.Cacheable = false
	}
	switch h.Route {
	case "primary":
		if d.Target == TargetReplica {
			d.Target, d.Reason = TargetPrimary, ReasonHint
		}
	case "replica":
		switch {
		case d.writes:
			d.Target, d.Reason = TargetPrimary, ReasonHintRejected
		case d.Target == TargetPrimary && d.Reason == ReasonVolatile:
			d.Target, d.Reason = TargetReplica, ReasonHint
		}
	}
}
