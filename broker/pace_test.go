package broker

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
)

// Paced deltas, SPEC §2: at most one message per interval, the snapshot
// never delayed, an idle subscription served at once, the same final tree.
// The box that runs these is noisy: they bound message counts by the time
// that really passed, and never bound how long anything took.

// merge1 applies a JSON delta of a one-'+' filter to doc (null deletes).
func merge1(t testing.TB, doc map[string]any, payload []byte) {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal(payload, &d); err != nil {
		t.Fatalf("delta %q: %v", payload, err)
	}
	for k, v := range d {
		if v == nil {
			delete(doc, k)
		} else {
			doc[k] = v
		}
	}
}

// treeNow is the tree a snapshot of filter would carry now.
func treeNow(t testing.TB, b *Broker, filter string) map[string]any {
	t.Helper()
	raw, _, err := b.Tree(testCtx(t), systemPrincipal, filter, 0)
	if err != nil {
		t.Fatal(err)
	}
	doc := map[string]any{}
	merge1(t, doc, raw)
	return doc
}

// mergedUntil merges a subscriber's messages until its copy equals want.
func (c *v3) mergedUntil(t testing.TB, want map[string]any) []msg {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		c.mu.Lock()
		got := append([]msg(nil), c.msgs...)
		c.mu.Unlock()
		doc := map[string]any{}
		for _, m := range got {
			merge1(t, doc, []byte(m.payload))
		}
		if reflect.DeepEqual(doc, want) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("copy %v after %d messages, want %v", doc, len(got), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// paced reports how many subscriptions hold changes, and for how many
// owners, as the loop sees them.
func paced(t testing.TB, b *Broker) (subs, owners int) {
	t.Helper()
	if !b.onLoop(testCtx(t).Done(), func() { subs, owners = len(b.pace.subs), len(b.pace.owned) }) {
		t.Fatal("loop gone")
	}
	return subs, owners
}

// queued is what a connection's queue counts now (items and held changes).
func queued(c *conn) int {
	c.q.mu.Lock()
	defer c.q.mu.Unlock()
	return c.q.bytes
}

// TestPacedDeltas: a burst of 200 changes (sets and deletions) over about
// a second reaches a .250ms subscriber in a few messages, at most one per
// 250 ms of the time that passed, and leaves it with the same tree as an
// unpaced subscriber.
func TestPacedDeltas(t *testing.T) {
	b := start(t, Options{})
	dev := dial3(t, b, "dev", true)
	for i := range 10 {
		dev.pub(t, fmt.Sprintf("dev/d%d/state", i), 1, true, "0")
	}
	settle(t, b)
	fast := dial3(t, b, "fast", true)
	fast.sub(t, "$sync/dev/+/state", 1)
	fast.wait(t, 1)
	slow := dial3(t, b, "slow", true)
	start := time.Now()
	slow.sub(t, "$sync.250ms/dev/+/state", 1)
	slow.wait(t, 1) // the snapshot
	for i := range 200 {
		payload := strconv.Itoa(i)
		if i%7 == 3 {
			payload = "" // deleted: null in the delta
		}
		dev.pub(t, fmt.Sprintf("dev/d%d/state", i%10), 0, true, payload)
		time.Sleep(5 * time.Millisecond)
	}
	dev.pub(t, "dev/d9/state", 1, true, "last")
	settle(t, b)
	want := treeNow(t, b, "dev/+/state")
	fast.mergedUntil(t, want)
	got := slow.mergedUntil(t, want)
	elapsed := time.Since(start)
	// The snapshot, then at most one delta per 250 ms (+1: the first change
	// may find the subscription idle only at the end of a window).
	if max := 2 + int(elapsed/(250*time.Millisecond)); len(got) > max {
		t.Errorf("%d messages in %v, want at most %d", len(got), elapsed, max)
	}
	if len(got) < 2 {
		t.Errorf("%d messages: no delta", len(got))
	}
	t.Logf("paced: %d messages in %v", len(got), elapsed)
	slow.quiet(t, len(got))
}

// TestPacedSnapshotAndIdle: with a long interval, the snapshot is not held
// back; a change after it is (the subscription is not idle); a $tree
// subscription, idle since it began, gets its first change at once; and a
// $sync subscription idle for its interval gets the next change at once.
func TestPacedSnapshotAndIdle(t *testing.T) {
	b := start(t, Options{})
	dev := dial3(t, b, "dev", true)
	dev.pub(t, "x/a", 1, true, "1")
	settle(t, b)
	app := dial3(t, b, "app", true)
	// An hour-long interval: anything that arrives within testTimeout was
	// not paced.
	app.sub(t, "$sync.3600000ms/x/+", 1)
	if m := app.wait(t, 1)[0]; !jsonEqual(t, m.payload, `{"a":1}`) {
		t.Fatalf("snapshot %+v", m)
	}
	dev.pub(t, "x/a", 1, true, "2")
	settle(t, b)
	if n, _ := paced(t, b); n != 1 {
		t.Fatalf("%d subscriptions hold changes, want 1", n)
	}
	app.quiet(t, 1)

	ev := dial3(t, b, "ev", true)
	ev.sub(t, "$tree.3600000ms/x/+", 1)
	dev.pub(t, "x/b", 1, true, "3")
	if m := ev.wait(t, 1)[0]; !jsonEqual(t, m.payload, `{"b":3}`) {
		t.Fatalf("first delta %+v", m)
	}
	dev.pub(t, "x/b", 1, true, "4")
	settle(t, b)
	if n, _ := paced(t, b); n != 2 {
		t.Fatalf("%d subscriptions hold changes, want 2", n)
	}

	idle := dial3(t, b, "idle", true)
	idle.sub(t, "$sync.300ms/x/+", 1)
	idle.wait(t, 1)
	time.Sleep(400 * time.Millisecond) // idle for longer than its interval
	dev.pub(t, "x/a", 1, true, "5")
	settle(t, b)
	if n, _ := paced(t, b); n != 2 { // app and ev still hold theirs; idle holds nothing
		t.Fatalf("%d subscriptions hold changes, want 2", n)
	}
	if m := idle.wait(t, 2)[1]; !jsonEqual(t, m.payload, `{"a":5}`) {
		t.Fatalf("delta %+v", m)
	}
}

// TestPacedProperty: the MQTT 5 form, user property mote-interval with
// mote=sync: fewer messages, mote-seq contiguous, the delta's QoS the
// highest of its rows capped by the granted QoS; filed so that a resumed
// session keeps it paced; UNSUBSCRIBE of the plain filter removes it.
func TestPacedProperty(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	got := make(chan *paho5.Publish, 1000)
	c := dial5(t, b, "p5", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
	}}, nil)
	dev := dial3(t, b, "dev", true)
	dev.pub(t, "dev/a/state", 1, true, "0")
	settle(t, b)
	start := time.Now()
	sub := &paho5.Subscribe{
		Subscriptions: []paho5.SubscribeOptions{{Topic: "dev/+/state", QoS: 1}},
		Properties:    &paho5.SubscribeProperties{User: paho5.UserProperties{{Key: "mote", Value: "sync"}, {Key: "mote-interval", Value: "200"}}},
	}
	if sa, err := c.Subscribe(ctx, sub); err != nil || sa.Reasons[0] != 1 {
		t.Fatalf("SUBACK %+v, %v", sa, err)
	}
	cl := b.connOf(t, "p5").out.(*mqttOut).cl
	if _, ok := cl.State.Subscriptions.Get("$sync.prop.json.200ms/dev/+/state"); !ok {
		t.Errorf("filed as %v", cl.State.Subscriptions.GetAll())
	}
	for i := range 100 {
		dev.pub(t, fmt.Sprintf("dev/%c/state", 'a'+i%5), 0, true, strconv.Itoa(i))
		time.Sleep(5 * time.Millisecond)
	}
	dev.pub(t, "dev/e/state", 2, true, "last") // QoS 2 to a QoS 1 subscription
	settle(t, b)
	want := treeNow(t, b, "dev/+/state")
	doc := map[string]any{}
	var msgs []*paho5.Publish
	for !reflect.DeepEqual(doc, want) {
		select {
		case p := <-got:
			if p.Topic != "dev/+/state" || p.Properties.User.Get("mote-seq") != strconv.Itoa(len(msgs)) {
				t.Fatalf("message %d: %s mote-seq %s", len(msgs), p.Topic, p.Properties.User.Get("mote-seq"))
			}
			msgs = append(msgs, p)
			merge1(t, doc, p.Payload)
		case <-ctx.Done():
			t.Fatalf("copy %v after %d messages, want %v", doc, len(msgs), want)
		}
	}
	elapsed := time.Since(start)
	if max := 2 + int(elapsed/(200*time.Millisecond)); len(msgs) > max {
		t.Errorf("%d messages in %v, want at most %d", len(msgs), elapsed, max)
	}
	for i, p := range msgs[1:] {
		want := byte(0) // rows published at QoS 0
		if i == len(msgs)-2 {
			want = 1 // holds the QoS 2 row: capped by the granted QoS
		}
		if p.QoS != want {
			t.Errorf("delta %d QoS %d, want %d", i+1, p.QoS, want)
		}
	}
	if _, err := c.Unsubscribe(ctx, &paho5.Unsubscribe{Topics: []string{"dev/+/state"}}); err != nil {
		t.Fatal(err)
	}
	waitTreeSubs(t, b, 0)
	if n := cl.State.Subscriptions.Len(); n != 0 {
		t.Errorf("left in the session: %v", cl.State.Subscriptions.GetAll())
	}
}

