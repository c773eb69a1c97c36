package broker

import (
	"container/heap"
	"time"

	"github.com/mote-mqtt/mote/tree"
)

// pacer holds back the deltas of paced tree subscriptions (SPEC §2,
// .<N>ms): after a subscription's message left, the changes that come
// within its interval wait in its treeSub (held, counted against the
// connection's queue bound) until due, and then leave as one delta.
//
// It is the message loop's, like the treeSubs it holds: a min-heap of the
// subscriptions holding changes, by due time, and ONE timer for the whole
// broker, set for the earliest. The timer only asks the loop to flush what
// is due (a reqCall); it never touches a treeSub. The loop stops it when
// it ends.
type pacer struct {
	b     *Broker
	subs  paceHeap                         // subscriptions holding changes, the earliest due first
	owned map[string]map[*treeSub]struct{} // the same, by owner: what they hold goes with their subscriptions
	timer *time.Timer                      // nil until first needed
	at    time.Time                        // when the timer fires (or fired, its flush on the way); zero: not set
}

// hold decides for a paced subscription that holds nothing whether the
// changes of batch wait: they do when its last message left less than an
// interval ago, until an interval after it. It reports false when they
// leave at once: the subscription was idle for an interval or more (loop
// only).
func (p *pacer) hold(st *treeSub, batch *batchRows) bool {
	now := time.Now()
	if now.Sub(st.sent) >= st.interval {
		st.sent = now
		return false
	}
	p.add(st, st.sent.Add(st.interval), now)
	st.holdPaced(batch.rows())
	return true
}

// holdPaced holds changes (rows of st's delta: st matches each), with
// those it holds already.
func (st *treeSub) holdPaced(changes []tree.Change) {
	for _, ch := range changes {
		st.hold(ch)
	}
}

// add puts st, which is to hold changes until due, in the heap.
func (p *pacer) add(st *treeSub, due, now time.Time) {
	st.due = due
	heap.Push(&p.subs, st)
	if p.owned == nil {
		p.owned = map[string]map[*treeSub]struct{}{}
	}
	set := p.owned[st.ts.Owner]
	if set == nil {
		set = map[*treeSub]struct{}{}
		p.owned[st.ts.Owner] = set
	}
	set[st] = struct{}{}
	p.arm(now)
}

// arm sets the timer for the earliest due subscription, unless it is set
// for that time or before.
func (p *pacer) arm(now time.Time) {
	if len(p.subs) == 0 {
		return // a timer still set finds nothing due: harmless
	}
	next := p.subs[0].due
	if !p.at.IsZero() && !next.Before(p.at) {
		return
	}
	p.at = next
	if p.timer == nil {
		p.timer = time.AfterFunc(next.Sub(now), p.fire)
		return
	}
	p.timer.Reset(next.Sub(now))
}

// fire runs on the timer's goroutine: it hands the flush to the loop
// (after Close, the loop takes no more: nothing happens).
func (p *pacer) fire() {
	p.b.reqs.push(request{kind: reqCall, call: p.flush})
}

// flush sends what is due as deltas and sets the timer for the next.
func (p *pacer) flush() {
	p.at = time.Time{} // the timer fired
	now := time.Now()
	for len(p.subs) > 0 && !p.subs[0].due.After(now) {
		st := heap.Pop(&p.subs).(*treeSub)
		p.disown(st)
		p.b.flushPaced(st, now)
	}
	p.arm(now)
}

// forget drops what the paced subscriptions of owner that are gone
// (unsubscribed, replaced, their connection ended) hold, and gives back
// the bytes it counted. Called by the loop after it removed subscriptions.
func (p *pacer) forget(owner string) {
	set := p.owned[owner]
	for st := range set {
		if st.ts.Active() {
			continue
		}
		delete(set, st)
		heap.Remove(&p.subs, st.slot-1)
		st.c.q.reserve(-st.held)
		st.events, st.at, st.held, st.lost = nil, nil, 0, false
	}
	if len(set) == 0 {
		delete(p.owned, owner)
	}
}

// disown removes st, taken out of the heap, from its owner's set.
func (p *pacer) disown(st *treeSub) {
	set := p.owned[st.ts.Owner]
	delete(set, st)
	if len(set) == 0 {
		delete(p.owned, st.ts.Owner)
	}
}

// stop stops the timer: the loop is ending.
func (p *pacer) stop() {
	if p.timer != nil {
		p.timer.Stop()
	}
}

// flushPaced sends the changes a paced subscription held, now due, as one
// delta: folded into its delta still waiting in the queue if it can, else
// queued as a new one (loop only).
func (b *Broker) flushPaced(st *treeSub, now time.Time) {
	c := st.c
	held, n, lost := st.events, st.held, st.lost
	st.events, st.at, st.held, st.lost = nil, nil, 0, false
	c.q.reserve(-n) // they move into the queue, or go
	if lost {
		st.seq++ // held changes were dropped: the gap says so
	}
	if len(held) == 0 || !st.ts.Active() {
		return
	}
	prev := st.sent
	st.sent = now
	batch := heldRows(held, b.tree.Rev()) // the held rows reflect every batch so far
	if st.last != nil && c.q.fold(st.last, st.ts, batch, c.packetLimit(), foldBound(held)) {
		b.stats.Folded.Add(1)
		if st.folded() {
			st.sent = prev // nothing left to send: as when Fold leaves nothing, below
		}
		return
	}
	payload, qos, ok := b.tree.Fold(st.ts, held)
	if !ok {
		// Nothing the client may read, or only its own rows (No Local):
		// nothing left, no mote-seq taken, and the interval still counts
		// from the message before.
		st.sent = prev
		return
	}
	b.pushDelta(st, payload, qos, batch, deltaBound(payload, len(held))) // it keeps the held rows while it waits
}

// paceHeap is a min-heap of treeSubs by due time (container/heap); each
// knows its place (slot).
type paceHeap []*treeSub

func (h paceHeap) Len() int           { return len(h) }
func (h paceHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h paceHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].slot, h[j].slot = i+1, j+1
}

func (h *paceHeap) Push(x any) {
	st := x.(*treeSub)
	st.slot = len(*h) + 1
	*h = append(*h, st)
}

func (h *paceHeap) Pop() any {
	old := *h
	st := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	st.slot = 0
	return st
}
