package broker

import (
	"testing"
	"time"
)

// TestInlineOneClock: a batch run inline (runInline) reads the clock once
// for the queue's running clock (requestQueue.since) and the batch's start
// (lastTick, the batch's duration): both are the same instant, within the
// call. The loop may run a batch of its own between the call and the
// check (the broker's $SYS rows), so a few tries may be needed; with two
// reads no try is equal.
func TestInlineOneClock(t *testing.T) {
	b := start(t, Options{})
	var last string
	for range 50 {
		before := time.Now()
		if !b.runInline([]request{{kind: reqCall, call: func() {}}}, pubMeta{}) {
			last = "loop busy"
			continue
		}
		after := time.Now()
		b.loopMu.Lock()
		b.reqs.mu.Lock()
		since, tick := b.reqs.since, b.lastTick.Load()
		b.reqs.mu.Unlock()
		b.loopMu.Unlock()
		if since.UnixNano() == tick && !since.Before(before) && !since.After(after) {
			return
		}
		last = "since " + since.String() + ", lastTick " + time.Unix(0, tick).String()
	}
	t.Fatalf("no inline batch with one clock: %s", last)
}
