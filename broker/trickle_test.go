package broker

import (
	"fmt"
	"testing"
	"time"
)

// TestQueueTricklingTogether: clients whose TCP stacks trickle (take a
// little of a write in progress, well under creditBytes a second) cost a
// publisher about one patience in all, however many they are, as clients
// that take nothing do (TestQueueStallTogether). Found by the red team of
// h-bigmsg: any 1 KiB taken since the last look restarted the wall-time
// clock (takingLocked set fullAt to now), so each trickler was stalled only
// once a publisher had spent its credit waiting for it, one after another:
// n × patience (32 tricklers at 8 KiB/s held 32 publishes 6.8 s at a
// patience of 200 ms). Now what the bytes taken earn moves the clock on,
// no more: a client taking 64 KiB a second or more is never stalled by it.
func TestQueueTricklingTogether(t *testing.T) {
	const patience = 200 * time.Millisecond
	cases := []struct {
		n    int
		rate int // bytes a second each client's stack takes
	}{
		{1, 8 << 10},
		{8, 8 << 10},
		{32, 8 << 10},
		{32, 24 << 10},
		{32, 0},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%d at %d B/s", tc.n, tc.rate), func(t *testing.T) {
			start := time.Now()
			qs := make([]*outQueue, tc.n)
			for i := range qs {
				qs[i] = newOutQueue(1000, patience) // room for 4 items of 201 bytes
				defer qs[i].close()
				// The client's TCP stack, taking rate bytes a second of a
				// write that never returns.
				qs[i].acked = ackedFunc(func() (uint64, bool) {
					return uint64(time.Since(start) * time.Duration(tc.rate) / time.Second), true
				})
				for range 4 {
					if r := qs[i].put(waitItem(), pubWait{}); r != pushed {
						t.Fatalf("filling: %v", r)
					}
				}
			}
			// n publishes, each to every subscriber in turn, each with its
			// own clock of a patience (an MQTT client's pubClock).
			ctx := testCtx(t)
			results := map[pushResult]int{}
			from := time.Now()
			for range tc.n {
				clock := pubClock{wait: patience}
				w := pubWait{clock: &clock}
				for _, q := range qs {
					results[q.put(waitItem(), w)]++
					if ctx.Err() != nil {
						t.Fatal("the publishes still wait")
					}
				}
			}
			took := time.Since(from)
			t.Logf("%d publishes to %d subscribers took %v: %v", tc.n, tc.n, took, results)
			if bound := 4 * patience; took > bound {
				t.Errorf("%d publishes to %d trickling subscribers took %v, want at most %v (about one patience, whatever their number)", tc.n, tc.n, took, bound)
			}
			if results[pushed] != 0 {
				t.Errorf("%d pushed to queues never taken from", results[pushed])
			}
		})
	}
}
