package broker

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// writerStacks counts the goroutines running a connection's writer, from
// the runtime's own list (Stats.Writers is the broker's count of them).
func writerStacks() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return bytes.Count(buf[:n], []byte("broker.(*conn).writeLoop("))
		}
		buf = make([]byte, 2*len(buf))
	}
}

// waitWriters waits until n writers run (by the broker's count), failing
// the test after testTimeout.
func waitWriters(t testing.TB, b *Broker, n int64) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for b.stats.Writers.Load() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d writers run, want %d", b.stats.Writers.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// An idle connection holds no writer goroutine: none starts at CONNECT,
// one starts when there is something to write (the SUBACK's release, a
// message) and stops once it found nothing for a while.
func TestIdleConnHoldsNoWriter(t *testing.T) {
	b := start(t, Options{})
	base := writerStacks()
	const n = 20
	subs := make([]*v3, n)
	for i := range subs {
		subs[i] = dial3(t, b, fmt.Sprint("idle-", i), true)
	}
	settle(t, b)
	if got := b.stats.Writers.Load(); got != 0 {
		t.Fatalf("%d writers run for %d connections that never had anything to write", got, n)
	}
	if got := writerStacks(); got > base { // other tests' brokers may still be stopping theirs
		t.Fatalf("%d writer goroutines for %d idle connections (%d before)", got-base, n, base)
	}

	b.writerIdle.Store(int64(5 * time.Millisecond))
	for _, c := range subs {
		c.sub(t, "idle/t", 0)
	}
	pub := dial3(t, b, "idle-pub", true)
	pub.pub(t, "idle/t", 1, false, "one")
	for i, c := range subs {
		if got := c.wait(t, 1); got[0].payload != "one" {
			t.Fatalf("subscriber %d got %+v", i, got)
		}
	}
	waitWriters(t, b, 0)
	if got := writerStacks(); got > base {
		t.Fatalf("%d writer goroutines once the connections were idle again (%d before)", got-base, base)
	}
}

// A writer that stopped idle starts again when messages come, and they
// arrive in order, burst after burst, at QoS 0 (many written by their
// deliverer, direct.go) and 1 (always through the writer).
func TestWriterRestartsInOrder(t *testing.T) {
	b := start(t, Options{})
	b.writerIdle.Store(int64(time.Millisecond))
	for _, qos := range []byte{0, 1} {
		t.Run(fmt.Sprint("qos", qos), func(t *testing.T) {
			sub := dial3(t, b, fmt.Sprint("restart-sub-", qos), true)
			sub.sub(t, "restart/t", qos)
			pub := dial3(t, b, fmt.Sprint("restart-pub-", qos), true)
			const bursts, per = 20, 50
			seq := 0
			for k := range bursts {
				waitWriters(t, b, 0) // every writer stopped: this burst starts one
				for range per {
					pub.Publish("restart/t", qos, false, strconv.Itoa(seq))
					seq++
				}
				pub.pub(t, "restart/t", qos, false, strconv.Itoa(seq)) // acknowledged: the others went before
				seq++
				for i, m := range sub.wait(t, seq) {
					if m.payload != strconv.Itoa(i) {
						t.Fatalf("burst %d: message %d is %q", k, i, m.payload)
					}
				}
			}
		})
	}
}

// Closing a session while its writer starts or stops (an idle time of a
// microsecond makes it stop between almost any two messages) ends it with
// its finishing duties done (the hand-off closes handed), delivers what
// it delivers in order, and leaves no writer behind; many times over.
func TestWriterCloseWhileStartingOrStopping(t *testing.T) {
	b := start(t, Options{})
	b.writerIdle.Store(int64(time.Microsecond))
	iterations := 300
	if testing.Short() {
		iterations = 50
	}
	ctx := testCtx(t)
	for it := range iterations {
		var mu sync.Mutex
		var got []int
		s := b.Open(Principal{ClientID: fmt.Sprint("s", it)}, func(d Delivery) {
			n, _ := strconv.Atoi(string(d.Payload))
			mu.Lock()
			got = append(got, n)
			mu.Unlock()
		})
		if err := s.Subscribe("race/t", 0); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1 + it%20 {
				if err := b.Publish(ctx, Principal{ClientID: "p"}, Message{Topic: "race/t", Payload: []byte(strconv.Itoa(i))}); err != nil {
					t.Error(err)
					return
				}
				if i%3 == 0 {
					runtime.Gosched() // let the writer stop now and then
				}
			}
		}()
		if it%2 == 0 {
			runtime.Gosched()
		}
		s.Close()
		select {
		case <-s.c.handOf().handed.wait():
		case <-ctx.Done():
			t.Fatalf("iteration %d: the session's writer never did its finishing duties", it)
		}
		waitGroup(t, "publisher", &wg)
		mu.Lock()
		for i, n := range got {
			if n != i {
				t.Fatalf("iteration %d: delivered %v, not in order", it, got)
			}
		}
		mu.Unlock()
	}
	waitWriters(t, b, 0)
}
