package httpapi

import "github.com/mote-mqtt/mote/broker"

// answerBudget bounds the bytes of tree and history answers held while
// they are built and written to their clients, a broker.Budget of
// MaxAnswerBytes whose last sixteenth only small answers may take. A GET
// of a large filter is a few bytes that make the broker hold a whole
// tree until the client has read it (up to WriteTimeout): without a
// bound, a client asking for it on many connections and reading slowly
// holds as many copies. An answer is counted by its estimate
// (Broker.AnswerSize) before it is built, and by its size once built;
// one that does not fit is refused (503 with Retry-After) before
// anything is built. One answer always fits when none is held, however
// large. Large answers may not take the last sixteenth: small ones still
// fit when large ones have taken the rest.
type answerBudget struct{ *broker.Budget }

// take counts n bytes of an answer; false (not counted): it does not fit
// now. A large answer (not small) leaves the reserve.
func (a answerBudget) take(n int64, small bool) bool { return a.Take(n, small) }

// resize counts an answer that held own bytes (its estimate) by n, its
// size once built; false (own still counted): n is more than own and
// does not fit beside the other answers held now.
func (a answerBudget) resize(own, n int64, small bool) bool { return a.Resize(own, n, small) }

// give counts n bytes taken less: their answer is written, or was
// smaller than guessed.
func (a answerBudget) give(n int64) { a.Give(n) }

// load is the bytes held.
func (a answerBudget) load() int64 { return a.Load() }

// stats are the bytes held, the most held at once and the refusals.
func (a answerBudget) stats() (held, peak, refused int64) { return a.Stats() }
