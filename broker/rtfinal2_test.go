package broker

import (
	"fmt"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestSubIndexFlapBounded: one client subscribing and unsubscribing one
// filter 100,000 times while other clients hold the node keeps the node's
// list and position map at the holders' size (no growth per flap), for a
// plain and a shared filter; when the holders leave, the trie is pruned.
func TestSubIndexFlapBounded(t *testing.T) {
	for _, filter := range []string{"f/+/x", "$share/g/f/+/x"} {
		t.Run(filter, func(t *testing.T) {
			x := &subIndex{}
			x.scratch.New = func() any { return &subScratch{x: x} }
			const holders = 40 // past one leaf
			for i := range holders {
				x.subscribe(fmt.Sprint("h", i), packets.Subscription{Filter: filter})
			}
			for range 100_000 {
				if !x.subscribe("flap", packets.Subscription{Filter: filter, Qos: 1}) {
					t.Fatal("a flap's subscription was not new")
				}
				if !x.unsubscribe(filter, "flap") {
					t.Fatal("a flap's unsubscription found nothing")
				}
			}
			n := x.node(t, "f/+/x")
			if l := n.subs.Load(); l.len() > 0 && (l.len() != holders || len(n.pos) != holders || l.depth != 1 || len(l.root.kids) != (holders+plistWidth-1)/plistWidth) {
				t.Fatalf("after the flaps: %d entries (%d levels), %d positions; want %d entries", l.len(), l.depth+1, len(n.pos), holders)
			}
			if g := n.shared.Load(); g.len() > 1 || (g.len() == 1 && ((*g.at(0)).members.Load().len() != holders || len((*g.at(0)).pos) != holders)) {
				t.Fatalf("after the flaps: %d shared groups", g.len())
			}
			if sc := x.match("f/a/x"); len(sc.out) != holders && len(sc.out) != 1 {
				t.Fatalf("f/a/x matches %d", len(sc.out))
			} else {
				sc.release()
			}
			for i := range holders {
				x.unsubscribe(filter, fmt.Sprint("h", i))
			}
			if !x.isEmpty() {
				t.Fatalf("the index holds %q with no subscription left", x.dump())
			}
		})
	}
}

// node is the trie node of path; it fails the test if there is none.
func (x *subIndex) node(t *testing.T, path string) *snode {
	t.Helper()
	x.mu.Lock()
	defer x.mu.Unlock()
	n := &x.root
	for _, level := range strings.Split(path, "/") {
		v, ok := n.kids.Load(level)
		if !ok {
			t.Fatalf("no node %q in %q", level, path)
		}
		n = v.(*snode)
	}
	return n
}

// TestQuotaSubscribeUnsubscribeEmpties: MQTT clients each subscribing
// distinct filters up to the quota (over the wire, 1,000 a SUBSCRIBE),
// then unsubscribing them all, leave both indexes (the plain index and
// mochi's) empty; one more filter past the quota is refused.
func TestQuotaSubscribeUnsubscribeEmpties(t *testing.T) {
	const quota = 2_000
	b := start(t, Options{MaxSubscriptions: quota})
	for c := range 3 {
		cl := dial3(t, b, fmt.Sprint("q", c), true)
		var all []string
		for chunk := 0; chunk < quota; chunk += 1000 {
			filters := map[string]byte{}
			for i := chunk; i < chunk+1000; i++ {
				f := fmt.Sprintf("q/%d/%d/+/l%d", c, i, i%7)
				filters[f] = 1
				all = append(all, f)
			}
			tok := cl.SubscribeMultiple(filters, nil)
			if !waitTok(t, "subscribe", tok) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}
		}
		if code := cl.sub(t, fmt.Sprintf("q/%d/over", c), 0); code != 0x80 {
			t.Fatalf("a filter past the quota of %d got %#x, want 0x80", quota, code)
		}
		if sc := b.plainIdx.match(fmt.Sprintf("q/%d/7/z/l0", c)); len(sc.out) != 1 {
			t.Fatalf("matches %d, want 1", len(sc.out))
		} else {
			sc.release()
		}
		for i := 0; i < len(all); i += 500 {
			tok := cl.Unsubscribe(all[i : i+500]...)
			if !waitTok(t, "unsubscribe", tok) || tok.Error() != nil {
				t.Fatalf("unsubscribe: %v", tok.Error())
			}
		}
	}
	if !b.plainIdx.isEmpty() {
		t.Fatalf("the plain index holds %d filters with no subscription left", len(b.plainIdx.dump()))
	}
	if n := len(b.server.Topics.Subscribers("q/0/7/z/l0").Subscriptions); n != 0 {
		t.Fatalf("mochi's index still matches %d", n)
	}
}
