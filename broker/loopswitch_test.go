package broker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLoopBudgetSwitch: publishers that first send cheap publishes (rows
// nobody subscribed to), so the inbox's limit grows, then costly ones
// (rows 200 away sessions subscribed to), are pushed back as soon as the
// loop is seen to take longer over them than the limit allowed for, not
// once a batch of them was run and measured. With the limit from the
// batches before alone, the inbox took 2,000 to 3,959 of the 4,000
// costly publishes at once (h-inbox, 3 of 3 runs, and with the limit
// taken from the batch running, 4 of 6 runs: 1,443–2,220, queued while
// the loop waited for loopMu, held by a publish run inline); now 64–109.
func TestLoopBudgetSwitch(t *testing.T) {
	const away, flood = 200, 4000
	b := start(t, Options{LoopBudget: 5 * time.Millisecond})
	h := addLeftHook(t, b)
	for i := range away {
		id := fmt.Sprint("away", i)
		p, _, code := rawPeer(t, b.TCPAddr(), rawConnect(t, 4, id, false, 0, nil))
		if code != 0 {
			t.Fatalf("%s: CONNACK %#x", id, code)
		}
		p.subscribe(t, 4, "f/#", 1)
		p.c.Close()
		h.wait(t, id, 1)
	}
	waitFor(t, "the sessions away", func() bool { return b.away.len() == away })
	var peers []*ownerPeer
	for k := range 2 {
		p, _, code := rawPeer(t, b.TCPAddr(), rawConnect(t, 4, fmt.Sprint("flood", k), true, 0, nil))
		if code != 0 {
			t.Fatalf("flood%d: CONNACK %#x", k, code)
		}
		peers = append(peers, p)
	}
	send := func(prefix string, n int) {
		var pubs sync.WaitGroup
		for k, p := range peers {
			pubs.Add(1)
			go func() {
				defer pubs.Done()
				var out []byte
				for i := range n / 2 {
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
		if err := b.Sync(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 { // cheap: the limit grows to LoopQueue
		send("c", 20_000)
	}
	t.Logf("limit %d after the cheap publishes", b.reqs.limitNow())
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // samples the inbox until stopped
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
	send("f", flood)
	close(stop)
	wg.Wait()
	t.Logf("inbox peak %d costly publishes, limit now %d", peak.Load(), b.reqs.limitNow())
	if peak.Load() > 1000 {
		t.Fatalf("the inbox held %d costly publishes at once: not pushed back (limit now %d)", peak.Load(), b.reqs.limitNow())
	}
}
