package broker

import (
	"slices"
	"sync"
)

// Budget bounds the bytes a door holds for its clients at once, answers
// built and being written: $sync snapshots for MQTT clients
// (MaxSnapshotBytes, Broker's), tree and history answers and large
// events for HTTP clients (the HTTP API's MaxAnswerBytes). One always
// fits when none is held, however large; past the bound a take is
// refused (and counted), and a door answers it with its own refusal
// (SUBACK 0x97, HTTP 503). Large takes (not small) may not have the last
// reserve bytes: small ones still fit when large ones have taken the
// rest.
//
// A writer that cannot be refused (a resumed session's snapshot: no
// SUBACK) waits for room instead (queue, await), first come first; while
// one waits, takes are refused (the first waiting does not fit, so
// nothing would fit beside its room), so no stream of them keeps it
// waiting for good. The $sync door's small takes (hold) are the
// exception: they are counted apart, in the reserve (inReserve), granted
// while writers wait as long as the reserve has room, and the waiters'
// room is what the others leave of max - reserve, so small takes never
// push a waiter back.
type Budget struct {
	max     int64
	reserve int64 // the part of max only small takes may have

	mu        sync.Mutex  // guards held, inReserve, peak, refused, waited, waiting, stuck
	held      int64       // bytes of answers estimated, built or being written
	inReserve int64       // of held, those of the $sync door's small takes (hold), counted in the reserve
	peak      int64       // the most held at once
	refused   int64       // takes refused for want of room
	waited    int64       // writers that waited for room
	waiting   []*snapWait // writers waiting for room, first come first
	stuck     int64       // what the connections of waiting writers hold: their writers wait, so only their own turn frees it
}

// NewBudget is a Budget of max bytes, whose last reserve bytes only
// small takes may have.
func NewBudget(max, reserve int64) *Budget {
	return &Budget{max: max, reserve: reserve}
}

// snapWait is one writer waiting for room in the budget.
type snapWait struct {
	n      int64         // the bytes it asks for
	own    int64         // guarded by Budget.mu: what its connection holds meanwhile (in held, and in stuck while queued)
	queued bool          // guarded by Budget.mu: in waiting
	ready  chan struct{} // closed once n is counted for it
}

// fitsLocked reports whether n bytes fit now (s.mu held), a small take
// or not, beside what is held outside the reserve. Bytes held only by
// connections whose writers wait for room (stuck) count as none held:
// each of them waits for the others' to go, and would wait for good (two
// resumed clients that each SUBSCRIBEd before their writer reached its
// resumed snapshot).
func (s *Budget) fitsLocked(n int64, small bool) bool {
	main := s.held - s.inReserve
	return main <= s.stuck || main+n <= s.limit(small)
}

// Take counts n bytes; false (not counted): they do not fit now, or a
// writer waits for room before them. A large take (not small) leaves the
// reserve.
func (s *Budget) Take(n int64, small bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waiting) > 0 || !s.fitsLocked(n, small) {
		s.refused++
		return false
	}
	s.countLocked(n)
	return true
}

// hold counts n bytes for a $sync connection in place of the own it
// holds already (in the reserve if res), as Take of n-own; except that a
// small n goes in the reserve, whether writers wait or not, if it fits
// there beside the other small takes and own is not held outside it
// (own never moves into the reserve: a waiting writer's own is stuck).
// A large n held by a connection whose own was in the reserve moves it
// out. inRes: where the connection's bytes are counted now; false (ok):
// not counted, own stays where it was.
func (s *Budget) hold(n, own int64, res, small bool) (inRes, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resOwn, mainOwn := int64(0), own
	if res {
		resOwn, mainOwn = own, 0
	}
	switch {
	case small && (res || own == 0) && s.inReserve-resOwn+n <= s.reserve:
		inRes = true
	case len(s.waiting) > 0 || !s.fitsLocked(n-mainOwn, false):
		s.refused++
		return res, false
	}
	s.countLocked(n - own)
	if inRes {
		s.inReserve += n - resOwn
	} else {
		s.inReserve -= resOwn
	}
	return inRes, true
}

