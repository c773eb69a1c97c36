package broker

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// resRig drives the snapshot budget's connection-level functions
// (holdSnapshot, awaitSnapshotRoom, resizeSnapshot, releaseSnapshot(s),
// releaseShared) on a broker of a 64 KiB budget (reserve 4 KiB, small
// <= 1 KiB), with connections that have no socket: the red team of the
// reserve's accounting (h-f1).
type resRig struct {
	t     *testing.T
	b     *Broker
	waits map[*conn]chan struct{} // a resumed subscription's writer in awaitSnapshotRoom: closed once it returned
}

const (
	rigMax   = 64 << 10
	rigSmall = rigMax / 64
)

// newResRig starts the broker, with rows whose guesses are: "s/#" small,
// "l/#" large (past the reserve), "e/#" none.
func newResRig(t *testing.T) *resRig {
	b := start(t, Options{MaxSnapshotBytes: rigMax})
	loadRow(b, "s/a", `"`+strings.Repeat("x", 400)+`"`)
	for i := range 3 {
		loadRow(b, fmt.Sprintf("l/r%d", i), `"`+strings.Repeat("y", 4000)+`"`)
	}
	settle(t, b)
	r := &resRig{t: t, b: b, waits: map[*conn]chan struct{}{}}
	if g := r.guess("s/#"); g == 0 || g > rigSmall {
		t.Fatalf("guess of s/# is %d: want small (1..%d)", g, rigSmall)
	}
	if g := r.guess("l/#"); g <= rigMax/16 || g > rigMax-rigMax/16 {
		t.Fatalf("guess of l/# is %d: want past the reserve, within the rest", g)
	}
	return r
}

func (r *resRig) guess(filter string) int64 {
	g, ok := r.b.snapshotGuess(r.b.stop, filter, r.b.snaps.max)
	if !ok {
		r.t.Fatal("the loop stopped")
	}
	return g
}

func (r *resRig) conn() *conn { return &conn{b: r.b, q: &outQueue{}} }

func (r *resRig) sub(c *conn, filter string) *treeSub {
	return &treeSub{c: c, ts: &tree.Sub{Filter: filter, Codec: wire.CodecJSON}}
}

// resume starts c's writer on st's awaitSnapshotRoom and returns once it
// waits in the budget's queue or returned.
func (r *resRig) resume(c *conn, st *treeSub) {
	done := make(chan struct{})
	r.waits[c] = done
	go func() {
		defer close(done)
		c.awaitSnapshotRoom(st) //nolint:errcheck // the test reads the budget
	}()
	r.sync()
}

// waiting reports whether c's writer waits in the budget's queue.
func (r *resRig) waiting(c *conn) bool {
	h := c.holdsOf()
	h.mu.Lock()
	w := h.wait
	h.mu.Unlock()
	if w == nil {
		return false
	}
	r.b.snaps.mu.Lock()
	defer r.b.snaps.mu.Unlock()
	return w.queued
}

// sync waits until every writer in awaitSnapshotRoom is queued or
// returned: the state is still then.
func (r *resRig) sync() {
	deadline := time.Now().Add(testTimeout)
	for c, done := range r.waits {
		if c.q.done.isClosed() { // it returns: wait for it
			select {
			case <-done:
				delete(r.waits, c)
			case <-time.After(testTimeout):
				r.t.Fatal("a writer did not return once its connection went")
			}
			continue
		}
		for {
			select {
			case <-done:
				delete(r.waits, c)
			default:
				if !r.waiting(c) {
					if time.Now().After(deadline) {
						r.t.Fatal("a writer neither waits nor returned")
					}
					time.Sleep(50 * time.Microsecond)
					continue
				}
			}
			break
		}
	}
}

// granted reports whether c's writer returned from awaitSnapshotRoom.
func (r *resRig) granted(c *conn) bool {
	r.sync()
	_, waits := r.waits[c]
	return !waits
}

func (r *resRig) gone(c *conn) {
	if !c.q.done.isClosed() {
		c.q.done.close()
	}
	c.releaseSnapshots()
	r.sync()
}

func (r *resRig) built(c *conn, st *treeSub, n int64, sh *sharedSnap) {
	if sh != nil {
		r.b.shares.mu.Lock()
		sh.refs++
		r.b.shares.mu.Unlock()
		st.shared.Store(sh)
	}
	c.resizeSnapshot(st, n)
	r.sync()
}

func (r *resRig) written(c *conn, st *treeSub) {
	r.b.releaseShared(st.takeShared())
	c.releaseSnapshot(st)
	r.sync()
}

