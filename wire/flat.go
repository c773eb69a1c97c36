package wire

import "unsafe"

// FlatMember is one member of a flat JSON object read by FlatJSON: the
// offsets of its key (without quotes) and of its value's text in the
// payload, and the value's kind as Decode would give it.
type FlatMember struct {
	KeyStart, KeyEnd int32
	// ValStart and ValEnd delimit the value's Data: a string's text
	// without quotes, a number's or a boolean's JSON text; empty for null.
	ValStart, ValEnd int32
	Kind             Kind // String, JSON, or None for null
}

// FlatMax is the most members FlatJSON reads; an object with more is left
// to Decode.
const FlatMax = 16

// flatMaxBytes is the longest payload FlatJSON reads.
const flatMaxBytes = 4096

// FlatJSON reads the common shape of a tree payload in one pass: one JSON
// object of at most FlatMax members, each a key of printable ASCII other
// than '"', '\\', '/', '+' and '#' (so a topic level as it is, never "/"
// nor empty), whose value is a number within float64's range, true, false,
// null, or a string of printable ASCII without escapes; no key twice;
// whitespace anywhere JSON allows it. It appends the members to into, in
// payload order, and reports true only then, and only when Decode would
// accept the payload (within d's limits) and give these members with these
// values. For anything else (another shape, a limit broken, bad JSON) it
// reports false and the caller decodes the payload in full, which gives
// the same tree or the same error as ever: FlatJSON never answers an
// error itself. It reads payload and keeps nothing of it.
func (d *Decoder) FlatJSON(payload []byte, into []FlatMember) ([]FlatMember, bool) {
	base := len(into)
	if len(payload) > flatMaxBytes || len(payload) > d.lim.MaxSize || len(payload) == 0 {
		return into[:base], false
	}
	// A read-only view for scanNumber and floatOverflows, which take
	// strings; nothing made from it outlives this call.
	s := unsafe.String(unsafe.SliceData(payload), len(payload))
	i := skipSpace(s, 0)
	if i >= len(s) || s[i] != '{' {
		return into[:base], false
	}
	if i = skipSpace(s, i+1); i < len(s) && s[i] == '}' {
		return into[:base], false // {}: no rows, the general path's answer
	}
	for {
		if len(into)-base == FlatMax || i >= len(s) || s[i] != '"' {
			return into[:base], false
		}
		ks := i + 1
		j := ks
		for j < len(s) && flatKeyByte(s[j]) {
			j++
		}
		if j == ks || j >= len(s) || s[j] != '"' {
			return into[:base], false
		}
		key := s[ks:j]
		for _, m := range into[base:] {
			if s[m.KeyStart:m.KeyEnd] == key {
				return into[:base], false // a duplicate: Decode's error
			}
		}
		if i = skipSpace(s, j+1); i >= len(s) || s[i] != ':' {
			return into[:base], false
		}
		if i = skipSpace(s, i+1); i >= len(s) {
			return into[:base], false
		}
		m := FlatMember{KeyStart: int32(ks), KeyEnd: int32(j)}
		switch c := s[i]; {
		case c == '"':
			j = i + 1
			for j < len(s) && flatStringByte(s[j]) {
				j++
			}
			if j >= len(s) || s[j] != '"' {
				return into[:base], false // an escape, a control or non-ASCII byte, or no end
			}
			m.Kind, m.ValStart, m.ValEnd = String, int32(i+1), int32(j)
			i = j + 1
		case c == 't' || c == 'f' || c == 'n':
			lit := literal(c)
			if len(s)-i < len(lit) || s[i:i+len(lit)] != lit {
				return into[:base], false
			}
			if c != 'n' {
				m.Kind, m.ValStart, m.ValEnd = JSON, int32(i), int32(i+len(lit))
			}
			i += len(lit)
		case c == '-' || isDigit(c):
			end := flatInteger(s, i)
			if end < 0 { // not a short integer: the general checks
				var bad badJSON
				if end, bad = scanNumber(s, i); bad.what != "" || floatOverflows(s[i:end]) {
					return into[:base], false
				}
			}
			m.Kind, m.ValStart, m.ValEnd = JSON, int32(i), int32(end)
			i = end
		default:
			return into[:base], false
		}
		into = append(into, m)
		if i = skipSpace(s, i); i >= len(s) {
			return into[:base], false
		}
		if s[i] == '}' {
			break
		}
		if s[i] != ',' {
			return into[:base], false
		}
		i = skipSpace(s, i+1)
	}
	if i = skipSpace(s, i+1); i != len(s) {
		return into[:base], false // data after the object
	}
	if n := len(into) - base; d.lim.MaxDepth < 1 || (d.lim.MaxNodes > 0 && n+1 > d.lim.MaxNodes) {
		return into[:base], false // the root and its members are nodes
	}
	return into, true
}

// flatKeyByte reports whether c may be in a key FlatJSON reads.
func flatKeyByte(c byte) bool {
	return c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '/' && c != '+' && c != '#'
}

// flatStringByte reports whether c may be in a string value FlatJSON reads.
func flatStringByte(c byte) bool {
	return c >= 0x20 && c < 0x7f && c != '"' && c != '\\'
}

// flatInteger returns the end of the number at i if it is an integer of
// fewer digits than any beyond float64's range (floatOverflows), written
// as JSON writes one (no leading zero), and not followed by a fraction or
// an exponent; else -1.
func flatInteger(s string, i int) int {
	j := i
	if s[j] == '-' {
		j++
	}
	k := digits8(s, j)
	switch {
	case k == j, s[j] == '0' && k > j+1, k-i >= flatIntegerMax:
		return -1
	case k < len(s) && (s[k] == '.' || s[k] == 'e' || s[k] == 'E'):
		return -1
	}
	return k
}

// flatIntegerMax bounds flatInteger's numbers, sign included: 10^299 is
// far below float64's largest.
const flatIntegerMax = 300

// digits8 is digits, eight bytes at a time while eight are digits: a
// nanosecond clock's 19 digits cost a third of the instructions.
func digits8(s string, i int) int {
	const high, digit, carry = 0xf0f0f0f0f0f0f0f0, 0x3030303030303030, 0x0606060606060606
	for len(s)-i >= 8 {
		w := s[i : i+8] // one bounds check, and one load for the eight
		x := uint64(w[0]) | uint64(w[1])<<8 | uint64(w[2])<<16 | uint64(w[3])<<24 |
			uint64(w[4])<<32 | uint64(w[5])<<40 | uint64(w[6])<<48 | uint64(w[7])<<56
		// Every byte 0x30–0x3f, and still so with 6 added: 0x30–0x39.
		if x&high != digit || (x+carry)&high != digit {
			break
		}
		i += 8
	}
	return digits(s, i)
}
