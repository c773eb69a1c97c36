package broker

import (
	"testing"
	"time"
)

// TestLoopBudgetSwitch: publishes that cost more than the ones the limit
// was measured on are bounded by what the loop takes over them now, not
// once a batch of them was run and measured: while the loop is behind,
// the time it has taken so far over the publishes it began (requestQueue
// full) caps the inbox at budget's worth of requests at that cost. With
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
		started int64         // publishes of the batch the loop began
		took    time.Duration // since the loop began it
		queued  int
		full    bool
	}{
		{"below the floor", true, 2, time.Second, minLoopLimit - 1, false},
		{"cheap as measured", true, 101, 100 * time.Microsecond, 5000, false}, // 1 µs each: 10,000
		{"costly: 1 ms each, 10 fit", true, 11, 10 * time.Millisecond, minLoopLimit, true},
		{"costly: 100 µs each, 100 fit", true, 11, time.Millisecond, 99, false},
		{"costly: 100 µs each, 100 fit, full", true, 11, time.Millisecond, 100, true},
		{"the first publish under way counts as one", true, 1, 20 * time.Millisecond, minLoopLimit, true},
		{"a call, no publish begun: not a publish's cost", true, 0, time.Second, 5000, false},
		{"waiting for the loop to start: not a publish's cost", false, 0, 20 * time.Millisecond, minLoopLimit, false},
		{"the first publish under way counts as one, with 1 done", true, 2, 20 * time.Millisecond, minLoopLimit, true},
		{"the limit whatever the cost", true, 1001, time.Nanosecond, 10_000, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newRequestQueue(100_000, budget)
			q.ran(1000, time.Millisecond) // 1 µs each: limit 10,000
			q.mu.Lock()
			defer q.mu.Unlock()
			q.items = make([]request, tc.queued)
			if tc.running {
				q.begin()
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
	pubs, others := b.runBatch([]request{call})
	b.loopMu.Unlock()
	if pubs != 0 || others < 20*time.Millisecond {
		t.Fatalf("runBatch: %d publishes, others %v; want 0, 20ms or more", pubs, others)
	}
	q := newRequestQueue(100_000, 100*time.Millisecond)
	q.ran(pubs, 20*time.Millisecond-others)
	if got := q.limitNow(); got != 100_000 {
		t.Fatalf("limit %d after a batch of a call alone, want LoopQueue", got)
	}
}