// check fails unless the budget's counts agree with what the
// connections and shared snapshots hold (conns, shared), none negative.
func (r *resRig) check(step string, conns []*conn, shared []*sharedSnap) {
	r.t.Helper()
	var held, inRes int64
	for _, c := range conns {
		h := c.snapHolds.Load()
		if h == nil {
			continue
		}
		h.mu.Lock()
		held += h.counted
		if h.reserve {
			inRes += h.counted
		}
		h.mu.Unlock()
	}
	r.b.shares.mu.Lock()
	for _, sh := range shared {
		if sh.counted && sh.refs > 0 {
			held += int64(len(sh.payload))
			if sh.reserve {
				inRes += int64(len(sh.payload))
			}
		}
	}
	r.b.shares.mu.Unlock()
	s := &r.b.snaps
	s.mu.Lock()
	defer s.mu.Unlock()
	var stuck int64
	for _, w := range s.waiting {
		stuck += w.own
	}
	if s.held != held || s.inReserve != inRes || s.stuck != stuck || s.inReserve < 0 || s.stuck < 0 || s.held-s.inReserve < s.stuck {
		r.t.Fatalf("%s: budget held %d, in the reserve %d, stuck %d; the holds: %d, %d, %d", step, s.held, s.inReserve, s.stuck, held, inRes, stuck)
	}
}

// end lets every connection go and every shared snapshot be written,
// and fails unless nothing is left held, in the reserve, stuck or
// waiting.
func (r *resRig) end(conns []*conn, shared []*sharedSnap) {
	r.t.Helper()
	for _, c := range conns {
		r.gone(c)
	}
	for _, sh := range shared {
		r.b.shares.mu.Lock()
		n := sh.refs
		r.b.shares.mu.Unlock()
		for range n {
			r.b.releaseShared(sh)
		}
	}
	s := &r.b.snaps
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held != 0 || s.inReserve != 0 || s.stuck != 0 || len(s.waiting) != 0 {
		r.t.Fatalf("every client went: %d held, %d in the reserve, %d stuck, %d waiting; want 0 (a leak refuses every later $sync SUBSCRIBE)", s.held, s.inReserve, s.stuck, len(s.waiting))
	}
}

