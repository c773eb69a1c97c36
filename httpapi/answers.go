package httpapi

import "sync"

// answerBudget bounds the bytes of tree and history answers held while
// they are written to their clients. A GET of a large filter is a few
// bytes that make the broker hold a whole tree until the client has read
// it (up to WriteTimeout): without a bound, a client asking for it on
// many connections and reading slowly holds as many copies. An answer
// that does not fit is refused (503 with Retry-After) and dropped at
// once; one answer always fits when none is held, however large.
type answerBudget struct {
	max int64

	mu   sync.Mutex // guards held
	held int64      // bytes of answers being written
}

// take counts n bytes of an answer being written; false (not counted): it
// does not fit now.
func (a *answerBudget) take(n int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.held > 0 && a.held+int64(n) > a.max {
		return false
	}
	a.held += int64(n)
	return true
}

// give counts n bytes taken less: their answer is written.
func (a *answerBudget) give(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.held -= int64(n)
}

// load is the bytes held (for tests).
func (a *answerBudget) load() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held
}
