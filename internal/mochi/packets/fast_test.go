package packets

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestMoteValidUTF8: validUTF8's pass over ASCII answers as utf8.Valid
// and no NUL (change 93), wherever the NUL or the first byte past ASCII
// is.
func TestMoteValidUTF8(t *testing.T) {
	for _, s := range []string{"", "a/b", "a\x00b", "\x00", "é/a", "a/é\x00", "a/\xff", "a\xc3", "a/\xe2\x82\xac/b", "\xed\xa0\x80", strings.Repeat("a", 70) + "\x00"} {
		want := utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
		if got := validUTF8([]byte(s)); got != want {
			t.Errorf("validUTF8(%q) = %v, want %v", s, got, want)
		}
	}
}
