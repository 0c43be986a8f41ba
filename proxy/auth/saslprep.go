package auth

import (
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/bidi"
	"golang.org/x/text/unicode/norm"
)

// saslPrep prepares a SCRAM password as PostgreSQL does (pg_saslprep,
// RFC 4013 SASLprep): ASCII passwords are used unchanged; otherwise non-ASCII
// spaces become U+0020, "commonly mapped to nothing" characters are removed,
// the result is NFKC-normalised, and if it then contains a prohibited
// character or violates the bidirectional rules — or the input is not valid
// UTF-8 — the raw password is used instead, exactly as PostgreSQL falls back.
//
// Not implemented: the check for code points unassigned in Unicode 3.2
// (RFC 3454 table A.1). A password containing such a code point is
// normalised here where PostgreSQL would use it raw.
func saslPrep(password string) string {
	ascii := true
	for i := 0; i < len(password); i++ {
		if password[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii || !utf8.ValidString(password) {
		return password
	}
	var b strings.Builder
	for _, r := range password {
		switch {
		case inRanges(r, nonASCIISpace):
			b.WriteByte(' ')
		case inRanges(r, mappedToNothing):
		default:
			b.WriteRune(r)
		}
	}
	out := norm.NFKC.String(b.String())
	if out == "" {
		return password
	}
	var hasRandAL, hasL bool
	for _, r := range out {
		if inRanges(r, nonASCIISpace) || inRanges(r, prohibited) {
			return password
		}
		switch class(r) {
		case bidi.R, bidi.AL:
			hasRandAL = true
		case bidi.L:
			hasL = true
		}
	}
	if hasRandAL {
		first, _ := utf8.DecodeRuneInString(out)
		last, _ := utf8.DecodeLastRuneInString(out)
		if hasL || !isRandAL(first) || !isRandAL(last) {
			return password
		}
	}
	return out
}

func class(r rune) bidi.Class {
	p, _ := bidi.LookupRune(r)
	return p.Class()
}

func isRandAL(r rune) bool {
	c := class(r)
	return c == bidi.R || c == bidi.AL
}

type runeRange struct{ lo, hi rune }

func inRanges(r rune, table []runeRange) bool {
	for _, rr := range table {
		if r >= rr.lo && r <= rr.hi {
			return true
		}
	}
	return false
}

// RFC 3454 table C.1.2.
var nonASCIISpace = []runeRange{
	{0x00A0, 0x00A0}, {0x1680, 0x1680}, {0x2000, 0x200B}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000},
}

// RFC 3454 table B.1.
var mappedToNothing = []runeRange{
	{0x00AD, 0x00AD}, {0x034F, 0x034F}, {0x1806, 0x1806}, {0x180B, 0x180D}, {0x200B, 0x200D},
	{0x2060, 0x2060}, {0xFE00, 0xFE0F}, {0xFEFF, 0xFEFF},
}

// RFC 3454 tables C.2.1, C.2.2, C.3, C.4, C.5, C.6, C.7, C.8 and C.9.
var prohibited = []runeRange{
	{0x0000, 0x001F}, {0x007F, 0x007F}, // C.2.1
	{0x0080, 0x009F}, {0x06DD, 0x06DD}, {0x070F, 0x070F}, {0x180E, 0x180E}, {0x200C, 0x200D}, // C.2.2
	{0x2028, 0x2029}, {0x2060, 0x2063}, {0x206A, 0x206F}, {0xFEFF, 0xFEFF}, {0xFFF9, 0xFFFC},
	{0x1D173, 0x1D17A},
	{0xE000, 0xF8FF}, {0xF0000, 0xFFFFD}, {0x100000, 0x10FFFD}, // C.3
	{0xFDD0, 0xFDEF}, {0xFFFE, 0xFFFF}, {0x1FFFE, 0x1FFFF}, {0x2FFFE, 0x2FFFF}, {0x3FFFE, 0x3FFFF}, // C.4
	{0x4FFFE, 0x4FFFF}, {0x5FFFE, 0x5FFFF}, {0x6FFFE, 0x6FFFF}, {0x7FFFE, 0x7FFFF}, {0x8FFFE, 0x8FFFF},
	{0x9FFFE, 0x9FFFF}, {0xAFFFE, 0xAFFFF}, {0xBFFFE, 0xBFFFF}, {0xCFFFE, 0xCFFFF}, {0xDFFFE, 0xDFFFF},
	{0xEFFFE, 0xEFFFF}, {0xFFFFE, 0xFFFFF}, {0x10FFFE, 0x10FFFF},
	{0xD800, 0xDFFF},                                     // C.5
	{0xFFF9, 0xFFFD},                                     // C.6
	{0x2FF0, 0x2FFB},                                     // C.7
	{0x0340, 0x0341}, {0x200E, 0x200F}, {0x202A, 0x202E}, // C.8
	{0xE0001, 0xE0001}, {0xE0020, 0xE007F}, // C.9
}
