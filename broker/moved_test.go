package broker

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// A $tree message the old connection's writer takes in flight and back as
// its client is taken over is noted in the subscription's mark only if
// mochi moved it to the new client (mochi change 90, takeBack).

// movedStep holds, once armed, the writer of one mochi client at one step
// of Broker.takingInflight (stopped false: about to take a publish in
// flight; true: about to take it back), until released.
type movedStep struct {
	armed   atomic.Bool
	paused  chan struct{}
	release chan struct{}
	once    sync.Once
}

func newMovedStep(t *testing.T) *movedStep {
	s := &movedStep{paused: make(chan struct{}, 1), release: make(chan struct{})}
	s.armed.Store(true)
	t.Cleanup(s.free)
	return s
}

// hold holds the calling writer if s is armed (once).
func (s *movedStep) hold() {
	if s.armed.CompareAndSwap(true, false) {
		s.paused <- struct{}{}
		<-s.release
	}
}

// free lets the held writer go on.
func (s *movedStep) free() { s.once.Do(func() { close(s.release) }) }

// wait waits until the writer is held.
func (s *movedStep) wait(t *testing.T, what string) {
	t.Helper()
	select {
	case <-s.paused:
	case <-time.After(testTimeout):
		t.Fatalf("the writer was not held %s", what)
	}
}

// holdWriter arms Broker.takingInflight for cl's writer: take holds it
// once at takeAbout, back once at takeBackNow.
func holdWriter(t *testing.T, b *Broker, cl *mqtt.Client) (take, back *movedStep) {
	steps := holdWriterAt(t, b, cl, takeAbout, takeBackNow)
	return steps[0], steps[1]
}

// holdWriterAt arms Broker.takingInflight for cl's writer: the i-th step
// returned holds it once at at[i].
func holdWriterAt(t *testing.T, b *Broker, cl *mqtt.Client, at ...takeStep) []*movedStep {
	steps := make([]*movedStep, len(at))
	for i := range at {
		steps[i] = newMovedStep(t)
	}
	fn := func(c *mqtt.Client, step takeStep) {
		if c != cl {
			return
		}
		for i, s := range at {
			if s == step {
				steps[i].hold()
			}
		}
	}
	b.takingInflight.Store(&fn)
	t.Cleanup(func() { b.takingInflight.Store(nil) })
	return steps
}

// TestRTX5TakenBackCleared: A's writer checks that A is not stopped and
// is about to take $tree delta 2 in flight when B's CONNECT takes A's
// session over (A is stopped, its in-flight map moved: empty). The
// writer then sets the delta in A's emptied map, finds A stopped, and
// before it takes the delta back A's session ends (its read goroutine was
// held in OnPublish), whose clearTakenOverInflights deletes it. B never
// gets delta 2: B's resume delta is mote-seq 2 with x's value 2, then
// delta 3. Before the fix the writer read "gone from A's map" as "moved
// to B" and noted delta 2 in the mark: B's resume had nothing new, and
// its first message was delta 3, a gap after 1 (the client resubscribes
// for nothing lost).
func TestRTX5TakenBackCleared(t *testing.T) {
	b := start(t, Options{})
	gate := addPublishGate(t, b)
	const id = "rtc"
	props := packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}
	w := x5Writer(t, b, "w")
	a, _ := x5Dial(t, b, 5, id, false, props)
	a.sub(t, packets.Properties{}, x5Sub("$tree/rtc/+"))
	w.row(t, "rtc/x", "1")
	rtx5Expect(t, a, "1", `{"x":1}`)
	rtx5Acked(t, b, id)
	clA, ok := b.server.Clients.Get(id)
	if !ok {
		t.Fatal("A not filed")
	}
	// A's session ends only once its read goroutine is let go.
	gate.holdPublish(t, a, id, "rtc-plain")
	take, back := holdWriter(t, b, clA)
	w.row(t, "rtc/x", "2")
	take.wait(t, "before it took delta 2")
	bp, present := x5Dial(t, b, 5, id, false, props)
	if !present {
		t.Fatal("B: session not present")
	}
	if !clA.Closed() || !clA.IsTakenOver() {
		t.Fatal("A not taken over")
	}
	take.free()
	back.wait(t, "before it took delta 2 back")
	if n := clA.State.Inflight.Len(); n != 1 {
		t.Fatalf("A's map holds %d, want delta 2", n)
	}
	gate.release <- struct{}{}
	waitFor(t, "A's session ended (clearTakenOverInflights)", func() bool { return clA.State.Inflight.Len() == 0 })
	back.free()
	waitFor(t, "B's first message made", func() bool { return awayFirstDone(t, b, id) })
	w.row(t, "rtc/x", "3")
	rtx5Expect(t, bp, "2", `{"x":2}`)
	rtx5Expect(t, bp, "3", `{"x":3}`)
}

