package retain

import (
	"fmt"
	"testing"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/wire"
)

// BenchmarkRetainerStorm: the retainer's whole share of a boot storm, as
// the message loop drives it (BenchmarkBootStorm, `mote bench
// boot-storm`): a fresh store, 2,000 devices of 50 rows
// (`boot/dNNNNN/rNN`, small JSON numbers), one Add per device (one tree
// publish), the devices in the order the storm's 50 connections bring
// them (device d on connection d mod 50, each connection a few devices
// ahead of or behind the others), then one waiter for the commit that
// follows. It reports the process's CPU per row: Add, the commits, and
// the garbage collection they cause, without the broker.
func BenchmarkRetainerStorm(b *testing.B) {
	const devices, rows, conns = 2_000, 50, 50
	adds := make([][]Change, 0, devices)
	rev := uint64(0)
	// Connection w's k-th device is w + k·conns; connections take turns,
	// each k-th turn in an order that rotates, so the devices come almost
	// in key order but never exactly.
	for k := 0; k*conns < devices; k++ {
		for i := range conns {
			d := k*conns + (i*7+k*13)%conns
			if d >= devices {
				continue
			}
			cs := make([]Change, rows)
			for r := range rows {
				rev++
				cs[r] = Change{Topic: fmt.Sprintf("boot/d%05d/r%02d", d, r), Value: wire.Value{Kind: wire.JSON, Data: fmt.Sprint(d + r)}, QoS: 1, Rev: rev, MS: 1}
			}
			adds = append(adds, cs)
		}
	}
	var cpu, commits float64
	for b.Loop() {
		b.StopTimer()
		s, err := Open(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		r := must(New(s, Options{}, zerolog.Nop()))
		b.StartTimer()
		c0 := processCPU(b)
		for _, cs := range adds {
			r.Add(cs)
		}
		done := make(chan error, 1)
		r.Add(nil, done)
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		cpu += (processCPU(b) - c0).Seconds()
		b.StopTimer()
		commits += float64(r.Commits.Load())
		if err := r.Close(); err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(cpu/float64(b.N*devices*rows)*1e9, "cpu-ns/row")
	b.ReportMetric(commits/float64(b.N), "commits/op")
}
