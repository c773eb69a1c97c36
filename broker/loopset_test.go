package broker

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/tree"
)

// TestLoopSetFlood: clients flooding $sets that each write every row under
// a filter (QoS 0, read without pause) while $sync subscribers watch them
// do not hold the loop for everyone: a probe's retained publish is applied
// once about LoopBudget of the loop's work ahead of it is done, so no more
// than a few batches' worth of $sets are applied while it waits (each
// $set weighs the rows the $sets before it wrote: requestQueue.weight).
// Counted one a request, a $set weighed what a plain publish does, under
// a limit measured on the cheap publishes before them: the probe waited
// behind thousands of $sets (see the commit's message for the runs
// without the change).
func TestLoopSetFlood(t *testing.T) {
	for _, tc := range []struct {
		name           string
		rows, flooders int
		subs, probes   int
	}{
		{"200 rows, 8 flooders", 200, 8, 10, 10},
		{"1,000 rows, 4 flooders", 1000, 4, 10, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			ctx := testCtx(t)
			for i := range tc.rows {
				if err := b.Publish(ctx, Principal{ClientID: "seed"}, Message{Topic: fmt.Sprintf("s/%d/x", i), Payload: []byte("1"), Retain: true}); err != nil {
					t.Fatal(err)
				}
			}
			for i := range tc.subs {
				s := b.Open(Principal{ClientID: "sync" + strconv.Itoa(i)}, func(Delivery) {})
				t.Cleanup(s.Close)
				if err := s.Subscribe("$sync/s/+/x", 0); err != nil {
					t.Fatal(err)
				}
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			defer wg.Wait()
			defer close(stop)
			for k := range tc.flooders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					p := Principal{ClientID: "flood" + strconv.Itoa(k)}
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						// As an MQTT client's QoS 0 publish: handed in, not awaited.
						if b.publish(context.Background(), p, Message{Topic: "$set/s/+/x", Payload: []byte(strconv.Itoa(i))}, waitNone) != nil {
							return
						}
					}
				}()
			}
			// The flood is under way: 50 $sets a flooder were applied.
			for b.stats.OpsApplied.Load() < int64(tc.rows+50*tc.flooders) {
				if err := b.Sync(ctx); err != nil {
					t.Fatal(err)
				}
			}
			worst, limit := int64(0), 0
			for i := range tc.probes {
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				limit = max(limit, b.reqs.limitNow())
				before := b.stats.OpsApplied.Load()
				err := b.Publish(pctx, Principal{ClientID: "probe"}, Message{Topic: "probe/row", Payload: []byte(strconv.Itoa(i)), Retain: true})
				cancel()
				if err != nil {
					t.Fatalf("probe %d: %v (the loop held it that long)", i, err)
				}
				worst = max(worst, b.stats.OpsApplied.Load()-before)
				limit = max(limit, b.reqs.limitNow())
			}
			t.Logf("at most %d $sets applied while a probe waited (limit %d rows' worth at most)", worst, limit)
			// A batch is LoopBudget's worth of rows (the limit): the probe
			// waits for the batch running, the one queued when it came and
			// its own (each may pass the bound by a $set a flooder), and one
			// more for a probe's goroutine slow to run once let in.
			if want := int64(4 * (limit/tc.rows + tc.flooders)); worst > want {
				t.Fatalf("%d $sets applied while a probe waited, want %d at most: the inbox took more than the loop's budget of them", worst, want)
			}
		})
	}
}

// TestLoopWeight: what a request weighs in the loop's inbox: a publish,
// the rows it writes (one at least); a $set, what the $sets the loop ran
// before it wrote (foldSets, a moving average over setWindow of them),
// the whole limit before any ran, one after ones that wrote none; any
// other request, nothing.
func TestLoopWeight(t *testing.T) {
	set := request{kind: reqPublish, op: tree.Op{SetFilter: "s/+/x"}}
	for _, tc := range []struct {
		name string
		ran  [][2]int64 // batches of $sets: how many, the rows they wrote
		r    request
		want int
	}{
		{"a plain publish", nil, request{kind: reqPublish, op: tree.Op{Rows: make([]tree.Row, 1)}}, 1},
		{"a tree publish of 300 rows", nil, request{kind: reqPublish, op: tree.Op{Rows: make([]tree.Row, 300)}}, 300},
		{"a publish of no row (a test's)", nil, request{kind: reqPublish}, 1},
		{"a call", nil, request{kind: reqCall}, 0},
		{"a $set, none run yet: the limit", nil, set, 5000},
		{"a $set after 8 of 1,000 rows", [][2]int64{{8, 8000}}, set, 1000},
		{"a $set after 8 of 1,000 rows, then 2 of 200: 2/8 of the way", [][2]int64{{8, 8000}, {2, 400}}, set, 800},
		{"a $set after ones that wrote no row", [][2]int64{{4, 0}}, set, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newRequestQueue(100_000, 100*time.Millisecond)
			q.ran(1000, 20*time.Millisecond) // 20 µs a row: limit 5,000
			for _, b := range tc.ran {
				q.sets.Add(b[0])
				q.setRows.Add(b[1])
				q.ranInline()
			}
			q.mu.Lock()
			defer q.mu.Unlock()
			if got := q.weight(&tc.r); got != tc.want {
				t.Fatalf("weighs %d, want %d", got, tc.want)
			}
		})
	}
}
