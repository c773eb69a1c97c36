package wire

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// ErrDepth is a payload whose objects and arrays nest deeper than the depth
// limit. It wraps ErrPayload.
var ErrDepth = fmt.Errorf("%w: nested too deep", ErrPayload)

// CheckJSON reports whether s is one JSON text as RFC 8259 defines it (one
// value with optional whitespace around it, strings of valid UTF-8) whose
// objects and arrays nest at most maxDepth deep (a scalar has depth 0, so
// maxDepth <= 0 allows scalars only). It returns nil if so; otherwise an
// error that names the byte offset of the first problem, wrapping ErrDepth
// if a container opens deeper than maxDepth before any syntax error, or
// else ErrPayload.
//
// CheckJSON accepts exactly what encoding/json.Valid accepts, except that it
// also requires valid UTF-8 and has no depth limit of its own. It reads s
// once, left to right, without recursion; it keeps one small word per open
// container, so it allocates nothing on success unless maxDepth is large
// and reached.
func CheckJSON(s string, maxDepth int) error {
	_, bad := scanJSON(s, maxDepth, nil, false)
	return bad.err(maxDepth)
}

// badJSON is where and why scanJSON failed; the zero value is success. It
// becomes an error only when one is asked for, so that typing a plain
// payload that is not JSON costs no allocation.
type badJSON struct {
	at   int
	what string // "" for success; deep for a level beyond the limit
}

const deep = "deep"

func (b badJSON) err(maxDepth int) error {
	switch b.what {
	case "":
		return nil
	case deep:
		return fmt.Errorf("%w: deeper than %d at byte %d", ErrDepth, maxDepth, b.at)
	}
	return fmt.Errorf("%w: not valid JSON: %s at byte %d", ErrPayload, b.what, b.at)
}

// scanJSON is CheckJSON. With count set it also appends to counts the
// member count of every object and array of s, in the order they open;
// s must then be shorter than 2^31 bytes.
func scanJSON(s string, maxDepth int, counts []uint32, count bool) ([]uint32, badJSON) {
	var small [32]uint32
	open := small[:0] // open containers: index in counts << 1, | 1 for an object
	i := skipSpace(s, 0)
	var bad badJSON
	for {
		// A value starts at i.
		if i >= len(s) {
			return counts, syntaxError(i, "unexpected end")
		}
		switch c := s[i]; c {
		case '{', '[':
			if len(open) >= maxDepth {
				return counts, badJSON{i, deep}
			}
			top := uint32(len(counts)) << 1
			if count {
				counts = append(counts, 0)
			}
			i = skipSpace(s, i+1)
			if c == '{' {
				top |= 1
			}
			if i < len(s) && s[i] == c+2 { // '}' or ']': empty
				i++
				break
			}
			if len(open) == cap(open) {
				open = slices.Grow(open, len(open)) // doubling: little garbage when deep
			}
			open = append(open, top)
			if count {
				counts[top>>1]++
			}
			if c == '{' {
				if i, bad = scanKey(s, i); bad.what != "" {
					return counts, bad
				}
			}
			continue
		case '"':
			if i, bad = scanString(s, i); bad.what != "" {
				return counts, bad
			}
		case 't', 'f', 'n':
			lit := literal(c)
			if !strings.HasPrefix(s[i:], lit) {
				return counts, syntaxError(i, "invalid literal")
			}
			i += len(lit)
		default:
			if i, bad = scanNumber(s, i); bad.what != "" {
				return counts, bad
			}
		}
		// After a value: close containers until the next member starts.
		for {
			i = skipSpace(s, i)
			if len(open) == 0 {
				if i < len(s) {
					return counts, syntaxError(i, "data after the value")
				}
				return counts, badJSON{}
			}
			if i >= len(s) {
				return counts, syntaxError(i, "unexpected end")
			}
			top := open[len(open)-1]
			if s[i] == ']'|byte(top&1)<<5 { // ']', or '}' for an object
				open = open[:len(open)-1]
				i++
				continue
			}
			if s[i] != ',' {
				if top&1 == 1 {
					return counts, syntaxError(i, "want ',' or '}'")
				}
				return counts, syntaxError(i, "want ',' or ']'")
			}
			if count {
				counts[top>>1]++
			}
			i = skipSpace(s, i+1)
			if top&1 == 1 {
				if i, bad = scanKey(s, i); bad.what != "" {
					return counts, bad
				}
			}
			break
		}
	}
}