// Resize counts what held own bytes (its estimate) by n, its size once
// built; false (own still counted): n is more than own and does not fit
// beside the others held now. One alone fits whatever its size, as
// Take's.
func (s *Budget) Resize(own, n int64, small bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if others := s.held - own; n > own && others > 0 && others+n > s.limit(small) {
		s.refused++
		return false
	}
	s.countLocked(n - own)
	if n < own {
		s.grantLocked()
	}
	return true
}

// Give counts n bytes taken less: what they held is written, or was
// smaller than guessed.
func (s *Budget) Give(n int64) { s.add(-n) }

// Load is the bytes held.
func (s *Budget) Load() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held
}

// Stats are the bytes held, the most held at once and the refusals.
func (s *Budget) Stats() (held, peak, refused int64) { return s.stats() }

// limit is what a take may reach: a large one leaves the reserve.
func (s *Budget) limit(small bool) int64 {
	if small {
		return s.max
	}
	return s.max - s.reserve
}

// queue counts n bytes if they fit now, in turn with the writers
// waiting before them, and returns nil; else it returns the wait for
// them, for await. own is what the caller's connection holds meanwhile
// (stuck); settle keeps it up to date.
func (s *Budget) queue(n, own int64) *snapWait {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waiting) == 0 && s.fitsLocked(n, false) {
		s.countLocked(n)
		return nil
	}
	w := &snapWait{n: n, own: own, queued: true, ready: make(chan struct{})}
	s.waiting = append(s.waiting, w)
	s.waited++
	s.stuck += own
	s.grantLocked() // its connection's holds may be all that is held
	return w
}

// await waits until w's bytes are counted; false: done closed first, and
// nothing is counted for it.
func (s *Budget) await(done <-chan struct{}, w *snapWait) bool {
	select {
	case <-w.ready:
		return true
	case <-done:
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.queued {
		s.waiting = slices.DeleteFunc(s.waiting, func(o *snapWait) bool { return o == w })
		w.queued = false
		s.stuck -= w.own
	} else { // granted meanwhile: given back
		s.held -= w.n // never in the reserve
	}
	s.grantLocked() // the next may fit now
	return false
}

// grantLocked counts the room of the first waiting writers that fit, in
// order, and wakes them (s.mu held).
func (s *Budget) grantLocked() {
	for len(s.waiting) > 0 && s.fitsLocked(s.waiting[0].n, false) {
		w := s.waiting[0]
		s.waiting[0] = nil
		s.waiting = s.waiting[1:]
		w.queued = false
		s.stuck -= w.own
		s.countLocked(w.n)
		close(w.ready)
	}
	if len(s.waiting) == 0 {
		s.waiting = nil // let the array go
	}
}

// countLocked counts n bytes more (s.mu held).
func (s *Budget) countLocked(n int64) {
	s.held += n
	s.peak = max(s.peak, s.held)
}

// add counts n bytes more (or less, n < 0) whatever the room: a
// snapshot already granted is sent, and counted by its size. Room given
// back goes to the writers waiting for it.
func (s *Budget) add(n int64) { s.settle(n, nil, false) }

// settle counts n bytes more (or less) whatever the room, as add, in the
// reserve if res (a small take's, see hold), for a connection whose
// writer may wait for room (w, nil if it does not): what it holds
// outside the reserve while w is queued is stuck.
func (s *Budget) settle(n int64, w *snapWait, res bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if res {
		s.inReserve += n
	} else if w != nil && w.queued {
		w.own += n
		s.stuck += n
	}
	s.countLocked(n)
	if n < 0 {
		s.grantLocked()
	}
}

// stats is Stats, for the broker's own.
func (s *Budget) stats() (held, peak, refused int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held, s.peak, s.refused
}

// waits are the writers waiting for room now, and all that waited.
func (s *Budget) waits() (now int, all int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.waiting), s.waited
}