// TestReserveAccounting: sequences of a connection's holds moving in and
// out of the snapshot budget's reserve (h-f1), with takeovers and closes
// in the middle; after each step the budget agrees with the holds, and
// once every client went nothing is held, in the reserve or stuck.
func TestReserveAccounting(t *testing.T) {
	var r *resRig
	var small, large int64
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, cs []*conn, sh *sharedSnap)
	}{
		{"a small hold resized larger once built, then written", func(t *testing.T, cs []*conn, _ *sharedSnap) {
			a := cs[0]
			st := r.sub(a, "s/#")
			if !a.holdSnapshot(st, small) {
				t.Fatal("a small hold refused in an empty budget")
			}
			r.built(a, st, 3*rigMax/16, nil) // past the reserve
			r.check("resized", cs, nil)
			r.written(a, st)
		}},
		{"a small hold resized larger, then gone before written", func(t *testing.T, cs []*conn, _ *sharedSnap) {
			a := cs[0]
			st := r.sub(a, "s/#")
			a.holdSnapshot(st, small)
			r.built(a, st, 3*rigMax/16, nil)
			r.gone(a)
			r.written(a, st) // its writer finishes after
		}},
		{"a large take by a connection holding a small one", func(t *testing.T, cs []*conn, _ *sharedSnap) {
			a := cs[0]
			s1, s2 := r.sub(a, "s/#"), r.sub(a, "l/#")
			a.holdSnapshot(s1, small)
			if !a.holdSnapshot(s2, large) {
				t.Fatal("a large hold refused beside the connection's own small one")
			}
			r.check("large", cs, nil)
			r.written(a, s2)
			r.check("large written", cs, nil)
			r.written(a, s1)
		}},
		{"holds move in and out of the reserve while the writer waits", func(t *testing.T, cs []*conn, _ *sharedSnap) {
			a, b, c := cs[0], cs[1], cs[2]
			bl := r.sub(b, "l/#")
			b.holdSnapshot(bl, large)
			b2 := r.sub(c, "l/#")
			r.built(c, b2, rigMax-rigMax/16-large, nil) // c holds the rest outside the reserve
			as := r.sub(a, "s/#")
			a.holdSnapshot(as, small) // in the reserve
			ar := r.sub(a, "l/#")
			r.resume(a, ar)
			if r.granted(a) {
				t.Fatal("a resumed writer granted past the budget")
			}
			r.check("waits", cs, nil)
			a2 := r.sub(a, "s/#")
			if !a.holdSnapshot(a2, small+100) { // grows in the reserve while it waits
				t.Fatal("a small hold refused with the reserve free")
			}
			r.check("grown", cs, nil)
			if a.holdSnapshot(r.sub(a, "l/#"), large) {
				t.Fatal("a large hold granted while a writer waits")
			}
			r.written(a, as)
			r.written(a, a2) // out of the reserve, writer still waiting
			r.check("emptied", cs, nil)
			a3 := r.sub(a, "s/#")
			a.holdSnapshot(a3, small)
			r.written(b, bl)
			r.written(c, b2)
			if !r.granted(a) {
				t.Fatal("the writer waits with the budget free")
			}
			r.check("granted", cs, nil)
			r.built(a, ar, large/2, nil)
			r.written(a, ar)
			r.written(a, a3)
		}},
		{"gone while the writer waits, its holds in the reserve", func(t *testing.T, cs []*conn, _ *sharedSnap) {
			a, b, c := cs[0], cs[1], cs[2]
			b.holdSnapshot(r.sub(b, "l/#"), large)
			r.built(c, r.sub(c, "l/#"), rigMax-rigMax/16-large, nil)
			a.holdSnapshot(r.sub(a, "s/#"), small)
			r.resume(a, r.sub(a, "l/#"))
			r.gone(a)
			if !r.granted(a) {
				t.Fatal("the writer waits after its connection went")
			}
		}},
		{"gone while the writer waits, its holds outside the reserve", func(t *testing.T, cs []*conn, _ *sharedSnap) {
			a, b, c := cs[0], cs[1], cs[2]
			b.holdSnapshot(r.sub(b, "l/#"), large)
			if !a.holdSnapshot(r.sub(a, "l/#"), 2*rigSmall) { // not small: outside the reserve
				t.Fatal("a hold refused in a free budget")
			}
			r.built(c, r.sub(c, "l/#"), rigMax-rigMax/16-large-2*rigSmall, nil)
			r.resume(a, r.sub(a, "l/#"))
			if r.granted(a) {
				t.Fatal("a resumed writer granted past the budget")
			}
			r.check("waits", cs, nil)
			r.gone(a)
			r.gone(b)
		}},
		{"a resumed writer granted moves its reserve holds out", func(t *testing.T, cs []*conn, _ *sharedSnap) {
			a := cs[0]
			as := r.sub(a, "s/#")
			a.holdSnapshot(as, small)
			ar := r.sub(a, "s/#")
			r.resume(a, ar)
			if !r.granted(a) {
				t.Fatal("a resumed writer waits in an empty budget")
			}
			r.check("moved out", cs, nil)
			r.gone(a) // taken over before written
		}},
		{"a shared snapshot counted in the reserve, released by a connection outside it", func(t *testing.T, cs []*conn, sh *sharedSnap) {
			a, b := cs[0], cs[1]
			as, bs := r.sub(a, "s/#"), r.sub(b, "l/#")
			a.holdSnapshot(as, small)
			b.holdSnapshot(bs, large)
			r.built(a, as, 0, sh) // counted with a's flag: in the reserve
			r.built(b, bs, 0, sh)
			r.check("shared", cs, []*sharedSnap{sh})
			r.written(a, as)
			r.check("a wrote", cs, []*sharedSnap{sh})
			r.written(b, bs) // the last: gives it back from the reserve
		}},
		{"a shared snapshot counted outside the reserve, released by one in it", func(t *testing.T, cs []*conn, sh *sharedSnap) {
			a, b := cs[0], cs[1]
			as, bs := r.sub(a, "s/#"), r.sub(b, "l/#")
			a.holdSnapshot(as, small)
			b.holdSnapshot(bs, large)
			r.built(b, bs, 0, sh)
			r.built(a, as, 0, sh)
			r.written(b, bs)
			r.gone(a) // taken over: its writer lets go after
			r.written(a, as)
		}},
		{"a shared snapshot's counter gone before it sized it", func(t *testing.T, cs []*conn, sh *sharedSnap) {
			a, b := cs[0], cs[1]
			as, bs := r.sub(a, "s/#"), r.sub(b, "s/#")
			a.holdSnapshot(as, small)
			b.holdSnapshot(bs, small)
			r.gone(a)
			r.built(a, as, 0, sh) // gone: not counted
			r.built(b, bs, 0, sh) // counted by b, in the reserve
			r.check("shared", cs, []*sharedSnap{sh})
			r.written(a, as)
			r.written(b, bs)
		}},
		{"a small hold's connection taken over mid-move: releaseSnapshots with res", func(t *testing.T, cs []*conn, _ *sharedSnap) {
			a, b := cs[0], cs[1]
			st := r.sub(a, "s/#")
			a.holdSnapshot(st, small)
			r.gone(a)
			st.c = b // the session's subscription moves to the new connection
			if !b.holdSnapshot(st, small) {
				t.Fatal("the new connection's small hold refused")
			}
			r.written(a, st) // the old writer finishes: nothing of a's left
			r.check("old writer", cs, nil)
			r.written(b, st)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r = newResRig(t)
			small, large = r.guess("s/#"), r.guess("l/#")
			cs := []*conn{r.conn(), r.conn(), r.conn()}
			sh := &sharedSnap{payload: make([]byte, 3000)}
			tc.run(t, cs, sh)
			r.check("end of the sequence", cs, []*sharedSnap{sh})
			r.end(cs, []*sharedSnap{sh})
		})
	}
}

