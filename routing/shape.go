package routing

import (
	"encoding/binary"
	"strings"
	"time"
	"unicode/utf8"
)

// Shape keys.
//
// appendShape renders a query text into its *shape*: the token stream of the
// text with every constant replaced by a placeholder, unquoted identifiers and
// keywords folded to lower case, comments dropped and each run of whitespace
// or comments reduced to one space (adjacent tokens stay adjacent). Two texts
// with the same shape are lexed by PostgreSQL into the same tokens except for
// the values of constants, so they parse into the same tree shape and have the
// same pg_query fingerprint.
//
// Placeholders start with a NUL byte, which can never occur in a query text
// that reaches a shape key (a text containing NUL is keyed by its full text),
// so a placeholder can never be confused with text copied verbatim.
//
// A text is instead keyed by its full text (fullTextKey) when its meaning may
// depend on a constant or when the lexer rules are too subtle to be worth
// reproducing: any statement that does not start with SELECT, INSERT, UPDATE,
// DELETE, MERGE, VALUES, TABLE, WITH or '(' (SET, BEGIN, DECLARE, EXPLAIN, all
// utility statements), texts mentioning set_config, U&'' / U&"" tokens, E''
// strings with octal, hex or Unicode escapes (they can make the text invalid),
// unterminated strings, identifiers or comments, NUL bytes and text that is
// not valid UTF-8.

const (
	phString = "\x00s" // '...', E'...', $$...$$ (SCONST)
	phNChar  = "\x00n" // N'...' (NCHAR keyword + SCONST)
	phBit    = "\x00b" // B'...' (BCONST)
	phHex    = "\x00x" // X'...' (XCONST)
	phNumber = "\x00#" // 1, 1.5, 1e10, 0x1F, 1_000 (ICONST/FCONST)
	phHints  = "\x00h" // header carrying the hints
	phFull   = "\x00F" // prefix of a full-text key
)

// shapeInfo is what the scanner learns besides the key.
type shapeInfo struct {
	hints    Hints
	fullText bool // key is phFull + the whole text
}