// TestPacedPropertyResumed: a paced property-form subscription comes back
// paced with a resumed session, and a later mote=tree subscription to the
// same filter replaces it, in the session too.
func TestPacedPropertyResumed(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	expiry := uint32(600)
	cp := func() *paho5.Connect {
		return &paho5.Connect{CleanStart: false, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}}
	}
	c := dial5(t, b, "keep", paho5.ClientConfig{}, cp())
	if _, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "r/+", QoS: 1}},
		Properties: &paho5.SubscribeProperties{User: paho5.UserProperties{{Key: "mote", Value: "tree"}, {Key: "mote-interval", Value: "3600000"}}}}); err != nil {
		t.Fatal(err)
	}
	waitTreeSubs(t, b, 1)
	c.Disconnect(&paho5.Disconnect{})
	waitTreeSubs(t, b, 0)
	got := make(chan *paho5.Publish, 10)
	c = dial5(t, b, "keep", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
	}}, cp())
	waitTreeSubs(t, b, 1)
	dev := dial3(t, b, "dev", true)
	dev.pub(t, "r/a", 1, true, "1") // idle: at once
	select {
	case p := <-got:
		if !jsonEqual(t, string(p.Payload), `{"a":1}`) {
			t.Fatalf("delta %s", p.Payload)
		}
	case <-ctx.Done():
		t.Fatal("no delta")
	}
	dev.pub(t, "r/a", 1, true, "2") // held: still paced
	settle(t, b)
	if n, _ := paced(t, b); n != 1 {
		t.Fatalf("%d subscriptions hold changes, want 1", n)
	}
	if _, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "r/+", QoS: 1}},
		Properties: &paho5.SubscribeProperties{User: paho5.UserProperties{{Key: "mote", Value: "tree"}}}}); err != nil {
		t.Fatal(err)
	}
	waitTreeSubs(t, b, 1)
	cl := b.connOf(t, "keep").out.(*mqttOut).cl
	if all := cl.State.Subscriptions.GetAll(); len(all) != 1 {
		t.Errorf("session subscriptions %v, want one", all)
	}
	if n, owners := paced(t, b); n != 0 || owners != 0 {
		t.Errorf("%d subscriptions (%d owners) still hold changes after the replacement", n, owners)
	}
	if n := queued(b.connOf(t, "keep")); n != 0 {
		t.Errorf("%d bytes still counted", n)
	}
}

