package translate

import (
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// FuzzTranslate: any rule and topic — New never panics, and a rule it
// accepts translates exactly the topics its from matches, to a topic its
// to matches.
func FuzzTranslate(f *testing.F) {
	for _, s := range [][3]string{
		{"zigbee2mqtt/+/state", "home/+/on", "zigbee2mqtt/lamp/state"},
		{"z/#", "h/#", "z"},
		{"a/+/b/#", "c/+/#", "a/x/b/y/z"},
		{"a/+", "+/b/c", "a/$SYS"},
		{"+/a", "b/+/c", "$x/a"},
		{"a//+", "b/+//", "a///"},
		{"z/#", "/#", "z"}, // fills the empty topic
	} {
		f.Add(s[0], s[1], s[2], "ON")
	}
	f.Fuzz(func(t *testing.T, from, to, topic, value string) {
		s, err := New([]Rule{{From: from, To: to, TwoWay: true, Values: []Pair{{wire.Value{Kind: wire.String, Data: value}, wire.Value{Kind: wire.JSON, Data: "true"}}}}})
		if err != nil {
			return
		}
		if wire.ValidateTopic(topic) != nil {
			return
		}
		out, v, ok := s.Translate(topic, wire.Value{Kind: wire.String, Data: value})
		if ok != s.Match(topic) {
			t.Fatalf("Translate %v, Match %v", ok, s.Match(topic))
		}
		fwd, back := wire.Match(from, topic), wire.Match(to, topic)
		if ok != (fwd || back) || (fwd && back) {
			t.Fatalf("%q: translated %v; from matches %v, to matches %v", topic, ok, fwd, back)
		}
		if !ok {
			return
		}
		dst := to
		if back {
			dst = from
		}
		if out == "" {
			return // to "/#" with # matching nothing: the broker refuses the empty topic
		}
		if out[0] == '$' && (dst[0] == '+' || dst[0] == '#') {
			return // a $ level filled the first: the broker refuses it
		}
		if !wire.Match(dst, out) {
			t.Fatalf("%q → %q, which %q does not match", topic, out, dst)
		}
		if fwd && v.Data != "true" {
			t.Fatalf("%q: value %v, want true", topic, v)
		}
	})
}
