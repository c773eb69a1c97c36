package httpapi

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

// escapeTopic is the URL path form of a topic: each level path-escaped on
// its own, the inverse of parseTopic.
func escapeTopic(topic string) string {
	levels := strings.Split(topic, "/")
	for i, l := range levels {
		levels[i] = url.PathEscape(l)
	}
	return strings.Join(levels, "/")
}

func TestParseTopic(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      bool
	}{
		{"a/b", "a/b", false},
		{"a/+/c", "a/+/c", false},
		{"a/%2B/c", "a/+/c", false},
		{"a/%2b/c", "a/+/c", false},
		{"a/%23", "a/#", false},
		{"%24SYS/%23", "$SYS/#", false},
		{"$SYS/#", "$SYS/#", false},
		{"a//b", "a//b", false},
		{"a/", "a/", false},
		{"caf%C3%A9/x", "café/x", false},
		{"a%20b", "a b", false},
		{"a%25b", "a%b", false},
		{"", "", true},
		{"a%2Fb", "", true},
		{"a/b%2fc/d", "", true},
		{"a/%zz", "", true},
		{"a/%2", "", true},
		{"%", "", true},
	} {
		got, err := parseTopic(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("%q: %q, %v; want %q (error %v)", tc.in, got, err, tc.want, tc.err)
		}
		if err != nil && !errors.Is(err, errPath) {
			t.Errorf("%q: %v is not errPath", tc.in, err)
		}
	}
}

// FuzzParseTopic: parseTopic never panics, never yields a level holding
// '/' from an escape, and inverts escapeTopic.
func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{"a/b", "a/%2B/c", "a/%23", "a%2Fb", "%zz", "caf%C3%A9", "a//b/", "%", "+/#"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseTopic(s)
		if err != nil {
			return
		}
		if strings.Count(got, "/") != strings.Count(s, "/") {
			t.Fatalf("%q → %q: the levels changed", s, got)
		}
		if back, err := parseTopic(escapeTopic(got)); err != nil || back != got {
			t.Fatalf("%q → %q → %q → %q, %v", s, got, escapeTopic(got), back, err)
		}
	})
}
