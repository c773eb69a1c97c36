package broker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLoopLimit: the loop's inbox takes about LoopBudget's worth of
// requests at what the last batches cost, LoopQueue at most and
// minLoopLimit at least; a batch smaller than costWindow moves the
// average in proportion, so one costly request alone does not shut the
// inbox.
func TestLoopLimit(t *testing.T) {
	for _, tc := range []struct {
		name    string
		max     int
		budget  time.Duration
		batches [][2]int64 // requests, ns the batch took
		want    int
	}{
		{"not measured yet: LoopQueue", 100_000, 100 * time.Millisecond, nil, 100_000},
		{"cheap requests: LoopQueue", 100_000, 100 * time.Millisecond, [][2]int64{{1000, 1_000_000}}, 100_000},
		{"cheaper rows: the budget's, past LoopQueue (which bounds requests)", 100_000, 100 * time.Millisecond, [][2]int64{{1000, 100_000}}, 1_000_000},
		{"1 µs each, 10ms budget", 100_000, 10 * time.Millisecond, [][2]int64{{1000, 1_000_000}}, 10_000},
		{"500 µs each: 200", 100_000, 100 * time.Millisecond, [][2]int64{{400, 200_000_000}}, 200},
		{"costly: at least minLoopLimit", 100_000, 100 * time.Millisecond, [][2]int64{{300, 3_000_000_000}}, minLoopLimit},
		{"LoopQueue below the floor", 10, 100 * time.Millisecond, [][2]int64{{300, 3_000_000_000}}, 10},
		{"a costly batch of 2 moves the average by 2/256", 100_000, 100 * time.Millisecond,
			[][2]int64{{1000, 10_000_000}, {2, 2 * 1_000_000}}, 5638}, // 100 ms / (10 µs + (1 ms - 10 µs) × 2/256)
		{"costs fall: the limit grows back", 100_000, 100 * time.Millisecond,
			[][2]int64{{300, 3_000_000_000}, {256, 256_000}}, 100_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newRequestQueue(tc.max, tc.budget)
			for _, b := range tc.batches {
				q.ran(int(b[0]), time.Duration(b[1]))
			}
			if got := q.limitNow(); got < tc.want-1 || got > tc.want+1 {
				t.Fatalf("limit %d, want %d", got, tc.want)
			}
		})
	}
}

// TestLoopLimitWaits: a publish waits while the inbox holds its limit,
// other requests do not, and a publish waiting is let in once the limit
// grows (ran) or the loop takes the inbox (swap).
func TestLoopLimitWaits(t *testing.T) {
	q := newRequestQueue(1000, 10*time.Millisecond)
	q.ran(100, time.Second) // 10 ms each: the floor
	if got := q.limitNow(); got != minLoopLimit {
		t.Fatalf("limit %d, want %d", got, minLoopLimit)
	}
	for range minLoopLimit {
		q.push(request{kind: reqPublish})
	}
	if !q.push(request{kind: reqCall}) {
		t.Fatal("a call was refused")
	}
	in := make(chan bool, 2)
	go func() { in <- q.push(request{kind: reqPublish}) }()
	go func() { in <- q.pushPair(request{kind: reqPublish}, request{kind: reqPublish}) }()
	select {
	case <-in:
		t.Fatal("a publish was queued past the limit")
	case <-time.After(20 * time.Millisecond): // (a wait that should not end: nothing to synchronise on)
	}
	sys := make(chan bool, 1)
	go func() { sys <- q.push(request{kind: reqPublish, pub: &pubMeta{p: systemPrincipal}}) }()
	select { // the broker's own $SYS row does not wait its turn
	case ok := <-sys:
		if !ok {
			t.Fatal("a $SYS row was refused")
		}
	case <-time.After(testTimeout):
		t.Fatal("a $SYS row waited its turn")
	}
	peer := make(chan bool, 1)
	go func() { peer <- q.push(request{kind: reqPublish, pub: &pubMeta{p: clusterPrincipal}}) }()
	select { // another node's event waits its turn, as any publish
	case <-peer:
		t.Fatal("another node's event was queued past the limit")
	case <-time.After(20 * time.Millisecond): // (a wait that should not end: nothing to synchronise on)
	}
	q.ran(256, 256*time.Microsecond) // 1 µs each: 1000 (LoopQueue)
	select {
	case ok := <-peer:
		if !ok {
			t.Fatal("another node's event was refused")
		}
	case <-time.After(testTimeout):
		t.Fatal("another node's event still waits once the limit grew")
	}
	for range 2 {
		select {
		case ok := <-in:
			if !ok {
				t.Fatal("refused")
			}
		case <-time.After(testTimeout):
			t.Fatal("a publish still waits once the limit grew")
		}
	}
	q.ran(100, time.Second) // the floor again: 68 wait, past it
	go func() { in <- q.push(request{kind: reqPublish}) }()
	items, _ := q.swap(nil)
	if len(items) != minLoopLimit+6 {
		t.Fatalf("swapped %d", len(items))
	}
	select {
	case <-in:
	case <-time.After(testTimeout):
		t.Fatal("a publish still waits once the loop took the inbox")
	}
	q.close()
}

