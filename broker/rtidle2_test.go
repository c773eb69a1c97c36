package broker

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/rs/zerolog"
)

// Red team of h-idle's lazily made per-connection state (h-rtidle2): the
// queue's wake channel made by the first wake-up and dropped when the
// writer stops idle, conn.acked made by the writer's first wait for an
// in-flight slot. A wake-up lost to either shows as a message queued and
// never taken (a count sent against a count delivered, with a bounded
// wait).

// cycleItem is an item of one byte, for the queue on its own.
type cycleItem struct{}

func (cycleItem) cost() int { return 1 }

// The wake-up protocol of outQueue alone (wakeLocked, wakeOf, idle,
// unlockAndWake), as writeUntilDone follows it, with the writer stopping
// at the first moment it finds no wake-up: publishers push while writers
// start and stop under them, each stop dropping the channel, each start
// making another, about a million times (a tenth under -race): each
// publisher waits for its item to be taken before the next. Every item
// pushed is taken; a wake-up left in a channel the writer no longer
// watches, or a writer that stops with one waiting, leaves items in the
// queue and no writer to take them.
func TestWakeChannelIdleCyclesLoseNothing(t *testing.T) {
	pubs, per := 4, 250_000
	if raceEnabled {
		per = 25_000
	}
	total := int64(pubs * per)
	q := newOutQueue(1<<40, time.Minute)
	var (
		taken   atomic.Int64
		pushed  atomic.Int64
		starts  atomic.Int64
		writers sync.WaitGroup
		all     = make(chan struct{})
	)
	writer := func() {
		defer writers.Done()
		var batch []item
		wake := q.wakeOf()
		for {
			select {
			case <-wake:
			default: // writeUntilDone's idle timer, at once
				if q.idle() {
					return
				}
				runtime.Gosched()
				continue
			}
			for {
				batch = q.take(batch[:0], takeBytes)
				if len(batch) == 0 {
					break
				}
				if taken.Add(int64(len(batch))) == total {
					close(all)
				}
				clear(batch)
			}
		}
	}
	q.mu.Lock()
	q.start = func() {
		starts.Add(1)
		writers.Add(1)
		go writer()
	}
	q.mu.Unlock()
	deadline := time.Now().Add(testTimeout)
	var wg sync.WaitGroup
	for range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range per {
				n := pushed.Add(1)
				if !q.push(cycleItem{}, pubWait{}) {
					t.Error("push refused")
					return
				}
				// The writer takes it (and all before it), then
				// stops, before the next: a wake-up lost while all
				// the publishers wait here is a stall.
				for i := 0; taken.Load() < n; i++ {
					if i%1024 == 0 && time.Now().After(deadline) {
						t.Errorf("item %d not taken after %v", n, testTimeout)
						return
					}
					runtime.Gosched()
				}
			}
		}()
	}
	wg.Wait()
	select {
	case <-all:
	case <-time.After(time.Until(deadline)):
		q.mu.Lock()
		left, running, wake := len(q.items)-q.head, q.running, q.wake != nil
		q.mu.Unlock()
		t.Fatalf("taken %d of %d after %d writer starts: %d items left, writer running %v, wake channel %v",
			taken.Load(), total, starts.Load(), left, running, wake)
	}
	t.Logf("%d items taken, %d writer starts (idle/wake cycles)", total, starts.Load())
	if n := starts.Load(); n < total/10 {
		t.Errorf("%d writer starts for %d items: the writer did not go idle between them (the test tests nothing)", n, total)
	}
	waitGroup(t, "writers", &writers) // each stops idle: nothing more comes

}

// Many publishers through the broker to a session whose writer stops
// between almost any two messages (writerIdle a nanosecond): each stop
// drops the queue's wake channel, each publish makes it again and starts
// a writer. Every message arrives, each publisher's in its order; the
// writer started and stopped many times meanwhile.
func TestDoorWriterIdleWakeStormDelivers(t *testing.T) {
	for _, procs := range []int{1, 2, 4} {
		t.Run(fmt.Sprint("procs", procs), func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			b := start(t, Options{})
			b.writerIdle.Store(1) // a nanosecond
			pubs, per := 4, 5000
			if raceEnabled {
				per = 1000
			}
			total := pubs * per
			var (
				mu   sync.Mutex
				next = make([]int, pubs)
				came = make([]chan struct{}, pubs)
				got  int
				bad  string
				all  = make(chan struct{})
			)
			s := b.Open(Principal{ClientID: "storm-door"}, func(d Delivery) {
				var p, i int
				fmt.Sscanf(string(d.Payload), "%d/%d", &p, &i) //nolint:errcheck // checked by the order below
				mu.Lock()
				defer mu.Unlock()
				if i != next[p] && bad == "" {
					bad = fmt.Sprintf("publisher %d: message %d arrived when %d was next", p, i, next[p])
				}
				next[p] = i + 1
				select {
				case came[p] <- struct{}{}:
				default:
				}
				if got++; got == total {
					close(all)
				}
			})
			defer s.Close()
			for p := range came {
				came[p] = make(chan struct{}, 1)
			}
			var starts atomic.Int64
			s.c.q.mu.Lock()
			orig := s.c.q.start
			s.c.q.start = func() { starts.Add(1); orig() }
			s.c.q.mu.Unlock()
			if err := s.Subscribe("storm/door", 1); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for p := range pubs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range per {
						m := Message{Topic: "storm/door", QoS: 1, Payload: fmt.Appendf(nil, "%d/%d", p, i)}
						if err := b.Publish(context.Background(), systemPrincipal, m); err != nil {
							t.Errorf("publish: %v", err)
							return
						}
						// Its delivery before the next, so that the writer
						// goes idle between: bounded, a lost wake-up is
						// found below.
						select {
						case <-came[p]:
						case <-time.After(testTimeout):
							return
						}
					}
				}()
			}
			waitGroup(t, "publishers", &wg)
			select {
			case <-all:
			case <-time.After(testTimeout):
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("delivered %d of %d (writer starts %d, dropped %d)", got, total, starts.Load(), s.c.dropped.Load())
			}
			mu.Lock()
			defer mu.Unlock()
			if bad != "" {
				t.Fatal(bad)
			}
			t.Logf("GOMAXPROCS %d: %d messages, %d writer starts", procs, total, starts.Load())
			if starts.Load() < int64(total/100) {
				t.Errorf("%d writer starts: the writer did not go idle (the test tests nothing)", starts.Load())
			}
		})
	}
}

