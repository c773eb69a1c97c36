package broker

import (
	"testing"
	"time"
)

// TestQueueNowLocked: wrote's clock (nowLocked) is time.Now before the
// first write, and after it lastWrote plus the time since by the
// monotonic clock: never before lastWrote, never after a time.Now read
// after it, whether lastWrote carries a monotonic reading or not.
func TestQueueNowLocked(t *testing.T) {
	tests := []struct {
		name string
		last time.Time
	}{
		{"no write yet", time.Time{}},
		{"monotonic", time.Now()},
		{"wall only", time.Now().Round(0)},
		{"a second ago", time.Now().Add(-time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newOutQueue(1<<10, time.Second)
			q.lastWrote = tt.last
			before := time.Now()
			q.mu.Lock()
			now := q.nowLocked()
			q.mu.Unlock()
			after := time.Now()
			if now.Before(before) || now.After(after) {
				t.Fatalf("nowLocked %v, want within [%v, %v]", now, before, after)
			}
			if !tt.last.IsZero() && now.Before(tt.last) {
				t.Fatalf("nowLocked %v before lastWrote %v", now, tt.last)
			}
		})
	}
}

// BenchmarkQueueWrote: what a direct write pays its subscriber's queue
// (outQueue.wrote) for one small message, with no publisher waiting.
func BenchmarkQueueWrote(b *testing.B) {
	q := newOutQueue(1<<20, time.Second)
	b.ReportAllocs()
	for b.Loop() {
		q.wrote(64, 1)
	}
}
