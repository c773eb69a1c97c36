package retain

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/wire"
)

// millionRows is how many rows with history the estimate benchmarks
// keep sizes for: site/S/dev/D/temp, S = D/1000, so site/7/# matches
// 1,000 rows (and site/7 itself none) and site/+/dev/1/temp one.
const millionRows = 1_000_000

// fillSizes counts one value of each of n rows in s's history sizes, as
// commits would (the sizes, not the file: the estimate reads only them).
func fillSizes(s *Store, n int) {
	h := &s.hsizes
	h.mu.Lock()
	defer h.mu.Unlock()
	for d := range n {
		h.addLocked(fmt.Sprintf("site/%d/dev/%d/temp", d/1000, d), 8)
	}
}

// estimateFilters are the wildcard filters of the open item (RV7):
// none matching, one row behind a literal prefix, 1,000 rows, all rows.
var estimateFilters = []string{"+/zz", "site/+/dev/1/temp", "site/7/#", "#"}

// lockProbe counts a change of the history sizes in a loop, as a commit
// does (updateThen), until stop is closed, and records how long it
// waited each time in waits.
func lockProbe(h *histSizes, stop <-chan struct{}, waits *[]time.Duration, done *sync.WaitGroup) {
	defer done.Done()
	probe := []sized{{topic: "probe"}}
	for {
		select {
		case <-stop:
			return
		default:
		}
		t := time.Now()
		h.count(probe, false) // a drop of a row without history: the lock and a lookup
		*waits = append(*waits, time.Since(t))
		time.Sleep(20 * time.Microsecond) // a commit's pace, not a spin
	}
}

// reportSpread reports the median, 99th percentile and largest of ds,
// in µs, as name's metrics.
func reportSpread(b *testing.B, name string, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	b.ReportMetric(float64(ds[len(ds)/2])/1e3, "p50-"+name+"-µs")
	b.ReportMetric(float64(ds[len(ds)*99/100])/1e3, "p99-"+name+"-µs")
	b.ReportMetric(float64(ds[len(ds)-1])/1e3, "max-"+name+"-µs")
}

// BenchmarkHistorySizesMillion: wildcard estimates over the sizes of
// 1,000,000 rows with history (RV7's open item): ns/op is a whole
// estimate; wait: how long a goroutine counting a change of the sizes as
// a commit does (every 20 µs) waited for their lock meanwhile, the
// scheduler's delays on a shared machine included; hold: how long the
// walk held it each time (a build with the walk's hook; a build without
// holds it for the whole estimate); heap-B/row: what the sizes take a
// row, its topic's bytes included.
func BenchmarkHistorySizesMillion(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	fillSizes(s, millionRows)
	runtime.GC()
	runtime.ReadMemStats(&m1)
	perRow := float64(m1.HeapAlloc-m0.HeapAlloc) / millionRows
	for _, f := range estimateFilters {
		b.Run(f, func(b *testing.B) {
			var waits, holds []time.Duration
			var probes sync.WaitGroup
			stop := make(chan struct{})
			probes.Add(1)
			go lockProbe(&s.hsizes, stop, &waits, &probes)
			setWalkHook(&s.hsizes, func(d time.Duration) { holds = append(holds, d) })
			defer setWalkHook(&s.hsizes, nil)
			rows := 0
			for b.Loop() {
				rows = 0
				s.HistorySizes(f, func(string, HistSize) bool { rows++; return true })
			}
			close(stop)
			probes.Wait()
			reportSpread(b, "wait", waits)
			reportSpread(b, "hold", holds)
			b.ReportMetric(float64(rows), "rows")
			b.ReportMetric(perRow, "heap-B/row")
		})
	}
}

// BenchmarkCommitWhileEstimating: the latency of a commit of 100 history
// values into a store with sizes for 1,000,000 rows, with no estimate
// running and while 4 goroutines loop wildcard estimates (the 4 estimate
// slots of HTTP clients looping GET ...?history=1 on wildcards).
func BenchmarkCommitWhileEstimating(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	s.db.NoSync = true // the lock, not the disk
	fillSizes(s, millionRows)
	var rev uint64
	batch := func() Batch {
		hist := make([]Change, 100)
		for i := range hist {
			rev++
			hist[i] = Change{Topic: fmt.Sprintf("c/%d", i), Value: wire.Value{Kind: wire.JSON, Data: "1"}, Rev: rev, MS: 1}
		}
		return Batch{History: hist, Rev: rev, Epoch: 1}
	}
	for _, estimators := range []int{0, 4} {
		b.Run(fmt.Sprint(estimators, "-estimating"), func(b *testing.B) {
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for i := range estimators {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := i; ; j++ {
						select {
						case <-stop:
							return
						default:
						}
						s.HistorySizes(estimateFilters[j%len(estimateFilters)], func(string, HistSize) bool { return true })
					}
				}()
			}
			var lat []time.Duration
			for b.Loop() {
				bt := batch()
				t := time.Now()
				if _, err := s.Commit(bt); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t))
			}
			close(stop)
			wg.Wait()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2])/1e3, "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100])/1e3, "p99-µs")
			b.ReportMetric(float64(lat[len(lat)-1])/1e3, "max-µs")
		})
	}
}

// BenchmarkCountMillion: what counting a commit's 100 history values
// (and a prune's drop of them) costs under the sizes' lock, the store
// holding sizes for 1,000,000 rows: the commit's part of keeping them.
func BenchmarkCountMillion(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	fillSizes(s, millionRows)
	for _, c := range []struct {
		name  string
		topic func(i int) string
	}{
		{"new-rows", func(i int) string { return fmt.Sprintf("c/%03d", i) }}, // rows first written, then gone
		{"site-rows", func(i int) string { // rows among the million, spread
			s := i * 7 % 1000
			return fmt.Sprintf("site/%d/dev/%d/temp", s, s*1000)
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			vs := make([]sized, 100)
			for i := range vs {
				vs[i] = sized{topic: c.topic(i), n: 8}
			}
			slices.SortFunc(vs, func(a, b sized) int { return strings.Compare(a.topic, b.topic) })
			for b.Loop() {
				s.hsizes.count(vs, true)
				s.hsizes.count(vs, false)
			}
		})
	}
}
