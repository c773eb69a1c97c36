package broker

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// The red team of X5 (a $tree subscription of a session away resumes with
// a delta since the last message its client was written): takeovers
// under load, sessions ending, marks kept bounded.

// rtx5Collect reads p's packets until its connection ends, acknowledging
// each QoS 1 publish at once, and hands the publishes over on done.
func rtx5Collect(p *x5Peer) <-chan []packets.Packet {
	done := make(chan []packets.Packet, 1)
	go func() { // owner: the test; ends with p's connection (p.in closes)
		var got []packets.Packet
		for pk := range p.in {
			if pk.FixedHeader.Type != packets.Publish {
				continue
			}
			if pk.FixedHeader.Qos == 1 {
				_, _ = p.c.Write([]byte{0x40, 2, byte(pk.PacketID >> 8), byte(pk.PacketID)})
			}
			got = append(got, pk)
		}
		done <- got
	}()
	return done
}

// rtx5Copy is a client's copy of a $tree subscription, built from the
// deltas of every connection of its session in the order received.
type rtx5Copy struct {
	rows  map[string]any
	last  uint64            // the last mote-seq applied
	seen  map[uint64]string // payload by mote-seq
	gaps  int
	dups  int // a mote-seq seen again with the same payload (DUP resend)
	resum int
	conn  int // the connection whose deltas are applied (its number)
	trail []string
}

// apply applies one delta; it fails the test on a mote-seq seen before
// with another payload, or one that goes back without being seen.
func (cp *rtx5Copy) apply(t *testing.T, pk packets.Packet) {
	t.Helper()
	seq, err := strconv.ParseUint(user(pk, "mote-seq"), 10, 64)
	if err != nil {
		t.Fatalf("%s %s: mote-seq %q", pk.TopicName, pk.Payload, user(pk, "mote-seq"))
	}
	if user(pk, "mote-resume") == "1" {
		cp.resum++
	}
	if prev, ok := cp.seen[seq]; ok {
		if prev != string(pk.Payload) {
			t.Fatalf("mote-seq %d twice: %s, then %s (dup %v)", seq, prev, pk.Payload, pk.FixedHeader.Dup)
		}
		cp.dups++
		return
	}
	if seq <= cp.last {
		t.Fatalf("mote-seq %d %s after %d, never seen", seq, pk.Payload, cp.last)
	}
	if seq != cp.last+1 {
		cp.gaps++
		t.Logf("a mote-seq gap: %d after %d (%s) resume %q dup %v, connection %d", seq, cp.last, pk.Payload, user(pk, "mote-resume"), pk.FixedHeader.Dup, cp.conn)
	}
	cp.seen[seq], cp.last = string(pk.Payload), seq
	cp.trail = append(cp.trail, fmt.Sprintf("seq %d conn %d resume %q dup %v qos %d %s", seq, cp.conn, user(pk, "mote-resume"), pk.FixedHeader.Dup, pk.FixedHeader.Qos, pk.Payload))
	var doc map[string]any
	if err := json.Unmarshal(pk.Payload, &doc); err != nil {
		t.Fatalf("%q: %v", pk.Payload, err)
	}
	for k, v := range doc {
		if v == nil {
			delete(cp.rows, k)
		} else {
			cp.rows[k] = v
		}
	}
}