func syntaxError(i int, what string) badJSON { return badJSON{i, what} }

func literal(c byte) string {
	switch c {
	case 't':
		return "true"
	case 'f':
		return "false"
	}
	return "null"
}

func isSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\r' || c == '\t' }

func skipSpace(s string, i int) int {
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	return i
}

// scanKey reads a member's key and colon at i and returns where its value
// starts.
func scanKey(s string, i int) (int, badJSON) {
	if i >= len(s) || s[i] != '"' {
		return i, syntaxError(i, "want a string key")
	}
	i, bad := scanString(s, i)
	if bad.what != "" {
		return i, bad
	}
	if i = skipSpace(s, i); i >= len(s) || s[i] != ':' {
		return i, syntaxError(i, "want ':'")
	}
	return skipSpace(s, i+1), badJSON{}
}

// scanString reads the string whose opening quote is at i and returns the
// offset after its closing quote.
func scanString(s string, i int) (int, badJSON) {
	start, high := i+1, byte(0) // high: the bits of every byte, for UTF-8
	for i++; i < len(s); {
		c := s[i]
		switch {
		case c >= 0x20 && c != '"' && c != '\\':
			high |= c
			i++
		case c == '"':
			if high >= utf8.RuneSelf && !utf8.ValidString(s[start:i]) {
				return i, syntaxError(invalidUTF8(s, start), "invalid UTF-8")
			}
			return i + 1, badJSON{}
		case c == '\\':
			if i+1 >= len(s) {
				return i, syntaxError(i+1, "unexpected end")
			}
			switch s[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for j := i + 2; j < i+6; j++ {
					if j >= len(s) || !isHex(s[j]) {
						return i, syntaxError(j, "invalid \\u escape")
					}
				}
				i += 6
			default:
				return i, syntaxError(i+1, "invalid escape")
			}
		default:
			return i, syntaxError(i, "control character in string")
		}
	}
	return i, syntaxError(i, "unexpected end")
}

// invalidUTF8 is the offset of the first invalid UTF-8 from i on.
func invalidUTF8(s string, i int) int {
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			break
		}
		i += size
	}
	return i
}

func isHex(c byte) bool { return c-'0' < 10 || (c|0x20)-'a' < 6 }

func isDigit(c byte) bool { return c-'0' < 10 }

// scanNumber reads the number at i: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func scanNumber(s string, i int) (int, badJSON) {
	if s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && isDigit(s[i]):
		i = digits(s, i)
	default:
		return i, syntaxError(i, "invalid value")
	}
	if i < len(s) && s[i] == '.' {
		if i++; i >= len(s) || !isDigit(s[i]) {
			return i, syntaxError(i, "want a digit")
		}
		i = digits(s, i)
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		if i++; i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if i >= len(s) || !isDigit(s[i]) {
			return i, syntaxError(i, "want a digit")
		}
		i = digits(s, i)
	}
	return i, badJSON{}
}

func digits(s string, i int) int {
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return i
}

// numberEnd is the offset after the number that starts at i in valid JSON.
func numberEnd(s string, i int) int {
	for i < len(s) && (isDigit(s[i]) || s[i] == '-' || s[i] == '+' || s[i] == '.' || s[i] == 'e' || s[i] == 'E') {
		i++
	}
	return i
}

