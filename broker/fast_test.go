package broker

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/wire"
)

// TestSendPlain0Bytes: the QoS 0 PUBLISH sendPlain0 writes without a
// packets.Packet is, byte for byte, what mochi's PublishEncode writes for
// the same message (MQTT 3.1.1 and 5, retained or not, Remaining Length
// in one to three bytes).
func TestSendPlain0Bytes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		topic   string
		payload int
		retain  bool
		v5      bool
	}{
		{"v3 short", "lat/t", 19, false, false},
		{"v5 short", "lat/t", 19, false, true},
		{"v3 retained", "a/b/c", 3, true, false},
		{"v5 retained", "a/b/c", 3, true, true},
		{"v3 empty payload", "x", 0, false, false},
		{"v5 empty payload", "x", 0, false, true},
		{"v3 two-byte length", "dev/1/state", 200, false, false},
		{"v5 two-byte length", "dev/1/state", 127 - 2 - 11 - 1, false, true},
		{"v5 at 128", "dev/1/state", 128 - 2 - 11 - 1, false, true},
		{"v3 three-byte length", strings.Repeat("t", 300), 16 << 10, true, false},
		{"v5 three-byte length", "t/é", 16 << 10, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := bytes.Repeat([]byte{'p'}, tc.payload)
			pk := packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: tc.retain},
				TopicName:   tc.topic,
				Payload:     payload,
			}
			pk.ProtocolVersion = 4
			rem := 2 + len(tc.topic) + len(payload)
			if tc.v5 {
				pk.ProtocolVersion = 5
				rem++
			}
			pk.Mods.AllowResponseInfo = true
			var want bytes.Buffer
			if err := pk.PublishEncode(&want); err != nil {
				t.Fatal(err)
			}
			got := appendPlain0([]byte("before"), rem, tc.topic, payload, tc.retain, tc.v5)
			if !bytes.HasPrefix(got, []byte("before")) || !bytes.Equal(got[6:], want.Bytes()) {
				t.Fatalf("appendPlain0:\n got %x\nwant %x", got[6:min(len(got), 40)], want.Bytes()[:min(want.Len(), 34)])
			}
			if n := 1 + varIntLen(rem) + rem; n != want.Len() {
				t.Fatalf("size %d, encoded %d", n, want.Len())
			}
		})
	}
}