// TestRTX5TakeoverUnderLoad: a session's $tree subscription taken over
// again and again (a CONNECT of its id, Clean Start 0, while the previous
// connection is up) as rows change all the time: across the connections
// no mote-seq comes twice with different rows, none goes back unless it
// is a QoS 1 message sent again (DUP, the same rows: a client must not
// apply it again, it may be older than what it applied since), with QoS
// 1 deltas there is no gap and the copy merged from every delta ends as
// the store. With QoS 0 deltas gaps happen (logged), each shown.
//
// It failed about 1 run in 15 (docs/spec-audit-x5.md, X5): a quick
// takeover's $tree subscriptions were filed on the loop before its
// predecessor's, found no mark, and counted from 0 again
// (TestRTX5TakeoverOrder makes that every time); a resume delta taken in
// flight and back as its client was taken over, which mochi had moved
// to the new client (sent again, DUP), was not noted in the mark, and
// the new connection made its mote-seq again with more rows. The test
// itself failed too (Receive Maximum 1, about 1 run in 20): the last
// connection left before its client had every message, and the copy
// missed the last rows; it now waits for them (rtx5Drained).
func TestRTX5TakeoverUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name   string
		props  packets.Properties
		qos    byte // the subscription's
		rowQoS byte // the rows' (a delta's QoS is its rows' highest, capped by the subscription's)
	}{
		{"qos1", packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}, 1, 1},
		{"qos1 receive max 1", packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true, ReceiveMaximum: 1}, 1, 1},
		{"qos1 rows qos0", packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}, 1, 0},
		{"qos0", packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			const filter = "$tree/tl/+"
			c, _ := x5Dial(t, b, 5, "tl", false, tc.props)
			c.sub(t, packets.Properties{}, x5Sub(filter, func(s *packets.Subscription) { s.Qos = tc.qos }))
			collected := rtx5Collect(c)

			// The writer: retained rows, a deletion now and then, as fast
			// as the broker reads them; its PUBACKs are read and let go.
			w := x5Writer(t, b, "w")
			acks := make(chan struct{})
			if tc.rowQoS == 0 {
				close(acks) // none come
			} else {
				go func() { // owner: this test; ends when the writer's acks are all read
					defer close(acks)
					for n := 0; n < 4000; {
						if pk, ok := <-w.in; !ok {
							return
						} else if pk.FixedHeader.Type == packets.Puback {
							n++
						}
					}
				}()
			}
			const keys = 16
			want := map[string]string{}
			var frames [][]byte
			for i := range 4000 {
				k := fmt.Sprint("k", i%keys)
				v := strconv.Itoa(i)
				if i%7 == 3 {
					v = ""
				}
				want[k] = v
				frames = append(frames, ownerPacket(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true, Qos: tc.rowQoS},
					TopicName: "tl/" + k, Payload: []byte(v), ProtocolVersion: 5, PacketID: uint16(i%60000 + 1)}))
			}
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { // owner: this test, waited on below
				defer wg.Done()
				for _, f := range frames {
					if _, err := w.c.Write(f); err != nil {
						return
					}
					time.Sleep(50 * time.Microsecond) // load, not synchronisation
				}
			}()

			cp := &rtx5Copy{rows: map[string]any{}, seen: map[uint64]string{}}
			for range 25 {
				next, present := x5Dial(t, b, 5, "tl", false, tc.props)
				if !present {
					t.Fatal("session not present")
				}
				for _, pk := range <-collected { // the previous connection ended (taken over)
					cp.apply(t, pk)
				}
				cp.conn++
				collected = rtx5Collect(next)
				c = next
			}
			wg.Wait()
			<-acks
			w.row(t, "tl/end", "1")
			settle(t, b)
			// The last connection: it leaves once its client has every
			// message (a DISCONNECT before the client acknowledged one left
			// the rest unwritten, with Receive Maximum 1 even the resume
			// after: the copy missed the last rows).
			waitFor(t, "the end row written and acknowledged", func() bool { return rtx5Drained(b, "tl") })
			x5Away(t, b, c, "tl")
			for _, pk := range <-collected {
				cp.apply(t, pk)
			}
			if cp.rows["end"] == nil && cp.gaps == 0 {
				t.Fatal("the end row never came")
			}
			got := map[string]string{}
			for k, v := range cp.rows {
				if k != "end" {
					got[k] = fmt.Sprint(v)
				}
			}
			exp := map[string]string{}
			for k, v := range want {
				if v != "" {
					exp[k] = v
				}
			}
			t.Logf("%d deltas, %d resumes, %d DUP again, %d gaps", len(cp.seen), cp.resum, cp.dups, cp.gaps)
			if cp.gaps > 0 {
				// A QoS 0 delta written as its connection is taken over
				// may never reach the client (at most once): its mark
				// counts it, so the resume shows a gap and the client
				// knows its copy is stale (SPEC §2); the copy is not
				// compared. QoS 1 deltas are sent again: no gap.
				if tc.rowQoS == 1 || os.Getenv("RTX5_STRICT") != "" {
					t.Fatalf("%d mote-seq gaps after takeovers", cp.gaps)
				}
				return
			}
			if !reflect.DeepEqual(got, exp) {
				for _, l := range cp.trail[max(0, len(cp.trail)-40):] {
					t.Log(l)
				}
				t.Fatalf("the copy %v\nthe store %v", got, exp)
			}
		})
	}
}

