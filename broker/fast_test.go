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
		max  uint64
	}{
		{"dev/%d/state/on", 900},
		{"a/b/c/d/%d/e/f", 900},
		{"home/%d", 420}, // N a leaf of a node with many: its kids map, as before
	} {
		const n = 10000
		var x subIndex
		x.subscribe("warm", packets.Subscription{Filter: fmt.Sprintf(tc.form, -1)})
		before := heapInUse()
		for i := range n {
			x.subscribe(fmt.Sprintf("c%d", i), packets.Subscription{Filter: fmt.Sprintf(tc.form, i)})
		}
		per := (heapInUse() - before) / n
		t.Logf("%s: %d bytes a subscription", tc.form, per)
		if per > tc.max {
			t.Errorf("%s: %d bytes a subscription, more than %d", tc.form, per, tc.max)
		}
		runtime.KeepAlive(&x)
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
