package broker

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/mote-mqtt/mote/clients/client"
)

// This file holds black-box checks of SPEC sentences that no other test
// covered, found in the audit of SPEC v1.1 word for word. Each test names
// its section and quotes the sentence it checks.

// TestSpecDeltaQoS: SPEC §2 "QoS: the subscription's granted QoS for
// snapshots; for deltas the highest QoS among the folded rows, capped by
// the granted QoS."
func TestSpecDeltaQoS(t *testing.T) {
	b := start(t, Options{})
	pub := dial3(t, b, "qos-pub", true)
	pub.pub(t, "q/a", 1, true, "1")
	settle(t, b)
	for _, granted := range []byte{0, 1, 2} {
		s := dial3(t, b, "qos-sub", true)
		if got := s.sub(t, "$sync/q/+", granted); got != granted {
			t.Fatalf("granted %d, want %d", got, granted)
		}
		if m := s.wait(t, 1)[0]; m.qos != granted || m.retained {
			t.Fatalf("granted %d: snapshot at QoS %d retained %v", granted, m.qos, m.retained)
		}
		for i, q := range []byte{0, 1, 2} {
			pub.pub(t, "q/a", q, true, "2")
			want := min(q, granted)
			if m := s.wait(t, 2+i)[1+i]; m.qos != want || m.payload != `{"a":2}` {
				t.Fatalf("granted %d, published at %d: delta %q at QoS %d, want %d", granted, q, m.payload, m.qos, want)
			}
		}
		s.Disconnect(0)
	}
}

// TestSpecPropertyEveryFilter: SPEC §2 "MQTT 5 alternative: SUBSCRIBE
// user property mote = sync or tree (and optionally mote-codec = json|cbor)
// with the plain filter F; it applies to every filter in that packet."
// And: "MQTT 5: the subscription identifier, if the client set one, and
// Content Type application/json or application/cbor."
func TestSpecPropertyEveryFilter(t *testing.T) {
	b := start(t, Options{})
	c := dialTree5(t, b, "every")
	c.pub(t, "e/a", "1")
	c.pub(t, "f/b", `"x"`)
	settle(t, b)
	id := 9
	s := &paho5.Subscribe{
		Subscriptions: []paho5.SubscribeOptions{{Topic: "e/+", QoS: 1}, {Topic: "f/+", QoS: 1}},
		Properties: &paho5.SubscribeProperties{SubscriptionIdentifier: &id, User: paho5.UserProperties{
			{Key: "mote", Value: "sync"}, {Key: "mote-codec", Value: "cbor"}}},
	}
	ack, err := c.Subscribe(testCtx(t), s)
	if err != nil || len(ack.Reasons) != 2 || ack.Reasons[0] != 1 || ack.Reasons[1] != 1 {
		t.Fatalf("SUBACK %+v: %v", ack, err)
	}
	want := map[string]string{"e/+": `{"a":1}`, "f/+": `{"b":"x"}`}
	check := func(p *paho5.Publish, seq string) {
		t.Helper()
		v, err := client.Decode(client.CBOR, p.Payload)
		if err != nil {
			t.Fatalf("%s: not CBOR %x: %v", p.Topic, p.Payload, err)
		}
		if w, ok := want[p.Topic]; !ok || !same(t, v, w) {
			t.Fatalf("%s: %v, want %s", p.Topic, v, w)
		}
		if p.Properties.ContentType != "application/cbor" || p.Properties.User.Get("mote-seq") != seq {
			t.Fatalf("%s: content type %q seq %q", p.Topic, p.Properties.ContentType, p.Properties.User.Get("mote-seq"))
		}
		if p.Properties.SubscriptionIdentifier == nil || *p.Properties.SubscriptionIdentifier != id {
			t.Fatalf("%s: subscription identifier %v, want %d", p.Topic, p.Properties.SubscriptionIdentifier, id)
		}
	}
	seen := map[string]bool{}
	for range 2 {
		p := c.next(t)
		seen[p.Topic] = true
		check(p, "0")
	}
	if len(seen) != 2 {
		t.Fatalf("snapshots on %v, want both filters", seen)
	}
	c.pub(t, "e/a", "2")
	c.pub(t, "f/b", `"y"`)
	want = map[string]string{"e/+": `{"a":2}`, "f/+": `{"b":"y"}`}
	check(c.next(t), "1")
	check(c.next(t), "1")
}