// TestPacedRefused: bad intervals are refused in the SUBACK (0x8F, MQTT
// 3.1.1 0x80); the other filters of the packet are served as usual.
func TestPacedRefused(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	c := dial5(t, b, "bad", paho5.ClientConfig{}, nil)
	bad := []string{"$sync.0ms/a", "$sync.0250ms/a", "$sync.3600001ms/a", "$sync.-1ms/a", "$sync.250/a",
		"$tree.250ms.250ms/a", "$tree.250ms.100ms/a", "$sync.1e3ms/a"}
	var subs []paho5.SubscribeOptions
	for _, f := range bad {
		subs = append(subs, paho5.SubscribeOptions{Topic: f, QoS: 1})
	}
	subs = append(subs, paho5.SubscribeOptions{Topic: "$sync.250ms/ok", QoS: 1})
	sa, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: subs})
	if sa == nil {
		t.Fatal(err)
	}
	if len(sa.Reasons) != len(subs) {
		t.Fatalf("SUBACK % x for %d filters", sa.Reasons, len(subs))
	}
	for i, code := range sa.Reasons {
		want := byte(0x8F)
		if i == len(bad) {
			want = 1
		}
		if code != want {
			t.Errorf("%s: %#x, want %#x", subs[i].Topic, code, want)
		}
	}
	props := []paho5.UserProperties{
		{{Key: "mote-interval", Value: "250"}}, // without mote
		{{Key: "mote", Value: "sync"}, {Key: "mote-interval", Value: "0"}},
		{{Key: "mote", Value: "sync"}, {Key: "mote-interval", Value: "3600001"}},
		{{Key: "mote", Value: "sync"}, {Key: "mote-interval", Value: "abc"}},
		{{Key: "mote", Value: "sync"}, {Key: "mote-interval", Value: "+5"}},
		{{Key: "mote", Value: "sync"}, {Key: "mote-interval", Value: " 5"}},
		{{Key: "mote", Value: "sync"}, {Key: "mote-interval", Value: "250ms"}},
		{{Key: "mote", Value: "tree"}, {Key: "mote-interval", Value: "250"}, {Key: "mote-interval", Value: "250"}},
	}
	for _, p := range props {
		sa, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "a/+", QoS: 1}},
			Properties: &paho5.SubscribeProperties{User: p}})
		if sa == nil {
			t.Fatal(err)
		}
		if len(sa.Reasons) != 1 || sa.Reasons[0] != 0x8F {
			t.Errorf("%v: SUBACK % x, want 8f", p, sa.Reasons)
		}
	}
	old := dial3(t, b, "old", true)
	for _, f := range []string{"$sync.0ms/a", "$tree.99999999ms/a"} {
		if q := old.sub(t, f, 1); q != 0x80 {
			t.Errorf("3.1.1 %s: SUBACK %#x, want 0x80", f, q)
		}
	}
	waitTreeSubs(t, b, 1) // $sync.250ms/ok alone
}

