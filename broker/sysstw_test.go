package broker

import (
	"runtime"
	"runtime/metrics"
	"strconv"
	"testing"
)

// otherPauses is how many stop-the-world pauses not for the garbage
// collector the process has made so far (runtime.ReadMemStats makes one).
func otherPauses(t *testing.T) uint64 {
	t.Helper()
	s := []metrics.Sample{{Name: "/sched/pauses/total/other:seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64Histogram {
		t.Fatalf("runtime/metrics has no %s", s[0].Name)
	}
	var n uint64
	for _, c := range s[0].Value.Float64Histogram().Counts {
		n += c
	}
	return n
}

// TestSysValuesNoStopTheWorld: the $SYS rows, read once a second, stop no
// goroutine. runtime.ReadMemStats stopped the world for the memory row,
// and under CPU contention every message in flight waited for the pause
// (issue 15, bench/README.md: up to 32 ms in a trace of `mote bench
// latency`). The row still says what MemStats.HeapInuse says.
func TestSysValuesNoStopTheWorld(t *testing.T) {
	b := start(t, Options{})
	const reads = 40
	before := otherPauses(t)
	var row string
	for range reads {
		row = b.sysValues()["$SYS/broker/system/memory"]
	}
	// Other tests of the package may stop the world meanwhile; each read
	// stopping it would add one a read.
	if got := otherPauses(t) - before; got >= reads/2 {
		t.Fatalf("%d reads of the $SYS rows made %d stop-the-world pauses", reads, got)
	}
	got, err := strconv.ParseInt(row, 10, 64)
	if err != nil {
		t.Fatalf("$SYS/broker/system/memory %q: %v", row, err)
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	if want := int64(m.HeapInuse); got <= 0 || got > 4*want || got < want/4 {
		t.Fatalf("$SYS/broker/system/memory %d, HeapInuse %d", got, want)
	}
}
