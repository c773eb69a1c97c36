package retain

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// writtenBytes is the bytes this process has handed to write calls
// (write, pwrite: /proc/self/io's wchar), or -1 where that is not known.
func writtenBytes() int64 {
	f, err := os.Open("/proc/self/io")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "wchar: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

// BenchmarkSteadyState: the steady state after a storm, one changed row
// per device per commit: 1,000 parents of 50 rows stored (100: past a
// group's 2 KiB, so single), then commits of 1,000 changes, one row of
// each parent. It reports the process's CPU per row, the bytes written
// per row (write calls) and the file's growth per commit. Written against
// the public API only, so that it runs on a store of any format.
func BenchmarkSteadyState(b *testing.B) {
	for _, rows := range []int{1, 50, 100} {
		b.Run(fmt.Sprintf("%d-rows", rows), func(b *testing.B) { steadyState(b, rows) })
	}
}

func steadyState(b *testing.B, rows int) {
	const parents = 1_000
	dir := b.TempDir()
	s, err := Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rev := uint64(0)
	var cs []Change
	for p := range parents {
		for r := range rows {
			rev++
			cs = append(cs, Change{Topic: fmt.Sprintf("dev/d%04d/r%02d", p, r), Value: wire.Value{Kind: wire.JSON, Data: strconv.Itoa(p + r)}, QoS: 1, Rev: rev, MS: 1})
		}
		if len(cs) >= 10_000 {
			if _, err := s.Commit(Batch{Changes: cs, Rev: rev}); err != nil {
				b.Fatal(err)
			}
			cs = cs[:0]
		}
	}
	size := func() int64 {
		fi, err := os.Stat(s.Path())
		if err != nil {
			b.Fatal(err)
		}
		return fi.Size()
	}
	size0, w0, c0 := size(), writtenBytes(), processCPU(b)
	i := 0
	for b.Loop() {
		cs = cs[:0]
		rev++
		for p := range parents {
			cs = append(cs, Change{Topic: fmt.Sprintf("dev/d%04d/r%02d", p, i%rows), Value: wire.Value{Kind: wire.JSON, Data: strconv.Itoa(i)}, QoS: 1, Rev: rev, MS: int64(i)})
		}
		if _, err := s.Commit(Batch{Changes: cs, Rev: rev}); err != nil {
			b.Fatal(err)
		}
		i++
	}
	n := float64(b.N * parents)
	b.ReportMetric((processCPU(b)-c0).Seconds()*1e9/n, "cpu-ns/row")
	if w := writtenBytes(); w >= 0 && w0 >= 0 {
		b.ReportMetric(float64(w-w0)/n, "written-B/row")
	}
	b.ReportMetric(float64(size()-size0)/float64(b.N), "growth-B/commit")
}

// BenchmarkLoadLayouts: Load of a store of 1M rows, as a broker starts: 1M
// parents of one row each, or 20k parents of 50 rows.
func BenchmarkLoadLayouts(b *testing.B) {
	for _, c := range []struct {
		name  string
		topic func(i int) string
	}{
		{"1M-parents", func(i int) string { return fmt.Sprintf("dev/d%07d/state", i) }},
		{"20k-parents-of-50", func(i int) string { return fmt.Sprintf("dev/d%05d/r%02d", i/50, i%50) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			s, err := Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			const n = 1_000_000
			for i := 0; i < n; i += 10_000 {
				cs := make([]Change, 10_000)
				for j := range cs {
					cs[j] = Change{Topic: c.topic(i + j), Value: wire.Value{Kind: wire.JSON, Data: "21.5"}, Rev: uint64(i + j + 1)}
				}
				if _, err := s.Commit(Batch{Changes: cs, Rev: uint64(i + 10_000)}); err != nil {
					b.Fatal(err)
				}
			}
			c0 := processCPU(b)
			for b.Loop() {
				rows := 0
				if err := s.Load(func(Row) error { rows++; return nil }); err != nil || rows != n {
					b.Fatalf("%d rows, %v", rows, err)
				}
			}
			b.ReportMetric((processCPU(b)-c0).Seconds()*1e9/float64(b.N*n), "cpu-ns/row")
		})
	}
}
