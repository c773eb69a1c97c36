package broker

import (
	"encoding/binary"
	"fmt"
	"maps"
	"math/rand"
	"slices"
	"strings"
	"testing"
)

// Red team h-rt (docs/redteam-rt.md): hostile clients of the original
// dialect (SPEC §7, original.go).

// TestRTOriginalBothFormsInOnePacket: a dialect SUBSCRIBE naming "/F" and
// "F" together files two forms of one subscription (the newest replaces
// the other, as in the original). Both were unfiled from mochi (each
// dropped the other, filed in the same packet), while the loop kept the
// newest: UNSUBSCRIBE F found nothing to end, deltas went on after its
// UNSUBACK, and the subscription quota, counted from mochi's filters,
// never grew: a client could hold any number of tree subscriptions.
func TestRTOriginalBothFormsInOnePacket(t *testing.T) {
	b := startOriginal(t, Options{MaxSubscriptions: 3})
	native := dial3(t, b, "native", true)
	waitTok(t, "publish", native.Publish("x0", 1, true, "1"))
	c := dialOriginal(t, b)
	c.mustConnect("both-forms")

	// The newest of the two is the subscription, in either order: $tree
	// (no snapshot) then $sync (a snapshot of the bare value).
	if codes := c.subscribe(1, 1, "/x0", "x0"); string(codes) != "\x01\x01" {
		t.Fatalf("SUBACK % x, want 01 01", codes)
	}
	if codes := c.subscribe(2, 1, "x1", "/x1"); string(codes) != "\x01\x01" {
		t.Fatalf("SUBACK % x, want 01 01", codes)
	}
	if p := c.next(); p.topic != "x1" || p.payload != "" {
		t.Fatalf("got %+v, want the empty snapshot of /x1", p)
	}
	// Two subscriptions held, of a quota of 3: a packet of both forms is
	// counted as two filters, the second refused; then nothing more.
	if codes := c.subscribe(3, 1, "/x2", "x2"); string(codes) != "\x01\x80" {
		t.Fatalf("SUBACK % x for x2, want 01 80: one subscription left in the quota of 3", codes)
	}
	if p := c.next(); p.topic != "x2" || p.payload != "" {
		t.Fatalf("got %+v, want the empty snapshot of /x2", p)
	}
	for i := range 2 {
		f := fmt.Sprint("x", i+3)
		if codes := c.subscribe(uint16(4+i), 1, "/"+f, f); string(codes) != "\x80\x80" {
			t.Errorf("SUBACK % x for %s, want 80 80: the quota of 3 subscriptions is used", codes, f)
		}
	}
	settle(t, b)
	if n := b.treeSubs.Load(); n != 3 {
		t.Errorf("%d tree subscriptions registered, want 3", n)
	}

	for i, f := range []string{"x0", "x1", "x2"} {
		c.unsubscribe(uint16(10+i), f)
	}
	settle(t, b)
	if n := b.treeSubs.Load(); n != 0 {
		t.Errorf("%d tree subscriptions left after UNSUBSCRIBE x0, x1 and x2, want 0", n)
	}
	waitTok(t, "publish", native.Publish("x0", 1, true, "2"))
	waitTok(t, "publish", native.Publish("x1", 1, true, "3"))
	settle(t, b)
	// The next message is the snapshot of a new subscription: no delta
	// of x0 or x1 came before it.
	c.subscribe(12, 1, "/x0")
	if p := c.next(); p.topic != "x0" || p.payload != "2" {
		t.Errorf("got %+v, want the snapshot of /x0 (2), nothing of the subscriptions ended", p)
	}
}

// TestRTOriginalSubscriptionsAgree: random SUBSCRIBEs (one to three
// filters, both forms of one filter among them) and UNSUBSCRIBEs of a
// dialect client; after each, the tree subscriptions the loop holds are
// the ones mochi files (what UNSUBSCRIBE, the quota and a resumed session
// go by). Before TestRTOriginalBothFormsInOnePacket's fix the loop held
// one more by the 13th packet.
func TestRTOriginalSubscriptionsAgree(t *testing.T) {
	b := startOriginal(t, Options{MaxSubscriptions: 4})
	c := dialOriginal(t, b)
	c.mustConnect("agree")
	r := rand.New(rand.NewSource(1))
	filters := []string{"/a", "a", "/b", "b", "/a/#", "a/#", "$SYS/x", "/$SYS/x"}
	for id := uint16(1); id <= 400; id++ {
		if r.Intn(3) == 0 {
			c.send(0xa2, id16(id), str(strings.TrimPrefix(filters[r.Intn(len(filters))], "/")))
		} else {
			body := [][]byte{id16(id)}
			for range 1 + r.Intn(3) {
				body = append(body, str(filters[r.Intn(len(filters))]), []byte{1})
			}
			c.send(0x82, body...)
		}
		for { // up to the SUBACK or UNSUBACK, acknowledging snapshots and deltas
			p := c.read()
			if p.kind() == 3 {
				c.pending = append(c.pending, p)
				c.next()
				continue
			}
			if binary.BigEndian.Uint16(p.body) == id {
				break
			}
		}
		settle(t, b)
		cl, _ := b.server.Clients.Get("agree")
		filed := 0
		for f := range cl.State.Subscriptions.GetAll() {
			if isTreeFilter(f) {
				filed++
			}
		}
		if n := b.treeSubs.Load(); n != int64(filed) {
			t.Fatalf("packet %d: mochi files %d tree subscriptions (%v), the loop holds %d", id, filed, slices.Collect(maps.Keys(cl.State.Subscriptions.GetAll())), n)
		}
	}
}