// TestRTX5FreshTakeoverForgets: the marks of a session's $tree
// subscriptions go when a CONNECT that does not resume it takes its id
// over while its connection is still up (Clean Start 1, the same user: a
// client id is bound to its user, another's CONNECT is refused), and the
// new connection, with no session to keep, ends: nothing stays kept.
func TestRTX5FreshTakeoverForgets(t *testing.T) {
	long := packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}
	for _, tc := range []struct {
		name  string
		v     byte
		user  string
		clean bool
	}{
		{"clean start", 5, "u1", true},
		{"3.1.1 clean session", 4, "u1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			w := x5Writer(t, b, "w")
			for i := range 20 {
				c, _ := x5DialAs(t, b, 5, "fz", "u1", false, long)
				c.sub(t, packets.Properties{}, x5Sub("$tree/fz/+"), x5Sub("$tree/fy/#"))
				w.row(t, "fz/x", strconv.Itoa(i))
				c.publish(t, true)
				n, present := x5DialAs(t, b, tc.v, "fz", tc.user, tc.clean, packets.Properties{}) // no session kept
				if present {
					t.Fatal("session present")
				}
				x5Away(t, b, n, "fz")
			}
			settle(t, b)
			waitFor(t, "nothing kept", func() bool {
				n := -1
				b.onLoop(nil, func() { n = len(b.awayTrees.byID) })
				return b.awayTrees.n.Load() == 0 && n == 0
			})
		})
	}
}

// TestRTX5ChurnBounded: many sessions, each with many $tree
// subscriptions, go away and come back, or end (Clean Start 1), again and
// again: the marks kept are counted, one per subscription of a session
// away, and none stay once every session came back or ended.
func TestRTX5ChurnBounded(t *testing.T) {
	b := start(t, Options{})
	long := packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}
	const sessions, filters = 20, 12
	var subs []packets.Subscription
	for i := range filters {
		subs = append(subs, x5Sub(fmt.Sprintf("$tree/ch/%d/+", i)))
	}
	for round := range 4 {
		for s := range sessions {
			id := fmt.Sprint("ch", s)
			c, present := x5Dial(t, b, 5, id, false, long)
			if round == 0 || !present {
				c.sub(t, packets.Properties{}, subs...)
			}
			x5Away(t, b, c, id)
		}
		settle(t, b)
		waitFor(t, "a mark per subscription away", func() bool { return b.awayTrees.n.Load() == sessions*filters })
	}
	for s := range sessions {
		id := fmt.Sprint("ch", s)
		c, _ := x5Dial(t, b, 5, id, s%2 == 0, long) // half resume, half end
		x5Away(t, b, c, id)
	}
	settle(t, b)
	waitFor(t, "the resumed sessions' marks kept again, the ended ones' gone", func() bool {
		return b.awayTrees.n.Load() == sessions/2*filters
	})
}

