package broker

import (
	"fmt"
	"runtime"
	"testing"
)

// TestTreePublishAllocations: a QoS 0 $tree publish of one row whose
// delta is written at once to its one tree subscriber costs the broker 4
// allocations: mochi's body, the decoded number and the row's topic (two
// small ones), the delta's payload. It was 14 (877 bytes; main 882e7c2
// with this test): the loop's batchRows and deltaItem are its scratch
// now, copied only for a delta that waits in a queue (batchRows.keep),
// and so is the door's pubMeta for a publish run inline (loopPub); the
// row slice goes back to the Parser, the tree's Result lists are handed
// back (tree.Release), the payload is copied out once, not grown by
// doubling. Both shapes of issue 15:
// the benchmark's ($tree/rt to $sync/rt/+) and mote bench's latency
// ($tree/lat to $tree/lat/+). The raw clients allocate nothing; the
// process's mallocs over 4,000 messages are counted, so a background
// allocation or two only add a little.
func TestTreePublishAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, c := range []struct{ name, topic, filter string }{
		{"$sync subscriber", "$tree/rt", "$sync/rt/+"},
		{"$tree subscriber", "$tree/lat", "$tree/lat/+"},
	} {
		t.Run(c.name, func(t *testing.T) {
			br := start(t, Options{})
			sub := dialBench(t, br.TCPAddr(), "alloc-sub")
			pub := dialBench(t, br.TCPAddr(), "alloc-pub")
			pub.write(t, publish3(c.topic, `{"t":0}`))
			sub.subscribe(t, c.filter)
			if c.filter[1] == 's' {
				sub.readPublish(t) // the snapshot
			}
			var packets [2][]byte
			for i := range packets {
				packets[i] = publish3(c.topic, fmt.Sprintf(`{"t":%d}`, 1000+i))
			}
			run := func(n int) {
				for i := range n {
					pub.write(t, packets[i&1])
					sub.readPublish(t)
				}
			}
			run(500) // warm: pools, buffers, the loop's scratch
			const n = 4000
			direct := br.stats.Direct.Load()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			run(n)
			runtime.ReadMemStats(&after)
			per := float64(after.Mallocs-before.Mallocs) / n
			t.Logf("%.2f allocations, %.0f bytes a message; %d of %d written at once", per, float64(after.TotalAlloc-before.TotalAlloc)/n, br.stats.Direct.Load()-direct, n)
			if per > 4.5 {
				t.Errorf("%.2f allocations a message, want 4", per)
			}
		})
	}
}
