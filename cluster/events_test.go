package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// testEvents: an event published on node 0 reaches nodes 1 and 2, in
// order, and not node 0 itself.
func testEvents(t *testing.T, c *testCluster) {
	type got struct {
		mu     sync.Mutex
		events []Event
		bad    []error
	}
	gots := make([]*got, len(c.nodes))
	for i, tn := range c.nodes {
		g := &got{}
		gots[i] = g
		ev := NewEvents(tn.nc, "", tn.name)
		err := ev.Receive(func(origin string, e Event) {
			g.mu.Lock()
			g.events = append(g.events, e)
			g.mu.Unlock()
		}, func(err error) {
			g.mu.Lock()
			g.bad = append(g.bad, err)
			g.mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ev.Close() })
		if err := tn.nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	count := func(i int) int {
		gots[i].mu.Lock()
		defer gots[i].mu.Unlock()
		return len(gots[i].events)
	}
	pub := NewEvents(c.nodes[0].nc, "", c.nodes[0].name)
	// Core NATS drops what is published before a route knows of the
	// interest: probe until both peers hear.
	deadline := time.Now().Add(20 * time.Second)
	for count(1) == 0 || count(2) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no probe crossed in 20 s: %d, %d", count(1), count(2))
		}
		if err := pub.Publish(Event{Topic: "probe"}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A malformed message on the subject is reported and dropped.
	if err := c.nodes[0].nc.Publish(DefaultEventSubject, []byte{9, 9}); err != nil {
		t.Fatal(err)
	}
	const n = 100
	for k := range n {
		e := Event{Topic: fmt.Sprintf("ev/%d", k), Payload: []byte(fmt.Sprint(k)), QoS: byte(k % 3), Props: []byte{byte(k)}}
		if err := pub.Publish(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Publish(Event{Topic: "end"}); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{1, 2} {
		for {
			g := gots[i]
			g.mu.Lock()
			evs := g.events
			g.mu.Unlock()
			if len(evs) > 0 && evs[len(evs)-1].Topic == "end" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d: %d events, no end", i, len(evs))
			}
			time.Sleep(5 * time.Millisecond)
		}
		g := gots[i]
		g.mu.Lock()
		var evs []Event
		for _, e := range g.events {
			if e.Topic != "probe" && e.Topic != "end" {
				evs = append(evs, e)
			}
		}
		bad := g.bad
		g.mu.Unlock()
		if len(evs) != n {
			t.Fatalf("node %d: %d events, want %d", i, len(evs), n)
		}
		for k, e := range evs {
			if e.Topic != fmt.Sprintf("ev/%d", k) || string(e.Payload) != fmt.Sprint(k) || e.QoS != byte(k%3) || !bytes.Equal(e.Props, []byte{byte(k)}) {
				t.Fatalf("node %d: event %d is %+v", i, k, e)
			}
		}
		// The malformed message came from no node (no origin header).
		if len(bad) != 1 || !errors.Is(bad[0], ErrEvent) {
			t.Errorf("node %d: malformed reports %v, want one ErrEvent", i, bad)
		}
	}
	if count(0) != 0 {
		t.Errorf("node 0 received %d of its own events", count(0))
	}
}

// FuzzDecodeEvent: any message is an event or refused, never a panic;
// an event encodes back to the same bytes.
func FuzzDecodeEvent(f *testing.F) {
	f.Add(encodeEvent(Event{Topic: "a/b", Payload: []byte("ON"), QoS: 1, Props: []byte{1, 2}}))
	f.Add([]byte{eventVersion, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := decodeEvent(data)
		if err != nil {
			return
		}
		back, err := decodeEvent(encodeEvent(e))
		if err != nil || back.Topic != e.Topic || !bytes.Equal(back.Payload, e.Payload) || back.QoS != e.QoS || !bytes.Equal(back.Props, e.Props) {
			t.Fatalf("round trip %+v: %+v %v", e, back, err)
		}
	})
}