// TestRTX5ResumeLoop: a client that resumes its session and disconnects
// again and again, rows of its $tree subscriptions changing between: the
// marks kept stay one per subscription, under one id, and the live heap
// does not grow with the cycles.
func TestRTX5ResumeLoop(t *testing.T) {
	var grown [2]int64
	for i, prefix := range []string{"$tree/", ""} {
		t.Run(fmt.Sprint(i), func(t *testing.T) { grown[i] = rtx5ResumeLoop(t, prefix) })
	}
	if grown[0] > grown[1]+256<<10 { // noise: ±30 KB; a leak of 1 KiB a cycle shows
		t.Fatalf("over 249 cycles the live heap grew %d bytes with $tree subscriptions, %d with plain ones", grown[0], grown[1])
	}
}

// rtx5ResumeLoop is TestRTX5ResumeLoop with filters of prefix ("" for
// plain ones: the heap the loop takes without marks); it returns how much
// the live heap grew from cycle 50 to 299.
func rtx5ResumeLoop(t *testing.T, prefix string) int64 {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	long := packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}
	const filters = 8
	var subs []packets.Subscription
	for i := range filters {
		// QoS 0: the session keeps no message in flight for a client that
		// never acknowledges (QoS 1 ones grow the heap up to MaxInflight).
		subs = append(subs, x5Sub(fmt.Sprintf("%srl/%d/+", prefix, i), func(s *packets.Subscription) { s.Qos = 0 }))
	}
	c, _ := x5Dial(t, b, 5, "rl", false, long)
	c.sub(t, packets.Properties{}, subs...)
	x5Away(t, b, c, "rl")
	var heap [2]uint64
	for cycle := range 300 {
		if cycle == 50 || cycle == 299 {
			heap[cycle/299] = settledHeap(t)
		}
		w.row(t, fmt.Sprintf("rl/%d/k%d", cycle%filters, cycle%5), strconv.Itoa(cycle))
		c, present := x5Dial(t, b, 5, "rl", false, long)
		if !present {
			t.Fatal("session not present")
		}
		if prefix != "" {
			waitFor(t, "the resume made", func() bool { return awayFirstDone(t, b, "rl") })
		}
		x5Away(t, b, c, "rl")
		c.c.Close() // or the broker's side lingers for lingerFor, its drain's buffer live
		settle(t, b)
		waitFor(t, "one mark per subscription", func() bool {
			n := -1
			b.onLoop(nil, func() { n = len(b.awayTrees.byID) })
			if prefix == "" {
				return n == 0
			}
			return b.awayTrees.n.Load() == filters && n == 1
		})
	}
	t.Logf("live heap %d at cycle 50, %d at cycle 299", heap[0], heap[1])
	return int64(heap[1]) - int64(heap[0])
}

// TestRTX5SessionsEnd: many sessions away, each with several $tree
// subscriptions, ended past MaxSessions or expired: the marks kept are
// counted, at most those of the sessions that stay, and none once every
// session ended.
func TestRTX5SessionsEnd(t *testing.T) {
	const sessions, filters, max = 30, 6, 5
	var subs []packets.Subscription
	for i := range filters {
		subs = append(subs, x5Sub(fmt.Sprintf("$tree/se/%d/#", i)))
	}
	b := start(t, Options{MaxSessions: max})
	short := packets.Properties{SessionExpiryInterval: 1, SessionExpiryIntervalFlag: true}
	for s := range sessions {
		id := fmt.Sprint("se", s)
		c, _ := x5Dial(t, b, 5, id, false, short)
		c.sub(t, packets.Properties{}, subs...)
		x5Away(t, b, c, id)
	}
	settle(t, b)
	kept := func() (int64, int) {
		n := -1
		b.onLoop(nil, func() { n = len(b.awayTrees.byID) })
		return b.awayTrees.n.Load(), n
	}
	waitFor(t, "the marks of the sessions left", func() bool {
		n, ids := kept()
		return n == int64(ids*filters) && ids <= max
	})
	waitFor(t, "every session expired, its marks gone", func() bool {
		n, ids := kept()
		return n == 0 && ids == 0
	})
}

