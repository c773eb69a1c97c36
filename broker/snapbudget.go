package broker

import (
	"bytes"
	"strings"
	"sync"

	"github.com/mote-mqtt/mote/tree"
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
// 0x80); once encoded the snapshot counts by its size (a shared one
// once), and a connection counts the largest of its own (snapHolds). One
// snapshot always fits when none is held, however large, as an HTTP
// answer does (httpapi answerBudget).
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
// for their first messages: the estimate of each until it is built, then
// its size, until it is written, dropped before, or the connection goes.
// Its writer makes one at a time, so the connection counts in the budget
// the most one of them holds, not their sum: a client subscribing to
// many $sync filters at once, reading or not, holds one snapshot.
type snapHolds struct {
	mu      sync.Mutex // guards held, counted, gone
	held    map[*treeSub]int64
	counted int64 // in the budget for the connection: the most one of held holds
	gone    bool  // the connection went: nothing more is held for it
}

// holdSnapshot counts n bytes for st's first message, the estimate made
// before its SUBACK; false: they do not fit beside what the broker holds
// now, or the connection went.
func (c *conn) holdSnapshot(st *treeSub, n int64) bool {
	h := &c.snapHolds
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gone {
		return false
	}
	if n > h.counted {
		if !c.b.snaps.take(n - h.counted) {
			return false
		}
		h.counted = n
	}
	if h.held == nil {
		h.held = make(map[*treeSub]int64)
	}
	h.held[st] = n
	return true
}

// settleLocked counts in the budget the most one of held holds, and
// extra bytes more, in one step (h.mu held).
func (c *conn) settleLocked(extra int64) {
	h := &c.snapHolds
	var most int64
	for _, n := range h.held {
		most = max(most, n)
	}
	c.b.snaps.add(most - h.counted + extra)
	h.counted = most
}

// resizeSnapshot counts st's first message by n, its size once built
// (its own bytes, not its shared snapshot's), in place of what st held
// (its estimate, or nothing: a resumed session's subscription, made
// without a SUBSCRIBE); and its shared snapshot, if no writer counted it
// yet. In one step: the estimate and the snapshot built for it are
// never both counted.
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
	h.held[st] = n
	c.settleLocked(c.b.shares.count(st.shared.Load()))
}

// count is sh's size the first time it is asked, then 0: a shared
// snapshot is counted once, until its last writer lets it go.
func (s *snapShares) count(sh *sharedSnap) int64 {
	if sh == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sh.counted {
		return 0
	}
	sh.counted = true
	return int64(len(sh.payload))
}

// releaseSnapshot gives back what st held: its first message was
// written, or will never be.
func (c *conn) releaseSnapshot(st *treeSub) {
	h := &c.snapHolds
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.held[st]; ok {
		delete(h.held, st)
		c.settleLocked(0)
	}
}

// releaseSnapshots gives back what the connection held: it went.
func (c *conn) releaseSnapshots() {
	h := &c.snapHolds
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gone = true
	h.held = nil
	c.b.snaps.add(-h.counted)
	h.counted = 0
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

// sharedSnap is one encoded snapshot written to every subscription that
// asked for the same filter and codec, with no read check, while the
// rows stayed the same: its bytes are never changed, held once whatever
// the number of clients writing them, and counted once in the budget.
type sharedSnap struct {
	key     snapKey
	rev     uint64 // the revision it was made at
	gen     uint64 // the store's rows added and deleted then
	payload []byte
	refs    int  // guarded by snapShares.mu: the writers writing it
	counted bool // guarded by snapShares.mu: in the budget (by the first writer to size its snapshot)
}

// snapKey names a snapshot: its filter and codec.
type snapKey struct {
	filter string
	codec  wire.Codec
}

// snapShares are the shared snapshots being written. The loop makes and
// finds them; the writers let go of them once written (release).
type snapShares struct {
	mu    sync.Mutex // guards byKey and every sharedSnap's refs
	byKey map[snapKey]*sharedSnap
}

// sharedSnapshot is st's snapshot, shared with the other subscriptions
// that asked for the same one while it is written, if none of the rows
// it holds changed since it was made (loop only). The caller's writer
// lets it go with releaseShared.
func (b *Broker) sharedSnapshot(st *treeSub) *sharedSnap {
	key := snapKey{filter: st.ts.Filter, codec: st.ts.Codec}
	rev, gen := b.tree.Rev(), b.tree.Store().Gen()
	s := &b.shares
	// The reference is taken with the lookup, in one step: a writer
	// letting go of the last one meanwhile (releaseShared) would give its
	// bytes back, and this reference's release give them back again.
	s.mu.Lock()
	sh := s.byKey[key]
	if sh != nil {
		sh.refs++
	}
	s.mu.Unlock()
	if sh != nil {
		if b.sameRows(sh) {
			return sh
		}
		b.releaseShared(sh)
	}
	payload := b.tree.Snapshot(st.ts.Filter, st.ts.Codec, nil)
	if n := len(payload); n > flushAt && cap(payload)-n > n/8 {
		// The encoder grew it by doubling: held until read, its spare
		// room would be up to as large again.
		payload = bytes.Clone(payload)
	}
	sh = &sharedSnap{key: key, rev: rev, gen: gen, payload: payload, refs: 1}
	s.mu.Lock()
	if s.byKey == nil {
		s.byKey = make(map[snapKey]*sharedSnap)
	}
	s.byKey[key] = sh
	s.mu.Unlock()
	return sh
}

// releaseShared lets go of a shared snapshot once written (or not): the
// last writer takes it out of the budget.
func (b *Broker) releaseShared(sh *sharedSnap) {
	if sh == nil {
		return
	}
	s := &b.shares
	s.mu.Lock()
	defer s.mu.Unlock()
	if sh.refs--; sh.refs > 0 {
		return
	}
	if s.byKey[sh.key] == sh {
		delete(s.byKey, sh.key)
	}
	if sh.counted {
		b.snaps.add(-int64(len(sh.payload)))
	}
}

// takeShared takes st's shared snapshot away from it, for releaseShared:
// nil if none (or taken already).
func (st *treeSub) takeShared() *sharedSnap { return st.shared.Swap(nil) }

// shares reports whether payload is st's shared snapshot.
func (st *treeSub) shares(payload []byte) bool {
	sh := st.shared.Load()
	return sh != nil && len(payload) > 0 && len(sh.payload) > 0 && &payload[0] == &sh.payload[0]
}

// sharesSnapshots reports whether c may be given a shared snapshot: an
// MQTT connection, which only reads it (a door session's callback might
// keep or change what it gets).
func (c *conn) sharesSnapshots() bool {
	_, ok := c.out.(*mqttOut)
	return ok
}

// sameRows reports whether sh still holds the rows its filter matches:
// none was added or deleted (the store's Gen) and none matching changed
// after sh's revision (a walk of the rows matching, which costs far less
// than making the snapshot). A row changed without moving the revision
// (a cluster node's own $SYS rows) could only be matched by a filter
// beginning with $: those are never shared. Loop only.
func (b *Broker) sameRows(sh *sharedSnap) bool {
	if sh.gen != b.tree.Store().Gen() || sh.rev == 0 || strings.HasPrefix(sh.key.filter, "$") {
		return false
	}
	same := true
	b.tree.Store().Rows(sh.key.filter, sh.rev, func(tree.Entry) bool {
		same = false
		return false
	})
	return same
}
