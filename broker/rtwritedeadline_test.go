package broker

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestWriteTimeoutNotMovedByKeepAlive: a subscriber that stops reading
// its socket but keeps sending (QoS 0 publishes nobody receives) is cut
// after WriteTimeout once a write to it blocks. mochi's keep-alive
// deadline (refreshDeadline, set about once a second by the read
// goroutine) used SetDeadline, which moved the write deadline too: to
// keep-alive × 1.5 from its latest packet, past the WriteTimeout the
// blocked write had set, again and again while it sent.
func TestWriteTimeoutNotMovedByKeepAlive(t *testing.T) {
	b := start(t, Options{WriteTimeout: time.Second})
	c, r, _ := keepAliveDial(t, b, 4, "sink", 60) // a read deadline 90 s away
	c.Write(subscribePacket(4, []string{"big/#"}))
	if h, err := readPacket(r); err != nil || h != 0x90 {
		t.Fatalf("no SUBACK: %#x %v", h, err)
	}
	// From here on the sink reads nothing: its socket fills.
	topic := "nobody/x"
	pk := append([]byte{0x30, byte(2 + len(topic)), 0, byte(len(topic))}, topic...)
	stop := make(chan struct{})
	sent := make(chan struct{})
	go func() { // the sink keeps sending
		defer close(sent)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			c.SetWriteDeadline(time.Now().Add(time.Second))
			if _, err := c.Write(pk); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-sent }()

	ctx := testCtx(t)
	payload := bytes.Repeat([]byte("x"), 32<<10)
	pub := Principal{ClientID: "filler"}
	start := time.Now()
	for {
		cl, ok := b.server.Clients.Get("sink")
		if !ok || cl.Closed() {
			t.Logf("sink cut after %v", time.Since(start))
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("a subscriber not reading was not cut in %v (WriteTimeout 1 s)", testTimeout)
		default:
		}
		pctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		b.Publish(pctx, pub, Message{Topic: "big/x", Payload: payload}) //nolint:errcheck // the queue is full: dropped
		cancel()
	}
}