// rtx5Drained reports whether the connection of id's client (mochi's
// newest) has written every message its $tree subscriptions made (each
// noted in its mark; a message in parts from its first part on, and the
// tests asking send none) and its client acknowledged every QoS 1 publish.
func rtx5Drained(b *Broker, id string) bool {
	cl, ok := b.server.Clients.Get(id)
	if !ok {
		return false
	}
	c, ok := b.conns.load(cl)
	if !ok {
		return false
	}
	done := false
	b.onLoop(nil, func() {
		subs := b.tree.Owned(c.key())
		done = len(subs) > 0
		for _, s := range subs {
			st := s.Data.(*treeSub)
			done = done && !st.await && st.mark.seq.Load() == st.seq
		}
	})
	return done && cl.State.Inflight.Len() == 0
}

// rtx5Hold holds, once armed, the connection of client id in
// OnSessionEstablished (Broker.establishing) just before it is filed
// (filed false) or just after (true), until released.
type rtx5Hold struct {
	armed   atomic.Bool
	paused  chan *mqtt.Client
	release chan struct{}
	once    sync.Once
}

// free lets the held connection go on.
func (h *rtx5Hold) free() { h.once.Do(func() { close(h.release) }) }

// rtx5Acked waits until the broker read the client's acknowledgement of
// every QoS 1 publish to id's client: a takeover before it sends them
// again (DUP), ahead of what the test waits for.
func rtx5Acked(t *testing.T, b *Broker, id string) {
	t.Helper()
	waitFor(t, "every publish acknowledged", func() bool {
		cl, ok := b.server.Clients.Get(id)
		return ok && cl.State.Inflight.Len() == 0
	})
}

// rtx5Holding arms a hold of id's next connection at the step filed says;
// the test's end lets it go if the test did not (free).
func rtx5Holding(t *testing.T, b *Broker, id string, filed bool) *rtx5Hold {
	h := &rtx5Hold{paused: make(chan *mqtt.Client, 1), release: make(chan struct{})}
	t.Cleanup(h.free)
	h.armed.Store(true)
	fn := func(cl *mqtt.Client, at bool) {
		if cl.ID == id && at == filed && h.armed.CompareAndSwap(true, false) {
			h.paused <- cl
			<-h.release
		}
	}
	b.establishing.Store(&fn)
	return h
}

// wait waits until the connection is held.
func (h *rtx5Hold) wait(t *testing.T) *mqtt.Client {
	t.Helper()
	select {
	case cl := <-h.paused:
		return cl
	case <-time.After(testTimeout):
		t.Fatal("the connection was not held")
		return nil
	}
}

// rtx5Expect reads p's next publish, acknowledging it, and fails the
// test unless it has mote-seq seq and payload payload.
func rtx5Expect(t *testing.T, p *x5Peer, seq, payload string) {
	t.Helper()
	pk := p.publish(t, true)
	if user(pk, "mote-seq") != seq || !jsonEqual(t, string(pk.Payload), payload) {
		t.Fatalf("%s mote-seq %s resume %q dup %v, want %s mote-seq %s", pk.Payload, user(pk, "mote-seq"), user(pk, "mote-resume"), pk.FixedHeader.Dup, payload, seq)
	}
}

// rtx5Filed waits until the $tree subscriptions of the connection of
// id's client (mochi's newest) are filed on the loop.
func rtx5Filed(t *testing.T, b *Broker, id string) {
	t.Helper()
	waitFor(t, "the subscriptions filed", func() bool {
		c, ok := newestConn(b, id)
		if !ok {
			return false
		}
		n := 0
		b.onLoop(nil, func() { n = len(b.tree.Owned(c.key())) })
		return n > 0
	})
}

