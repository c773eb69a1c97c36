package retain

import (
	"fmt"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// historyBatch is a commit of n history values of 1,000 rows, numbers
// and 100-byte strings, and the rows themselves.
func historyBatch(n int, rev *uint64) Batch {
	b := Batch{History: make([]Change, n), Changes: make([]Change, 0, 1000)}
	for i := range b.History {
		*rev++
		v := wire.Value{Kind: wire.JSON, Data: fmt.Sprint(*rev % 1000)}
		if i%2 == 1 {
			v = wire.Value{Kind: wire.String, Data: fmt.Sprintf("%0100d", *rev)}
		}
		c := Change{Topic: fmt.Sprintf("dev/d%04d/state", i%1000), Value: v, Rev: *rev, MS: 1_700_000_000_000}
		b.History[i] = c
		if i < 1000 {
			b.Changes = append(b.Changes, c)
		}
	}
	b.Rev, b.Epoch = *rev, 1
	return b
}

// BenchmarkCommitHistory: a commit of 10,000 history values (1,000 rows,
// 10 each), the store's part of the append path of history (R3-hist: the
// values' sizes are counted here, as they are written).
func BenchmarkCommitHistory(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var rev uint64
	batches := make([]Batch, 8)
	for i := range batches {
		batches[i] = historyBatch(10_000, &rev)
	}
	i := 0
	cpu := processCPU(b)
	for b.Loop() {
		bt := batches[i%len(batches)]
		i++
		if _, err := s.Commit(bt); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((processCPU(b)-cpu).Nanoseconds())/float64(b.N*10_000), "cpu-ns/value")
}

// BenchmarkOpenHistory: opening a store holding 1,000,000 history values
// (1,000 rows × 1,000): R3-hist counts their sizes at Open.
func BenchmarkOpenHistory(b *testing.B) {
	dir := b.TempDir()
	s, err := Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	var rev uint64
	for range 100 {
		if _, err := s.Commit(historyBatch(10_000, &rev)); err != nil {
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
