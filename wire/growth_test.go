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
