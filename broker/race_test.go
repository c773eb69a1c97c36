package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/wire"
)

// TestSnapshotDeltaRace: a writer publishes continuously while 100 clients
// $sync; every client's snapshot plus deltas must equal the final store.
func TestSnapshotDeltaRace(t *testing.T) {
	b := start(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := mote(t, b, "writer")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(1, 1))
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			dev := fmt.Sprintf("d%d", r.IntN(30))
			var err error
			switch r.IntN(4) {
			case 0: // a whole device tree, replacing the old one
				err = w.PublishTree(ctx, "dev/"+dev, map[string]any{"state": i, "n": r.IntN(5)}, client.PublishOptions{QoS: 1, Retain: true, Replace: true})
			case 1: // a plain row
				err = w.Publish(ctx, "dev/"+dev+"/state", []byte(fmt.Sprint(i)), client.PublishOptions{QoS: 0, Retain: true})
			case 2: // a delete
				err = w.Publish(ctx, "dev/"+dev+"/n", nil, client.PublishOptions{QoS: 1, Retain: true})
			case 3: // $set over all states
				err = w.Set(ctx, "dev/+/state", []byte(fmt.Sprint(-i)), 1)
			}
			if err != nil {
				t.Error(err)
				return
			}
		}
	}()
	mirrors := make([]*client.Mirror, 100)
	var mwg sync.WaitGroup
	for i := range mirrors {
		mwg.Add(1)
		go func() {
			defer mwg.Done()
			c, err := client.Dial(ctx, b.TCPAddr(), client.Options{ClientID: fmt.Sprint("m", i), CleanStart: true})
			if err != nil {
				t.Error(err)
				return
			}
			t.Cleanup(func() { c.Close() })
			filter := []string{"dev/+/state", "dev/#", "dev/+/+"}[i%3]
			m, err := c.Mirror(ctx, filter, client.Codec(i%2), 1, nil)
			if err != nil {
				t.Error(err)
				return
			}
			mirrors[i] = m
		}()
		time.Sleep(2 * time.Millisecond)
	}
	waitGroup(t, "mirrors", &mwg)
	time.Sleep(100 * time.Millisecond)
	close(stop)
	waitGroup(t, "writers", &wg)
	if t.Failed() {
		return
	}
	// A last QoS 1 publish: once it is in every mirror, everything before it is too.
	if err := w.PublishTree(ctx, "dev/zz", map[string]any{"state": "end", "n": 0}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	settle(t, b)
	for i, m := range mirrors {
		filter := []string{"dev/+/state", "dev/#", "dev/+/+"}[i%3]
		want := decodeJSON(t, b.snapshot(filter))
		err := m.Wait(ctx, func(doc any) bool { return reflect.DeepEqual(normal(t, doc), want) })
		if err != nil {
			var got any
			m.Get(func(doc any) { got = normal(t, doc) }) // (no Fatal under the mirror's lock)
			t.Fatalf("mirror %d (%s, resyncs %d): %v\nwant %v", i, filter, m.Resyncs(), got, want)
		}
	}
}

// snapshot reads a JSON snapshot through the door.
func (b *Broker) snapshot(filter string) []byte {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	s, _, err := b.Tree(ctx, systemPrincipal, filter, wire.CodecJSON)
	if err != nil {
		panic(err)
	}
	return s
}

func decodeJSON(t testing.TB, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// normal turns a client's decoded tree into what encoding/json decodes.
func normal(t testing.TB, doc any) any {
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return decodeJSON(t, b)
}

// TestTreeQoS1Resend: a QoS 1 delta that was not acknowledged is resent
// when a persistent session comes back.
func TestTreeQoS1Resend(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	expiry := uint32(300)
	got := make(chan *paho5.Publish, 10)
	recv := paho5.ClientConfig{EnableManualAcknowledgment: true, OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil }, // never acked
	}}
	c := dial5(t, b, "keeper", recv, &paho5.Connect{CleanStart: true, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}})
	if _, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "$tree/k/+", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	w := mote(t, b, "w")
	if err := w.PublishTree(ctx, "k", map[string]any{"a": 1}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	var first *paho5.Publish
	select {
	case first = <-got:
	case <-time.After(testTimeout):
		t.Fatal("no delta")
	}
	if first.QoS != 1 || !jsonEqual(t, string(first.Payload), `{"a":1}`) {
		t.Fatalf("delta %+v", first)
	}
	c.TerminateConnectionForTest()
	time.Sleep(100 * time.Millisecond)
	again := make(chan *paho5.Publish, 10)
	dial5(t, b, "keeper", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { again <- p.Packet; return true, nil },
	}}, &paho5.Connect{CleanStart: false, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}})
	select {
	case p := <-again:
		if p.Topic != "$tree/k/+" || p.PacketID != first.PacketID || !jsonEqual(t, string(p.Payload), `{"a":1}`) {
			t.Fatalf("resent %+v", p)
		}
	case <-time.After(testTimeout):
		t.Fatal("unacknowledged delta not resent")
	}
	// The resumed session still has its tree subscription, registered again
	// just after the CONNACK (deltas are not kept for a session while it is
	// away: its $sync subscriptions get a fresh snapshot instead).
	waitTreeSubs(t, b, 1)
	if err := w.PublishTree(ctx, "k", map[string]any{"b": 2}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-again:
		if !jsonEqual(t, string(p.Payload), `{"b":2}`) {
			t.Fatalf("delta after resume %s", p.Payload)
		}
	case <-time.After(testTimeout):
		t.Fatal("no delta after resume")
	}
}

