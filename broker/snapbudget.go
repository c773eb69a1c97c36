package broker

import (
	"bytes"
	"strings"
	"sync"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// The snapshot budget (Broker.snaps) is the Budget of first messages ($sync snapshots, and
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
// answer does (the HTTP API's Budget).
//
// A resumed session's $sync subscription has no SUBSCRIBE to refuse: its
// writer waits for room before its snapshot is built
// (conn.awaitSnapshotRoom), in turn with the others waiting (Budget's
// queue), while its rows' changes are left to the snapshot and its
// events held as for any snapshot not yet made. While one waits, a
// SUBSCRIBE's snapshot is still granted if small (an estimate of at most
// a 64th of the budget) and the budget's reserve (a 16th) has room
// beside the other small ones (Budget.hold): the waiters' room leaves
// the reserve out, so small snapshots never keep them waiting, and N
// resumed clients that never read no longer refuse every $sync
// SUBSCRIBE. A small snapshot stays counted in the reserve once built,
// whatever its size (its estimate is an upper bound, tree.SizeBound: it
// grows past it only by the rows added meanwhile), until written.
//
// An estimate must bound the snapshot built for it, or snapshots
// admitted by their estimates and then counted by their sizes pass the
// budget: the estimate before (topic + value × 4/3 + 16 a row) was 6
// times short of a JSON string of control characters (\u0001), and the
// red team held 60 MiB against 24 (R3, docs/redteam-rt.md). A row's size
// (Store.MatchSizes) counts its keys and its value as the codec that
// grows them most writes them, kept in its node: counted when the row
// is put (or, for a value longer than 64 bytes, once by the first
// estimate after it changed).

// snapHolds are what a connection's subscriptions hold of the budget
// for their first messages: the estimate of each until it is built, then
// its size, until it is written, dropped before, or the connection goes.
// Its writer makes one at a time, so the connection counts in the budget
// the most one of them holds, not their sum: a client subscribing to
// many $sync filters at once, reading or not, holds one snapshot.
type snapHolds struct {
	mu      sync.Mutex // guards held, counted, reserve, gone, wait
	held    map[*treeSub]int64
	counted int64     // in the budget for the connection: the most one of held holds
	reserve bool      // counted is in the budget's reserve (Budget.hold)
	gone    bool      // the connection went: nothing more is held for it
	wait    *snapWait // its writer's wait for room, while it waits (awaitSnapshotRoom)
}

// holdsOf is c's snapHolds, made the first time a subscription of c
// holds a snapshot (or c goes): an idle connection carries a pointer, not
// the holds.
func (c *conn) holdsOf() *snapHolds {
	if h := c.snapHolds.Load(); h != nil {
		return h
	}
	c.snapHolds.CompareAndSwap(nil, &snapHolds{})
	return c.snapHolds.Load()
}

// holdSnapshot counts n bytes for st's first message, the estimate made
// before its SUBACK; false: they do not fit beside what the broker holds
// now, or the connection went.
func (c *conn) holdSnapshot(st *treeSub, n int64) bool {
	h := c.holdsOf()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gone {
		return false
	}
	if n > h.counted {
		res, ok := c.b.snaps.hold(n, h.counted, h.reserve, n <= c.b.snaps.max/64)
		if !ok {
			return false
		}
		h.counted, h.reserve = n, res
	}
	if h.held == nil {
		h.held = make(map[*treeSub]int64)
	}
	h.held[st] = n
	return true
}

// settleLocked counts in the budget the most one of held holds, and
// extra bytes more, in one step (h.mu held).
func (c *conn) settleLocked(h *snapHolds, extra int64) {
	var most int64
	for _, n := range h.held {
		most = max(most, n)
	}
	c.b.snaps.settle(most-h.counted+extra, h.wait, h.reserve)
	h.counted = most
}

// awaitSnapshotRoom waits until st's first message fits the budget, by
// its estimate, and counts it as holdSnapshot does; for a subscription
// made without a SUBSCRIBE, a resumed session's, which has no SUBACK to
// refuse. Its rows' changes meanwhile are the snapshot's, made after it
// (its events are held as for any snapshot not yet made); the writer's
// other messages wait behind it, as behind a snapshot being written. It
// fails (errWriterStop) only once the connection is done.
func (c *conn) awaitSnapshotRoom(st *treeSub) error {
	done := c.q.done.wait()
	guess, ok := c.b.snapshotGuess(done, st.ts.Filter, c.b.snaps.max)
	if !ok {
		return errWriterStop
	}
	h := c.holdsOf()
	h.mu.Lock()
	if h.gone {
		h.mu.Unlock()
		return errWriterStop
	}
	own := h.counted // what the connection holds outside the reserve, stuck while it waits
	if h.reserve {
		own = 0
	}
	need := max(guess-own, 0) // the connection counts the largest of its own
	var w *snapWait
	if need > 0 {
		w = c.b.snaps.queue(need, own)
	}
	h.wait = w
	h.mu.Unlock()
	granted := w == nil || c.b.snaps.await(done, w)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.wait = nil
	switch {
	case !granted:
		return errWriterStop
	case h.gone: // releaseSnapshots came between: need was not in counted
		c.b.snaps.add(-need)
		return errWriterStop
	}
	if need > 0 && h.reserve { // need is counted outside the reserve: the rest moves out of it
		c.b.snaps.settle(-h.counted, nil, true)
		h.counted, h.reserve = 0, false
	}
	if h.held == nil {
		h.held = make(map[*treeSub]int64)
	}
	h.held[st] = guess
	c.settleLocked(h, -need) // need is counted already
	return nil
}

// resizeSnapshot counts st's first message by n, its size once built
// (its own bytes, not its shared snapshot's), in place of what st held
// (its estimate, or nothing: a resumed session's subscription, made
// without a SUBSCRIBE); and its shared snapshot, if no writer counted it
// yet. In one step: the estimate and the snapshot built for it are
// never both counted.
func (c *conn) resizeSnapshot(st *treeSub, n int64) {
	h := c.holdsOf()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gone {
		return
	}
	if h.held == nil {
		h.held = make(map[*treeSub]int64)
	}
	h.held[st] = n
	c.settleLocked(h, c.b.shares.count(st.shared.Load(), h.reserve))
}

// count is sh's size the first time it is asked, then 0: a shared
// snapshot is counted once (in the reserve if res), until its last
// writer lets it go.
func (s *snapShares) count(sh *sharedSnap, res bool) int64 {
	if sh == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sh.counted {
		return 0
	}
	sh.counted, sh.reserve = true, res
	return int64(len(sh.payload))
}

// releaseSnapshot gives back what st held: its first message was
// written, or will never be.
func (c *conn) releaseSnapshot(st *treeSub) {
	h := c.snapHolds.Load()
	if h == nil {
		return // nothing was held
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.held[st]; ok {
		delete(h.held, st)
		c.settleLocked(h, 0)
	}
}

// releaseSnapshots gives back what the connection held: it went.
func (c *conn) releaseSnapshots() {
	h := c.holdsOf()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gone = true
	h.held = nil
	c.b.snaps.settle(-h.counted, h.wait, h.reserve)
	h.counted, h.reserve = 0, false
}

// snapshotGuess is an upper bound of the snapshot of filter in any
// codec (as AnswerSize bounds an HTTP answer: every row matching, the
// ACL not applied, each row's tree.SizeBound), walked on the loop, which
// it leaves once the guess passes stop: a guess past the budget is
// refused whatever its rest. A row's size is kept in its store node,
// counted when it was put; only a value longer than 64 bytes is read,
// by the first walk that asks for it since it changed, so a walk reads
// at most stop bytes of values (and one row more), each once per change
// whatever the number of walks. Guesses take one of a few slots
// first (Broker.estimates, shared with the doors' AnswerSize), so
// SUBSCRIBEs of many clients do not queue walks on the loop without
// bound. false: done closed first.
func (b *Broker) snapshotGuess(done <-chan struct{}, filter string, stop int64) (int64, bool) {
	select {
	case b.estimates <- struct{}{}:
	case <-done:
		return 0, false
	}
	defer func() { <-b.estimates }()
	size := int64(tree.SnapshotFraming)
	ok := b.onLoop(done, func() {
		b.tree.Store().MatchSizes(filter, func(_ string, _ wire.Value, row int64) bool {
			size += row
			return size <= stop
		})
		b.guessed.Add(size)
	})
	if !ok {
		return 0, false // the loop may still walk, later: size is its
	}
	return size, true
}

// sharedGuess is snapshotGuess for one of the $sync filters of a
// SUBSCRIBE, whose estimates walk at most the budget's worth of rows
// together (walked, theirs so far): one SUBSCRIBE of a thousand $sync
// filters made a thousand walks of up to the budget each, on the loop.
// Once they walked past it, the filters left are not walked and count,
// as one whose walk the budget cut, as large as the budget less its
// reserve (the most a large snapshot holds): the connection counts the
// largest of its own, so that holds the whole budget but the reserve
// until they are written, and fits when the connection holds it alone.
func (b *Broker) sharedGuess(done <-chan struct{}, filter string, walked *int64) (int64, bool) {
	left := b.snaps.max - *walked
	if left <= 0 {
		return b.snaps.limit(false), true
	}
	guess, ok := b.snapshotGuess(done, filter, left)
	*walked += guess
	if guess > left {
		guess = max(guess, b.snaps.limit(false))
	}
	return guess, ok
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
	reserve bool // guarded by snapShares.mu: counted in the budget's reserve (that writer's were)
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
		b.snaps.settle(-int64(len(sh.payload)), nil, sh.reserve)
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
