package retain

import (
	"fmt"
	"math/rand/v2"
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

// BenchmarkStoreStorm: Store.Commit alone, as in a boot storm (`mote
// bench boot-storm`, BenchmarkBootStorm): a fresh store, 2,000 devices of
// 50 rows (`boot/dNNNNN/rNN`, small JSON numbers) committed 100 devices
// (5,000 rows) a transaction, each batch in arrival order (device by
// device). The devices come in a shuffled order, as in the storm, where
// every device publishes at once: each commit adds rows all over the key
// space. It reports the process's CPU per row: the store's share of the
// storm, without the broker's noise.
func BenchmarkStoreStorm(b *testing.B) {
	const devices, rows, per = 2_000, 50, 100
	order := rand.New(rand.NewPCG(1, 2)).Perm(devices)
	var batches [][]Change
	for d := 0; d < devices; d += per {
		var cs []Change
		for _, dev := range order[d : d+per] {
			for r := range rows {
				cs = append(cs, Change{Topic: fmt.Sprintf("boot/d%05d/r%02d", dev, r), Value: wire.Value{Kind: wire.JSON, Data: fmt.Sprint(dev + r)}, QoS: 1, Rev: uint64(dev*rows + r + 1), MS: 1})
			}
		}
		batches = append(batches, cs)
	}
	var cpu time.Duration
	for b.Loop() {
		b.StopTimer()
		s, err := Open(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		c0 := processCPU(b)
		for _, cs := range batches {
			if _, err := s.Commit(Batch{Changes: cs, Rev: cs[len(cs)-1].Rev}); err != nil {
				b.Fatal(err)
			}
		}
		cpu += processCPU(b) - c0
		b.StopTimer()
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*devices*rows), "cpu-ns/row")
}

// BenchmarkOpen: opening a store of 1M rows (with NoFreelistSync, bbolt
// would rebuild its freelist here by walking every page).
func BenchmarkOpen(b *testing.B) {
	dir := b.TempDir()
	s, err := Open(dir)
	if err != nil {
		b.Fatal(err)
	}
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
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		s, err := Open(dir)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
