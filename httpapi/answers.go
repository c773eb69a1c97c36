package httpapi

import "sync"

// answerBudget bounds the bytes of tree and history answers held while
// they are built and written to their clients. A GET of a large filter is
// a few bytes that make the broker hold a whole tree until the client has
// read it (up to WriteTimeout): without a bound, a client asking for it
// on many connections and reading slowly holds as many copies. An answer
// is counted by its estimate (Broker.AnswerSize) before it is built, and
// by its size once built; one that does not fit is refused (503 with
// Retry-After) before anything is built. One answer always fits when none
// is held, however large. Large answers may not take the last sixteenth
// (reserve): small ones still fit when large ones have taken the rest.
type answerBudget struct {
	max int64

	mu      sync.Mutex // guards held, peak, refused
	held    int64      // bytes of answers being built or written
	peak    int64      // the most held at once
	refused int64      // answers refused, or streams ended, for want of room
}

// reserve is the part of the budget only small answers may take.
func (a *answerBudget) reserve() int64 { return a.max / 16 }

// take counts n bytes of an answer; false (not counted): it does not fit
// now. A large answer (not small) leaves the reserve.
func (a *answerBudget) take(n int64, small bool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	limit := a.max
	if !small {
		limit -= a.reserve()
	}
	if a.held > 0 && a.held+n > limit {
		a.refused++
		return false
	}
	a.held += n
	a.peak = max(a.peak, a.held)
	return true
}

// resize counts an answer that held own bytes (its estimate) by n, its
// size once built; false (own still counted): n is more than own and
// does not fit beside the other answers held now. An answer alone fits
// whatever its size, as take's.
func (a *answerBudget) resize(own, n int64, small bool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	limit := a.max
	if !small {
		limit -= a.reserve()
	}
	if others := a.held - own; n > own && others > 0 && others+n > limit {
		a.refused++
		return false
	}
	a.held += n - own
	a.peak = max(a.peak, a.held)
	return true
}

// give counts n bytes taken less: their answer is written, or was
// smaller than guessed.
func (a *answerBudget) give(n int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.held -= n
}

// load is the bytes held.
func (a *answerBudget) load() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held
}

// stats are the bytes held, the most held at once and the refusals.
func (a *answerBudget) stats() (held, peak, refused int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held, a.peak, a.refused
}