// TestX5TreeAwayPartsTakeover: a resume delta in parts (mote-seq 2, the
// client's Receive Maximum 1) whose first part was written, unacknowledged,
// when its connection B is taken over (or leaves, its session kept); a
// row changes meanwhile. The next connection C gets that part again (DUP,
// mote-seq 2, the same rows), then its own resume delta as mote-seq 3,
// every row changed since the last whole message (the parts B never
// wrote, and the row changed after), then delta 4. Before the fix only a
// whole message was noted: C's resume took mote-seq 2 again, with the
// changed row, other content under a number the client had seen.
func TestX5TreeAwayPartsTakeover(t *testing.T) {
	for _, tc := range []struct {
		name     string
		takeover bool // C takes B over; else B leaves first
	}{
		{name: "takeover", takeover: true},
		{name: "away"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			w := x5Writer(t, b, "w")
			const id, limit = "tpt", 200
			props := packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true, MaximumPacketSize: limit, ReceiveMaximum: 1}
			a, _ := x5Dial(t, b, 5, id, false, props)
			a.sub(t, packets.Properties{}, x5Sub("$tree/tpt/+"))
			w.row(t, "tpt/x", "0")
			rtx5Expect(t, a, "1", `{"x":0}`)
			x5Away(t, b, a, id)
			long := strconv.Quote(strings.Repeat("v", 40))
			for i := range 6 {
				w.row(t, fmt.Sprint("tpt/k", i), long)
			}
			settle(t, b)
			bp, _ := x5Dial(t, b, 5, id, false, props)
			first := bp.publish(t, false) // unacknowledged: the next part waits
			if user(first, "mote-seq") != "2" || user(first, "mote-part") == "" || user(first, "mote-part") == "1/1" {
				t.Fatalf("%s seq %s part %q, want the first of the resume's parts, seq 2", first.Payload, user(first, "mote-seq"), user(first, "mote-part"))
			}
			if !tc.takeover {
				x5Away(t, b, bp, id)
			}
			w.row(t, "tpt/k0", `"new"`)
			settle(t, b)
			c, present := x5Dial(t, b, 5, id, false, props)
			if !present {
				t.Fatal("C: session not present")
			}
			again := c.publish(t, true)
			if !again.FixedHeader.Dup || user(again, "mote-seq") != "2" || user(again, "mote-part") != user(first, "mote-part") || string(again.Payload) != string(first.Payload) {
				t.Fatalf("%s seq %s part %q dup %v, want B's first part again: %s", again.Payload, user(again, "mote-seq"), user(again, "mote-part"), again.FixedHeader.Dup, first.Payload)
			}
			doc := c.resumeParts(t, limit, "3")
			if len(doc) != 6 || doc["k0"] != "new" || doc["k5"] != strings.Repeat("v", 40) {
				t.Fatalf("C's resume: %v, want the 6 rows, k0 new", doc)
			}
			w.row(t, "tpt/x", "1")
			rtx5Expect(t, c, "4", `{"x":1}`)
		})
	}
}

// TestMovedPlainNotHandedOn: A's writer takes plain QoS 1 message m1 in
// flight and, before it looks whether A stopped, B's CONNECT takes A's
// session over: mochi moves m1 to B, which gets it again (DUP) and
// acknowledges it. A's writer then finds A stopped and takes m1 back;
// mochi moved it (takenBack.moved), so the writer leaves it out of the
// session's leftovers. B's next message is m2. Without the writer's
// check, m1 is handed on and B gets it a second time, under another
// packet id, before m2 (before, the hand-off compared the leftovers with
// B's in-flight messages, which B's acknowledgement could have emptied
// first).
func TestMovedPlainNotHandedOn(t *testing.T) {
	b := start(t, Options{})
	const id = "mvp"
	props := packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}
	w := x5Writer(t, b, "w")
	a, _ := x5Dial(t, b, 5, id, false, props)
	if rc := a.sub(t, packets.Properties{}, x5Sub("mvp/#")); rc[0] != 1 {
		t.Fatalf("SUBACK %#x", rc)
	}
	clA, ok := b.server.Clients.Get(id)
	if !ok {
		t.Fatal("A not filed")
	}
	taken := holdWriterAt(t, b, clA, takeTaken)[0]
	// Not w.pub: its PUBACK may wait for the delivery that is held.
	w.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7,
		TopicName: "mvp/1", Payload: []byte("m1")})
	taken.wait(t, "with m1 taken in flight")
	if n := clA.State.Inflight.Len(); n != 1 {
		t.Fatalf("A's map holds %d, want m1", n)
	}
	bp, present := x5Dial(t, b, 5, id, false, props)
	if !present {
		t.Fatal("B: session not present")
	}
	if !clA.Closed() || !clA.IsTakenOver() {
		t.Fatal("A not taken over")
	}
	m1 := bp.publish(t, true)
	if m1.TopicName != "mvp/1" || string(m1.Payload) != "m1" || !m1.FixedHeader.Dup {
		t.Fatalf("B's first message: %s %q dup %v, want m1 again (DUP)", m1.TopicName, m1.Payload, m1.FixedHeader.Dup)
	}
	waitFor(t, "B acknowledged m1", func() bool {
		clB, ok := b.server.Clients.Get(id)
		return ok && clB != clA && clB.State.Inflight.Len() == 0
	})
	taken.free()
	if rc := w.until(t, packets.Puback).ReasonCode; rc != 0 {
		t.Fatalf("m1's PUBACK %#x", rc)
	}
	if rc := w.pub(t, packets.Packet{TopicName: "mvp/2", Payload: []byte("m2")}); rc != 0 {
		t.Fatalf("m2's PUBACK %#x", rc)
	}
	if m := bp.publish(t, true); string(m.Payload) != "m2" {
		t.Fatalf("B's next message: %s %q dup %v, want m2 (m1 given twice)", m.TopicName, m.Payload, m.FixedHeader.Dup)
	}
}
