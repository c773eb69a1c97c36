package broker

import (
	"context"
	"testing"
	"time"
)

// TestInlineOneClock: a batch run inline (runInline) reads the clock once
// for the queue's running clock (requestQueue.since) and the batch's start
// (lastTick, the batch's duration): both are the same instant, within the
// call. The loop may run a batch of its own between the call and the
// check (the broker's $SYS rows, its start-up work), so a few tries may be
// needed: after a refusal the test waits on the loop's own barrier (Sync),
// for up to 50 tries or 30 s (a loaded -race CI run once refused 50 tries
// in 10 ms). With two reads no try is equal.
func TestInlineOneClock(t *testing.T) {
	b := start(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last string
	for range 50 {
		if ctx.Err() != nil {
			break
		}
		before := time.Now()
		if !b.runInline([]request{{kind: reqCall, call: func() {}}}, pubMeta{}) {
			last = "loop busy"
			if err := b.Sync(ctx); err != nil {
				last = "loop busy, Sync: " + err.Error()
			}
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
