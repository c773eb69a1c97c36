package wire

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestEscapeGrowth: EscapeGrowth is what encoding/json's writer adds to a
// string beyond its quotes (HTML escaping off, as the tree's writer has
// it; invalid UTF-8 as the rune U+FFFD), on strings where the eight-byte skip
// (plain8) meets every kind of byte at every position of a word: control
// characters, quotes, backslashes, multi-byte runes, invalid bytes.
func TestEscapeGrowth(t *testing.T) {
	pieces := []string{"a", "Z", " ", "~", "\x00", "\x01", "\x1f", "\n", "\t", "\"", "\\", "\x7f", "é", "€", "😀", "\xff", "\xc3", "/", "+"}
	want := func(s string) int {
		var b strings.Builder
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		out := strings.TrimSuffix(b.String(), "\n")
		// encoding/json writes U+2028 and U+2029 escaped and keeps DEL;
		// the tree's writer writes them as they are: count them back.
		out = strings.ReplaceAll(strings.ReplaceAll(out, `\u2028`, "\u2028"), `\u2029`, "\u2029")
		g := len(out) - 2 - len(s)
		// encoding/json writes \b and \f short (2 bytes); the tree's
		// writer writes them \u0008 and \u000c.
		g += 4 * (strings.Count(s, "\b") + strings.Count(s, "\f"))
		// encoding/json writes a byte of invalid UTF-8 \ufffd (6 bytes),
		// the tree's writer the rune itself (3).
		for i := 0; i < len(s); {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				g -= 3
			}
			i += size
		}
		return g
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		var b strings.Builder
		n := r.IntN(40)
		plain := r.IntN(3) == 0 // mostly plain: long runs for the skip
		for range n {
			if plain && r.IntN(10) > 0 {
				b.WriteByte(byte('a' + r.IntN(26)))
				continue
			}
			b.WriteString(pieces[r.IntN(len(pieces))])
		}
		s := b.String()
		if got, w := EscapeGrowth(s), want(s); got != w {
			t.Fatalf("case %d: EscapeGrowth(%q) = %d, want %d (valid UTF-8: %v)", i, s, got, w, utf8.ValidString(s))
		}
	}
}

