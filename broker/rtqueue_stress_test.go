package broker

import (
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestQueueWaitStress: many publishers, each publishing in order, wait
// for room in a tiny queue that a slow writer drains, with deadlines
// that end as room is made (pushLate against admitLocked), publishers
// that give up (stop), reused waiters (spare), and the queue closed
// while they wait. Every message is accounted for: a publish reported
// queued is taken or left over (or counted lost by close), one reported
// refused is never taken; each publisher's messages come out in its
// order; no publisher is left waiting.
func TestQueueWaitStress(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close bool // close the queue while publishers wait
	}{{"drain", false}, {"close", true}} {
		t.Run(tc.name, func(t *testing.T) {
			const pubs, per = 12, 300
			q := newOutQueue(3*waitItem().cost(), time.Hour)
			type id struct{ pub, seq int }
			var mu sync.Mutex
			ids := make(map[item]id)
			results := make([][]pushResult, pubs)
			base := runtime.NumGoroutine()
			var wg sync.WaitGroup
			for p := range pubs {
				results[p] = make([]pushResult, per)
				items := make([]item, per)
				mu.Lock()
				for s := range items {
					m := waitItem()
					m.qos = 1
					items[s] = m
					ids[m] = id{p, s}
				}
				mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(p), 1))
					for s, m := range items {
						w := pubWait{deadline: time.Now().Add(time.Duration(r.IntN(5000)) * time.Microsecond)}
						w.limit = w.deadline.Add(time.Millisecond)
						if r.IntN(4) == 0 {
							w = pubWait{clock: &pubClock{wait: time.Duration(r.IntN(2000)) * time.Microsecond}}
						}
						if r.IntN(10) == 0 {
							stop := make(chan struct{})
							close(stop)
							w.stop = stop
						}
						results[p][s] = q.put(m, w)
					}
				}()
			}
			pubsDone := make(chan struct{})
			go func() { wg.Wait(); close(pubsDone) }()
			var taken []item
			ctx := testCtx(t)
			closeAt := per * pubs / 10
			for done := false; !done; {
				got := q.take(nil, 1+rand.IntN(2*waitItem().cost()))
				taken = append(taken, got...)
				if len(got) > 0 {
					q.wrote(len(got)*200, len(got))
				}
				if tc.close && len(taken) >= closeAt {
					q.close()
				}
				select {
				case <-ctx.Done():
					t.Fatalf("taken %d of %d", len(taken), pubs*per)
				case <-pubsDone:
					done = len(got) == 0
				case <-time.After(time.Duration(rand.IntN(300)) * time.Microsecond): // a slow reader
				}
			}
			taken = append(taken, q.take(nil, 1<<30)...)
			q.close()
			left, lost := q.leftovers()

			seen := make(map[item]bool)
			last := make([]int, pubs)
			for i := range last {
				last[i] = -1
			}
			check := func(m item, where string) {
				if seen[m] {
					t.Fatalf("%s: an item came out twice", where)
				}
				seen[m] = true
				x := ids[m]
				if r := results[x.pub][x.seq]; r != pushed {
					t.Fatalf("%s: publisher %d's message %d came out, but put answered %v", where, x.pub, x.seq, r)
				}
				if x.seq <= last[x.pub] {
					t.Fatalf("%s: publisher %d's message %d after its %d", where, x.pub, x.seq, last[x.pub])
				}
				last[x.pub] = x.seq
			}
			for _, m := range taken {
				check(m, "taken")
			}
			for _, m := range left {
				check(m, "left over")
			}
			nPushed, byResult := 0, map[pushResult]int{}
			for p := range results {
				for _, r := range results[p] {
					byResult[r]++
					if r == pushed {
						nPushed++
					}
				}
			}
			if nPushed != len(taken)+len(left)+lost {
				t.Fatalf("%d reported queued, %d taken + %d left + %d lost (results %v)", nPushed, len(taken), len(left), lost, byResult)
			}
			t.Logf("results %v; taken %d, left %d, lost %d", byResult, len(taken), len(left), lost)
			q.mu.Lock()
			waiting := q.waitingLocked()
			q.mu.Unlock()
			if waiting != 0 {
				t.Fatalf("%d waiters left in line", waiting)
			}
			for runtime.NumGoroutine() > base+2 {
				select {
				case <-ctx.Done():
					t.Fatalf("%d goroutines, %d at the start", runtime.NumGoroutine(), base)
				case <-time.After(time.Millisecond):
				}
			}
		})
	}
}

// queueLen is the items queued in q and not taken.
func queueLen(q *outQueue) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) - q.head
}
