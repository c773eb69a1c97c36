package cluster

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/wire"
)

// Run: go test -run XXX -bench . -benchtime=1x ./cluster (each benchmark
// forms its own cluster on 127.0.0.1; -count for min–max).

func batchOf(rows int, tag string) []retain.Change {
	ch := make([]retain.Change, rows)
	for i := range ch {
		ch[i] = retain.Change{Topic: fmt.Sprintf("bench/%s/%d", tag, i), Value: wire.Value{Kind: wire.JSON, Data: "21.5"}, QoS: 1, MS: 1}
	}
	return ch
}

// appendAll appends n batches of rows rows from 16 writers spread over
// the running nodes, and returns the last sequence.
func (c *testCluster) appendAll(tb testing.TB, n, rows int) uint64 {
	var live []*testNode
	for _, tn := range c.nodes {
		if tn != nil {
			live = append(live, tn)
		}
	}
	var left atomic.Int64
	left.Store(int64(n))
	var last atomic.Uint64
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for w := range 16 {
		wg.Go(func() {
			tn := live[w%len(live)]
			batch := batchOf(rows, fmt.Sprint(w))
			for left.Add(-1) >= 0 {
				seq, err := tn.log.Append(context.Background(), batch)
				if err != nil {
					errs[w] = err
					return
				}
				for l := last.Load(); seq > l && !last.CompareAndSwap(l, seq); l = last.Load() {
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			tb.Fatal(err)
		}
	}
	return last.Load()
}

// BenchmarkAppend: write throughput of 16 writers spread over every node,
// one row a batch, with one node (R1) and three (R3).
func BenchmarkAppend(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			c := startCluster(b, n, nil)
			c.appendAll(b, 200, 1) // warm: leaders elected, files open
			b.ResetTimer()
			const batches = 5000
			start := time.Now()
			for range b.N {
				c.appendAll(b, batches, 1)
			}
			b.ReportMetric(float64(b.N*batches)/time.Since(start).Seconds(), "batches/s")
		})
	}
}

// BenchmarkCrossNode: from an Append on node 0 to the batch applied by
// node 2's follower, one batch at a time (p50, p99 over 1000).
func BenchmarkCrossNode(b *testing.B) {
	var mu sync.Mutex
	seen := map[uint64]chan struct{}{}
	wait := func(seq uint64) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		ch, ok := seen[seq]
		if !ok {
			ch = make(chan struct{})
			seen[seq] = ch
		}
		return ch
	}
	c := startCluster(b, 3, func(node int, seq uint64) {
		if node == 2 {
			close(wait(seq))
		}
	})
	c.appendAll(b, 200, 1)
	b.ResetTimer()
	var lat []time.Duration
	for range b.N {
		for range 1000 {
			start := time.Now()
			seq, err := c.nodes[0].log.Append(context.Background(), batchOf(1, "x"))
			if err != nil {
				b.Fatal(err)
			}
			select {
			case <-wait(seq):
			case <-time.After(10 * time.Second):
				b.Fatalf("batch %d not on node 2 after 10 s", seq)
			}
			lat = append(lat, time.Since(start))
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

// BenchmarkCatchUp: node 2 is down while 100,000 rows change (10,000
// batches of 10 on nodes 0 and 1); then restarted, how long until it
// applied them all.
func BenchmarkCatchUp(b *testing.B) {
	for range b.N {
		b.StopTimer()
		c := startCluster(b, 3, nil)
		c.stop(2)
		last := c.appendAll(b, 10_000, 10)
		b.StartTimer()
		start := time.Now()
		if err := c.start(2); err != nil {
			b.Fatal(err)
		}
		started := time.Since(start)
		c.caughtUp(last)
		took := time.Since(start)
		b.ReportMetric(started.Seconds()*1000, "start-ms") // node, stream, store open
		b.ReportMetric(took.Seconds()*1000, "catchup-ms")
		b.ReportMetric(100_000/took.Seconds(), "changes/s")
		b.StopTimer()
		for i := range c.nodes {
			c.stop(i)
		}
	}
}