// TestSpecSnapshotFitsMaxPacket: SPEC §2 "A snapshot larger than the
// client's Maximum Packet Size is split by subtree into several messages,
// each a valid partial tree with user property mote-part = i/n". A
// snapshot whose whole PUBLISH fits the client's Maximum Packet Size is
// one message; one that does not comes in parts, each of which fits. The
// broker reserved a flat 200 bytes for its properties, so a client with
// a small Maximum Packet Size (here 160) got nothing but a report. (The
// parts are cut by wire.Split's upper bounds of their size, so the split
// case asks for a little more room.)
func TestSpecSnapshotFitsMaxPacket(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	w.pub(t, "mp/a", "1")
	for i := range 6 {
		w.pub(t, fmt.Sprintf("mq/k%d", i), strconv.Quote(strings.Repeat("v", 20)))
	}
	settle(t, b)
	cases := []struct {
		filter string
		max    int
		whole  bool
		want   string
	}{
		{"$sync/mp/+", 160, true, `{"a":1}`},
		{"$sync/mq/+", 240, false, ""},
	}
	for _, tc := range cases {
		t.Run(tc.filter, func(t *testing.T) {
			got := make(chan *paho5.Publish, 100)
			size := uint32(tc.max)
			c := dial5(t, b, "small", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
				func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
			}}, &paho5.Connect{CleanStart: true, Properties: &paho5.ConnectProperties{MaximumPacketSize: &size}})
			id := 268435455 // the largest subscription identifier: the longest property
			s := &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: tc.filter, QoS: 1}},
				Properties: &paho5.SubscribeProperties{SubscriptionIdentifier: &id}}
			if _, err := c.Subscribe(testCtx(t), s); err != nil {
				t.Fatal(err)
			}
			doc := map[string]any{}
			for n := 0; ; n++ {
				var p *paho5.Publish
				select {
				case p = <-got:
				case <-time.After(testTimeout):
					t.Fatalf("after %d messages: nothing more", n)
				}
				var buf bytes.Buffer
				p.PacketID = 1
				if _, err := p.Packet().WriteTo(&buf); err != nil {
					t.Fatal(err)
				}
				if buf.Len() > tc.max {
					t.Fatalf("a %d-byte packet, over the client's %d", buf.Len(), tc.max)
				}
				part := p.Properties.User.Get("mote-part")
				if tc.whole {
					if part != "" || !jsonEqual(t, string(p.Payload), tc.want) {
						t.Fatalf("snapshot %s part %q, want %s whole", p.Payload, part, tc.want)
					}
					return
				}
				merge1(t, doc, p.Payload)
				i, n, _ := strings.Cut(part, "/")
				if part == "" {
					t.Fatalf("snapshot %s not in parts", p.Payload)
				}
				if i == n {
					break
				}
			}
			if len(doc) != 6 {
				t.Fatalf("%d rows in the parts, want 6: %v", len(doc), doc)
			}
		})
	}
}

// TestSpecRetainHandling: SPEC §1 "plain subscribers get retained rows on
// SUBSCRIBE exactly as MQTT says, whichever way the row was written" —
// MQTT 5 Retain Handling [MQTT-3.3.1-9..11]: 0 sends the retained rows at
// every SUBSCRIBE, 1 only when the subscription is new, 2 never; here
// for a row written by a plain publish and one written by a tree publish.
func TestSpecRetainHandling(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	w.pub(t, "rh/plain", "1")
	w.pub(t, "$tree/rh", `{"tree":"x"}`)
	settle(t, b)
	cases := []struct {
		handling byte
		first    int // retained rows after the first SUBSCRIBE
		again    int // after the same SUBSCRIBE again
	}{
		{0, 2, 2},
		{1, 2, 0},
		{2, 0, 0},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint("handling=", tc.handling), func(t *testing.T) {
			c := dialTree5(t, b, "rh")
			sub := func() {
				t.Helper()
				s := &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "rh/+", QoS: 1, RetainHandling: tc.handling}}}
				if _, err := c.Subscribe(testCtx(t), s); err != nil {
					t.Fatal(err)
				}
				// A marker published after the SUBACK arrives after the
				// retained rows the SUBSCRIBE sent, if any.
				c.pub(t, "$tree/rh", `{"mark":null}`)
			}
			count := func() int {
				t.Helper()
				n := 0
				for {
					p := c.next(t)
					if p.Topic == "rh/mark" {
						return n
					}
					if !p.Retain {
						t.Fatalf("%s %s not retained", p.Topic, p.Payload)
					}
					want := map[string]string{"rh/plain": "1", "rh/tree": "x"}[p.Topic]
					if string(p.Payload) != want {
						t.Fatalf("%s %q, want %q", p.Topic, p.Payload, want)
					}
					n++
				}
			}
			sub()
			if n := count(); n != tc.first {
				t.Fatalf("first SUBSCRIBE: %d retained rows, want %d", n, tc.first)
			}
			sub()
			if n := count(); n != tc.again {
				t.Fatalf("SUBSCRIBE again: %d retained rows, want %d", n, tc.again)
			}
		})
	}
}

// TestSpecEmptyLeafNotReplayed: SPEC §1 gives a tree leaf "" to plain
// subscribers as its bytes without quotes — zero bytes — and says they get
// retained rows "exactly as MQTT says": MQTT never sends a zero-byte
// retained message to a new subscriber [MQTT-3.3.1-11] (a plain client
// reads one as the row's deletion). The row stays in the tree.
func TestSpecEmptyLeafNotReplayed(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	w.pub(t, "$tree/el", `{"e":"","f":"x"}`)
	settle(t, b)

	c := dialTree5(t, b, "plain")
	s := &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "el/+", QoS: 1}}}
	if _, err := c.Subscribe(testCtx(t), s); err != nil {
		t.Fatal(err)
	}
	c.pub(t, "$tree/el", `{"mark":null}`)
	var got []string
	for {
		p := c.next(t)
		if p.Topic == "el/mark" {
			break
		}
		got = append(got, fmt.Sprintf("%s=%q", p.Topic, p.Payload))
	}
	if len(got) != 1 || got[0] != `el/f="x"` {
		t.Fatalf("retained replay %v, want only el/f=\"x\"", got)
	}

	ts := dialTree5(t, b, "tree")
	s = &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "$sync/el/+", QoS: 1}}}
	if _, err := ts.Subscribe(testCtx(t), s); err != nil {
		t.Fatal(err)
	}
	if p := ts.next(t); string(p.Payload) != `{"e":"","f":"x"}` {
		t.Fatalf("snapshot %s, want {\"e\":\"\",\"f\":\"x\"}", p.Payload)
	}
}
