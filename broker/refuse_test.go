package broker

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/mote-mqtt/mote/clients/client"
)

func TestRefusedPublishes(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	spy := dial3(t, b, "spy", true)
	spy.sub(t, ErrorTopic+"#", 0) // granted, but another client's reports never reach it
	mc := mote(t, b, "dev")
	reports := newCollector()
	if err := mc.Subscribe(ctx, ErrorTopic+"dev", client.Plain, client.JSON, 0, reports.handle); err != nil {
		t.Fatal(err)
	}
	app := dial3(t, b, "app", true)
	app.sub(t, "$sync/#", 1)
	app.wait(t, 1) // the snapshot
	tests := []struct {
		topic, payload, code string
	}{
		{"$tree/a", `{"b":`, "0x99"},
		{"$tree/a/+/+", `{"x":1}`, "0x99"},
		{"$sync/a", `1`, "0x90"},
		{"$tree.xml/a", `{}`, "0x90"},
		{"$SYS/x", `1`, "0x90"},
	}
	for _, tt := range tests {
		for _, qos := range []byte{1, 2} {
			err := mc.Publish(ctx, tt.topic, []byte(tt.payload), client.PublishOptions{QoS: qos, Retain: true})
			if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), tt.code) {
				t.Errorf("%s QoS %d: %v, want refusal %s", tt.topic, qos, err, tt.code)
			}
		}
	}
	// Every refusal is reported on $SYS/mote/errors/<client-id>.
	got := reports.wait(t, 2*len(tests))
	var r Report
	if err := json.Unmarshal(got[2].Payload, &r); err != nil || got[2].Topic != ErrorTopic+"dev" {
		t.Fatalf("report %+v: %v", got[2], err)
	}
	spy.quiet(t, 0)
	if r.Client != "dev" || r.Code != 0x99 || r.Path != "/x" || r.Topic != "$tree/a/+/+" {
		t.Errorf("report %+v", r)
	}
	// Nothing of them was delivered or retained, and the session goes on.
	if err := mc.PublishTree(ctx, "ok", map[string]any{"v": 1}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	m := app.wait(t, 2)[1]
	app.quiet(t, 2)
	if !jsonEqual(t, m.payload, `{"ok":{"v":1}}`) {
		t.Errorf("delta %s", m.payload)
	}
}

// A refused tree publish from an MQTT 3.1.1 client is acked as usual
// (3.1.1 has no reason codes) and reported.
func TestRefused311(t *testing.T) {
	b := start(t, Options{})
	old := dial3(t, b, "old", true)
	old.sub(t, ErrorTopic+"old", 0)
	reports := old
	old.pub(t, "$tree/a", 1, true, `not json`)
	old.pub(t, "$sync/a", 2, false, `1`)
	if q := old.sub(t, "$sync.xml/a", 1); q != 0x80 {
		t.Errorf("SUBACK %#x, want 0x80", q)
	}
	got := reports.wait(t, 3)
	if !strings.Contains(got[2].payload, `"op":"subscribe"`) {
		t.Errorf("report %s", got[2].payload)
	}
}

func TestRefusedSubscribe5(t *testing.T) {
	b := start(t, Options{})
	c := dial5(t, b, "s5", paho5.ClientConfig{}, nil)
	ctx := testCtx(t)
	sa, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{
		{Topic: "$sync.xml/a", QoS: 1}, {Topic: "$sync/a/#/b", QoS: 1}, {Topic: "$sync/ok/+", QoS: 1},
	}})
	if err != nil && sa == nil {
		t.Fatal(err)
	}
	if len(sa.Reasons) != 3 || sa.Reasons[0] != 0x8F || sa.Reasons[1] != 0x8F || sa.Reasons[2] != 1 {
		t.Errorf("SUBACK reasons % x, want 8f 8f 01", sa.Reasons)
	}
}

// The MQTT 5 user-property forms of SPEC §2 and §4.
func TestUserPropertyForms(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	got := make(chan *paho5.Publish, 10)
	c := dial5(t, b, "props", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
	}}, nil)
	sub := &paho5.Subscribe{
		Subscriptions: []paho5.SubscribeOptions{{Topic: "light/+/is_on", QoS: 1}},
		Properties:    &paho5.SubscribeProperties{User: paho5.UserProperties{{Key: "mote", Value: "sync"}}},
	}
	if _, err := c.Subscribe(ctx, sub); err != nil {
		t.Fatal(err)
	}
	next := func() *paho5.Publish {
		select {
		case p := <-got:
			return p
		case <-time.After(testTimeout):
			t.Fatal("nothing received")
		}
		return nil
	}
	if p := next(); p.Topic != "light/+/is_on" || string(p.Payload) != "{}" || p.Properties.User.Get("mote-seq") != "0" || p.Properties.ContentType != "application/json" {
		t.Fatalf("snapshot %s %s %+v", p.Topic, p.Payload, p.Properties)
	}
	pub := &paho5.Publish{Topic: "light/+/is_on", QoS: 1, Retain: true, Payload: []byte(`{"a":1,"b":0}`),
		Properties: &paho5.PublishProperties{User: paho5.UserProperties{{Key: "mote", Value: "tree"}}}}
	if _, err := c.Publish(ctx, pub); err != nil {
		t.Fatal(err)
	}
	if p := next(); p.Topic != "light/+/is_on" || !jsonEqual(t, string(p.Payload), `{"a":1,"b":0}`) || p.Properties.User.Get("mote-seq") != "1" {
		t.Fatalf("delta %s %s %+v", p.Topic, p.Payload, p.Properties)
	}
	// UNSUBSCRIBE of the plain filter ends the tree subscription.
	if _, err := c.Unsubscribe(ctx, &paho5.Unsubscribe{Topics: []string{"light/+/is_on"}}); err != nil {
		t.Fatal(err)
	}
	settle(t, b)
	if _, err := c.Publish(ctx, &paho5.Publish{Topic: "light/a/is_on", QoS: 1, Retain: true, Payload: []byte("0")}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		t.Fatalf("after unsubscribe: %s %s", p.Topic, p.Payload)
	case <-time.After(300 * time.Millisecond):
	}
}
