package broker

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/tree"
)

// TestLoopLimitFair: a publisher that finds the inbox full is let in
// before publishers that come after it. Four flooders push without pause
// into an inbox at its floor (minLoopLimit) while a fifth publisher, the
// probe, pushes one publish at a time; the test stands in for the loop,
// taking the inbox (swap) and counting the batches taken from the probe's
// push until its publish is in one. Waiters woken all at once had to win
// the queue's mutex against flooders that never slept, and often lost:
// the probe waited 5 to 29 batches at most, 3.8 to 5.1 on average (30
// runs of 200 probes on h-inbox, with and without -race), each about
// LoopBudget of the loop's work. In turn it waits for two: the one being filled when it came, and
// the next, which lets it in (3 or 4 at most, 2.0 on average, under
// -race: a probe's goroutine slow to run once let in).
func TestLoopLimitFair(t *testing.T) {
	const flooders, probes = 4, 200
	q := newRequestQueue(100_000, 10*time.Millisecond)
	q.ran(1000, 1000*time.Millisecond) // 1 ms each: the floor
	if got := q.limitNow(); got != minLoopLimit {
		t.Fatalf("limit %d, want %d", got, minLoopLimit)
	}
	var wg sync.WaitGroup
	for range flooders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for q.push(request{kind: reqPublish, owner: "flood"}) {
			}
		}()
	}
	var swaps atomic.Int64
	probe := make(chan struct{})  // a probe publish is to be pushed
	pushed := make(chan int64, 1) // swaps taken when the probe pushed
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range probe {
			pushed <- swaps.Load()
			if !q.push(request{kind: reqPublish, owner: "probe"}) {
				return
			}
		}
	}()
	deadline := time.Now().Add(testTimeout)
	worst, waits := int64(0), int64(0)
	var spare []request
	for range probes {
		probe <- struct{}{}
		for found := false; !found; {
			if time.Now().After(deadline) {
				t.Fatal("the probe's publish not taken in time")
			}
			q.wait()
			n := swaps.Add(1) // before the swap: a push after this one is not counted as earlier
			items, _ := q.swap(spare)
			time.Sleep(200 * time.Microsecond) // the batch's work: the flooders fill the inbox meanwhile
			for i := range items {
				found = found || items[i].owner == "probe"
			}
			spare = items
			if found {
				w := n - <-pushed
				worst, waits = max(worst, w), waits+w
			}
		}
	}
	close(probe)
	q.close()
	wg.Wait()
	t.Logf("the probe's publish waited %d batches at most, %.1f on average", worst, float64(waits)/probes)
	avg := float64(waits) / probes
	if avg > 2.5 || worst > 6 { // in turn: 2 (and one for a probe's goroutine slow to queue once let in)
		t.Fatalf("the probe's publish waited %.1f batches on average, %d at most (others' publishes let in before it): want 2", avg, worst)
	}
}

// TestLoopLimitShare: a client below its share of the limit goes in ahead
// of the publishers waiting (requestQueue.underShare): four clients push
// costly publishes (1,000 rows each) without pause into an inbox at a
// limit of 8 of them, while a probe client pushes 50 one-row publishes,
// each once the one before is queued (an MQTT client's read goroutine);
// the test stands in for the loop, taking the inbox (swap) every 200 µs.
// In turn alone, every flooder is back among the waiters as soon as let
// in, and the probe's publishes were let in behind them: 6 batches (3 of
// 3 runs), 2 with its share (h31: a probe publishing 20 times a second
// backed up on its own socket).
func TestLoopLimitShare(t *testing.T) {
	const flooders, probes = 4, 50
	q := newRequestQueue(100_000, 10*time.Millisecond)
	q.ran(1000, 1250*time.Microsecond) // 1.25 µs a row: 8,000 rows' worth
	var wg sync.WaitGroup
	costly := tree.Op{Rows: make([]tree.Row, 1000)}
	for k := range flooders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := &pubMeta{p: Principal{ClientID: fmt.Sprint("flood", k)}}
			for q.push(request{kind: reqPublish, op: costly, pub: m}) {
			}
		}()
	}
	// The inbox full, every flooder waiting: the probe comes after them.
	until := time.Now().Add(testTimeout)
	for waiting := 0; waiting < flooders; {
		if time.Now().After(until) {
			t.Fatal("the flooders never all waited")
		}
		q.mu.Lock()
		waiting = len(q.waiters)
		q.mu.Unlock()
		runtime.Gosched()
	}
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(done)
		m := &pubMeta{p: Principal{ClientID: "probe"}}
		for range probes {
			if !q.push(request{kind: reqPublish, op: tree.Op{Rows: make([]tree.Row, 1)}, pub: m, owner: "probe"}) {
				return
			}
		}
	}()
	deadline := time.Now().Add(testTimeout)
	swaps, got := 0, 0
	var spare []request
	for got < probes {
		if time.Now().After(deadline) {
			t.Fatalf("%d of the probe's publishes taken in %d batches, not all in time", got, swaps)
		}
		q.wait()
		items, _ := q.swap(spare)
		swaps++
		time.Sleep(200 * time.Microsecond) // the batch's work: the flooders fill the inbox meanwhile
		for i := range items {
			if items[i].owner == "probe" {
				got++
			}
		}
		spare = items
	}
	q.close()
	wg.Wait()
	<-done
	t.Logf("the probe's %d publishes taken in %d batches", probes, swaps)
	if swaps > 3 { // the one filled when it came and the next; in turn alone, 6
		t.Fatalf("the probe's %d publishes took %d batches, want 3 at most: let in behind every flooder's turn", probes, swaps)
	}
}
