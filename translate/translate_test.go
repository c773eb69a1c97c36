package translate

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

func str(s string) wire.Value { return wire.Value{Kind: wire.String, Data: s} }
func js(s string) wire.Value  { return wire.Value{Kind: wire.JSON, Data: s} }
func obj(s string) wire.Value { return wire.Value{Kind: wire.Object, Data: s} }
func onOff() []Pair           { return []Pair{{str("ON"), js("true")}, {str("OFF"), js("false")}} }
func z2m(twoWay bool) Rule {
	return Rule{From: "zigbee2mqtt/+/state", To: "home/+/on", Values: onOff(), TwoWay: twoWay}
}
func rule(from, to string) Rule { return Rule{From: from, To: to} }

func TestNewRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules []Rule
		want  []string // every one in the error
	}{
		{"bad wildcard", []Rule{rule("a/b+", "c/+")}, []string{`translate[0] (from "a/b+" to "c/+")`, "from:"}},
		{"# not last", []Rule{rule("a/#/b", "c/#/b")}, []string{"translate[0]", "from:"}},
		{"empty to", []Rule{rule("a/+", "")}, []string{"translate[0]", "to:"}},
		{"bare #", []Rule{rule("#", "x/#")}, []string{"translate[0]", "a level before #"}},
		{"reserved", []Rule{rule("$SYS/+", "x/+")}, []string{"translate[0]", "broker topic"}},
		{"mote verb", []Rule{rule("a/+", "$tree/+")}, []string{"translate[0]", "to:"}},
		{"wildcards differ in number", []Rule{rule("a/+/+", "b/+")}, []string{"translate[0]", "wildcards"}},
		{"wildcards differ in kind", []Rule{rule("a/+", "b/#")}, []string{"translate[0]", "wildcards"}},
		{"wildcards differ in order", []Rule{rule("a/+/x/#", "b/#/+")}, []string{"translate[0]", "to:"}},
		{"null value", []Rule{{From: "a/+", To: "b/+", Values: []Pair{{str("ON"), wire.Value{}}}}}, []string{"translate[0]", "deletions stay deletions"}},
		{"null key", []Rule{{From: "a/+", To: "b/+", Values: []Pair{{wire.Value{}, js("1")}}}}, []string{"translate[0]", "null"}},
		{"object value", []Rule{{From: "a/+", To: "b/+", Values: []Pair{{str("ON"), obj(`{"a":1}`)}}}}, []string{"translate[0]", "string, number or boolean"}},
		{"array key", []Rule{{From: "a/+", To: "b/+", Values: []Pair{{js(`[1]`), js("1")}}}}, []string{"translate[0]", "string, number or boolean"}},
		{"duplicate key", []Rule{{From: "a/+", To: "b/+", Values: []Pair{{js("1"), str("one")}, {js("1.0"), str("uno")}}}}, []string{"translate[0]", "twice"}},
		{"two_way not invertible", []Rule{{From: "a/+", To: "b/+", TwoWay: true, Values: []Pair{{str("ON"), js("true")}, {str("on"), js("true")}}}}, []string{"translate[0]", "way back"}},
		{"two_way overlapping", []Rule{{From: "a/+", To: "+/b", TwoWay: true}}, []string{"translate[0]", "which way", "a/b"}},
		{"ambiguous", []Rule{rule("a/+/s", "b/+/s"), rule("a/x/+", "c/x/+")}, []string{"translate[0]", "translate[1]", "ambiguous", "a/x/s"}},
		{"ambiguous #", []Rule{rule("a/#", "b/#"), rule("a/c", "d/c")}, []string{"translate[0]", "translate[1]", "ambiguous"}},
		{"two_way sides ambiguous with another", []Rule{{From: "a/+", To: "b/+", TwoWay: true}, rule("b/x", "c/x")}, []string{"translate[0]", "translate[1]", "ambiguous", "b/x"}},
		{"two_way chain: a/+ is a source of both", []Rule{{From: "a/+", To: "b/+", TwoWay: true}, {From: "c/+", To: "a/+", TwoWay: true}}, []string{"translate[0]", "translate[1]", "ambiguous"}},
		{"cycle, two_way twice", []Rule{{From: "a/+", To: "b/+", TwoWay: true}, {From: "b/+", To: "a/+", TwoWay: true}}, []string{"translate[0]", "translate[1]", "ambiguous"}},
		{"every problem listed", []Rule{rule("a/+", "b/+"), rule("a/+", "c/+"), rule("d/+/+", "e/+")},
			[]string{"translate[0]", "translate[1]", "translate[2]"}},
		{"line", []Rule{{From: "a/+", To: "b/#", Line: 7}}, []string{"translate[0] (line 7, from"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.rules)
			if err == nil {
				t.Fatalf("New accepted %+v", tc.rules)
			}
			if s != nil || !errors.Is(err, ErrRule) {
				t.Fatalf("New = %v, %v; want nil and ErrRule", s, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

func TestNewAccepts(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules []Rule
	}{
		{"none", nil},
		{"zigbee two_way", []Rule{z2m(true)}},
		{"shared target, one way", []Rule{rule("a/+", "c/+"), rule("b/+", "c/+")}},
		{"disjoint", []Rule{rule("a/+/s", "b/+/s"), rule("a/+/t", "b/+/t")}},
		{"hash", []Rule{{From: "z/#", To: "h/#", TwoWay: true}}},
		{"$ topics apart", []Rule{rule("+/a", "b/+/c"), rule("$x/a", "d/e/f")}},
		// SPEC §11: a translated publish is never translated again, so
		// targets may match sources (chains, cycles, a rule's own).
		{"chain", []Rule{rule("a/+", "b/+"), rule("b/+", "c/+")}},
		{"cycle", []Rule{rule("a/+", "b/+"), rule("b/+", "a/+")}},
		{"self-overlapping", []Rule{rule("x/#", "x/y/#")}},
		{"same from and to", []Rule{rule("a/+", "a/+")}},
		{"into another's two_way side", []Rule{z2m(true), rule("x/+", "home/+/on")}},
		{"numbers and bools", []Rule{{From: "a/+", To: "b/+", TwoWay: true, Values: []Pair{{js("1"), js("true")}, {js("0"), js("false")}, {str("1"), str("one")}}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.rules); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := New(make([]Rule, MaxRules+1)); !errors.Is(err, ErrRule) {
		t.Errorf("New of %d rules: %v", MaxRules+1, err)
	}
}

func TestTranslate(t *testing.T) {
	s, err := New([]Rule{
		z2m(true),
		{From: "z/#", To: "h/#"},
		{From: "a/+/b/+", To: "c/+/+/d", Values: []Pair{{js("1"), str("one")}, {js("true"), str("yes")}, {str("x"), js("2.5")}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		topic string
		in    wire.Value
		to    string
		out   wire.Value
	}{
		{"zigbee2mqtt/lamp/state", str("ON"), "home/lamp/on", js("true")},
		{"zigbee2mqtt/lamp/state", js(`"OFF"`), "home/lamp/on", js("false")},         // a JSON string is a string
		{"zigbee2mqtt/lamp/state", str("TOGGLE"), "home/lamp/on", str("TOGGLE")},     // unmapped: unchanged
		{"zigbee2mqtt/lamp/state", wire.Value{}, "home/lamp/on", wire.Value{}},       // a deletion stays one
		{"zigbee2mqtt/lamp/state", obj(`{"ON":1}`), "home/lamp/on", obj(`{"ON":1}`)}, // objects pass
		{"home/lamp/on", js("true"), "zigbee2mqtt/lamp/state", str("ON")},
		{"home/lamp/on", js(" false "), "zigbee2mqtt/lamp/state", str("OFF")},
		{"home/lamp/on", str("true"), "zigbee2mqtt/lamp/state", str("true")}, // the string true is not the boolean
		{"home//on", js("true"), "zigbee2mqtt//state", str("ON")},            // an empty level is a level
		{"z/a/b/c", js("1"), "h/a/b/c", js("1")},
		{"z", js("1"), "h", js("1")},   // # matches the parent
		{"z/", js("1"), "h/", js("1")}, // and one empty level
		{"a/1/b/2", js("1.0"), "c/1/2/d", str("one")},
		{"a/1/b/2", js("1e0"), "c/1/2/d", str("one")},
		{"a/1/b/2", js("true"), "c/1/2/d", str("yes")},
		{"a/1/b/2", str("x"), "c/1/2/d", js("2.5")},
		{"a/1/b/2", js("[1]"), "c/1/2/d", js("[1]")},
		{"a/1/b/2", wire.Value{Kind: wire.Bytes, Data: "\xff"}, "c/1/2/d", wire.Value{Kind: wire.Bytes, Data: "\xff"}},
	} {
		to, out, ok := s.Translate(tc.topic, tc.in)
		if !ok || to != tc.to || out != tc.out {
			t.Errorf("Translate(%q, %v) = %q, %v, %v; want %q, %v", tc.topic, tc.in, to, out, ok, tc.to, tc.out)
		}
		if !s.Match(tc.topic) {
			t.Errorf("Match(%q) = false", tc.topic)
		}
	}
	for _, topic := range []string{"zigbee2mqtt/lamp", "zigbee2mqtt/lamp/state/x", "home/lamp", "zz/a", "a/1/c/2", "$SYS/x", "h/a", "zigbee2mqtt"} {
		if _, _, ok := s.Translate(topic, str("ON")); ok || s.Match(topic) {
			t.Errorf("%q translated", topic)
		}
	}
	var none *Set
	if none.Match("a") || none.Len() != 0 {
		t.Error("a nil Set matches")
	}
}

// TestOverlapReference checks Overlap against every topic of a small
// universe: it reports overlap exactly when some topic matches both, and
// its example does.
func TestOverlapReference(t *testing.T) {
	levels := []string{"a", "b", "$x", "", "+", "#"}
	var topics []string
	var gen func(prefix []string, n int)
	gen = func(prefix []string, n int) {
		if len(prefix) > 0 {
			topics = append(topics, strings.Join(prefix, "/"))
		}
		if n == 0 {
			return
		}
		for _, l := range levels[:4] {
			gen(append(prefix[:len(prefix):len(prefix)], l), n-1)
		}
	}
	gen(nil, 4)
	r := rand.New(rand.NewPCG(1, 2))
	filter := func() string {
		n := 1 + r.IntN(3)
		out := make([]string, n)
		for i := range out {
			out[i] = levels[r.IntN(len(levels))]
			if out[i] == "#" {
				return strings.Join(out[:i+1], "/")
			}
		}
		return strings.Join(out, "/")
	}
	for range 3000 {
		a, b := filter(), filter()
		want := false
		for _, topic := range topics {
			if wire.Match(a, topic) && wire.Match(b, topic) {
				want = true
				break
			}
		}
		if got := overlaps(strings.Split(a, "/"), strings.Split(b, "/")); got != want {
			t.Fatalf("overlaps(%q, %q) = %v, want %v", a, b, got, want)
		}
		w, got := Overlap(strings.Split(a, "/"), strings.Split(b, "/"))
		if got != want {
			t.Fatalf("Overlap(%q, %q) = %v, want %v", a, b, got, want)
		}
		if got && !(wire.Match(a, w) && wire.Match(b, w)) {
			t.Fatalf("Overlap(%q, %q) example %q matches not both", a, b, w)
		}
	}
}

// TestIndexOverlaps: the index New checks overlaps with finds exactly the
// sources Overlap says a filter overlaps, each once.
func TestIndexOverlaps(t *testing.T) {
	levels := []string{"a", "b", "$x", "", "+", "#"}
	r := rand.New(rand.NewPCG(3, 4))
	filter := func() []string {
		n := 1 + r.IntN(4)
		out := make([]string, n)
		for i := range out {
			out[i] = levels[r.IntN(len(levels))]
			if out[i] == "#" {
				return out[:i+1]
			}
		}
		return out
	}
	for range 300 {
		var idx vnode
		srcs := make([][]string, 1+r.IntN(20))
		for i := range srcs {
			srcs[i] = filter()
			idx.insert(srcs[i], i)
		}
		for range 20 {
			f := filter()
			got := idx.collect(f, true, nil)
			slices.Sort(got)
			var want []int
			for i, src := range srcs {
				if _, ok := Overlap(f, src); ok {
					want = append(want, i)
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("filter %q, sources %q: index %v, want %v", f, srcs, got, want)
			}
		}
	}
}

// BenchmarkMatch is what a publish pays: a topic that no rule of 100
// matches, and one that one matches.
func BenchmarkMatch(b *testing.B) {
	rules := make([]Rule, 100)
	for i := range rules {
		rules[i] = Rule{From: "zigbee2mqtt/dev" + itoa(i) + "/+/state", To: "home/dev" + itoa(i) + "/+/on", Values: onOff(), TwoWay: true}
	}
	s, err := New(rules)
	if err != nil {
		b.Fatal(err)
	}
	for _, topic := range []string{"sensor/kitchen/temperature", "zigbee2mqtt/other/x/state", "zigbee2mqtt/dev42/lamp/state"} {
		b.Run(topic, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s.Match(topic)
			}
		})
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestFillsFirst: only a target whose first level is a wildcard is filled
// there.
func TestFillsFirst(t *testing.T) {
	s, err := New([]Rule{{From: "$x/+", To: "y/+", TwoWay: true}, {From: "c/+/d", To: "+/e/f"}, {From: "g/#", To: "#"}})
	if err == nil {
		t.Fatal("want # first refused")
	}
	s, err = New([]Rule{{From: "$x/+", To: "y/+", TwoWay: true}, {From: "c/+/d", To: "+/e/f"}})
	if err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]bool{"$x/k": false, "y/k": false, "c/k/d": true, "none": false} {
		if got := s.FillsFirst(topic); got != want {
			t.Errorf("FillsFirst(%q) = %v, want %v", topic, got, want)
		}
	}
	if (*Set)(nil).FillsFirst("a") {
		t.Error("nil set fills")
	}
}

// TestTranslateChains: rule sets whose targets match sources (SPEC §11:
// a translated publish is never translated again) translate one step:
// Translate of a topic is the rule that matches it, never followed on.
func TestTranslateChains(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules []Rule
		pairs [][2]string // topic → translated topic ("" for none)
	}{
		{"chain", []Rule{rule("a/+", "b/+"), rule("b/+", "c/+")},
			[][2]string{{"a/x", "b/x"}, {"b/x", "c/x"}, {"c/x", ""}}},
		{"cycle", []Rule{rule("a/+", "b/+"), rule("b/+", "a/+")},
			[][2]string{{"a/x", "b/x"}, {"b/x", "a/x"}}},
		{"self-overlapping", []Rule{rule("x/#", "x/y/#")},
			[][2]string{{"x/a", "x/y/a"}, {"x/y/a", "x/y/y/a"}, {"x", "x/y"}, {"y", ""}}},
		{"same from and to", []Rule{rule("a/+", "a/+")},
			[][2]string{{"a/x", "a/x"}}},
		{"into another's two_way side", []Rule{z2m(true), rule("x/+", "home/+/on")},
			[][2]string{{"x/l", "home/l/on"}, {"home/l/on", "zigbee2mqtt/l/state"}, {"zigbee2mqtt/l/state", "home/l/on"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.rules)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range tc.pairs {
				to, _, ok := s.Translate(p[0], str("v"))
				if ok != (p[1] != "") || to != p[1] {
					t.Errorf("Translate(%q) = %q, %v; want %q", p[0], to, ok, p[1])
				}
			}
		})
	}
}