// escapeGrowthRef is EscapeGrowth as R3 wrote it (a byte loop of
// comparisons), the reference the table's must equal.
func escapeGrowthRef(s string) int {
	g := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c < utf8.RuneSelf && c != '"' && c != '\\' {
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

// floatTokensRef counts floats in JSON text as R3 did (its own pass).
func floatTokensRef(s string) int {
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

// leafGrowthRef is LeafGrowth as R3 wrote it: EscapeGrowth, then the
// floats in a pass of their own, heads from the encoders' own appenders.
func leafGrowthRef(v Value) int {
	n := len(v.Data)
	g := escapeGrowthRef(v.Data) + 2
	var head [9]byte
	switch v.Kind {
	case String:
		g = max(g, len(appendHead(head[:0], 3, uint64(n))), len(appendMsgPackHead(head[:0], mpStr, uint64(n))))
	case Bytes:
		base64 := 4*((n+2)/3) + 2
		g = max(g, base64-n, len(appendHead(head[:0], 2, uint64(n))), len(appendMsgPackHead(head[:0], mpBin, uint64(n))))
	case JSON, Object:
		g = max(g, 6*floatTokensRef(v.Data)+n/64+1)
	default:
		g = max(g, 4)
	}
	return g
}

// growthPieces are the bytes that change a JSON string's or a JSON
// text's growth: control characters, quotes, backslashes, runes and
// invalid UTF-8, and the bytes of numbers and floats.
var growthPieces = []string{"a", "Z", " ", "~", "\x00", "\x01", "\x1f", "\n", "\t", "\r", "\"", "\\", "\x7f",
	"é", "€", "😀", "\xff", "\xc3", "\xe2\x82", "/", "+", "-", ".", "e", "E", "0", "7", "1.5", "-2e9", "{", "}", ":", ","}

// randomGrowthText is a random string of growthPieces, mostly plain
// (runs of letters) one time in three.
func randomGrowthText(r *rand.Rand) string {
	var b strings.Builder
	n := r.IntN(40)
	plain := r.IntN(3) == 0
	for range n {
		if plain && r.IntN(10) > 0 {
			b.WriteByte(byte('a' + r.IntN(26)))
			continue
		}
		b.WriteString(growthPieces[r.IntN(len(growthPieces))])
	}
	return b.String()
}

// TestLeafGrowthOnePass: the table's EscapeGrowth, the one pass over
// JSON text (jsonGrowth) and the heads' lengths counted without writing
// them give exactly what R3's passes gave, for every kind, on random
// strings of the bytes that matter (at every place: inside and outside
// strings, after a backslash, in a number) and at the heads' edges.
func TestLeafGrowthOnePass(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	kinds := []Kind{None, String, Bytes, JSON, Object, Raw}
	check := func(s string) {
		t.Helper()
		if got, want := EscapeGrowth(s), escapeGrowthRef(s); got != want {
			t.Fatalf("EscapeGrowth(%q) = %d, want %d", s, got, want)
		}
		if got, want := jsonGrowth(s), max(escapeGrowthRef(s)+2, 6*floatTokensRef(s)+len(s)/64+1); got != want {
			t.Fatalf("jsonGrowth(%q) = %d, want %d (escapes %d, floats %d)", s, got, want, escapeGrowthRef(s), floatTokensRef(s))
		}
		for _, k := range kinds {
			v := Value{Kind: k, Data: s}
			if got, want := LeafGrowth(v), leafGrowthRef(v); got != want {
				t.Fatalf("LeafGrowth(%v %q) = %d, want %d", k, s, got, want)
			}
		}
	}
	for range 50000 {
		check(randomGrowthText(r))
	}
	for _, n := range []int{0, 1, 23, 24, 31, 32, 255, 256, 65535, 65536} {
		check(strings.Repeat("x", n))
		check(strings.Repeat("1.5,", n/4))
	}
}

// FuzzLeafGrowth: LeafGrowth equals R3's reference on any bytes.
func FuzzLeafGrowth(f *testing.F) {
	for _, s := range []string{"", `{"a":1.5,"b":"x\"1.5"}`, "\x01\"\\\xff", "-1e5", `"\`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := jsonGrowth(s), max(escapeGrowthRef(s)+2, 6*floatTokensRef(s)+len(s)/64+1); got != want {
			t.Fatalf("jsonGrowth(%q) = %d, want %d (escapes %d, floats %d)", s, got, want, escapeGrowthRef(s), floatTokensRef(s))
		}
		for _, k := range []Kind{None, String, Bytes, JSON, Object, Raw} {
			v := Value{Kind: k, Data: s}
			if got, want := LeafGrowth(v), leafGrowthRef(v); got != want {
				t.Fatalf("LeafGrowth(%v %q) = %d, want %d", k, s, got, want)
			}
		}
	})
}

// leafBenchValues are typical leaves: short strings, numbers, small
// objects (as tree's typicalStore).
var leafBenchValues = []Value{
	{Kind: String, Data: "ON"}, {Kind: JSON, Data: "21.5"}, {Kind: JSON, Data: "1"},
	{Kind: Object, Data: `{"battery":62,"linkquality":201}`}, {Kind: String, Data: "Lamp 12345"},
}

// BenchmarkLeafGrowth: R3's passes against the one pass, on typical
// leaves (per leaf).
func BenchmarkLeafGrowth(b *testing.B) {
	sink := 0
	b.Run("r3", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			sink += leafGrowthRef(leafBenchValues[i%len(leafBenchValues)])
		}
	})
	b.Run("onepass", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			sink += LeafGrowth(leafBenchValues[i%len(leafBenchValues)])
		}
	})
	_ = sink
}
