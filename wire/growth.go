package wire

import "unicode/utf8"

// escGrowth is what each ASCII byte takes in a JSON string beyond itself
// (EscapeGrowth): a control character 5 (\u00XX), \t, \n and \r 1, a
// quote and a backslash 1, any other byte 0. A constant: read only.
const escGrowth = "" +
	"\x05\x05\x05\x05\x05\x05\x05\x05\x05\x01\x01\x05\x05\x01\x05\x05" + // 0x00
	"\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05" + // 0x10
	"\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" + // 0x20 "
	"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" + // 0x30
	"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" + // 0x40
	"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00" + // 0x50 \
	"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" + // 0x60
	"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" //   0x70

// EscapeGrowth is how many bytes a JSON string or key of s takes beyond
// len(s) and its two quotes, as every encoder here writes it: a control
// character is \u00XX (5 more; \n, \r and \t 1 more), a quote or
// backslash is escaped (1 more), and a byte of invalid UTF-8 becomes
// U+FFFD (2 more). A string of control characters is written 6 times
// its size. It reads s once and allocates nothing. It adds up over
// pieces cut at an ASCII byte (no UTF-8 sequence holds one): a topic's
// is the sum of its levels'.
func EscapeGrowth(s string) int {
	g := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf { // most bytes: a table, no branch
			g += int(escGrowth[c])
			i++
			continue
		}
		g, i = runeGrowth(s, i, g)
	}
	return g
}

// runeGrowth adds to g what the rune at s[i] (not ASCII) takes beyond
// itself in a JSON string, and steps i past it.
func runeGrowth(s string, i, g int) (int, int) {
	r, size := utf8.DecodeRuneInString(s[i:])
	if r == utf8.RuneError && size == 1 {
		g += 2
	}
	return g, i + size
}

// LeafGrowth is an upper bound of how many bytes v takes beyond
// len(v.Data) as a leaf of a tree, or as a tree's bare value, in any
// codec: JSON (a String escaped, Bytes in base64, JSON text as it is),
// the original dialect's (every leaf a JSON string of the payload), CBOR
// and MessagePack (a head; JSON text converted, whose floats take 9
// bytes however short their text). Keys are not counted. It reads v.Data
// once and allocates nothing.
func LeafGrowth(v Value) int {
	n := len(v.Data)
	switch v.Kind {
	case String:
		// A JSON string, or a head: CBOR's (1, 2, 3, 5 or 9 bytes) is
		// never shorter than MessagePack's.
		return max(EscapeGrowth(v.Data)+2, cborHeadLen(n))
	case Bytes:
		base64 := 4*((n+2)/3) + 2
		return max(EscapeGrowth(v.Data)+2, base64-n, cborHeadLen(n), mpBinHeadLen(n))
	case JSON, Object:
		// Converted to CBOR or MessagePack (appendJSONIn), every token
		// takes at most its own text but a float, which takes 9 bytes
		// (its text at least 3: 6 more), and a string of 256 bytes or
		// more, whose head takes 1 to 3 bytes more than its quotes. Every
		// head of an object or array fits its brackets and separators;
		// whitespace takes nothing.
		g, floats := jsonGrowth(v.Data)
		return max(g+2, 6*floats+n/64+1)
	default: // None: null; Raw is written as it is
		return max(EscapeGrowth(v.Data)+2, 4)
	}
}

// cborHeadLen is the length of a CBOR head of argument n (appendHead).
func cborHeadLen(n int) int {
	switch {
	case n < 24:
		return 1
	case n <= 0xff:
		return 2
	case n <= 0xffff:
		return 3
	case uint64(n) <= 0xffffffff:
		return 5
	}
	return 9
}

// mpBinHeadLen is the length of a MessagePack bin head of n bytes
// (appendMsgPackHead).
func mpBinHeadLen(n int) int {
	switch {
	case n <= 0xff:
		return 2
	case n <= 0xffff:
		return 3
	}
	return 5
}

// jsonGrowth is EscapeGrowth of s and the numbers of JSON text s written
// as floats in CBOR and MessagePack, at most: those with a fraction or an
// exponent (an integer beyond 64 bits is a float too, but its text is
// longer than any float's 9 bytes), in one pass. Strings are skipped for
// the numbers (a backslash skips the byte after it); s need not be valid
// JSON.
func jsonGrowth(s string) (g, floats int) {
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c >= utf8.RuneSelf:
			g, i = runeGrowth(s, i, g)
		case c == '-' || c >= '0' && c <= '9':
			// A number: its bytes take nothing more in a JSON string.
			float := false
			for i++; i < len(s); i++ {
				c := s[i]
				if c == '.' || c == 'e' || c == 'E' {
					float = true
				} else if c != '-' && c != '+' && (c < '0' || c > '9') {
					break
				}
			}
			if float {
				floats++
			}
		case c == '"':
			g++
			for i++; i < len(s); {
				c := s[i]
				if c >= utf8.RuneSelf {
					g, i = runeGrowth(s, i, g)
					continue
				}
				g += int(escGrowth[c])
				i++
				if c == '"' {
					break
				}
				if c == '\\' && i < len(s) { // the byte after it is not a quote that ends
					if c := s[i]; c < utf8.RuneSelf {
						g += int(escGrowth[c])
						i++
					} else {
						g, i = runeGrowth(s, i, g)
					}
				}
			}
		default:
			g += int(escGrowth[c])
			i++
		}
	}
	return g, floats
}
