package broker

import (
	"fmt"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/translate"
	"github.com/mote-mqtt/mote/wire"
)

// TestRedTeam14TranslateRefusalFlood: a tree publish whose every row
// translates to a topic past the limits makes one report and one log
// line, not one per row (a 600 KB publish could make 100,000 of each).
func TestRedTeam14TranslateRefusalFlood(t *testing.T) {
	set, err := translate.New([]translate.Rule{{From: "a/+", To: "a-much-longer-prefix/+/x"}})
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Translators: set, MaxTopicLen: 32})
	ctx := testCtx(t)
	mc := mote(t, b, "dev")
	reports := newCollector()
	if err := mc.Subscribe(ctx, ErrorTopic+"dev", client.Plain, client.JSON, 0, reports.handle); err != nil {
		t.Fatal(err)
	}
	const n = 500
	tr := map[string]any{}
	for i := range n {
		tr[fmt.Sprintf("%s%03d", strings.Repeat("y", 20), i)] = i
	}
	before := b.stats.Refused.Load()
	if err := mc.PublishTree(ctx, "a/+", tr, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	// a marker publish refused after it: its report comes after the flood's
	if err := mc.PublishTree(ctx, "a/+", map[string]any{"marker-key-long-enough": 1}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	settle(t, b)
	got := reports.wait(t, 2)
	if r := b.stats.Refused.Load() - before; r != 2 {
		t.Errorf("%d refusals for 2 publishes", r)
	}
	if !strings.Contains(string(got[0].Payload), fmt.Sprintf("%d translated rows refused", n)) {
		t.Errorf("first report %s", got[0].Payload)
	}
	if !strings.Contains(string(got[1].Payload), "marker-key") {
		t.Errorf("second report %s, want the marker's", got[1].Payload)
	}
	// A $set's rows are translated on the loop: one report there too.
	if err := mc.Set(ctx, "a/+", []byte("7"), 1); err != nil {
		t.Fatal(err)
	}
	settle(t, b)
	got = reports.wait(t, 3)
	if r := b.stats.Refused.Load() - before; r != 3 {
		t.Errorf("%d refusals for 3 publishes", r)
	}
	if !strings.Contains(string(got[2].Payload), fmt.Sprintf("%d translated rows refused", n+1)) {
		t.Errorf("$set's report %s", got[2].Payload)
	}
}

// TestRedTeam14DollarRuleBothWays: a rule whose own literal first level
// starts with $ (from "$x/+", allowed at load) translates both ways; only
// a $ level a wildcard fills is refused as the first.
func TestRedTeam14DollarRuleBothWays(t *testing.T) {
	set, err := translate.New([]translate.Rule{{From: "$x/+", To: "y/+", TwoWay: true}, {From: "c/+/d", To: "+/e/f"}})
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Translators: set})
	ctx := testCtx(t)
	mc := mote(t, b, "dev")
	reports := newCollector()
	if err := mc.Subscribe(ctx, ErrorTopic+"dev", client.Plain, client.JSON, 0, reports.handle); err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"$x/k", "y/m", "c/$z/d"} {
		if err := mc.Publish(ctx, topic, []byte("1"), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	settle(t, b)
	if r := reports.wait(t, 1); len(r) != 1 || !strings.Contains(string(r[0].Payload), "cannot become the first") || !strings.Contains(string(r[0].Payload), "$z/e/f") {
		t.Errorf("reports %+v, want one, about c/$z/d", r)
	}
	for _, topic := range []string{"$x/k", "y/k", "y/m", "$x/m"} {
		got, _, err := b.Tree(ctx, Principal{ClientID: "t"}, topic, wire.CodecJSON)
		if err != nil || string(got) != "1" {
			t.Errorf("row %s: %s %v, want 1", topic, got, err)
		}
	}
}

// TestTranslateOwnRowsWin: a tree publish that names both sides of a
// two_way rule keeps the values it gives them (each side's translation
// used to overwrite the other's, swapping them); a side it does not name
// is still translated.
func TestTranslateOwnRowsWin(t *testing.T) {
	set, err := translate.New([]translate.Rule{{From: "dev/+/state", To: "dev/+/on", TwoWay: true,
		Values: []translate.Pair{
			{From: wire.Value{Kind: wire.String, Data: "ON"}, To: wire.Value{Kind: wire.JSON, Data: "true"}},
			{From: wire.Value{Kind: wire.String, Data: "OFF"}, To: wire.Value{Kind: wire.JSON, Data: "false"}},
		}}})
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Translators: set})
	ctx := testCtx(t)
	p := Principal{ClientID: "pub"}
	if err := b.Publish(ctx, p, Message{Topic: "$tree/dev", Payload: []byte(`{"a":{"state":"OFF","on":true},"b":{"state":"ON"}}`), QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]string{"dev/a/state": `"OFF"`, "dev/a/on": "true", "dev/b/state": `"ON"`, "dev/b/on": "true"} {
		got, _, err := b.Tree(ctx, Principal{ClientID: "t"}, topic, wire.CodecJSON)
		if err != nil || string(got) != want {
			t.Errorf("row %s: %s %v, want %s", topic, got, err, want)
		}
	}
}