// stringEnd is the offset after the closing quote of the string whose
// opening quote is at i in valid JSON, and whether it holds escapes.
func stringEnd(s string, i int) (int, bool) {
	esc := false
	for i++; i < len(s); i++ {
		switch s[i] {
		case '"':
			return i + 1, esc
		case '\\':
			esc = true
			i++
		}
	}
	return i, esc
}

// appendUnescaped appends the text of the body of a valid JSON string (the
// part between the quotes) with its escapes decoded as gjson decodes them,
// so that values keep the text they had when gjson read them: a \u escape of
// a surrogate followed by another \u escape is decoded as a UTF-16 pair,
// both escapes giving one U+FFFD if they do not form one, and a lone
// surrogate is U+FFFD.
func appendUnescaped(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			b = append(b, c)
			continue
		}
		i++
		switch c = s[i]; c {
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			r := hex4(s[i+1:])
			i += 4
			if utf16.IsSurrogate(r) && len(s)-i > 6 && s[i+1] == '\\' && s[i+2] == 'u' {
				r = utf16.DecodeRune(r, hex4(s[i+3:]))
				i += 6
			}
			b = utf8.AppendRune(b, r)
		default: // '"', '\\', '/'
			b = append(b, c)
		}
	}
	return b
}

// hex4 decodes four hex digits.
func hex4(s string) rune {
	var r rune
	for _, c := range []byte(s[:4]) {
		switch {
		case c <= '9':
			c -= '0'
		case c <= 'F':
			c -= 'A' - 10
		default:
			c -= 'a' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// maxFloatHalfway holds the digits of 2^1024 - 2^970, the point halfway
// between the largest float64 and 2^1024: a number of 309 integer digits
// rounds to ±Inf if and only if it is not below this.
const maxFloatHalfway = "179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792"

// floatOverflows reports whether the valid JSON number num is too large for
// a float64: whether strconv.ParseFloat(num, 64) gives ±Inf. It reads num
// at most three times (two scans for an exponent, then the loop) and does
// not allocate, however long num is.
func floatOverflows(num string) bool {
	if len(num) < len(maxFloatHalfway) && strings.IndexByte(num, 'e') < 0 && strings.IndexByte(num, 'E') < 0 {
		// No exponent, fewer digits than 10^308 has (most numbers): two
		// vector scans, not the loop below (a 19-digit number's 260
		// instructions, bench/README.md, branch h-tlat).
		return false
	}
	num = strings.TrimPrefix(num, "-")
	mant, exp, point := num, 0, -1
	for j := 0; j < len(num); j++ {
		if c := num[j]; c == 'e' || c == 'E' {
			mant, exp = num[:j], exponent(num[j+1:])
			break
		} else if c == '.' {
			point = j
		}
	}
	if point < 0 {
		point = len(mant)
	}
	if mant == num && point < len(maxFloatHalfway) { // no exponent, below 10^308
		return false
	}
	// mant is 0.d1d2d3... × 10^k once its leading zeros are gone.
	k, i := point+exp, 0
	for ; i < len(mant) && (mant[i] == '0' || mant[i] == '.'); i++ {
		if mant[i] == '0' {
			k--
		}
	}
	switch {
	case i == len(mant) || k < len(maxFloatHalfway): // zero, or below 10^308
		return false
	case k > len(maxFloatHalfway):
		return true
	}
	for _, want := range []byte(maxFloatHalfway) {
		for i < len(mant) && mant[i] == '.' {
			i++
		}
		if i == len(mant) {
			return false // the halfway point has a non-zero digit left
		}
		if mant[i] != want {
			return mant[i] > want
		}
		i++
	}
	return true
}

// exponent reads an exponent's digits (with an optional sign), saturating
// far beyond any float's range.
func exponent(s string) int {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimLeft(s, "+-")
	e := 0
	for i := 0; i < len(s) && e < 1<<30; i++ {
		e = e*10 + int(s[i]-'0')
	}
	if neg {
		return -e
	}
	return e
}
