package broker

import (
	"testing"
	"time"
)

// TestQueueSpentWaitDoesNotQueue: a publisher whose wait is over (past its
// limit, or past its deadline with a client written nothing for a patience)
// is refused at once by a full queue, without joining the line. It used to
// join it and sleep a timer's minimum (1 ms) before giving up: a publish to
// 10,000 full subscribers ran 10 s past its 5 × publish_wait limit, and
// every such publisher spent the subscriber's credit as if it had waited,
// so publishers with nothing left to wait stalled a client that reads.
func TestQueueSpentWaitDoesNotQueue(t *testing.T) {
	past := time.Now().Add(-time.Hour)
	for _, tc := range []struct {
		name   string
		w      pubWait
		writen bool // the client was just written something
	}{
		{"past the limit, client being written", pubWait{deadline: past, limit: past}, true},
		{"past the deadline, client silent", pubWait{deadline: past, limit: time.Now().Add(time.Hour)}, false},
		{"past the deadline, no limit, client silent", pubWait{deadline: past}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newOutQueue(1000, time.Second)
			defer q.close()
			for range 4 {
				if r := q.put(waitItem(), pubWait{}); r != pushed {
					t.Fatalf("filling: %v", r)
				}
			}
			if tc.writen {
				q.mu.Lock()
				q.lastWrote = time.Now()
				q.mu.Unlock()
			}
			for i := range 100 {
				if r := q.put(waitItem(), tc.w); r != pushLate {
					t.Fatalf("put %d: %v, want pushLate", i, r)
				}
			}
			q.mu.Lock()
			credit, stalled := q.credit, q.stalled
			q.mu.Unlock()
			if credit != q.patience || stalled {
				t.Errorf("credit %v (stalled %v) after publishers with no wait left, want %v untouched", credit, stalled, q.patience)
			}
		})
	}
}
