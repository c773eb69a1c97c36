package broker

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/translate"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// zigbee is the SPEC §11 example: Zigbee2MQTT's ON/OFF strings and a
// webapp's booleans, both ways.
func zigbee(t testing.TB) *translate.Set {
	t.Helper()
	s, err := translate.New([]translate.Rule{{
		From: "zigbee2mqtt/+/state", To: "home/+/on", TwoWay: true,
		Values: []translate.Pair{
			{From: wire.Value{Kind: wire.String, Data: "ON"}, To: wire.Value{Kind: wire.JSON, Data: "true"}},
			{From: wire.Value{Kind: wire.String, Data: "OFF"}, To: wire.Value{Kind: wire.JSON, Data: "false"}},
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// wantMsgs checks the messages a client got, in order.
func wantMsgs(t *testing.T, who string, got []msg, want ...msg) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s got %+v, want %+v", who, got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%s message %d: %+v, want %+v", who, i, got[i], want[i])
		}
	}
}

// TestTranslateBothWays: plain MQTT 3.1.1 clients on both sides of the
// SPEC example; every publish reaches the other side once, mapped, with
// its QoS and retain flag, and never comes back.
func TestTranslateBothWays(t *testing.T) {
	b := start(t, Options{Translators: zigbee(t)})
	// A retained marker on each side: once a subscriber has it, its
	// retained replay is over (a replay is made when its writer reaches
	// it, and would hold rows published after the SUBACK).
	loadRow(b, "zigbee2mqtt/marker", "1")
	loadRow(b, "home/marker", "1")
	dev := dial3(t, b, "dev", true)
	dev.sub(t, "zigbee2mqtt/#", 1)
	dev.wait(t, 1)
	dev.reset()
	app := dial3(t, b, "app", true)
	app.sub(t, "home/#", 1)
	app.wait(t, 1)
	app.reset()

	dev.pub(t, "zigbee2mqtt/lamp/state", 1, true, "ON")
	wantMsgs(t, "app", app.wait(t, 1), msg{"home/lamp/on", "true", 1, false})
	app.pub(t, "home/lamp/on", 1, true, "false")
	wantMsgs(t, "dev", dev.wait(t, 2), msg{"zigbee2mqtt/lamp/state", "ON", 1, false}, msg{"zigbee2mqtt/lamp/state", "OFF", 1, false})
	dev.pub(t, "zigbee2mqtt/lamp/state", 0, false, "TOGGLE") // an event, a value not in the map
	dev.pub(t, "zigbee2mqtt/hall/state", 1, false, `"ON"`)   // a JSON string is the string ON
	app.pub(t, "home/hall/on", 1, true, `"true"`)            // the string true is not the boolean
	wantMsgs(t, "app", app.wait(t, 5),
		msg{"home/lamp/on", "true", 1, false}, msg{"home/lamp/on", "false", 1, false},
		msg{"home/lamp/on", "TOGGLE", 0, false}, msg{"home/hall/on", "true", 1, false}, msg{"home/hall/on", `"true"`, 1, false})
	settle(t, b)
	// Its 3 own, OFF and "true", which it did not wait for: the loop's
	// barrier (settle) has them queued, not received, so wait for them
	// before checking that nothing more comes back.
	dev.wait(t, 5)
	dev.quiet(t, 5)
	app.quiet(t, 5)

	// The rows: retained on both sides, events on neither.
	for filter, want := range map[string]string{"home/#": `{"marker":1,"lamp":{"on":false},"hall":{"on":"true"}}`, "zigbee2mqtt/#": `{"marker":1,"lamp":{"state":"OFF"},"hall":{"state":"true"}}`} {
		got, _, err := b.Tree(testCtx(t), Principal{ClientID: "t"}, filter, wire.CodecJSON)
		if err != nil || !jsonEqual(t, string(got), want) {
			t.Errorf("tree %s = %s, %v; want %s", filter, got, err, want)
		}
	}
	// A retained replay gets the translated rows as any others.
	late := dial3(t, b, "late", true)
	late.sub(t, "home/+/on", 1)
	for _, m := range late.wait(t, 2) {
		if !m.retained || (m.topic == "home/lamp/on") != (m.payload == "false") {
			t.Errorf("replay %+v", m)
		}
	}
	// Deletions stay deletions.
	dev.pub(t, "zigbee2mqtt/lamp/state", 1, true, "")
	wantMsgs(t, "app", app.wait(t, 6)[5:], msg{"home/lamp/on", "", 1, false})
	settle(t, b)
	if got, _, _ := b.Tree(testCtx(t), Principal{ClientID: "t"}, "home/lamp/on", wire.CodecJSON); string(got) != "null" {
		t.Errorf("home/lamp/on after the deletion: %s", got)
	}
}

// TestTranslateTrees: a tree publish under from is one tree publish under
// to (one delta, in the same revision as the original), and a $set or
// .replace translates the rows it changed.
func TestTranslateTrees(t *testing.T) {
	b := start(t, Options{Translators: zigbee(t)})
	ctx := testCtx(t)
	c := mote(t, b, "app")
	home, both := newCollector(), newCollector()
	if err := c.Subscribe(ctx, "home/#", client.Tree, client.JSON, 1, home.handle); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(ctx, "+/+/+", client.Sync, client.CBOR, 1, both.handle); err != nil {
		t.Fatal(err)
	}
	both.wait(t, 1) // the snapshot
	dev := dial3(t, b, "dev", true)
	dev.pub(t, "$tree/zigbee2mqtt/+/state", 1, true, `{"lamp":"ON","hall":"OFF","fan":{"speed":2}}`)
	if m := home.wait(t, 1)[0]; !same(t, m.Tree, `{"lamp":{"on":true},"hall":{"on":false},"fan":{"on":{"/":{"speed":2}}}}`) {
		t.Errorf("home delta %v", m.Tree)
	}
	m := both.wait(t, 2)[1]
	if !same(t, m.Tree, `{"zigbee2mqtt":{"lamp":{"state":"ON"},"hall":{"state":"OFF"},"fan":{"state":{"speed":2}}},"home":{"lamp":{"on":true},"hall":{"on":false},"fan":{"on":{"speed":2}}}}`) {
		t.Errorf("one delta for both sides: %v", m.Tree)
	}
	rev := m.Rev
	dev.pub(t, "$set/zigbee2mqtt/+/state", 1, false, "OFF")
	if m := home.wait(t, 2)[1]; !same(t, m.Tree, `{"lamp":{"on":false},"hall":{"on":false},"fan":{"on":false}}`) {
		t.Errorf("home delta of a $set %v", m.Tree)
	}
	dev.pub(t, "$tree.replace/zigbee2mqtt/+/state", 1, true, `{"lamp":"ON"}`)
	if m := home.wait(t, 3)[2]; !same(t, m.Tree, `{"lamp":{"on":true},"hall":{"on":null},"fan":{"on":null}}`) {
		t.Errorf("home delta of a .replace %v", m.Tree)
	}
	// The translation of a plain publish is applied with it: the delta
	// that carries the original carries it too.
	dev.pub(t, "zigbee2mqtt/lamp/state", 1, true, "TOGGLE")
	for n := 3; ; n++ {
		ms := both.wait(t, n)
		tr, _ := ms[n-1].Tree.(map[string]any)
		z, _ := tr["zigbee2mqtt"].(map[string]any)
		if l, _ := z["lamp"].(map[string]any); l["state"] != "TOGGLE" {
			continue
		}
		h, _ := tr["home"].(map[string]any)
		if l, _ := h["lamp"].(map[string]any); l["on"] != "TOGGLE" {
			t.Errorf("the delta with zigbee2mqtt/lamp/state=TOGGLE: %v", tr)
		}
		if ms[n-1].Rev <= rev {
			t.Errorf("mote-rev %d after %d", ms[n-1].Rev, rev)
		}
		break
	}
	settle(t, b)
	got, _, _ := b.Tree(ctx, Principal{ClientID: "t"}, "home/#", wire.CodecJSON)
	if !jsonEqual(t, string(got), `{"lamp":{"on":"TOGGLE"}}`) {
		t.Errorf("home/# = %s", got)
	}
}

// TestTranslateACL: the ACL applies to the original publish only (SPEC
// §11); readers need read permission on translated rows.
func TestTranslateACL(t *testing.T) {
	b := start(t, Options{Translators: zigbee(t), ACL: parseACL(t, "user dev\ntopic readwrite zigbee2mqtt/#\nuser app\ntopic read zigbee2mqtt/#\n")})
	ctx := testCtx(t)
	dev, app := Principal{User: "dev", ClientID: "dev"}, Principal{User: "app", ClientID: "app"}
	if err := b.Publish(ctx, dev, Message{Topic: "zigbee2mqtt/lamp/state", Payload: []byte("ON"), QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, dev, Message{Topic: "home/lamp/on", Payload: []byte("false"), QoS: 1, Retain: true}); !errors.Is(err, tree.ErrDenied) {
		t.Fatalf("dev wrote home/lamp/on itself: %v", err)
	}
	if got, _, _ := b.Tree(ctx, Principal{ClientID: "admin", system: true}, "home/#", wire.CodecJSON); !jsonEqual(t, string(got), `{"lamp":{"on":true}}`) {
		t.Errorf("home/# = %s", got)
	}
	if got, _, _ := b.Tree(ctx, app, "+/+/+", wire.CodecJSON); !jsonEqual(t, string(got), `{"zigbee2mqtt":{"lamp":{"state":"ON"}}}`) {
		t.Errorf("app, who may not read home/#, reads %s", got)
	}
}

// TestTranslateReload: rules come and go with Reload.
func TestTranslateReload(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	p := Principal{ClientID: "dev"}
	set := func(v string) {
		t.Helper()
		if err := b.Publish(ctx, p, Message{Topic: "zigbee2mqtt/lamp/state", Payload: []byte(v), QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	home := func() string {
		t.Helper()
		got, _, err := b.Tree(ctx, p, "home/lamp/on", wire.CodecJSON)
		if err != nil {
			t.Fatal(err)
		}
		return string(got)
	}
	set("ON")
	if got := home(); got != "null" {
		t.Fatalf("translated without rules: %s", got)
	}
	if err := b.Reload(Reload{Translators: zigbee(t)}); err != nil {
		t.Fatal(err)
	}
	set("OFF")
	if got := home(); got != "false" {
		t.Fatalf("after the reload: %s", got)
	}
	if err := b.Reload(Reload{}); err != nil {
		t.Fatal(err)
	}
	set("ON")
	if got := home(); got != "false" {
		t.Fatalf("after the rules went: %s", got)
	}
}

// TestTranslateTopicTooLong: a translated topic past the topic limits is
// refused and reported to the publisher; the original and the other rows
// of its tree go through.
func TestTranslateTopicTooLong(t *testing.T) {
	set, err := translate.New([]translate.Rule{{From: "a/+", To: "a-much-longer-prefix/+/x"}, {From: "c/+/d", To: "+/e/f"}})
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
	long := strings.Repeat("y", 20)
	if err := mc.PublishTree(ctx, "a/+", map[string]any{"b": 1, long: 2}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	r := reports.wait(t, 1)[0]
	if !strings.Contains(string(r.Payload), "translate[0]") || !strings.Contains(string(r.Payload), long) {
		t.Errorf("report %s", r.Payload)
	}
	// A level a + fills first can make a broker topic: refused too.
	if err := mc.Publish(ctx, "c/$SYS/d", []byte("1"), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	r = reports.wait(t, 2)[1]
	if !strings.Contains(string(r.Payload), "translate[1]") || !strings.Contains(string(r.Payload), "$SYS/e/f") {
		t.Errorf("report %s", r.Payload)
	}
	if err := mc.Publish(ctx, "c/$x/d", []byte("1"), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	r = reports.wait(t, 3)[2]
	if !strings.Contains(string(r.Payload), "translate[1]") || !strings.Contains(string(r.Payload), "cannot become the first") {
		t.Errorf("report %s", r.Payload)
	}
	settle(t, b)
	got, _, _ := b.Tree(ctx, Principal{ClientID: "t"}, "#", wire.CodecJSON)
	want := `{"a":{"b":1,"` + long + `":2},"a-much-longer-prefix":{"b":{"x":1}},"c":{"$SYS":{"d":1},"$x":{"d":1}}}`
	if !jsonEqual(t, string(got), want) {
		t.Errorf("rows %s, want %s", got, want)
	}
}

// reset forgets what arrived so far.
func (in *inbox[T]) reset() {
	in.mu.Lock()
	in.msgs = nil
	in.mu.Unlock()
}

// TestTranslateHistory: translated rows keep history under their own
// rules (SPEC §9), as any rows do.
func TestTranslateHistory(t *testing.T) {
	store, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Store: store, Translators: zigbee(t)})
	if err := b.Reload(Reload{Translators: zigbee(t), History: []retain.HistoryRule{{Filter: "home/#", Keep: 10}}}); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	c := mote(t, b, "c")
	for _, v := range []string{"ON", "OFF", "ON"} {
		if err := c.Publish(ctx, "zigbee2mqtt/lamp/state", []byte(v), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	h, err := c.History(ctx, "home/#", client.JSON)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := h.Rows()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range rows["home/lamp/on"] {
		got = append(got, fmt.Sprint(p.Value))
	}
	if strings.Join(got, " ") != "true false true" {
		t.Errorf("history of home/lamp/on: %v (rows %v)", got, rows)
	}
}

// TestTranslateMQTT5: a translation carries none of the original's MQTT 5
// properties (its payload may differ), and reaches a No Local subscriber
// that published the original: it is the broker's publish.
func TestTranslateMQTT5(t *testing.T) {
	b := start(t, Options{Translators: zigbee(t)})
	got := make(chan *paho5.Publish, 10)
	c := dial5(t, b, "app5", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
	}}, nil)
	ctx := testCtx(t)
	if _, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "home/#", QoS: 1, NoLocal: true}}}); err != nil {
		t.Fatal(err)
	}
	props := &paho5.PublishProperties{ContentType: "text/plain", User: paho5.UserProperties{{Key: "k", Value: "v"}}}
	if _, err := c.Publish(ctx, &paho5.Publish{Topic: "zigbee2mqtt/lamp/state", QoS: 1, Payload: []byte("ON"), Properties: props}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, &paho5.Publish{Topic: "home/own", QoS: 1, Payload: []byte("x")}); err != nil {
		t.Fatal(err) // No Local: not delivered back
	}
	if _, err := c.Publish(ctx, &paho5.Publish{Topic: "zigbee2mqtt/hall/state", QoS: 1, Payload: []byte("OFF")}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"home/lamp/on=true", "home/hall/on=false"} {
		select {
		case p := <-got:
			if p.Topic+"="+string(p.Payload) != want || p.Properties.ContentType != "" || len(p.Properties.User) != 0 {
				t.Errorf("got %s=%s %+v, want %s without properties", p.Topic, p.Payload, p.Properties, want)
			}
		case <-time.After(testTimeout):
			t.Fatalf("no %s", want)
		}
	}
}
