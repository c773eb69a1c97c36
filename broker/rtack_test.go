package broker

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/wire"
)

// TestAckedSubscribeStorm measures what afterAcked costs a SUBSCRIBE: n
// clients (MOTE_ACKSTORM_N, default 1,000) subscribe at once, each to a
// filter of its own, while a publisher streams QoS 1 retained rows as
// fast as the broker acknowledges them. It logs how long each waited
// for its SUBACK (percentiles), and the loop's inbox and ackedAhead seen
// meanwhile. A measurement, not an assertion: run it with MOTE_ACKSTORM=1.
func TestAckedSubscribeStorm(t *testing.T) {
	if os.Getenv("MOTE_ACKSTORM") == "" {
		t.Skip("a measurement: MOTE_ACKSTORM=1 runs it")
	}
	n := 1000
	if s := os.Getenv("MOTE_ACKSTORM_N"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	readers := 0 // clients that read every streamed row: the loop's work per row
	if s := os.Getenv("MOTE_ACKSTORM_READERS"); s != "" {
		readers, _ = strconv.Atoi(s)
	}
	b, err := New(Options{TCP: "127.0.0.1:0"}) // no log: a verbose test's costs the loop
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	for i := range readers {
		r := dialRaw(t, b, fmt.Sprintf("reader%d", i), 4, true, packets.Properties{})
		r.subscribe(1, "dev/#", 0)
		r.drain()
	}
	subs := make([]net.Conn, n)
	for i := range subs {
		subs[i] = dialRaw(t, b, fmt.Sprintf("sub%d", i), 4, true, packets.Properties{}).c
	}
	pub := dialRaw(t, b, "pub", 4, true, packets.Properties{})
	go io.Copy(io.Discard, pub.c) //nolint:errcheck // its PUBACKs, until the test closes it

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent atomic.Int64
	var pubErr atomic.Pointer[error]
	streamed := time.Now()
	wg.Go(func() { // the stream: batches of 100 QoS 1 retained rows
		var buf []byte
		id := uint16(0)
		for k := 0; ; k++ {
			select {
			case <-stop:
				return
			default:
			}
			buf = buf[:0]
			for j := range 100 {
				id++
				if id == 0 {
					id = 1
				}
				p := publishBytes(1, false, id, fmt.Sprintf("dev/%d/state", (k*100+j)%1000), strconv.Itoa(k), false)
				p[0] |= 1
				buf = append(buf, p...)
			}
			pub.c.SetWriteDeadline(time.Now().Add(testTimeout))
			if _, err := pub.c.Write(buf); err != nil {
				pubErr.Store(&err)
				return
			}
			sent.Add(100)
		}
	})
	var maxInbox, maxAcked atomic.Int64
	wg.Go(func() { // what a SUBSCRIBE finds ahead of it
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			if l := int64(b.reqs.len()); l > maxInbox.Load() {
				maxInbox.Store(l)
			}
			if a := b.ackedAhead.Load(); a > maxAcked.Load() {
				maxAcked.Store(a)
			}
		}
	})
	defer func() {
		close(stop)
		pub.c.Close()
		wg.Wait()
	}()
	started := time.Now().Add(testTimeout)
	for sent.Load() < 20_000 { // the stream is under way
		if e := pubErr.Load(); e != nil {
			t.Fatal(*e)
		}
		if time.Now().After(started) {
			t.Fatal("the publisher's stream did not start")
		}
		time.Sleep(time.Millisecond)
	}
	if s := os.Getenv("MOTE_ACKSTORM_DEPTH"); s != "" { // the loop that far behind
		depth, _ := strconv.Atoi(s)
		deadline := time.Now().Add(20 * time.Second)
		for b.reqs.len() < depth && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		t.Logf("inbox %d, ackedAhead %d as the SUBSCRIBEs go", b.reqs.len(), b.ackedAhead.Load())
	}

	waits := make([]time.Duration, n)
	errs := make(chan error, n)
	start := make(chan struct{})
	var subsWG sync.WaitGroup
	for i, c := range subs {
		subsWG.Go(func() {
			<-start
			filter := fmt.Sprintf("sub/%d/state", i)
			p := subscribeBytes(1, filter, false)
			c.SetDeadline(time.Now().Add(testTimeout))
			t0 := time.Now()
			if _, err := c.Write(p); err != nil {
				errs <- err
				return
			}
			br := bufio.NewReader(c)
			for {
				h, _, err := readPacketFrom(br)
				if err != nil {
					errs <- fmt.Errorf("sub%d: %w", i, err)
					return
				}
				if h>>4 == packets.Suback {
					waits[i] = time.Since(t0)
					return
				}
			}
		})
	}
	t0 := time.Now()
	close(start)
	subsWG.Wait()
	all := time.Since(t0)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := pubErr.Load(); err != nil {
		t.Logf("the publisher stopped: %v", *err)
	}
	applied := b.stats.OpsApplied.Load()
	t.Logf("%d rows applied in %v: %.0f a second", applied, time.Since(streamed).Round(time.Millisecond), float64(applied)/time.Since(streamed).Seconds())
	slices.Sort(waits)
	pc := func(p float64) time.Duration { return waits[int(p*float64(n-1))] }
	t.Logf("%d readers; %d SUBSCRIBEs in %v while %d rows were streamed: SUBACK after p50 %v, p90 %v, p99 %v, max %v; inbox up to %d, ackedAhead up to %d",
		readers, n, all.Round(time.Millisecond), sent.Load(), pc(0.5), pc(0.9), pc(0.99), waits[n-1], maxInbox.Load(), maxAcked.Load())
}

