package wire

import "unicode/utf8"

// byteClass is what each byte is to EscapeGrowth and jsonGrowth: its low
// bits (classEsc) what an ASCII byte takes in a JSON string beyond
// itself (a control character 5, \u00XX; \t, \n and \r 1; a quote and
// a backslash 1; any other 0), and flags: part of a number, a float's
// mark, a number's start, a quote, not ASCII. A constant: read only,
// and a byte indexes it without a bounds check.
const byteClass = "" +
	"\x05\x05\x05\x05\x05\x05\x05\x05\x05\x01\x01\x05\x05\x01\x05\x05" + // 0x00
	"\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05\x05" + // 0x10
	"\x00\x00\x41\x00\x00\x00\x00\x00\x00\x00\x00\x08\x00\x28\x18\x00" + // 0x20 " + - .
	"\x28\x28\x28\x28\x28\x28\x28\x28\x28\x28\x00\x00\x00\x00\x00\x00" + // 0x30 digits
	"\x00\x00\x00\x00\x00\x18\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" + // 0x40 E
	"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00" + // 0x50 \
	"\x00\x00\x00\x00\x00\x18\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" + // 0x60 e
	"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" + // 0x70
	"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80" + // 0x80
	"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80" + // 0x90
	"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80" + // 0xa0
	"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80" + // 0xb0
	"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80" + // 0xc0
	"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80" + // 0xd0
	"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80" + // 0xe0
	"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80" //   0xf0

// The parts of a byteClass.
const (
	classEsc   = 0x07 // the growth of an ASCII byte in a JSON string
	classNum   = 0x08 // part of a number: - + 0-9 . e E
	classFloat = 0x10 // makes a number a float: . e E
	classStart = 0x20 // starts a number: - 0-9
	classQuote = 0x40 // "
	classHigh  = 0x80 // not ASCII: a rune's first byte, or invalid
)

// EscapeGrowth is how many bytes a JSON string or key of s takes beyond
// len(s) and its two quotes, as every encoder here writes it: a control
// character is \u00XX (5 more; \n, \r and \t 1 more), a quote or
// backslash is escaped (1 more), and a byte of invalid UTF-8 becomes
// U+FFFD (2 more). A string of control characters is written 6 times
// its size. It reads s once and allocates nothing. It adds up over
// pieces cut at an ASCII byte (no UTF-8 sequence holds one): a topic's
// is the sum of its levels'.
func EscapeGrowth(s string) int {
	if g, ok := EscapeGrowthASCII(s); ok {
		return g
	}
	return escapeGrowthRunes(s, 0)
}

// EscapeGrowthASCII is EscapeGrowth of s if s is ASCII (ok), as most
// keys are: a table read a byte, small enough to be inlined where a
// level's bytes are at hand. Not ok: s holds a byte from 0x80
// (EscapeGrowth counts it).
func EscapeGrowthASCII(s string) (int, bool) {
	g, k := 0, byte(0)
	for i := 0; i < len(s); i++ {
		c := byteClass[s[i]]
		g += int(c & classEsc)
		k |= c
	}
	return g, k&classHigh == 0
}

// escapeGrowthNoFloat is EscapeGrowth of s if s is ASCII and holds no
// float's mark (., e, E: then no number of it is a float), ok; an
// integer's text, a word without an e. Inlined: one table read a byte.
func escapeGrowthNoFloat(s string) (int, bool) {
	g, k := 0, byte(0)
	for i := 0; i < len(s); i++ {
		c := byteClass[s[i]]
		g += int(c & classEsc)
		k |= c
	}
	return g, k&(classHigh|classFloat) == 0
}

// escapeGrowthRunes is EscapeGrowth of s[i:], i at a rune's start.
func escapeGrowthRunes(s string, i int) int {
	g := 0
	for i < len(s) {
		if k := byteClass[s[i]]; k&classHigh == 0 {
			g += int(k & classEsc)
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
		if g, ok := escapeGrowthNoFloat(v.Data); ok { // most: integers, no floats
			return max(g+2, n/64+1)
		}
		return jsonGrowth(v.Data)
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

// jsonGrowth is LeafGrowth of JSON text s: the most of a JSON string of
// it (its EscapeGrowth + 2) and of it converted (6 × its floats, and
// n/64 + 1 for heads), counted in one pass. Its floats are the numbers
// written as floats in CBOR and MessagePack, at most: those with a
// fraction or an exponent (an integer beyond 64 bits is a float too, but
// its text is longer than any float's 9 bytes). Strings are skipped for
// the numbers (a backslash skips the byte after it); s need not be valid
// JSON.
func jsonGrowth(s string) int {
	g, floats := 0, 0
	for i := 0; i < len(s); {
		k := byteClass[s[i]]
		switch {
		case k&(classStart|classQuote|classHigh) == 0: // most bytes
			g += int(k & classEsc)
			i++
		case k&classStart != 0:
			// A number: its bytes take nothing more in a JSON string.
			marks := k
			for i++; i < len(s); i++ {
				k := byteClass[s[i]]
				if k&classNum == 0 {
					break
				}
				marks |= k
			}
			if marks&classFloat != 0 {
				floats++
			}
		case k&classHigh != 0:
			g, i = runeGrowth(s, i, g)
		default: // a quote: a string, its bytes escaped, not numbers
			g++
			for i++; i < len(s); {
				c := s[i]
				k := byteClass[c]
				if k&classHigh != 0 {
					g, i = runeGrowth(s, i, g)
					continue
				}
				g += int(k & classEsc)
				i++
				if c == '"' {
					break
				}
				if c == '\\' && i < len(s) { // the byte after it is not a quote that ends
					if k := byteClass[s[i]]; k&classHigh == 0 {
						g += int(k & classEsc)
						i++
					} else {
						g, i = runeGrowth(s, i, g)
					}
				}
			}
		}
	}
	return max(g+2, 6*floats+len(s)/64+1)
}
