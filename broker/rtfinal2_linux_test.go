//go:build linux

package broker

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// TestSlowSmallMSSHoldsNobody: a subscriber on Ethernet-sized segments
// (TCP_NOTSENT_LOWAT set) with a 4 KiB receive buffer that never reads
// holds neither its publisher (every door publish returns) nor another
// subscriber of the same topic (which gets every message), and is closed
// by the write timeout, as Options.WriteTimeout says.
func TestSlowSmallMSSHoldsNobody(t *testing.T) {
	b := start(t, Options{QueueBytes: 1 << 20, PublishWait: 200 * time.Millisecond, WriteTimeout: 2 * time.Second})
	slow := benchConn(t, dialSmallMSS(t, b), "slow")
	slow.subscribe(t, "s/t")
	fast := dial3(t, b, "fast", true)
	fast.sub(t, "s/t", 0)
	ctx := testCtx(t)
	const n = 3000
	payload := bytes.Repeat([]byte("p"), 1<<10)
	for i := range n {
		copy(payload, fmt.Sprintf("%06d", i))
		if err := b.Publish(ctx, Principal{ClientID: "pub"}, Message{Topic: "s/t", Payload: bytes.Clone(payload)}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	got := fast.wait(t, n)
	for i, m := range got[:n] {
		if want := fmt.Sprintf("%06d", i); m.payload[:6] != want {
			t.Fatalf("the fast subscriber's message %d is %q…, want %s…", i, m.payload[:6], want)
		}
	}
	waitFor(t, "the slow subscriber to be closed", func() bool { _, ok := b.server.Clients.Get("slow"); return !ok })
	if d := b.stats.Dropped.Load(); d == 0 {
		t.Fatal("nothing was dropped for the slow subscriber: the test did not fill its queue")
	} else {
		t.Logf("dropped for the slow subscriber: %d of %d", d, n)
	}
}