// TestReserveAccountingRandom: 12,000 seeded random steps of SUBSCRIBE
// holds (small and large), resumed writers waiting, snapshots built
// (larger or smaller than guessed, some shared), written, dropped by the
// loop, and connections taken over, on 5 connections; the budget agrees
// with the holds after every step, and nothing is left once all went.
func TestReserveAccountingRandom(t *testing.T) {
	const steps = 12_000
	r := newResRig(t)
	rng := rand.New(rand.NewPCG(20261205, 1))
	filters := []string{"s/#", "l/#", "e/#"}
	guess := map[string]int64{}
	for _, f := range filters {
		guess[f] = r.guess(f)
	}
	cs := make([]*conn, 5)
	subs := make([][]*treeSub, len(cs)) // each connection's subscriptions holding
	for i := range cs {
		cs[i] = r.conn()
	}
	var shared []*sharedSnap
	live := func() []*sharedSnap { // shared snapshots with writers
		r.b.shares.mu.Lock()
		defer r.b.shares.mu.Unlock()
		return slicesFilter(shared, func(sh *sharedSnap) bool { return sh.refs > 0 })
	}
	var ops [8]int
	for step := range steps {
		i := rng.IntN(len(cs))
		c := cs[i]
		_, waits := r.waits[c]
		op := rng.IntN(8)
		ops[op]++
		switch op {
		case 0, 1: // a SUBSCRIBE
			f := filters[rng.IntN(2)]
			st := r.sub(c, f)
			n := guess[f] + int64(rng.IntN(200))
			if c.holdSnapshot(st, n) {
				subs[i] = append(subs[i], st)
			}
		case 2: // a resumed session's subscription: its writer waits
			if !waits {
				st := r.sub(c, filters[rng.IntN(3)])
				subs[i] = append(subs[i], st)
				r.resume(c, st)
			}
		case 3: // a snapshot built
			if !waits && len(subs[i]) > 0 {
				st := subs[i][rng.IntN(len(subs[i]))]
				var sh *sharedSnap
				if rng.IntN(3) == 0 {
					if l := live(); len(l) > 0 && rng.IntN(2) == 0 {
						sh = l[rng.IntN(len(l))]
					} else {
						sh = &sharedSnap{payload: make([]byte, rng.IntN(rigMax/8))}
						shared = append(shared, sh)
					}
				}
				if st.shared.Load() == nil {
					r.built(c, st, int64(rng.IntN(rigMax/4)), sh)
				}
			}
		case 4, 5: // written
			if !waits && len(subs[i]) > 0 {
				k := rng.IntN(len(subs[i]))
				r.written(c, subs[i][k])
				subs[i] = append(subs[i][:k], subs[i][k+1:]...)
			}
		case 6: // dropped by the loop (unsubscribed, refused)
			if len(subs[i]) > 0 {
				k := rng.IntN(len(subs[i]))
				c.releaseSnapshot(subs[i][k])
				r.sync()
			}
		case 7: // taken over: the old writer lets its shared snapshots go
			r.gone(c)
			for _, st := range subs[i] {
				r.written(c, st)
			}
			subs[i] = nil
			cs[i] = r.conn()
		}
		r.check(fmt.Sprintf("step %d (op %d)", step, op), cs, shared)
	}
	t.Logf("ops %v; budget: %d waited, %d refused, %d held at most", ops, r.b.snaps.waited, r.b.snaps.refused, r.b.snaps.peak)
	for i, c := range cs {
		r.gone(c)
		for _, st := range subs[i] {
			r.written(c, st)
		}
	}
	r.end(cs, shared)
}

func slicesFilter[T any](s []T, keep func(T) bool) []T {
	var out []T
	for _, v := range s {
		if keep(v) {
			out = append(out, v)
		}
	}
	return out
}