func isSpace(c byte) bool {
	// \v is not whitespace for PostgreSQL's lexer (before 16) nor for pg_query.
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'
}

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func isIdentCont(c byte) bool {
	return isIdentStart(c) || c >= '0' && c <= '9' || c == '$'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func lowerASCII(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// literalSpan locates one constant replaced by a placeholder (for tests
// that re-render a text with other constants).
type literalSpan struct {
	start, end int
	class      byte // the placeholder's second byte
}

// appendShape appends the shape key of sql to dst and returns it. It never
// panics and never allocates when dst has room for the key.
func appendShape(dst []byte, sql string) ([]byte, shapeInfo) {
	return appendShapeSpans(dst, sql, nil, nil)
}

// textSpan is the half-open byte range [start, end) of a text.
type textSpan struct{ start, end int }

// spanList collects spans without allocating for the first few (a slice
// passed by pointer would escape to the heap).
type spanList struct {
	first [8]textSpan
	n     int
	more  []textSpan
}

func (l *spanList) add(sp textSpan) {
	if l.n < len(l.first) {
		l.first[l.n] = sp
	} else {
		l.more = append(l.more, sp)
	}
	l.n++
}

func (l *spanList) at(i int) textSpan {
	if i < len(l.first) {
		return l.first[i]
	}
	return l.more[i-len(l.first)]
}

// appendShapeSpans is appendShape that also records the constants it
// replaced when spans is not nil, and the comments it dropped when comments
// is not nil (both in text order; incomplete when the key is a full-text
// key).
func appendShapeSpans(dst []byte, sql string, spans *[]literalSpan, comments *spanList) ([]byte, shapeInfo) {
	var info shapeInfo
	base := len(dst)
	out := dst
	n := len(sql)
	pendingSpace := false
	stmtStart := true // the next token starts a statement
	// positions in out of the last two tokens (to spot CURRENT_TIME '(' n)
	p1s, p1e, p2s, p2e := -1, -1, -1, -1
	full := func() ([]byte, shapeInfo) {
		info.fullText = true
		out = append(dst, phFull...)
		out = append(out, sql...)
		return out, info
	}
	if !utf8.ValidString(sql) {
		// pg_query (protobuf) and a UTF-8 server reject such text anyway
		return full()
	}
	i := 0
	for i < n {
		c := sql[i]
		if isSpace(c) {
			pendingSpace = true
			i++
			continue
		}
		if c == 0 {
			return full()
		}
		if c == '-' && i+1 < n && sql[i+1] == '-' {
			j := i + 2
			for j < n && sql[j] != '\n' && sql[j] != '\r' {
				j++
			}
			parseHintComment(sql[i+2:j], &info.hints)
			if comments != nil {
				comments.add(textSpan{i, j})
			}
			pendingSpace = true
			i = j
			continue
		}
		if c == '/' && i+1 < n && sql[i+1] == '*' {
			depth := 1
			j := i + 2
			for j < n && depth > 0 {
				if sql[j] == '/' && j+1 < n && sql[j+1] == '*' {
					depth++
					j += 2
				} else if sql[j] == '*' && j+1 < n && sql[j+1] == '/' {
					depth--
					j += 2
				} else {
					j++
				}
			}
			if depth > 0 {
				return full() // unterminated comment: a syntax error
			}
			parseHintComment(sql[i+2:j-2], &info.hints)
			if comments != nil {
				comments.add(textSpan{i, j})
			}
			pendingSpace = true
			i = j
			continue
		}
		// A token starts here.
		if pendingSpace && len(out) > base && !(out[len(out)-1] == ' ') {
			out = append(out, ' ')
		}
		pendingSpace = false
		tokStart := len(out)
		tokStart0 := i
		first := stmtStart
		stmtStart = false
		okStart := false // the token may start a shape-keyed statement

		switch {
		case c == '\'':
			j, ok, risky := scanQuoted(sql, i+1, modePlain)
			if !ok || risky || timeWord(sql[i+1:j-1]) {
				return full()
			}
			out = append(out, phString...)
			i = j
		case (c == 'e' || c == 'E') && i+1 < n && sql[i+1] == '\'':
			j, ok, risky := scanQuoted(sql, i+2, modeEscape)
			if !ok || risky || timeWord(sql[i+2:j-1]) {
				return full()
			}
			out = append(out, phString...)
			i = j
		case (c == 'n' || c == 'N') && i+1 < n && sql[i+1] == '\'':
			j, ok, risky := scanQuoted(sql, i+2, modePlain)
			if !ok || risky {
				return full()
			}
			out = append(out, phNChar...)
			i = j
		case (c == 'b' || c == 'B') && i+1 < n && sql[i+1] == '\'':
			j, ok, _ := scanQuoted(sql, i+2, modeBits)
			if !ok {
				return full()
			}
			out = append(out, phBit...)
			i = j
		case (c == 'x' || c == 'X') && i+1 < n && sql[i+1] == '\'':
			j, ok, _ := scanQuoted(sql, i+2, modeBits)
			if !ok {
				return full()
			}
			out = append(out, phHex...)
			i = j
		case (c == 'u' || c == 'U') && i+2 < n && sql[i+1] == '&' && (sql[i+2] == '\'' || sql[i+2] == '"'):
			return full() // Unicode escapes and UESCAPE: literal-dependent lexing
		case c == '"':
			j := i + 1
			closed := false
			for j < n {
				if sql[j] == '"' {
					if j+1 < n && sql[j+1] == '"' {
						j += 2
						continue
					}
					closed = true
					j++
					break
				}
				j++
			}
			if !closed {
				return full()
			}
			if sql[i+1:j-1] == "set_config" {
				return full()
			}
			out = append(out, sql[i:j]...)
			i = j
		case c == '$':
			if i+1 < n && isDigit(sql[i+1]) { // parameter $n (junk after it kept verbatim)
				j := i + 1
				for j < n && (isIdentCont(sql[j]) && sql[j] != '$') {
					j++
				}
				out = append(out, sql[i:j]...)
				i = j
				break
			}
			if end, ok := dollarDelim(sql, i); ok {
				delim := sql[i:end]
				k := strings.Index(sql[end:], delim)
				if k < 0 {
					return full() // unterminated dollar-quoted string
				}
				out = append(out, phString...)
				i = end + k + len(delim)
				break
			}
			out = append(out, '$')
			i++
		case isDigit(c) || c == '.' && i+1 < n && isDigit(sql[i+1]):
			j := i
			for j < n {
				d := sql[j]
				if (d == 'e' || d == 'E') && j+2 < n && (sql[j+1] == '+' || sql[j+1] == '-') && isDigit(sql[j+2]) {
					j += 3
					continue
				}
				if isIdentCont(d) && d != '$' || d == '.' {
					j++
					continue
				}
				break
			}
			run := sql[i:j]
			if cleanNumber(run) && !typmodContext(out, p1s, p1e, p2s, p2e) {
				out = append(out, phNumber...)
			} else {
				out = append(out, run...)
			}
			i = j
		case isIdentStart(c):
			j := i + 1
			for j < n && isIdentCont(sql[j]) {
				j++
			}
			for k := i; k < j; k++ {
				out = append(out, lowerASCII(sql[k]))
			}
			word := out[tokStart:]
			if string(word) == "set_config" {
				return full()
			}
			okStart = dmlKeyword(word)
			i = j
		default:
			out = append(out, c)
			if c == ';' {
				stmtStart = true
			}
			okStart = c == '(' || c == ';'
			i++
		}
		if first && !okStart {
			return full()
		}
		if spans != nil && len(out)-tokStart == 2 && out[tokStart] == 0 {
			*spans = append(*spans, literalSpan{start: tokStart0, end: i, class: out[tokStart+1]})
		}
		p2s, p2e = p1s, p1e
		p1s, p1e = tokStart, len(out)
	}
	// Trailing ';' and spaces do not change the meaning.
	for len(out) > base && (out[len(out)-1] == ';' || out[len(out)-1] == ' ') {
		out = out[:len(out)-1]
	}
	// The hints, from comments anywhere, end the key (a NUL-prefixed
	// header, so it cannot be mistaken for text).
	if info.hints != (Hints{}) {
		out = appendHintHeader(out, info.hints)
	}
	return out, info
}

// timeWord reports whether a string constant may be one of the date/time
// input words evaluated when the statement is parsed ('now'::timestamptz,
// 'today', ...): such a constant makes a result uncacheable, so the text is
// keyed by its full text and the analysis sees it.
func timeWord(s string) bool {
	if len(s) < 3 || len(s) > 16 {
		return false
	}
	s = strings.TrimSpace(s)
	for _, w := range [...]string{"now", "today", "tomorrow", "yesterday"} {
		if strings.EqualFold(s, w) {
			return true
		}
	}
	return false
}

// dmlKeyword reports whether a statement starting with word may be keyed by
// its shape.
func dmlKeyword(word []byte) bool {
	switch string(word) {
	case "select", "insert", "update", "delete", "merge", "values", "table", "with":
		return true
	}
	return false
}

// typmodContext reports whether a number follows CURRENT_TIME( and friends,
// where PostgreSQL stores the constant as a typmod outside any A_Const, so it
// is part of the fingerprint.
func typmodContext(out []byte, p1s, p1e, p2s, p2e int) bool {
	if p1s < 0 || p2s < 0 || string(out[p1s:p1e]) != "(" {
		return false
	}
	switch string(out[p2s:p2e]) {
	case "current_time", "current_timestamp", "localtime", "localtimestamp":
		return true
	}
	return false
}

// cleanNumber reports whether s is exactly one PostgreSQL 16 numeric
// constant: decimal integer, hexadecimal/octal/binary integer, numeric or
// real, with single underscores between digits.
func cleanNumber(s string) bool {
	if len(s) > 2 && s[0] == '0' {
		var ok func(byte) bool
		switch s[1] {
		case 'x', 'X':
			ok = func(c byte) bool { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }
		case 'o', 'O':
			ok = func(c byte) bool { return c >= '0' && c <= '7' }
		case 'b', 'B':
			ok = func(c byte) bool { return c == '0' || c == '1' }
		}
		if ok != nil {
			// (_?digit)+
			i := 2
			for i < len(s) {
				if s[i] == '_' {
					i++
				}
				if i >= len(s) || !ok(s[i]) {
					return false
				}
				i++
			}
			return true
		}
	}
	i := 0
	digits := func() bool { // [0-9](_?[0-9])*
		if i >= len(s) || !isDigit(s[i]) {
			return false
		}
		i++
		for i < len(s) {
			if isDigit(s[i]) {
				i++
			} else if s[i] == '_' && i+1 < len(s) && isDigit(s[i+1]) {
				i += 2
			} else {
				break
			}
		}
		return true
	}
	if s == "" {
		return false
	}
	if s[0] == '.' {
		i = 1
		if !digits() {
			return false
		}
	} else {
		if !digits() {
			return false
		}
		if i < len(s) && s[i] == '.' {
			i++
			if i < len(s) && isDigit(s[i]) {
				digits()
			}
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if !digits() {
			return false
		}
	}
	return i == len(s)
}

// dollarDelim reports whether a dollar-quote delimiter $tag$ starts at i and
// returns the index just after it.
func dollarDelim(sql string, i int) (int, bool) {
	j := i + 1
	if j < len(sql) && isIdentStart(sql[j]) {
		j++
		for j < len(sql) && isIdentCont(sql[j]) && sql[j] != '$' {
			j++
		}
	}
	if j < len(sql) && sql[j] == '$' {
		return j + 1, true
	}
	return 0, false
}

type quoteMode uint8

const (
	modePlain  quoteMode = iota // '...' with '' doubling (standard_conforming_strings on)
	modeEscape                  // E'...' with backslash escapes and '' doubling
	modeBits                    // B'...' / X'...': no doubling
)

// scanQuoted scans a quoted constant whose body starts at i (just after the
// opening quote), including PostgreSQL's continuation of a constant over a
// newline ('a'\n'b' is one constant). It returns the index after the
// constant, whether it was terminated, and whether its content may make the
// lexer fail (octal, hex or Unicode escapes in E” strings).
func scanQuoted(sql string, i int, mode quoteMode) (end int, ok, risky bool) {
	n := len(sql)
	for {
		for {
			if i >= n {
				return n, false, risky
			}
			c := sql[i]
			if c == '\\' && mode == modeEscape {
				if i+1 >= n {
					return n, false, risky
				}
				switch d := sql[i+1]; {
				case d >= '0' && d <= '7', d == 'x', d == 'u', d == 'U', d >= 0x80:
					risky = true
				}
				i += 2
				continue
			}
			if c == '\'' {
				if mode != modeBits && i+1 < n && sql[i+1] == '\'' {
					i += 2
					continue
				}
				i++
				break
			}
			i++
		}
		// Continuation: [ \t\f]* newline [ \t\n\r\f]* '
		j := i
		for j < n && (sql[j] == ' ' || sql[j] == '\t' || sql[j] == '\f') {
			j++
		}
		if j >= n || sql[j] != '\n' && sql[j] != '\r' {
			return i, true, risky
		}
		for j < n && isSpace(sql[j]) {
			j++
		}
		if j < n && sql[j] == '\'' {
			i = j + 1
			continue
		}
		return i, true, risky
	}
}

// hintWords returns what follows "pgsluice:" in a comment's body, and
// whether the body starts with it (after spaces, in any case).
func hintWords(body string) (string, bool) {
	s := strings.TrimSpace(body)
	const prefix = "pgsluice:"
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return "", false
	}
	return s[len(prefix):], true
}

// appendHintHeader encodes hints canonically so that they are part of the key.
func appendHintHeader(out []byte, h Hints) []byte {
	out = append(out, phHints...)
	var r byte = '-'
	switch h.Route {
	case "primary":
		r = 'p'
	case "replica":
		r = 'r'
	}
	var nc byte = '-'
	if h.NoCache {
		nc = 'n'
	}
	out = append(out, r, nc)
	out = binary.LittleEndian.AppendUint64(out, uint64(h.CacheTTL))
	return out
}

// parseHintComment reads the directives of one comment body:
// "pgsluice:" followed by words route=primary|replica, cache, ttl=DURATION
// (also cache ttl=DURATION), nocache. Unknown words are ignored. It does not
// allocate.
func parseHintComment(body string, h *Hints) {
	s, ok := hintWords(body)
	if !ok {
		return
	}
	for len(s) > 0 {
		// next word, separated by spaces or commas
		k := 0
		for k < len(s) && (isSpace(s[k]) || s[k] == ',') {
			k++
		}
		s = s[k:]
		k = 0
		for k < len(s) && !isSpace(s[k]) && s[k] != ',' {
			k++
		}
		w := s[:k]
		s = s[k:]
		switch {
		case w == "":
		case strings.EqualFold(w, "nocache"):
			h.NoCache = true
		case len(w) > 6 && strings.EqualFold(w[:6], "route="):
			switch v := w[6:]; {
			case strings.EqualFold(v, "primary"):
				h.Route = "primary"
			case strings.EqualFold(v, "replica"):
				h.Route = "replica"
			}
		case len(w) > 4 && strings.EqualFold(w[:4], "ttl="):
			if d, err := time.ParseDuration(w[4:]); err == nil && d > 0 {
				h.CacheTTL = d
			}
		}
	}
}
