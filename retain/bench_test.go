package retain

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/wire"
)

// BenchmarkRetainerCommit: rows per second the retainer commits to bbolt,
// 100-byte rows (topic plus payload), handed in batches of 1,000 as the
// message loop does, with the default 50 ms interval and 10k-row batches.
func BenchmarkRetainerCommit(b *testing.B) {
	payload := strings.Repeat("x", 100-len("dev/d0000000/state"))
	for _, distinct := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("rows=%d", distinct), func(b *testing.B) {
			s, err := Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			batch := make([]Change, 1000)
			for b.Loop() {
				r := must(New(s, Options{}, zerolog.Nop()))
				start := time.Now()
				for i := 0; i < distinct; i += len(batch) {
					for j := range batch {
						batch[j] = Change{Topic: fmt.Sprintf("dev/d%07d/state", i+j), Value: wire.Value{Kind: wire.String, Data: payload}}
					}
					r.Add(batch)
					r.Wait()
				}
				if err := r.Close(); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(distinct)/time.Since(start).Seconds(), "rows/s")
			}
		})
	}
}

// BenchmarkLoad: reading 1M stored rows back (the boot path without the
// tree and mochi inserts; the broker's full boot is in BenchmarkBoot).
func BenchmarkLoad(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const n = 1_000_000
	for i := 0; i < n; i += 10_000 {
		cs := make([]Change, 10_000)
		for j := range cs {
			cs[j] = Change{Topic: fmt.Sprintf("dev/d%07d/state", i+j), Value: wire.Value{Kind: wire.JSON, Data: "21.5"}}
		}
		if _, err := s.Commit(Batch{Changes: cs}); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		rows := 0
		if err := s.Load(func(Row) error { rows++; return nil }); err != nil || rows != n {
			b.Fatal(rows, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/row")
}
