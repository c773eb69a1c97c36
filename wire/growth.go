package wire

import "unicode/utf8"

// EscapeGrowth is how many bytes a JSON string or key of s takes beyond
// len(s) and its two quotes, as every encoder here writes it: a control
// character is \u00XX (5 more; \n, \r and \t 1 more), a quote or
// backslash is escaped (1 more), and a byte of invalid UTF-8 becomes
// U+FFFD (2 more). A string of control characters is written 6 times
// its size. It reads s once and allocates nothing.
func EscapeGrowth(s string) int {
	g := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c < utf8.RuneSelf && c != '"' && c != '\\' { // most bytes
			i++
			continue
		}
		if c < utf8.RuneSelf {
			switch {
			case c == '\n' || c == '\r' || c == '\t' || c == '"' || c == '\\':
				g++
			case c < 0x20:
				g += 5
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			g += 2
		}
		i += size
	}
	return g
}

// LeafGrowth is an upper bound of how many bytes v takes beyond
// len(v.Data) as a leaf of a tree, or as a tree's bare value, in any
// codec: JSON (a String escaped, Bytes in base64, JSON text as it is),
// the original dialect's (every leaf a JSON string of the payload), CBOR
// and MessagePack (a head; JSON text converted, whose floats take 9
// bytes however short their text). Keys are not counted. It reads v.Data
// once (twice for JSON text) and allocates nothing.
func LeafGrowth(v Value) int {
	n := len(v.Data)
	g := EscapeGrowth(v.Data) + 2 // a JSON string of it: JSON's String, any original leaf
	var head [9]byte
	switch v.Kind {
	case String:
		g = max(g, len(appendHead(head[:0], 3, uint64(n))), len(appendMsgPackHead(head[:0], mpStr, uint64(n))))
	case Bytes:
		base64 := 4*((n+2)/3) + 2
		g = max(g, base64-n, len(appendHead(head[:0], 2, uint64(n))), len(appendMsgPackHead(head[:0], mpBin, uint64(n))))
	case JSON, Object:
		// Converted to CBOR or MessagePack (appendJSONIn), every token
		// takes at most its own text but a float, which takes 9 bytes
		// (its text at least 3: 6 more), and a string of 256 bytes or
		// more, whose head takes 1 to 3 bytes more than its quotes. Every
		// head of an object or array fits its brackets and separators;
		// whitespace takes nothing.
		g = max(g, 6*floatTokens(v.Data)+n/64+1)
	default: // None: null; Raw is written as it is
		g = max(g, 4)
	}
	return g
}

// floatTokens counts the numbers of JSON text s written as floats in CBOR
// and MessagePack, at most: those with a fraction or an exponent (an
// integer beyond 64 bits is a float too, but its text is longer than any
// float's 9 bytes). Strings are skipped; s need not be valid JSON.
func floatTokens(s string) int {
	k := 0
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case c == '"':
			for i++; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' {
					i++
				}
			}
			i++
		case c == '-' || c >= '0' && c <= '9':
			float := false
			for ; i < len(s); i++ {
				c := s[i]
				if c == '.' || c == 'e' || c == 'E' {
					float = true
				} else if c != '-' && c != '+' && (c < '0' || c > '9') {
					break
				}
			}
			if float {
				k++
			}
		default:
			i++
		}
	}
	return k
}