// TestPacedUnsubscribe: UNSUBSCRIBE while changes are held drops them and
// the bytes they counted, so no delta follows the UNSUBACK; a disconnect
// does the same. The interval is a minute: nothing held falls due during
// the test.
func TestPacedUnsubscribe(t *testing.T) {
	b := start(t, Options{})
	dev := dial3(t, b, "dev", true)
	app := dial3(t, b, "app", true)
	app.sub(t, "$tree.60000ms/u/#", 1)
	gone := dial3(t, b, "gone", true)
	gone.sub(t, "$tree.60000ms/u/#", 1)
	dev.pub(t, "u/a", 1, true, "1") // idle: at once
	app.wait(t, 1)
	gone.wait(t, 1)
	dev.pub(t, "u/a", 1, true, "2")
	dev.pub(t, "u/b", 1, true, `{"big":"`+strings.Repeat("x", 1000)+`"}`)
	settle(t, b)
	if n, owners := paced(t, b); n != 2 || owners != 2 {
		t.Fatalf("%d subscriptions (%d owners) hold changes, want 2 (2)", n, owners)
	}
	ac := b.connOf(t, "app")
	if n := queued(ac); n < 1000 {
		t.Errorf("held changes count %d bytes", n)
	}
	if tok := app.Unsubscribe("$tree.60000ms/u/#"); !waitTok(t, "unsubscribe", tok) {
		t.FailNow()
	}
	settle(t, b) // the loop had the request before the UNSUBACK went out
	if n, owners := paced(t, b); n != 1 || owners != 1 {
		t.Errorf("after UNSUBSCRIBE %d subscriptions (%d owners) hold changes, want 1 (1)", n, owners)
	}
	if n := queued(ac); n != 0 {
		t.Errorf("%d bytes still counted after UNSUBSCRIBE", n)
	}
	gone.Disconnect(0)
	waitTreeSubs(t, b, 0) // the detach is handled
	if n, owners := paced(t, b); n != 0 || owners != 0 {
		t.Errorf("after the disconnect %d subscriptions (%d owners) hold changes", n, owners)
	}
	app.quiet(t, 1)
}

// TestPacedEventsAfterSnapshot: events that came while a paced $sync
// subscription awaited its snapshot are held with what follows, until an
// interval after the snapshot, instead of following it at once.
func TestPacedEventsAfterSnapshot(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	got := make(chan Delivery, 10)
	s := b.Open(Principal{ClientID: "door"}, func(d Delivery) { got <- d })
	defer s.Close()
	s.c.q.hold() // the writer waits: the snapshots wait with it
	for _, f := range []string{"$sync.60000ms/e/+", "$sync.200ms/e/+"} {
		if err := s.Subscribe(f, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Publish(ctx, systemPrincipal, Message{Topic: "e/x", Payload: []byte("ev"), QoS: 1}); err != nil { // an event
		t.Fatal(err)
	}
	settle(t, b)
	s.c.q.release()
	next := func() Delivery {
		select {
		case d := <-got:
			return d
		case <-ctx.Done():
			t.Fatal("nothing delivered")
		}
		return Delivery{}
	}
	seen := map[string][]string{}
	for len(seen["$sync.200ms/e/+"]) < 2 {
		d := next()
		seen[d.Topic] = append(seen[d.Topic], fmt.Sprintf("%d %s", d.Seq(), d.Payload))
	}
	if want := []string{"0 {}", `1 {"x":"ev"}`}; !reflect.DeepEqual(seen["$sync.200ms/e/+"], want) {
		t.Errorf(".200ms: %q, want %q", seen["$sync.200ms/e/+"], want)
	}
	if want := []string{"0 {}"}; !reflect.DeepEqual(seen["$sync.60000ms/e/+"], want) {
		t.Errorf(".60000ms: %q, want %q (the event held)", seen["$sync.60000ms/e/+"], want)
	}
	if n, _ := paced(t, b); n != 1 {
		t.Errorf("%d subscriptions hold changes, want 1", n)
	}
}