// TestSubIndexFewKids: a node's children, listed in few up to fewKids
// and in its kids map past it (for the node's life), are found by every
// publish as they are added and removed across the edge, wildcards and
// the empty level among them; the trie is pruned at the end.
func TestSubIndexFewKids(t *testing.T) {
	levels := []string{"k0", "+", "", "k3", "#", "k5", "k6"}
	filter := func(l string) string {
		if l == "#" {
			return "a/#"
		}
		return "a/" + l + "/x"
	}
	var x subIndex
	check := func(step string, filed map[string]bool) {
		t.Helper()
		for _, l := range levels {
			if l == "+" || l == "#" {
				continue
			}
			want := 0
			for f := range filed {
				if wire.Match(f, "a/"+l+"/x") {
					want++
				}
			}
			if got := len(matchText(&x, "a/"+l+"/x", "")); got != want {
				t.Fatalf("%s: a/%s/x matched %d, want %d", step, l, got, want)
			}
		}
	}
	a := func() *snode { k, _ := x.root.child("a"); return k }
	filed := map[string]bool{}
	for i, l := range levels {
		x.subscribe("c"+l, packets.Subscription{Filter: filter(l)})
		filed[filter(l)] = true
		check("add "+l, filed)
		s := a().few.Load()
		if many := i+1 > fewKids; s.many != many || (!many && len(s.kids) != i+1) {
			t.Fatalf("after %d children: few %+v", i+1, s)
		}
	}
	for i := len(levels) - 1; i >= 0; i-- {
		l := levels[i]
		if !x.unsubscribe(filter(l), "c"+l) {
			t.Fatalf("unsubscribe %s: not filed", filter(l))
		}
		delete(filed, filter(l))
		check("remove "+l, filed)
		if i > 0 && !a().few.Load().many {
			t.Fatalf("after going back to %d children: few left the map", i)
		}
	}
	if !x.root.empty() || x.root.few.Load() != nil {
		t.Fatal("the trie is not pruned")
	}
	// A node that never had more than fewKids lists them only.
	x.subscribe("c", packets.Subscription{Filter: "b/1"})
	x.subscribe("c", packets.Subscription{Filter: "b/2"})
	x.unsubscribe("b/1", "c")
	b, _ := x.root.child("b")
	if s := b.few.Load(); s == nil || s.many || len(s.kids) != 1 || s.kids[0].level != "2" {
		t.Fatalf("b's children: %+v", s)
	}
	n := 0
	b.kids.Range(func(_, _ any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("b's kids map holds %d", n)
	}
	check("b", filed)
}

// TestSubIndexMemory: the index's heap a subscription, each client with a
// filter of its own: dev/N/state/on (N has one child, state one), a/b/c/
// d/N/e/f and home/N (N a leaf). A node's few children are a short list,
// not a sync.Map's trie: main (c2bc329) held 1,085, 1,078 and 404 bytes
// (this test run there), this 752, 741 and 404.
func TestSubIndexMemory(t *testing.T) {
	for _, tc := range []struct {
		form string
		max  int64
	}{
		{"dev/%d/state/on", 900},
		{"a/b/c/d/%d/e/f", 900},
		{"home/%d", 420}, // N a leaf of a node with many: its kids map, as before
	} {
		const n = 10000
		// Other tests' goroutines may free or allocate meanwhile: the
		// least of a few measurements that is not negative.
		var per int64 = -1
		for range 5 {
			var x subIndex
			x.subscribe("warm", packets.Subscription{Filter: fmt.Sprintf(tc.form, -1)})
			before := heapInUse()
			for i := range n {
				x.subscribe(fmt.Sprintf("c%d", i), packets.Subscription{Filter: fmt.Sprintf(tc.form, i)})
			}
			if d := (int64(heapInUse()) - int64(before)) / n; d > 0 && (per < 0 || d < per) {
				per = d
			}
			runtime.KeepAlive(&x)
		}
		t.Logf("%s: %d bytes a subscription", tc.form, per)
		if per < 0 || per > tc.max {
			t.Errorf("%s: %d bytes a subscription, want at most %d", tc.form, per, tc.max)
		}
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestWroteSteady: wrote's short way (steadyLocked: nothing but the
// time of the last write changes) is taken only where the long way would
// change nothing else: a queue marked full is unmarked, a waiter's time
// is charged against the credit, a stalled client with its credit whole
// is let go.
func TestWroteSteady(t *testing.T) {
	const patience = time.Minute
	for _, tc := range []struct {
		name  string
		setup func(q *outQueue)
		check func(q *outQueue) string
	}{
		{"fresh", func(*outQueue) {}, func(q *outQueue) string {
			if q.credit != patience || q.stalled || q.lastWrote.IsZero() {
				return fmt.Sprintf("credit %v stalled %v lastWrote %v", q.credit, q.stalled, q.lastWrote)
			}
			return ""
		}},
		{"marked full", func(q *outQueue) { q.waitsLocked().fullAt = time.Now().Add(-time.Second) }, func(q *outQueue) string {
			if !q.fullAtLocked().IsZero() {
				return "still marked full after a write"
			}
			return ""
		}},
		{"a publisher waits", func(q *outQueue) {
			ws := q.waitsLocked()
			ws.waitq = append(ws.waitq, &waiter{turn: make(chan struct{}, 1)})
			ws.since = time.Now().Add(-10 * time.Second)
		}, func(q *outQueue) string {
			if q.credit > patience-9*time.Second {
				return fmt.Sprintf("credit %v: the wait was not charged", q.credit)
			}
			return ""
		}},
		{"stalled", func(q *outQueue) { q.stalled = true }, func(q *outQueue) string {
			if q.stalled {
				return "a stalled client with its credit whole is still stalled after a write"
			}
			return ""
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newOutQueue(1000, patience)
			q.mu.Lock()
			tc.setup(q)
			q.mu.Unlock()
			q.wrote(1, 1)
			q.mu.Lock()
			defer q.mu.Unlock()
			if msg := tc.check(q); msg != "" {
				t.Error(msg)
			}
		})
	}
}

// TestPlainQoS0Delivery: a plain QoS 0 message written straight into a
// subscriber's buffer (sendPlain0) and one that needs send (properties,
// a subscription identifier, an outgoing topic alias, the client's
// Maximum Packet Size, an expiry) reach MQTT 3.1.1 and 5 subscribers as
// MQTT says, retained or not, with Retain As Published.
func TestPlainQoS0Delivery(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "fw")
	qos0 := func(s *packets.Subscription) { s.Qos = 0 }
	for _, tc := range []struct {
		name  string
		v     byte
		conn  packets.Properties // the subscriber's CONNECT
		opts  func(*packets.Subscription)
		subP  packets.Properties // the SUBSCRIBE's
		pub   []packets.Packet   // published in turn (QoS 0)
		check func(got []packets.Packet) string
		skips int64 // messages skipped for the client's Maximum Packet Size
	}{
		{name: "3.1.1", v: 4, pub: []packets.Packet{{Payload: []byte("p1")}},
			check: func(got []packets.Packet) string {
				if p := got[0]; string(p.Payload) != "p1" || p.FixedHeader.Retain || p.FixedHeader.Qos != 0 {
					return fmt.Sprintf("%q retain %v qos %d", p.Payload, p.FixedHeader.Retain, p.FixedHeader.Qos)
				}
				return ""
			}},
		{name: "5, nothing more", v: 5, pub: []packets.Packet{{Payload: []byte("p2")}},
			check: func(got []packets.Packet) string {
				if p := got[0]; string(p.Payload) != "p2" || fmt.Sprint(p.Properties) != fmt.Sprint(packets.Properties{}) {
					return fmt.Sprintf("%q props %+v", p.Payload, p.Properties)
				}
				return ""
			}},
		{name: "5, subscription identifier", v: 5, subP: packets.Properties{SubscriptionIdentifier: []int{7}},
			pub: []packets.Packet{{Payload: []byte("p3")}},
			check: func(got []packets.Packet) string {
				if ids := got[0].Properties.SubscriptionIdentifier; fmt.Sprint(ids) != "[7]" {
					return fmt.Sprintf("subscription identifiers %v, want [7]", ids)
				}
				return ""
			}},
		{name: "5, topic aliases", v: 5, conn: packets.Properties{TopicAliasMaximum: 2},
			pub: []packets.Packet{{Payload: []byte("a1")}, {Payload: []byte("a2")}},
			check: func(got []packets.Packet) string {
				for _, p := range got {
					if p.Properties.TopicAlias == 0 || !p.Properties.TopicAliasFlag {
						return fmt.Sprintf("%q without a topic alias", p.Payload)
					}
				}
				return ""
			}},
		{name: "5, user properties", v: 5,
			pub: []packets.Packet{{Payload: []byte("p4"), Properties: packets.Properties{User: []packets.UserProperty{{Key: "k", Val: "v"}}, ContentType: "text/plain"}}},
			check: func(got []packets.Packet) string {
				if p := got[0].Properties; len(p.User) != 1 || p.User[0].Key != "k" || p.ContentType != "text/plain" {
					return fmt.Sprintf("props %+v", p)
				}
				return ""
			}},
		{name: "5, message expiry", v: 5,
			pub: []packets.Packet{{Payload: []byte("p5"), Properties: packets.Properties{MessageExpiryInterval: 100}}},
			check: func(got []packets.Packet) string {
				if e := got[0].Properties.MessageExpiryInterval; e == 0 || e > 100 {
					return fmt.Sprintf("expiry interval %d", e)
				}
				return ""
			}},
		{name: "5, Maximum Packet Size", v: 5, conn: packets.Properties{MaximumPacketSize: 64}, skips: 1,
			pub: []packets.Packet{{Payload: bytes.Repeat([]byte("x"), 100)}, {Payload: []byte("small")}},
			check: func(got []packets.Packet) string {
				if string(got[0].Payload) != "small" {
					return fmt.Sprintf("got %d bytes first, want the small one (the large one skipped)", len(got[0].Payload))
				}
				return ""
			}},
		{name: "5, retained, Retain As Published", v: 5, opts: func(s *packets.Subscription) { s.RetainAsPublished = true },
			pub: []packets.Packet{{FixedHeader: packets.FixedHeader{Retain: true}, Payload: []byte("r1")}},
			check: func(got []packets.Packet) string {
				if !got[0].FixedHeader.Retain {
					return "a retained publish live without its retain flag, to a Retain As Published subscription"
				}
				return ""
			}},
		{name: "3.1.1, retained", v: 4,
			pub: []packets.Packet{{FixedHeader: packets.FixedHeader{Retain: true}, Payload: []byte("r2")}},
			check: func(got []packets.Packet) string {
				if got[0].FixedHeader.Retain {
					return "a retained publish live with its retain flag [MQTT-3.3.1-9]"
				}
				return ""
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "fs" + strings.ReplaceAll(tc.name, " ", "")
			topic := "fq/" + id
			s, _ := x5Dial(t, b, tc.v, id, true, tc.conn)
			opts := qos0
			if tc.opts != nil {
				opts = func(x *packets.Subscription) { qos0(x); tc.opts(x) }
			}
			s.sub(t, tc.subP, x5Sub(topic, opts))
			before := b.stats.TooLarge.Load()
			for _, pk := range tc.pub {
				pk.FixedHeader.Type, pk.TopicName = packets.Publish, topic
				w.write(t, pk)
			}
			var got []packets.Packet
			for range int64(len(tc.pub)) - tc.skips {
				got = append(got, s.publish(t, true))
			}
			if msg := tc.check(got); msg != "" {
				t.Error(msg)
			}
			if n := b.stats.TooLarge.Load() - before; n != tc.skips {
				t.Errorf("%d skipped as too large, want %d", n, tc.skips)
			}
		})
	}
}

// TestPlainQoS0Writers: a plain QoS 0 message to many subscribers, most
// of them written by their writers, not directly (directPerMessage):
// each kind gets what MQTT says, whoever encodes it (sendPlain0 or
// send).
func TestPlainQoS0Writers(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "ww")
	type kind struct {
		name  string
		v     byte
		conn  packets.Properties
		subP  packets.Properties
		check func(p packets.Packet) string
	}
	kinds := []kind{
		{"3.1.1", 4, packets.Properties{}, packets.Properties{}, func(p packets.Packet) string {
			if p.FixedHeader.Retain || p.FixedHeader.Qos != 0 {
				return "retain or QoS"
			}
			return ""
		}},
		{"identifier", 5, packets.Properties{}, packets.Properties{SubscriptionIdentifier: []int{9}}, func(p packets.Packet) string {
			if fmt.Sprint(p.Properties.SubscriptionIdentifier) != "[9]" {
				return fmt.Sprintf("subscription identifiers %v", p.Properties.SubscriptionIdentifier)
			}
			return ""
		}},
		{"alias", 5, packets.Properties{TopicAliasMaximum: 3}, packets.Properties{}, func(p packets.Packet) string {
			if p.Properties.TopicAlias == 0 {
				return "no topic alias"
			}
			return ""
		}},
		{"small", 5, packets.Properties{MaximumPacketSize: 64}, packets.Properties{}, func(p packets.Packet) string {
			if len(p.Payload) > 10 {
				return fmt.Sprintf("a %d-byte payload past the Maximum Packet Size", len(p.Payload))
			}
			return ""
		}},
	}
	const each = 6
	type peer struct {
		k kind
		p *x5Peer
	}
	var peers []peer
	for _, k := range kinds {
		for i := range each {
			p, _ := x5Dial(t, b, k.v, fmt.Sprintf("ws-%s-%d", k.name, i), true, k.conn)
			p.sub(t, k.subP, x5Sub("wq/t", func(s *packets.Subscription) { s.Qos = 0 }))
			peers = append(peers, peer{k, p})
		}
	}
	before := b.stats.TooLarge.Load()
	payloads := []string{"one", strings.Repeat("x", 100), "two", "three"}
	for _, pl := range payloads {
		w.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "wq/t", Payload: []byte(pl)})
	}
	for _, pr := range peers {
		for _, pl := range payloads {
			if pr.k.name == "small" && len(pl) > 10 {
				continue // skipped for its Maximum Packet Size
			}
			p := pr.p.publish(t, true)
			if string(p.Payload) != pl || p.TopicName != "wq/t" {
				t.Fatalf("%s: got %q on %q, want %q", pr.k.name, p.Payload, p.TopicName, pl)
			}
			if msg := pr.k.check(p); msg != "" {
				t.Errorf("%s: %s", pr.k.name, msg)
			}
		}
	}
	if n := b.stats.TooLarge.Load() - before; n != each {
		t.Errorf("%d skipped as too large, want %d", n, each)
	}
}