// TestAckedAheadBounded: while the loop is behind, a client's QoS 1
// retained publishes are acknowledged ahead of it only up to
// maxAckedAhead; the next one's PUBACK waits until the loop applied it.
// A SUBSCRIBE waits for every row acknowledged ahead (afterAcked), so
// unbounded it waited for a whole inbox: 5 to 7.5 s behind 100 readers
// (TestAckedSubscribeStorm, MOTE_ACKSTORM_DEPTH=50000). The loop is held
// by a call, as in TestRetainAckedThenRead; every row is applied once it
// is let go, and the count is back to 0. The inbox must take more than
// maxAckedAhead publishes: LoopBudget is an hour, as the limit the loop's
// first batches set (the broker's $SYS rows, costly when cold: 432 in one
// run) may be lower (failed 5 of 5 runs so on h-inbox, under load).
func TestAckedAheadBounded(t *testing.T) {
	const rows = 3 * maxAckedAhead
	b := start(t, Options{LoopBudget: time.Hour})
	loader := dialRaw(t, b, "loader", 4, true, packets.Properties{})
	ctx := testCtx(t)
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free()
	go b.onLoop(ctx.Done(), func() { close(held); <-release }) // the loop is busy
	<-held

	var load []byte
	for i := range rows {
		p := publishBytes(1, false, uint16(i+1), fmt.Sprintf("dev/%d/state", i), strconv.Itoa(i), false)
		p[0] |= 1 // retained
		load = append(load, p...)
	}
	go func() { // all of them at once: the broker reads them as it takes them
		loader.c.SetWriteDeadline(time.Now().Add(testTimeout))
		loader.c.Write(load) //nolint:errcheck // a failure shows as acks missing below
	}()
	for range maxAckedAhead {
		if typ, _ := loader.read(); typ != packets.Puback {
			t.Fatalf("got packet %d, want a PUBACK", typ)
		}
	}
	// The next publish reaches the loop's inbox: acknowledged ahead (the
	// count passes the bound), or waiting for the loop with its ack.
	deadline := time.After(testTimeout)
	for b.reqs.len() <= maxAckedAhead {
		select {
		case <-deadline:
			t.Fatalf("the inbox holds %d requests, want more than %d", b.reqs.len(), maxAckedAhead)
		case <-time.After(time.Millisecond):
		}
	}
	if n := b.ackedAhead.Load(); n > maxAckedAhead {
		t.Fatalf("%d publishes acknowledged ahead of the loop, want %d at most", n, maxAckedAhead)
	}
	free()
	for range rows - maxAckedAhead {
		if typ, _ := loader.read(); typ != packets.Puback {
			t.Fatalf("got packet %d, want a PUBACK", typ)
		}
	}
	settle(t, b)
	if n := b.ackedAhead.Load(); n != 0 {
		t.Errorf("ackedAhead is %d once the loop ran everything, want 0", n)
	}
	tree, _, err := b.Tree(ctx, Principal{ClientID: "reader"}, "dev/+/state", wire.CodecJSON)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(tree, &m); err != nil || len(m) != rows {
		t.Fatalf("the tree holds %d rows, want %d (%v)", len(m), rows, err)
	}
}