// TestRTX5TakeoverOrder: the interleaving behind TestRTX5TakeoverUnderLoad's
// failures, made every time. A's $tree subscription has written mote-seq
// 3; B resumes the session (takes A over) and is held just after it is
// filed, before it goes on; C takes B over meanwhile. A's read goroutine
// is held too (a PUBLISH in OnPublish), so its detach, which would keep
// its marks for the id, waits. C's subscription must go on from A's mark
// (through B's, which took it): the next delta is mote-seq 4. Before the
// fix B handed its $tree subscriptions to the loop after the id's
// takeover lock was let go, C's came first, found B's not filed and no
// mark kept, and counted from 0 again: mote-seq 2 (after a skipped 1),
// which the client had seen with other rows.
func TestRTX5TakeoverOrder(t *testing.T) {
	b := start(t, Options{})
	gate := addPublishGate(t, b)
	const id = "rto"
	props := packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}
	w := x5Writer(t, b, "w")
	a, _ := x5Dial(t, b, 5, id, false, props)
	a.sub(t, packets.Properties{}, x5Sub("$tree/rto/+"))
	for i := 1; i <= 3; i++ {
		w.row(t, "rto/x", strconv.Itoa(i))
		rtx5Expect(t, a, strconv.Itoa(i), fmt.Sprintf(`{"x":%d}`, i))
	}
	rtx5Acked(t, b, id)
	gate.holdPublish(t, a, id, "rto-plain")
	hold := rtx5Holding(t, b, id, true)
	if _, present := x5Dial(t, b, 5, id, false, props); !present {
		t.Fatal("B: session not present")
	}
	hold.wait(t)
	c, present := x5Dial(t, b, 5, id, false, props)
	if !present {
		t.Fatal("C: session not present")
	}
	rtx5Filed(t, b, id) // C's, with B held
	hold.free()
	gate.release <- struct{}{}
	waitFor(t, "C's first message made", func() bool { return awayFirstDone(t, b, id) })
	w.row(t, "rto/x", "4")
	rtx5Expect(t, c, "4", `{"x":4}`)
}

// TestRTX5LateDetachKeeps: a connection that ends only after its
// successor ended must not drop the marks the successor kept. B's
// CONNECT resumes the session, and B is held before it is filed; C takes
// the session over (from A) and B is never filed. C writes mote-seq 2
// and leaves, its session kept with its mark; then B ends (its detach
// keeps the session's marks). C's next connection goes on from C's mark:
// the next delta is mote-seq 3. Before the fix B's detach, with no $tree
// subscription filed, replaced what the id kept with nothing: the next
// connection counted from 0 again (mote-seq 2, seen with other rows).
func TestRTX5LateDetachKeeps(t *testing.T) {
	b := start(t, Options{})
	const id = "rtl"
	props := packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}
	w := x5Writer(t, b, "w")
	a, _ := x5Dial(t, b, 5, id, false, props)
	a.sub(t, packets.Properties{}, x5Sub("$tree/rtl/+"))
	w.row(t, "rtl/x", "1")
	rtx5Expect(t, a, "1", `{"x":1}`)
	rtx5Acked(t, b, id)
	hold := rtx5Holding(t, b, id, false)
	if _, present := x5Dial(t, b, 5, id, false, props); !present {
		t.Fatal("B: session not present")
	}
	clB := hold.wait(t)
	c, present := x5Dial(t, b, 5, id, false, props)
	if !present {
		t.Fatal("C: session not present")
	}
	waitFor(t, "C's first message made", func() bool { return awayFirstDone(t, b, id) })
	w.row(t, "rtl/x", "2")
	rtx5Expect(t, c, "2", `{"x":2}`)
	rtx5Acked(t, b, id)
	x5Away(t, b, c, id)
	settle(t, b)
	hold.free()
	waitFor(t, "B ended", func() bool {
		_, ok := b.conns.load(clB)
		return !ok
	})
	settle(t, b)
	n := -1
	b.onLoop(nil, func() { n = len(b.awayTrees.byID[id]) })
	if n != 1 {
		t.Fatalf("%d marks kept for the session, want 1", n)
	}
	d, _ := x5Dial(t, b, 5, id, false, props)
	waitFor(t, "D's first message made", func() bool { return awayFirstDone(t, b, id) })
	w.row(t, "rtl/x", "3")
	rtx5Expect(t, d, "3", `{"x":3}`)
}
