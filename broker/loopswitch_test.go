package broker

import (
	"testing"
	"time"
)

// TestLoopBudgetSwitch: publishes that cost more than the ones the limit
// was measured on are bounded by what the loop takes over them now, not
// once a batch of them was run and measured: while the loop is behind,
// the time it has taken so far over the rows it began (requestQueue
// full; before any, while the tree applies them all, over the batch's
// rows) caps the inbox at budget's worth of rows at that cost. With
// the limit from the batches before alone (cheap ones: 10,000 here), the
// inbox took 2,000 to 3,975 of 4,000 costly publishes at once (h-inbox,
// 8 of 8 runs of an end-to-end flood to 200 away sessions); a flood run
// end to end cannot pin when the switch is seen (deliveries to away
// sessions got cheaper since: h-awaycost), so this checks the rule.
func TestLoopBudgetSwitch(t *testing.T) {
	const budget = 10 * time.Millisecond
	for _, tc := range []struct {
		name    string
		running bool
		batch   int           // rows the publishes of the batch weigh
		started int64         // rows of its publishes begun
		took    time.Duration // since the loop began it
		queued  int           // rows' worth queued (a request a row)
		full    bool
	}{
		{"below the floor", true, 10, 2, time.Second, minLoopLimit - 1, false},
		{"cheap as measured", true, 1000, 100, 100 * time.Microsecond, 5000, false}, // 1 µs each: 10,000
		{"costly: 1 ms each, 10 fit", true, 1000, 10, 10 * time.Millisecond, minLoopLimit, true},
		{"costly: 100 µs each, 100 fit", true, 1000, 10, time.Millisecond, 99, false},
		{"costly: 100 µs each, 100 fit, full", true, 1000, 10, time.Millisecond, 100, true},
		{"none begun: the batch of one counts as done", true, 1, 0, 20 * time.Millisecond, minLoopLimit, true},
		{"none begun: a batch of 1,000 rows the tree applies, 20 µs each so far", true, 1000, 0, 20 * time.Millisecond, 499, false},
		{"none begun: a batch of 1,000 rows the tree applies, 20 µs each so far, full", true, 1000, 0, 20 * time.Millisecond, 500, true},
		{"a call, no publish in the batch: not a publish's cost", true, 0, 0, time.Second, 5000, false},
		{"waiting for the loop to start: not a publish's cost", false, 1, 0, 20 * time.Millisecond, minLoopLimit, false},
		{"the limit whatever the cost", true, 1001, 1001, time.Nanosecond, 10_000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newRequestQueue(100_000, budget)
			q.ran(1000, time.Millisecond) // 1 µs each: limit 10,000
			q.mu.Lock()
			defer q.mu.Unlock()
			q.items, q.units = make([]request, tc.queued), tc.queued
			if tc.running {
				q.begin(tc.batch, time.Now())
			}
			q.since = time.Now().Add(-tc.took)
			q.started.Store(tc.started)
			if got := q.full(); got != tc.full {
				t.Fatalf("full %v, want %v (limit %d)", got, tc.full, q.limit)
			}
		})
	}
}

// TestLoopCostLeavesCallsOut: a batch's calls (a snapshot's encoding, say)
// are not counted in what its publishes cost: runBatch reports the
// publishes it ran and what the rest took, and the loop tells the inbox
// the difference (ran). Counted, one 20 ms call in a batch of one set the
// cost to 20 ms a request, and the limit to its floor for many batches.
func TestLoopCostLeavesCallsOut(t *testing.T) {
	b := start(t, Options{})
	call := request{kind: reqCall, call: func() { time.Sleep(20 * time.Millisecond) }}
	b.loopMu.Lock()
	rows, others := b.runBatch([]request{call}, time.Now())
	b.loopMu.Unlock()
	if rows != 0 || others < 20*time.Millisecond {
		t.Fatalf("runBatch: %d rows, others %v; want 0, 20ms or more", rows, others)
	}
	q := newRequestQueue(100_000, 100*time.Millisecond)
	q.ran(rows, 20*time.Millisecond-others)
	if got := q.limitNow(); got != 100_000 {
		t.Fatalf("limit %d after a batch of a call alone, want LoopQueue", got)
	}
}