// TestSnapshotParts: a snapshot over the client's Maximum Packet Size is
// split by subtree; the parts together are the snapshot.
func TestSnapshotParts(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	w := mote(t, b, "w")
	devs := map[string]any{}
	for i := range 300 {
		devs[fmt.Sprintf("d%03d", i)] = map[string]any{"state": fmt.Sprintf("%030d", i), "n": i}
	}
	if err := w.PublishTree(ctx, "dev", devs, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	settle(t, b)
	max := uint32(2000)
	got := make(chan *paho5.Publish, 100)
	c := dial5(t, b, "small", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
	}}, &paho5.Connect{CleanStart: true, Properties: &paho5.ConnectProperties{MaximumPacketSize: &max}})
	if _, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "$sync/dev/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	merged := map[string]any{}
	for n, total := 0, -1; total < 0 || n < total; n++ {
		select {
		case p := <-got:
			var i int
			fmt.Sscanf(p.Properties.User.Get("mote-part"), "%d/%d", &i, &total)
			if p.Properties.User.Get("mote-seq") != "0" || total < 2 || i != n+1 || len(p.Payload) > int(max) {
				t.Fatalf("part %d: %q seq %q, %d bytes", n, p.Properties.User.Get("mote-part"), p.Properties.User.Get("mote-seq"), len(p.Payload))
			}
			var part map[string]any
			json.Unmarshal(p.Payload, &part)
			for k, v := range part {
				merged[k] = v
			}
		case <-time.After(testTimeout):
			t.Fatal("parts missing")
		}
	}
	if !reflect.DeepEqual(merged, normal(t, devs)) {
		t.Errorf("merged parts differ from the rows")
	}
}

// TestPublishAfterSuback: a publish made after the subscriber got its
// SUBACK reaches the new tree subscription, every time: the subscription
// is registered before mochi writes the SUBACK (and the first one lets
// plain events into the loop at once). Each round starts from no tree
// subscription at all.
func TestPublishAfterSuback(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	got := make(chan *paho5.Publish, 10)
	sub := dial5(t, b, "sub", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
	}}, nil)
	pub := dial5(t, b, "pub", paho5.ClientConfig{}, nil)
	for i := range 200 {
		filter := fmt.Sprintf("$tree/ev%d/+", i)
		if _, err := sub.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: filter, QoS: 1}}}); err != nil {
			t.Fatal(err)
		}
		event := i%2 == 0 // alternately a plain event and a tree publish
		topic, payload := fmt.Sprintf("ev%d/x", i), []byte("1")
		if !event {
			topic, payload = fmt.Sprintf("$tree/ev%d", i), []byte(`{"x":1}`)
		}
		if _, err := pub.Publish(ctx, &paho5.Publish{Topic: topic, QoS: 1, Payload: payload}); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-got:
			if p.Topic != filter || !jsonEqual(t, string(p.Payload), `{"x":1}`) {
				t.Fatalf("round %d: got %s %s", i, p.Topic, p.Payload)
			}
		case <-time.After(testTimeout):
			t.Fatalf("round %d (event %v): the publish after the SUBACK never arrived", i, event)
		}
		if _, err := sub.Unsubscribe(ctx, &paho5.Unsubscribe{Topics: []string{filter}}); err != nil {
			t.Fatal(err)
		}
		waitTreeSubs(t, b, 0)
	}
}

// connOf finds the broker's connection state of a client id.
func (b *Broker) connOf(t testing.TB, id string) *conn {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for { // a client has its CONNACK a moment before the broker files its connection
		if c := b.connByID(id); c != nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection for %s", id)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFoldQueuedDeltas: deltas that wait for a client's writer fold into
// one: its copy ends equal to the rows, with mote-seq contiguous (no
// resync), in one message instead of fifty.
func TestFoldQueuedDeltas(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	w := mote(t, b, "w")
	if err := w.PublishTree(ctx, "f", map[string]any{"a": map[string]any{"x": 1}, "b": map[string]any{"x": 2}}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	r := mote(t, b, "r")
	var msgs int
	var mu sync.Mutex
	m, err := r.Mirror(ctx, "f/#", client.CBOR, 1, func(any) { mu.Lock(); msgs++; mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	c := b.connOf(t, "r")
	c.q.hold() // the writer waits: every delta below stays queued
	for i := range 50 {
		tree := map[string]any{"a": map[string]any{"x": i}, fmt.Sprintf("n%d", i%7): map[string]any{"y": i, "z": nil}}
		switch i {
		case 0:
			tree["first"] = map[string]any{"only": true} // in the first queued delta alone
		case 30:
			tree["b"] = nil // a delete among them
		}
		if err := w.PublishTree(ctx, "f", tree, client.PublishOptions{QoS: byte(i % 2), Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	settle(t, b)
	c.q.release()
	want := decodeJSON(t, b.snapshot("f/#"))
	if err := m.Wait(ctx, func(doc any) bool { return reflect.DeepEqual(normal(t, doc), want) }); err != nil {
		m.Get(func(doc any) { t.Fatalf("copy %v\nwant %v", normal(t, doc), want) })
	}
	// Wait returns once the copy is whole, maybe before onChange has run
	// for the message that made it so.
	for deadline := time.Now().Add(testTimeout); ; time.Sleep(time.Millisecond) {
		mu.Lock()
		n := msgs
		mu.Unlock()
		if n >= 2 || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if msgs != 2 || m.Resyncs() != 0 { // the snapshot and one folded delta
		t.Errorf("%d messages (snapshot included), %d resyncs; want 2 and 0", msgs, m.Resyncs())
	}
	if b.stats.Folded.Load() == 0 { // (publishes waiting together in the loop fold there already)
		t.Error("no delta folded in the queue")
	}
}
