package broker

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/retain"
)

// mpDoc decodes a MessagePack tree as the Go client does, numbers as
// uint64 / int64 / float64.
func mpDoc(t *testing.T, p *paho5.Publish) map[string]any {
	t.Helper()
	if ct := p.Properties.ContentType; ct != "application/msgpack" {
		t.Fatalf("%s: Content Type %q", p.Topic, ct)
	}
	v, err := client.Decode(client.MsgPack, p.Payload)
	if err != nil {
		t.Fatalf("%s: %x: %v", p.Topic, p.Payload, err)
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s: %#v is not a map", p.Topic, v)
	}
	return m
}

func mustMsgPack(t *testing.T, v any) []byte {
	t.Helper()
	b, err := client.Encode(client.MsgPack, v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMsgPackEndToEnd walks SPEC §2, §4, §9 and §11 in MessagePack with a
// raw MQTT 5 client: $sync.msgpack snapshots and deltas, the property
// form, $tree.msgpack and mote=tree + Content Type publishes, $hist.msgpack,
// raw bytes as binary both ways, and hostile payloads refused with 0x99.
func TestMsgPackEndToEnd(t *testing.T) {
	b := rtBroker(t, retain.HistoryRule{Filter: "m/#", Keep: 5})
	w := dialTree5(t, b, "w")
	raw := "\xff\x00\xfe"
	w.pub(t, "m/a", "1")
	w.pub(t, "m/b", raw)
	w.pub(t, "m/c", `{"x":-2.5}`)
	settle(t, b)
	plain := dial3(t, b, "plain", true)
	plain.sub(t, "m/#", 0)
	plain.wait(t, 3) // the retained rows

	r := dialTree5(t, b, "r")
	if code := r.subscribe(t, "$sync.msgpack/m/+"); code != 1 {
		t.Fatalf("SUBACK %#x", code)
	}
	p := r.next(t)
	if p.Topic != "$sync.msgpack/m/+" || p.Properties.User.Get("mote-seq") != "0" {
		t.Fatalf("snapshot %s %v", p.Topic, p.Properties.User)
	}
	want := map[string]any{"a": uint64(1), "b": []byte(raw), "c": map[string]any{"x": -2.5}}
	if doc := mpDoc(t, p); !reflect.DeepEqual(doc, want) {
		t.Errorf("snapshot %#v, want %#v", doc, want)
	}

	// A $tree.msgpack publish: a binary leaf reaches plain subscribers as
	// its raw bytes, a string without quotes; $sync.msgpack gets one delta.
	tree := mustMsgPack(t, map[string]any{"d": "s", "e": []byte{1, 2}, "a": nil})
	res, err := w.Publish(testCtx(t), &paho5.Publish{Topic: "$tree.msgpack/m", QoS: 1, Retain: true, Payload: tree})
	if err != nil || res.ReasonCode != 0 {
		t.Fatalf("$tree.msgpack publish: %v %+v", err, res)
	}
	p = r.next(t)
	want = map[string]any{"d": "s", "e": []byte{1, 2}, "a": nil}
	if doc := mpDoc(t, p); !reflect.DeepEqual(doc, want) || p.Properties.User.Get("mote-seq") != "1" {
		t.Errorf("delta %#v %v, want %#v", doc, p.Properties.User, want)
	}
	got := map[string]string{}
	for _, m := range plain.wait(t, 6)[3:] {
		got[m.topic] = m.payload
	}
	if !reflect.DeepEqual(got, map[string]string{"m/a": "", "m/d": "s", "m/e": "\x01\x02"}) {
		t.Errorf("plain subscriber got %q", got)
	}

	// MQTT 5 forms: mote=sync + mote-codec=msgpack on the plain filter,
	// and mote=tree with Content Type application/msgpack on a plain topic.
	r2 := dialTree5(t, b, "r2")
	r2.subscribe(t, "m/+", "mote", "sync", "mote-codec", "msgpack")
	p = r2.next(t)
	if doc := mpDoc(t, p); p.Topic != "m/+" || doc["d"] != "s" {
		t.Errorf("property form: %s %#v", p.Topic, doc)
	}
	res, err = w.Publish(testCtx(t), &paho5.Publish{Topic: "m", QoS: 1, Retain: true, Payload: mustMsgPack(t, map[string]any{"f": true}),
		Properties: &paho5.PublishProperties{ContentType: "application/msgpack", User: paho5.UserProperties{{Key: "mote", Value: "tree"}}}})
	if err != nil || res.ReasonCode != 0 {
		t.Fatalf("mote=tree publish: %v %+v", err, res)
	}
	for _, c := range []*tree5{r, r2} {
		if doc := mpDoc(t, c.next(t)); !reflect.DeepEqual(doc, map[string]any{"f": true}) {
			t.Errorf("delta %#v", doc)
		}
	}

	// $hist.msgpack: [[t, value], …] per row, the current value last.
	h := dialTree5(t, b, "h")
	h.subscribe(t, "$hist.msgpack/m/+")
	doc := mpDoc(t, h.next(t))
	pairs, ok := doc["e"].([]any)
	if !ok || len(pairs) != 1 {
		t.Fatalf("$hist m/e: %#v", doc["e"])
	}
	if pair := pairs[0].([]any); len(pair) != 2 || !reflect.DeepEqual(pair[1], []byte{1, 2}) {
		t.Errorf("$hist m/e pair %#v", pair)
	} else if ms, ok := pair[0].(uint64); !ok || ms == 0 {
		t.Errorf("$hist m/e t %#v", pair[0])
	}
	if a := doc["a"].([]any); len(a) != 2 || a[1].([]any)[1] != nil {
		t.Errorf("$hist of a deleted row: %#v", a)
	}

	// Hostile payloads are refused whole with 0x99 and a reason.
	for name, payload := range map[string][]byte{
		"huge map":  {0xdf, 0xff, 0xff, 0xff, 0xff},
		"huge bin":  {0x81, 0xa1, 'k', 0xc6, 0xff, 0xff, 0xff, 0xff},
		"ext":       {0x81, 0xa1, 'k', 0xd6, 0xff, 0, 0, 0, 0},
		"int key":   {0x81, 0x01, 0x01},
		"deep":      append([]byte{0x81, 0xa1, 'k'}, append(bytes.Repeat([]byte{0x91}, 40), 0)...),
		"not a map": {0xc1},
	} {
		res, err := w.Publish(testCtx(t), &paho5.Publish{Topic: "$tree.msgpack/m", QoS: 1, Payload: payload})
		if res == nil || res.ReasonCode != 0x99 || !strings.Contains(res.Properties.ReasonString, "MessagePack") && name != "deep" {
			t.Errorf("%s: %v %+v", name, err, res)
		}
	}
	r.none(t)
}

// TestMsgPackClient: the Go client publishes and mirrors in MessagePack.
func TestMsgPackClient(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	c := mote(t, b, "app")
	m, err := c.Mirror(ctx, "dev/#", client.MsgPack, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.PublishTree(ctx, "dev", map[string]any{"lamp": map[string]any{"on": true, "level": 55}, "raw": []byte{0}},
		client.PublishOptions{QoS: 1, Retain: true, Codec: client.MsgPack}); err != nil {
		t.Fatal(err)
	}
	settle(t, b)
	if err := m.Wait(ctx, func(doc any) bool { d, _ := doc.(map[string]any); return d["raw"] != nil }); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"lamp": map[string]any{"on": true, "level": uint64(55)}, "raw": []byte{0}}
	m.Get(func(doc any) {
		if !reflect.DeepEqual(doc, want) {
			t.Errorf("mirror %#v, want %#v", doc, want)
		}
	})
	// A refused MessagePack tree comes back as an error with the reason.
	err = c.PublishTree(ctx, "dev/+/+", map[string]any{"x": 1}, client.PublishOptions{QoS: 1, Codec: client.MsgPack})
	if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "0x99") {
		t.Errorf("shape error: %v", err)
	}
}
