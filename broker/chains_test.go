package broker

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/translate"
	"github.com/mote-mqtt/mote/wire"
)

// chainRules are rule sets SPEC §11 accepts because "a publish made by
// a translator is never translated again, so no two rules can loop": a
// chain (a→b→c), a cycle (p→q→p), a self-overlapping rule (x/# →
// x/y/#), a two-way rule another one-way rule writes into (u/+ is t's
// two-way side and v's target), and a rule that maps a topic to itself.
func chainRules(t testing.TB) *translate.Set {
	t.Helper()
	on := []translate.Pair{
		{From: wire.Value{Kind: wire.String, Data: "ON"}, To: wire.Value{Kind: wire.JSON, Data: "true"}},
		{From: wire.Value{Kind: wire.String, Data: "OFF"}, To: wire.Value{Kind: wire.JSON, Data: "false"}},
	}
	s, err := translate.New([]translate.Rule{
		{From: "a/+", To: "b/+"},
		{From: "b/+", To: "c/+"},
		{From: "p/+", To: "q/+"},
		{From: "q/+", To: "p/+"},
		{From: "x/#", To: "x/y/#"},
		{From: "t/+", To: "u/+", Values: on, TwoWay: true},
		{From: "v/+", To: "u/+"},
		{From: "n/+", To: "n/+", Values: on},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// chainCase is one publish and every message (topic=payload) a
// subscriber of # gets from it: its own and its translation, never a
// translation of the translation.
type chainCase struct {
	topic   string
	payload string
	retain  bool
	want    []string
}

// chainCases run in order: each starts from the rows the ones before left.
var chainCases = []chainCase{
	{"a/k", "1", true, []string{"a/k=1", "b/k=1"}}, // not c/k
	{"b/k", "2", true, []string{"b/k=2", "c/k=2"}},
	{"a/e", "3", false, []string{"a/e=3", "b/e=3"}}, // an event: not c/e
	{"p/k", "4", true, []string{"p/k=4", "q/k=4"}},  // not back to p/k
	{"q/k", "5", true, []string{"q/k=5", "p/k=5"}},
	{"q/e", "6", false, []string{"q/e=6", "p/e=6"}},
	{"x/k", "7", true, []string{"x/k=7", "x/y/k=7"}}, // not x/y/y/k
	{"x/y/k", "8", true, []string{"x/y/k=8", "x/y/y/k=8"}},
	{"x", "9", false, []string{"x=9", "x/y=9"}},
	{"t/k", "ON", true, []string{"t/k=ON", "u/k=true"}}, // two-way: not back to t/k
	{"u/k", "false", true, []string{"u/k=false", "t/k=OFF"}},
	{"v/k", "ON", true, []string{"v/k=ON", "u/k=ON"}}, // into t's two-way side: not on to t/k
	{"n/k", "ON", true, []string{"n/k=ON"}},           // to itself: the publish stays as it is
	{"a/k", "", true, []string{"a/k=", "b/k="}},       // a deletion: not c/k
	// Tree publishes: one translated publish of the rows that match.
	{"$tree/a/+", `{"k":10,"j":11}`, true, []string{"a/k=10", "a/j=11", "b/k=10", "b/j=11"}},
	{"$tree/x", `{"k":12,"y":{"k":13}}`, true, []string{"x/k=12", "x/y/k=13", "x/y/y/k=13"}}, // x/y/k is the publish's own
	{"$tree/p/+", `{"k":14}`, false, []string{"p/k=14", "q/k=14"}},
	{"$tree/u/+", `{"k":true}`, true, []string{"u/k=true", "t/k=ON"}},
	// A $set translates the rows it changed, once.
	{"$set/a/+", "S", true, []string{"a/k=S", "a/j=S", "b/k=S", "b/j=S"}},
	{"$set/q/+", "T", true, []string{"q/k=T", "p/k=T"}}, // q/e was an event: no row
	// A .replace translates the rows it set and those it deleted.
	{"$tree.replace/a/+", `{"k":1}`, true, []string{"a/k=1", "a/j=", "b/k=1", "b/j="}},
}

// chainRows is what the rows are once every chain case ran.
const chainRows = `{"a":{"k":1},"b":{"k":1},"c":{"k":2},"p":{"k":"T"},"q":{"k":"T"},` +
	`"x":{"k":12,"y":{"k":13,"y":{"k":13}}},"t":{"k":"ON"},"u":{"k":true},"v":{"k":"ON"},"n":{"k":"ON"},"m":{"/":"x"}}`

// runChains publishes every chain case from pub and checks what sub, a
// subscriber of #, gets: after each publish, a marker on m/<i> is
// published by the same path, and what arrived before it is all the
// publish made. On one broker the marker is a retained publish: it goes
// through the message loop after the publish and its translation (an
// event's were delivered before its PUBACK). On a cluster, whose log and
// events are not ordered with each other, the marker goes the way the
// publish went: retained through the log, an event as the same kind of
// event.
func runChains(t *testing.T, pub, sub *v3, cluster bool) {
	t.Helper()
	from := 0
	for i, tc := range chainCases {
		pub.pub(t, tc.topic, 1, tc.retain, tc.payload)
		marker := fmt.Sprintf("m/%d", i)
		switch {
		case !cluster || tc.retain:
			pub.pub(t, marker, 1, true, "x")
		case strings.HasPrefix(tc.topic, "$tree/"):
			pub.pub(t, "$tree/"+marker, 1, false, `"x"`)
		default:
			pub.pub(t, marker, 1, false, "x")
		}
		var got []string
		for n := from + 1; ; n++ {
			ms := sub.wait(t, n)
			if ms[n-1].topic != marker {
				continue
			}
			for _, m := range ms[from : n-1] {
				got = append(got, m.topic+"="+m.payload)
			}
			from = n
			break
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(tc.want))
		if !slices.Equal(got, want) {
			t.Errorf("publish %d to %s = %q (retain %v): got %q, want %q", i, tc.topic, tc.payload, tc.retain, got, want)
		}
	}
}

// TestTranslateChains: SPEC §11, "a publish made by a translator is never
// translated again, so no two rules can loop": a broker with chains,
// cycles and self-overlapping rules starts, and each publish — plain or
// tree, retained or not, a deletion, a $set or .replace — reaches exactly its own
// topics and their translations, one step and no more.
func TestTranslateChains(t *testing.T) {
	b := start(t, Options{Translators: chainRules(t)})
	sub := dial3(t, b, "sub", true)
	sub.sub(t, "#", 1)
	pub := dial3(t, b, "pub", true)
	runChains(t, pub, sub, false)
	settle(t, b)
	got, _, err := b.Tree(testCtx(t), Principal{ClientID: "t"}, "#", wire.CodecJSON)
	if err != nil || !jsonEqual(t, string(got), strings.ReplaceAll(chainRows, `"m":{"/":"x"}`, `"m":{`+markerRows()+`}`)) {
		t.Errorf("rows %s, %v", got, err)
	}
}

// markerRows is the retained markers runChains leaves, as JSON members.
func markerRows() string {
	var out []string
	for i := range chainCases {
		out = append(out, fmt.Sprintf(`"%d":"x"`, i))
	}
	return strings.Join(out, ",")
}

// TestTranslateChainsCluster: on a cluster, a translated publish that
// reaches another node — its rows through the log, an event through the
// events — is not translated again there (SPEC §11, §12): a subscriber on
// the other node gets exactly what one on a single broker gets.
func TestTranslateChainsCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 2-node NATS cluster")
	}
	tn := startNodes(t, 2, 5*time.Second)
	for _, b := range tn.b {
		if err := b.Reload(Reload{Translators: chainRules(t)}); err != nil {
			t.Fatal(err)
		}
	}
	sub := dial3(t, tn.b[1], "sub", true)
	sub.sub(t, "#", 1)
	pub := dial3(t, tn.b[0], "pub", true)
	runChains(t, pub, sub, true)
}