// flooders are two raw publishers: one alone runs its publishes itself
// while the loop is idle (runInline), one at a time; with two, the loop
// is busy and they queue.
type flooders []*ownerPeer

func newFlooders(t *testing.T, b *Broker) flooders {
	var fs flooders
	for k := range 2 {
		p, _, code := rawPeer(t, b.TCPAddr(), rawConnect(t, 4, fmt.Sprint("flood", k), true, 0, nil))
		if code != 0 {
			t.Fatalf("flood%d: CONNACK %#x", k, code)
		}
		fs = append(fs, p)
	}
	return fs
}

// send has the flooders publish n retained QoS 0 rows in all, under
// prefix/<flooder>/, written at once, and returns once every one is
// applied.
func (fs flooders) send(t *testing.T, b *Broker, prefix string, n int) {
	t.Helper()
	var pubs sync.WaitGroup
	for k, p := range fs {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			var out []byte
			for i := range n / len(fs) {
				pk := rawPublish(fmt.Sprintf("%s/%d/%d", prefix, k, i%50), fmt.Sprint(i))
				pk[0] |= 1 // retained
				out = append(out, pk...)
			}
			out = append(out, 0xc0, 0) // PINGREQ: once answered, every publish was handed in
			if _, err := p.c.Write(out); err != nil {
				t.Error(err)
				return
			}
			if h, _ := p.next(t, 0); h != 0xd0 {
				t.Errorf("got %#x, want PINGRESP", h)
			}
		}()
	}
	pubs.Wait()
	if err := b.Sync(testCtx(t)); err != nil { // every publish applied
		t.Fatal(err)
	}
}

// inboxPeak samples how many requests wait in b's inbox until the
// function it returns is called, which returns the most it saw.
func inboxPeak(b *Broker) func() int64 {
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if n := int64(b.reqs.len()); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	}()
	return func() int64 {
		close(stop)
		wg.Wait()
		return peak.Load()
	}
}

// TestLoopBudget: two clients flood retained QoS 0 publishes while 200
// away persistent sessions are subscribed to #, so each publish costs the
// loop 200 deliveries. The publishers are pushed back once about LoopBudget
// of the loop's work waits (their connections are not read meanwhile): the
// inbox never holds more than a few hundred publishes, and every publish
// is applied. Counted in requests alone (LoopQueue, 100,000), the inbox
// took the whole flood: 3,000 or more of the 4,000 publishes waited for
// the loop at once.
func TestLoopBudget(t *testing.T) {
	const away, flood = 200, 4000
	b := start(t, Options{LoopBudget: time.Millisecond})
	leaveAway(t, b, away, "#", 1)
	fs := newFlooders(t, b)
	peak := inboxPeak(b)
	fs.send(t, b, "f", flood)
	max := peak()
	if got := b.stats.OpsApplied.Load(); got < flood {
		t.Fatalf("%d publishes applied, want %d", got, flood)
	}
	limit := b.reqs.limitNow()
	t.Logf("inbox peak %d publishes, limit now %d", max, limit)
	if max > 1000 {
		t.Fatalf("the inbox held %d publishes at once: not pushed back (limit now %d)", max, limit)
	}
}
