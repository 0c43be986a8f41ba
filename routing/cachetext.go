package routing

import (
	"bytes"
	"strings"
	"unsafe"
)

// The text a cached result is keyed by.
//
// Tracing libraries add a comment to every statement: sqlcommenter and
// OpenTelemetry put a traceparent that is new for each request at its end,
// Rails' query logs and marginalia name the controller and action. Keyed
// by the raw text, a cacheable dashboard query carrying such a comment
// would never be answered from the cache. AppendCacheText drops the
// comments so that texts differing only in comments share one result.
//
// A comment and the whitespace around it become one space, a newline if
// that whitespace held one (a newline can join two string constants:
// 'a' -- note\n'b' is 'ab'), or nothing at the start or the end of the
// text. Everything else is copied byte for byte, so a text without
// comments is its own cache text, and the text with a trailing comment
// shares the result of the same text without it. A pgsluice hint is
// kept where it is: it chooses the ttl, and a text asking for a short one
// must not be answered by an entry stored for a long one. The comments are found
// by the shape scanner, which mirrors PostgreSQL's lexer (strings,
// dollar quotes, quoted identifiers, nested comments); where it falls
// back to a full-text key, the text is kept whole. FuzzCacheText checks
// with pg_query that the cache text parses into the same tree as the
// text it came from.

// AppendCacheText appends to dst the text by which a result of sql is
// cached (see above) and returns it. It reads sql only during the call.
func AppendCacheText(dst, sql []byte) []byte {
	if !mayHaveComment(afterLeadingHint(sql)) {
		return append(dst, sql...)
	}
	var kbuf [stackKeyBytes]byte
	var comments spanList
	text := unsafe.String(unsafe.SliceData(sql), len(sql))
	if _, info := appendShapeSpans(kbuf[:0], text, nil, &comments); info.fullText || comments.n == 0 {
		return append(dst, sql...)
	}
	// All comments are dropped but hints.
	return dropComments(dst, text, &comments, func(c textSpan) bool {
		_, hint := hintWords(commentBody(text, c))
		return !hint
	})
}

// commentBody returns what a comment span holds after "--", or between
// "/*" and "*/".
func commentBody(sql string, c textSpan) string {
	body := sql[c.start+2 : c.end]
	if sql[c.start] == '/' && len(body) >= 2 {
		body = body[:len(body)-2]
	}
	return body
}

// dropComments appends sql to dst without the comments (in text order)
// that drop selects: each gap of dropped comments and the whitespace
// around them becomes one space, a newline if the gap held one, or
// nothing at either end of the text.
func dropComments(dst []byte, sql string, comments *spanList, drop func(textSpan) bool) []byte {
	last := 0 // sql[last:] is not copied yet
	for k := 0; k < comments.n; {
		if !drop(comments.at(k)) {
			k++
			continue
		}
		// The gap to drop: this comment, the comments after it that only
		// whitespace separates from it, and the whitespace around them.
		c := comments.at(k)
		start, end := c.start, c.end
		for start > last && isSpace(sql[start-1]) {
			start--
		}
		for k++; ; {
			for end < len(sql) && isSpace(sql[end]) {
				end++
			}
			if k < comments.n && comments.at(k).start == end && drop(comments.at(k)) {
				end = comments.at(k).end
				k++
				continue
			}
			break
		}
		dst = append(dst, sql[last:start]...)
		if start > 0 && end < len(sql) {
			sep := byte(' ')
			if strings.ContainsAny(sql[start:end], "\n\r") {
				sep = '\n'
			}
			dst = append(dst, sep)
		}
		last = end
	}
	return append(dst, sql[last:]...)
}

// afterLeadingHint returns what follows a leading /* pgsluice: ... */ hint
// (the way hints are documented), so that such a text without other
// comments is not scanned; sql itself when it does not start with one.
func afterLeadingHint(sql []byte) []byte {
	i := 0
	for i < len(sql) && isSpace(sql[i]) {
		i++
	}
	if len(sql)-i < 4 || sql[i] != '/' || sql[i+1] != '*' {
		return sql
	}
	n := bytes.Index(sql[i+2:], []byte("*/"))
	if n < 0 {
		return sql
	}
	body := sql[i+2 : i+2+n]
	if bytes.Contains(body, []byte("/*")) {
		return sql // nested: the scanner decides
	}
	if _, hint := hintWords(unsafe.String(unsafe.SliceData(body), len(body))); !hint {
		return sql
	}
	return sql[i+2+n+2:]
}

// mayHaveComment reports whether sql contains "--" or "/*" anywhere.
func mayHaveComment(sql []byte) bool {
	return hasPair(sql, '-', '-') || hasPair(sql, '/', '*')
}

// hasPair reports whether byte a followed by byte b occurs in sql.
func hasPair(sql []byte, a, b byte) bool {
	for i := bytes.IndexByte(sql, a); i >= 0 && i+1 < len(sql); {
		if sql[i+1] == b {
			return true
		}
		j := bytes.IndexByte(sql[i+1:], a)
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return false
}