// A client whose in-flight window is one message (MaxInflight 1): its
// writer waits for an acknowledgement after every QoS 1 message, the
// first wait making conn.acked, while mochi's acknowledgement hook,
// which finds no channel until then, wakes it (wakeWriter). Many
// connections, each a fresh conn whose first wait races the first
// acknowledgement, get every message; a wake-up lost there leaves the
// writer waiting for an acknowledgement that already came.
func TestAckedChannelFirstWaitLosesNothing(t *testing.T) {
	b := start(t, Options{MaxInflight: 1})
	b.writerIdle.Store(int64(time.Microsecond))
	conns, per := 200, 4
	if raceEnabled {
		conns = 50
	}
	pub := dial3(t, b, "acked-pub", true)
	defer pub.Disconnect(0)
	for i := range conns {
		topic := fmt.Sprint("acked/", i)
		sub := dial3(t, b, fmt.Sprint("acked-sub-", i), true)
		sub.sub(t, topic, 1)
		for j := range per {
			pub.Publish(topic, 1, false, fmt.Sprint(j)) // the last is waited for below
		}
		got := sub.wait(t, per)
		for j, m := range got[:per] {
			if m.payload != fmt.Sprint(j) {
				t.Fatalf("connection %d: message %d is %q", i, j, m.payload)
			}
		}
		sub.Disconnect(0)
	}
}

// Refusal floods racing their connection's close (a takeover closes the
// old connection while its read goroutine still writes refusal lines):
// the slot's quota, made at the first counted line, is counted and let
// go at the close, or never made; no closed connection's quota stays in
// the budget's pending counts (memory for every connection that was
// ever refused), and every line is written, counted, or dropped.
func TestLogSlotFloodRacesClose(t *testing.T) {
	budget := newLogBudget(zerolog.Nop(), LogLimit{PerClient: 2, Total: 1 << 30, Interval: time.Hour})
	const conns, lines = 256, 200
	var wg sync.WaitGroup
	for i := range conns {
		var s logSlot
		wg.Add(2)
		go func() { // the read goroutine: its refusals
			defer wg.Done()
			for range lines {
				budget.allow(&s, fmt.Sprint("c", i), codeKind(packets.ErrQuotaExceeded))
			}
		}()
		go func() { // the takeover: the connection closes meanwhile
			defer wg.Done()
			for range i % 50 {
				runtime.Gosched()
			}
			budget.closed(&s, fmt.Sprint("c", i))
		}()
	}
	waitGroup(t, "floods", &wg)
	budget.mu.Lock()
	defer budget.mu.Unlock()
	if n := len(budget.pending); n != 0 {
		t.Errorf("%d closed connections' quotas left pending, want 0", n)
	}
}

// A re-SUBSCRIBE storm: a client subscribes again and again to the ten
// filters it holds (each SUBSCRIBE replaces all ten: c.replaced, made at
// a SUBSCRIBE's first replacement, holds them until its SUBACK), while
// another client publishes to them. Then one publish to each filter
// arrives once, not twice (a replaced subscription filed again beside
// its replacement) nor never (one unfiled).
func TestResubscribeStormKeepsOneEach(t *testing.T) {
	b := start(t, Options{})
	b.writerIdle.Store(int64(time.Microsecond))
	rounds := 200
	if raceEnabled {
		rounds = 50
	}
	filters := map[string]byte{}
	for i := range 10 {
		filters[fmt.Sprint("resub/", i)] = 1
	}
	filters["resub/end"] = 1
	sub := dial3(t, b, "resub-storm", true)
	pub := dial3(t, b, "resub-pub", true)
	noise := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // publishes meanwhile, each waited for
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-noise:
				return
			default:
			}
			tok := pub.Publish(fmt.Sprint("resub/", i%10), 1, false, "noise")
			if !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
				t.Errorf("noise publish: %v", tok.Error())
				return
			}
		}
	}()
	for range rounds {
		tok := sub.SubscribeMultiple(filters, nil)
		if !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
	}
	close(noise)
	waitGroup(t, "noise publisher", &wg)
	for i := range 10 {
		pub.pub(t, fmt.Sprint("resub/", i), 1, false, "final")
	}
	pub.pub(t, "resub/end", 1, false, "end") // after the finals, in order
	deadline := time.After(testTimeout)
	for {
		sub.mu.Lock()
		finals, ended := map[string]int{}, false
		for _, m := range sub.msgs {
			switch m.payload {
			case "final":
				finals[m.topic]++
			case "end":
				ended = true
			}
		}
		sub.mu.Unlock()
		if ended {
			for i := range 10 {
				if n := finals[fmt.Sprint("resub/", i)]; n != 1 {
					t.Errorf("resub/%d: the final publish arrived %d times, want 1", i, n)
				}
			}
			return
		}
		select {
		case <-sub.got:
		case <-deadline:
			t.Fatalf("the end marker did not arrive (finals %v)", finals)
		}
	}
}
