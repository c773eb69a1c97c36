package broker

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// queueWaiting is how many publishers wait for room in q.
func queueWaiting(q *outQueue) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.waitingLocked()
}

// awaitWaiting waits until n publishers wait in q, failing the test at
// its deadline.
func awaitWaiting(t *testing.T, q *outQueue, n int) {
	t.Helper()
	ctx := testCtx(t)
	for queueWaiting(q) != n {
		select {
		case <-ctx.Done():
			t.Fatalf("%d publishers waiting, want %d", queueWaiting(q), n)
		case <-time.After(time.Millisecond):
		}
	}
}

// waitItem is a plain QoS 0 message costing 201 bytes of a queue.
func waitItem() *plainItem {
	return &plainItem{msg: &message{topic: "t", payload: []byte(strings.Repeat("x", 40))}}
}

// TestQueueRoomInOrder: publishers waiting for room in a full queue get it
// in the order they came, one by one as the writer takes items. Every
// waiter used to be woken at each take and the fastest to the lock won:
// with 1,000 publishers queued behind a steady subscriber the unlucky ones
// passed their publish_wait.
func TestQueueRoomInOrder(t *testing.T) {
	q := newOutQueue(1000, time.Minute) // room for 4 items of 201 bytes
	defer q.close()
	for range 4 {
		if r := q.put(waitItem(), pubWait{}); r != pushed {
			t.Fatalf("filling: %v", r)
		}
	}
	const n = 20
	type admitted struct {
		i int
		r pushResult
	}
	order := make(chan admitted, n)
	deadline := time.Now().Add(testTimeout)
	for i := range n {
		go func() { order <- admitted{i, q.put(waitItem(), pubWait{deadline: deadline})} }()
		awaitWaiting(t, q, i+1) // i is in line before i+1 comes
	}
	ctx := testCtx(t)
	for want := range n {
		if got := len(q.take(nil, 1)); got != 1 { // room for one more
			t.Fatalf("took %d items, want 1", got)
		}
		select {
		case got := <-order:
			if got.i != want || got.r != pushed {
				t.Fatalf("room went to publisher %d (%v), want %d (first come, first served)", got.i, got.r, want)
			}
		case <-ctx.Done():
			t.Fatalf("publisher %d not admitted", want)
		}
	}
}

// TestQueueRoomAtOnce: room made for several waiting publishers at once
// goes to as many as fit, in line order, in one step: whoever made the
// room queues their messages and wakes each (admitLocked); none waits for
// the one ahead of it to run first.
func TestQueueRoomAtOnce(t *testing.T) {
	q := newOutQueue(1000, time.Minute) // room for 4 items of 201 bytes
	defer q.close()
	for range 4 {
		if r := q.put(waitItem(), pubWait{}); r != pushed {
			t.Fatalf("filling: %v", r)
		}
	}
	const n = 6
	items := make([]*plainItem, n)
	res := make(chan pushResult, n)
	deadline := time.Now().Add(testTimeout)
	for i := range n {
		items[i] = waitItem()
		go func() { res <- q.put(items[i], pubWait{deadline: deadline}) }()
		awaitWaiting(t, q, i+1) // i is in line before i+1 comes
	}
	ctx := testCtx(t)
	for _, round := range []struct{ from, to int }{{0, 4}, {4, 6}} {
		if got := len(q.take(nil, 1<<20)); got != 4 {
			t.Fatalf("took %d items, want 4", got)
		}
		q.mu.Lock()
		queued := slices.Clone(q.items[q.head:])
		waiting := q.waitingLocked()
		q.mu.Unlock()
		if len(queued) != round.to-round.from || waiting != n-round.to {
			t.Fatalf("after a take: %d queued, %d waiting; want %d, %d", len(queued), waiting, round.to-round.from, n-round.to)
		}
		for i, m := range queued {
			if m != items[round.from+i] {
				t.Fatalf("queued item %d is not publisher %d's (line order)", i, round.from+i)
			}
		}
		for range round.to - round.from {
			select {
			case r := <-res:
				if r != pushed {
					t.Fatalf("a publisher got %v, want pushed", r)
				}
			case <-ctx.Done():
				t.Fatal("an admitted publisher was not woken")
			}
		}
	}
}

// TestQueueWaitRules: when a publisher waiting for room gives up. Past
// its deadline it still waits while the client is being written (a
// subscriber reading slowly slows its publishers; it used to drop them),
// not when the client was written nothing for a patience (a publish to
// several subscribers that do not read waits its deadline in all); a
// client out of credit (stalled) makes every waiting publisher give up at
// once, and none wait until its credit is whole again.
func TestQueueWaitRules(t *testing.T) {
	cases := []struct {
		name     string
		patience time.Duration
		written  bool          // the client was written just before
		deadline time.Duration // from now
		want     pushResult
	}{
		{"past deadline, client read nothing", time.Minute, false, 0, pushLate},
		{"past deadline, client reading", time.Minute, true, 0, pushed},
		{"client stops reading: stalled after its patience", 50 * time.Millisecond, false, testTimeout, pushStalled},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := newOutQueue(1000, tc.patience)
			defer q.close()
			for range 4 {
				q.put(waitItem(), pubWait{})
			}
			if tc.written {
				q.wrote(1, 1)
			}
			const n = 3
			res := make(chan pushResult, n)
			for range n {
				go func() { res <- q.put(waitItem(), pubWait{deadline: time.Now().Add(tc.deadline)}) }()
			}
			if tc.want == pushed {
				awaitWaiting(t, q, n)
				for range n {
					q.take(nil, 1)
				}
			}
			ctx := testCtx(t)
			for range n {
				select {
				case r := <-res:
					if r != tc.want {
						t.Errorf("put: %v, want %v", r, tc.want)
					}
				case <-ctx.Done():
					t.Fatal("a publisher still waits")
				}
			}
			if tc.want == pushStalled {
				if r := q.put(waitItem(), pubWait{deadline: time.Now().Add(testTimeout)}); r != pushStalled {
					t.Errorf("a publish to a stalled client: %v, want pushStalled at once", r)
				}
				for range 64 { // 64 messages written: credit whole again
					q.wrote(10, 1)
				}
				q.take(nil, 1)
				if r := q.put(waitItem(), pubWait{deadline: time.Now().Add(testTimeout)}); r != pushed {
					t.Errorf("a publish once the client read again: %v, want pushed", r)
				}
			}
		})
	}
}

// A publisher waits past its deadline while its subscriber is being
// written, but never past its limit: its own connection is not read while
// it waits (its pings unanswered), so a subscriber that reads but never
// makes room for it cannot hold it longer.
func TestQueueWaitLimit(t *testing.T) {
	q := newOutQueue(1000, time.Minute)
	defer q.close()
	for range 4 {
		q.put(waitItem(), pubWait{})
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() { // the client is being written (credit and lastWrote kept fresh), but nothing is taken
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
				q.wrote(1, 1)
			}
		}
	}()
	res := make(chan pushResult, 1)
	now := time.Now()
	go func() { res <- q.put(waitItem(), pubWait{deadline: now, limit: now.Add(50 * time.Millisecond)}) }()
	select {
	case r := <-res:
		if r != pushLate {
			t.Errorf("put: %v, want pushLate", r)
		}
	case <-testCtx(t).Done():
		t.Fatal("a publisher waits past its limit")
	}
}
