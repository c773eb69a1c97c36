package wire

import (
	"strings"
	"testing"
)

// wildcardInputs are strings for HasWildcard: plain topics, wildcards
// anywhere, UTF-8 and invalid UTF-8 beside them.
var wildcardInputs = []string{
	"", "a", "a/b/c", "+", "#", "a/+/b", "a/#", "sport/tennis/player1/#", "ä/ö/ü", "日本/+/x", "\xc3+", "\xff#", "\xe2\x82",
	"x\x00+", strings.Repeat("long/", 40), strings.Repeat("long/", 40) + "#", "$SYS/+", "plus+sign", "hash#tag",
}

// TestHasWildcardAsContainsAny: HasWildcard, a loop over bytes, answers
// as strings.ContainsAny(f, "+#") did, for every input.
func TestHasWildcardAsContainsAny(t *testing.T) {
	for _, s := range wildcardInputs {
		if got, want := HasWildcard(s), strings.ContainsAny(s, "+#"); got != want {
			t.Errorf("HasWildcard(%q) = %v, want %v", s, got, want)
		}
	}
}

// FuzzHasWildcard: HasWildcard is strings.ContainsAny(f, "+#").
func FuzzHasWildcard(f *testing.F) {
	for _, s := range wildcardInputs {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if HasWildcard(s) != strings.ContainsAny(s, "+#") {
			t.Fatalf("HasWildcard(%q) = %v", s, HasWildcard(s))
		}
	})
}
