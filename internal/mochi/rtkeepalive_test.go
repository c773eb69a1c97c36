package mqtt

import (
	"testing"
	"time"
)

// TestRefreshDeadlineKeepAliveAndAHalf: the read deadline comes no
// earlier than keep-alive × 1.5 after the packet [MQTT-3.1.2-22] and at
// most deadlineSlack later, for every keep-alive: an odd one (its half
// second was lost to integer division: keep-alive 1 gave 1 s) and one
// above 43690 (keep-alive + keep-alive/2 overflowed uint16: 65535 gave
// 32766 s, so a client pinging every 65535 s was cut off at 9 hours).
func TestRefreshDeadlineKeepAliveAndAHalf(t *testing.T) {
	for _, ka := range []uint16{1, 2, 3, 10, 43690, 43691, 65535} {
		cl, r, w := newTestClient()
		dc := &deadlineConn{Conn: w}
		cl.Net.Conn = dc
		before := time.Now()
		cl.refreshDeadline(ka)
		after := time.Now()
		want := time.Duration(ka) * 1500 * time.Millisecond
		if lo := before.Add(want); dc.last.Before(lo) {
			t.Errorf("keep-alive %d: deadline %v after the packet, want at least %v", ka, dc.last.Sub(before), want)
		}
		if hi := after.Add(want + deadlineSlack); dc.last.After(hi) {
			t.Errorf("keep-alive %d: deadline %v after the packet, want at most %v", ka, dc.last.Sub(after), want+deadlineSlack)
		}
		r.Close()
		w.Close()
	}
}
