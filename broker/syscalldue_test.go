package broker

import (
	"testing"
	"time"
)

// TestSyscallDue: of a broker that reads often (syscallEvery reads in
// less than syscallWindow) one read in syscallEvery goes through the
// scheduler, waking sysmon; of one that reads seldom (the latency
// scenario: a read every 500 µs) one a syscallGap, not one in
// syscallEvery (h-tail: the wake-ups were 20% of its CPU).
func TestSyscallDue(t *testing.T) {
	tests := []struct {
		name  string
		steps []time.Duration // the clock's step before each read, cycled
		reads int
		want  int
	}{
		{"busy: a read every 10 µs", []time.Duration{10 * time.Microsecond}, 4 * syscallEvery, 4},
		{"idle reads: one every 500 µs, 1 s", []time.Duration{500 * time.Microsecond}, 2000, 10},
		{"one every 2 ms, 2 s: the first 16th read past each syscallGap", []time.Duration{2 * time.Millisecond}, 1000, 16},
		{"bursts of 16 fast reads a second apart", append([]time.Duration{time.Second}, repeat(time.Microsecond, syscallEvery-1)...), 4 * syscallEvery, 4},
		{"just under the window", []time.Duration{syscallWindow/syscallEvery - time.Nanosecond}, 8 * syscallEvery, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := int64(time.Hour)
			p := readBufPool{clock: func() int64 { return now }}
			due := 0
			for i := range tt.reads {
				now += int64(tt.steps[i%len(tt.steps)])
				if p.syscallDue() {
					due++
				}
			}
			if due != tt.want {
				t.Errorf("%d of %d reads through the scheduler, want %d", due, tt.reads, tt.want)
			}
		})
	}
}

func repeat(d time.Duration, n int) []time.Duration {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = d
	}
	return s
}
