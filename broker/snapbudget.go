package broker

import (
	"sync"

	"github.com/mote-mqtt/mote/wire"
)

// snapBudget bounds the bytes of first messages ($sync snapshots, and
// the $hist answers and resume deltas written as they are) held for MQTT
// clients broker-wide, from their SUBSCRIBE until they are written. A
// `$sync/#` SUBSCRIBE is a few bytes that make the broker hold the whole
// tree until the client has read it (up to the write timeout): without a
// bound, clients that never read hold one copy each. A $sync
// subscription takes its snapshot's estimate (snapshotGuess) before its
// SUBACK, and one that does not fit is refused there (0x97, MQTT 3.1.1
// 0x80); once encoded the snapshot counts by its size. One snapshot
// always fits when none is held, however large, as an HTTP answer does
// (httpapi answerBudget).
type snapBudget struct {
	max int64

	mu      sync.Mutex // guards held, peak, refused
	held    int64      // bytes of first messages estimated, built or being written
	peak    int64      // the most held at once
	refused int64      // subscriptions refused for want of room
}

// take counts n bytes; false (not counted): they do not fit now.
func (s *snapBudget) take(n int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held > 0 && s.held+n > s.max {
		s.refused++
		return false
	}
	s.held += n
	s.peak = max(s.peak, s.held)
	return true
}

// add counts n bytes more (or less, n < 0) whatever the room: a
// snapshot already granted is sent, and counted by its size.
func (s *snapBudget) add(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held += n
	s.peak = max(s.peak, s.held)
}

// stats are the bytes held, the most held at once and the refusals.
func (s *snapBudget) stats() (held, peak, refused int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held, s.peak, s.refused
}

// snapHolds are what a connection's subscriptions hold of the budget
// for their first messages: released when each is written, or dropped
// before, and all of them when the connection goes.
type snapHolds struct {
	mu   sync.Mutex // guards held, gone
	held map[*treeSub]int64
	gone bool // the connection went: nothing more is held for it
}

// heldSnapshot files n bytes taken of the budget (take) as held by st's
// first message; given back at once if the connection went meanwhile.
func (c *conn) heldSnapshot(st *treeSub, n int64) {
	h := &c.snapHolds
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gone {
		c.b.snaps.add(-n)
		return
	}
	if h.held == nil {
		h.held = make(map[*treeSub]int64)
	}
	h.held[st] += n
}

// resizeSnapshot counts st's first message by n, its size once built,
// in place of what st held (its estimate, or nothing: a resumed
// session's subscription, made without a SUBSCRIBE).
func (c *conn) resizeSnapshot(st *treeSub, n int64) {
	h := &c.snapHolds
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gone {
		return
	}
	if h.held == nil {
		h.held = make(map[*treeSub]int64)
	}
	c.b.snaps.add(n - h.held[st])
	h.held[st] = n
}

// releaseSnapshot gives back what st held: its first message was
// written, or will never be.
func (c *conn) releaseSnapshot(st *treeSub) {
	h := &c.snapHolds
	h.mu.Lock()
	defer h.mu.Unlock()
	if n, ok := h.held[st]; ok {
		delete(h.held, st)
		c.b.snaps.add(-n)
	}
}

// releaseSnapshots gives back what every subscription of the connection
// held: it went.
func (c *conn) releaseSnapshots() {
	h := &c.snapHolds
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gone = true
	var n int64
	for _, v := range h.held {
		n += v
	}
	h.held = nil
	c.b.snaps.add(-n)
}

// snapshotGuess is an upper guess of the snapshot of filter (as
// AnswerSize guesses an HTTP answer: every row matching, the ACL not
// applied), walked on the loop, which it leaves once the guess passes
// stop: a guess past the budget is refused whatever its rest. Guesses
// take one of a few slots first, so SUBSCRIBEs of many clients do not
// queue walks on the loop without bound. false: done closed first.
func (b *Broker) snapshotGuess(done <-chan struct{}, filter string, stop int64) (int64, bool) {
	select {
	case b.snapGuesses <- struct{}{}:
	case <-done:
		return 0, false
	}
	defer func() { <-b.snapGuesses }()
	var size int64
	ok := b.onLoop(done, func() {
		b.tree.Store().Match(filter, func(topic string, v wire.Value, _ byte) bool {
			size += rowGuess(topic, v)
			return size <= stop
		})
	})
	return size, ok
}

// errSnapshotsFull refuses a $sync SUBSCRIBE whose snapshot does not fit
// the budget (a quota refusal: 0x97).
func (b *Broker) errSnapshotsFull(guess int64) error {
	return errQuotaf("the broker is writing as many snapshots as it may hold (%d MiB at most at once; this one about %d KiB): subscribe again later, or to a narrower filter", b.snaps.max>>20, guess>>10)
}
