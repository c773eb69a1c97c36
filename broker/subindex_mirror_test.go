package broker

import (
	"fmt"
	"slices"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// mirrorDiff compares, for each topic, the clients (and their QoS) that the
// broker's index and mochi's TopicsIndex match; "" if they agree.
func mirrorDiff(b *Broker, topics ...string) string {
	for _, topic := range topics {
		subs := b.server.Topics.Subscribers(topic)
		subs.SelectShared()
		subs.MergeSharedSelected()
		var want, got []string
		for client, s := range subs.Subscriptions {
			want = append(want, fmt.Sprintf("%s q%d", client, s.Qos))
		}
		sc := b.plainIdx.match(topic, "")
		for _, m := range sc.out {
			got = append(got, fmt.Sprintf("%s q%d", m.client, m.qos))
		}
		sc.release()
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			return fmt.Sprintf("topic %q: index %q, mochi %q", topic, got, want)
		}
	}
	return ""
}

// TestSubIndexMirrorsMochi: the broker's index of plain subscriptions
// follows mochi's through SUBSCRIBE, UNSUBSCRIBE, a clean session's end, a
// persistent session's resumption, a clean start over a persistent
// session, and Sessions (front ends).
func TestSubIndexMirrorsMochi(t *testing.T) {
	b := start(t, Options{})
	topics := []string{"m/a", "m/b", "m", "x/y", "$SYS/m"}
	check := func(step string) {
		t.Helper()
		if d := mirrorDiff(b, topics...); d != "" {
			t.Fatalf("%s: %s", step, d)
		}
	}
	gone := func(id string) {
		t.Helper()
		waitFor(t, id+"'s session to end", func() bool { _, ok := b.server.Clients.Get(id); return !ok })
	}

	p := dial3(t, b, "persist", false)
	p.sub(t, "m/a", 1)
	p.sub(t, "m/+", 0)
	p.sub(t, "$share/g/m/#", 2)
	c := dial3(t, b, "clean", true)
	c.sub(t, "m/#", 2)
	c.sub(t, "#", 0)
	check("subscribed")
	if sc := b.plainIdx.match("m/a", ""); len(sc.out) != 2 {
		t.Fatalf("m/a matches %d clients, want 2", len(sc.out))
	} else {
		sc.release()
	}

	if tok := p.Unsubscribe("m/+"); !waitTok(t, "unsubscribe", tok) {
		t.Fatal(tok.Error())
	}
	check("unsubscribed")

	c.Disconnect(0) // a clean session ends: mochi unsubscribes it
	gone("clean")
	check("clean session ended")
	if sc := b.plainIdx.match("x/y", ""); len(sc.out) != 0 {
		t.Fatalf("x/y still matches %q after its only subscriber's clean session ended", sc.text())
	}

	p.Disconnect(0)
	p2 := dial3(t, b, "persist", false) // resumes: the subscriptions stay
	check("persistent session resumed")
	if sc := b.plainIdx.match("m/a", ""); len(sc.out) != 1 {
		t.Fatalf("m/a matches %d clients after the resumption, want 1", len(sc.out))
	} else {
		sc.release()
	}
	p2.Disconnect(0)
	dial3(t, b, "persist", true) // a clean start drops them
	check("clean start")
	if sc := b.plainIdx.match("m/a", ""); len(sc.out) != 0 {
		t.Fatalf("m/a matches %q after a clean start", sc.text())
	}

	s := b.Open(Principal{ClientID: "front"}, func(Delivery) {})
	if err := s.Subscribe("x/+", 1); err != nil {
		t.Fatal(err)
	}
	check("session subscribed")
	s.Unsubscribe("x/+")
	check("session unsubscribed")
	s.Close()
	if !b.plainIdx.isEmpty() {
		t.Fatalf("the index holds %q with no subscription left", b.plainIdx.dump())
	}
}

// TestMirrorUnsubscribedLate: the hook of an old connection's session
// ending (mochi's UnsubscribeClient) that runs after a newer connection of
// the same client id subscribed the filter again leaves the filter filed.
func TestMirrorUnsubscribedLate(t *testing.T) {
	b := start(t, Options{})
	sub := packets.Subscription{Filter: "late/#", Qos: 1}
	old := b.server.NewClient(nil, "t", "late", false)
	gone := packets.Packet{Filters: packets.Subscriptions{sub}}

	b.plainIdx.subscribe("late", sub) // the old connection's filing
	b.mirrorUnsubscribed(old, gone)   // its session ends, no newer connection
	if sc := b.plainIdx.match("late/x", ""); len(sc.out) != 0 {
		t.Fatalf("late/x matches %q after the only session ended", sc.text())
	}

	cur := b.server.NewClient(nil, "t", "late", false)
	b.server.Clients.Add(cur)
	t.Cleanup(func() { b.server.Clients.Delete("late") })
	cur.State.Subscriptions.Add(sub.Filter, sub)
	b.plainIdx.subscribe("late", sub) // the newer connection's SUBSCRIBE
	b.mirrorUnsubscribed(old, gone)   // the old session's end, late
	sc := b.plainIdx.match("late/x", "")
	defer sc.release()
	if len(sc.out) != 1 {
		t.Fatalf("late/x matches %q, want the newer connection's subscription", sc.text())
	}
}
