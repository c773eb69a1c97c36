package broker

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestTakeoverWhilePublishersWait: a persistent subscriber (MQTT 5, QoS 1,
// Receive Maximum 1, never acknowledging) holds its queue full and
// publishers in line; its client reconnects (a session takeover): every
// QoS 1 message, queued or waiting in line, reaches the new connection.
// (but what the leftovers' bound loses, counted session_ended). Those in
// line past that bound (the queue was full when they came) were dropped,
// counted queue_full.
func TestTakeoverWhilePublishersWait(t *testing.T) {
	b := start(t, Options{QueueBytes: 2048, PublishWait: testTimeout})
	props := packets.Properties{ReceiveMaximum: 1, SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}
	old := dialRaw(t, b, "psub", 5, false, props)
	old.subscribe(1, "tk/#", 1)
	go io.Copy(io.Discard, old.c) //nolint:errcheck // reads, never acknowledges
	c := b.connOf(t, "psub")
	ctx := testCtx(t)
	const n = 16 // ~465 bytes each: 1 in flight, a few taken, 4 queued, the rest in line
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := Message{Topic: fmt.Sprintf("tk/%d", i), Payload: bytes.Repeat([]byte("p"), 300), QoS: 1}
			if err := b.Publish(ctx, Principal{ClientID: fmt.Sprintf("pub%d", i)}, m); err != nil {
				t.Error(err)
			}
		}()
	}
	awaitAtLeast := func(k int) {
		for queueWaiting(c.q) < k {
			select {
			case <-ctx.Done():
				t.Fatalf("%d publishers in line, want %d", queueWaiting(c.q), k)
			default:
				time.Sleep(time.Millisecond)
			}
		}
	}
	awaitAtLeast(4)
	props.ReceiveMaximum = 100
	now := dialRaw(t, b, "psub", 5, false, props) // takes the session over
	// Once the new connection writes, the old one handed its leftovers on
	// and counted what their bound (the queue's) could not keep: the
	// messages the writer had taken and those queued may pass it, a loss
	// the session is told of (session_ended), not this test's concern.
	got := map[string]bool{}
	lost := func() int64 { return b.meter.dropped[dropSessionEnded].Load() }
	defer func() {
		if int64(len(got))+lost() < n {
			t.Logf("the new connection got %d of %d messages; %d lost in the hand-off (drops %v, queue full %v)", len(got), n, lost(), loadCounts(b.meter.dropped[:]), loadCounts(b.meter.queueFull[:]))
		}
	}()
	for int64(len(got))+lost() < n {
		m, id := readPublish(now)
		got[m.topic] = true
		now.write([]byte{0x40, 2, byte(id >> 8), byte(id)}) // PUBACK
	}
	wg.Wait()
	if d := b.meter.dropped[dropQueueFull].Load(); d != 0 {
		t.Errorf("%d publishers in line dropped (queue_full) at the takeover, want 0", d)
	}
}

// loadCounts reads counters atomically, for a log line (formatting the
// array itself reads them with reflection: a data race the race detector
// reports on the failure path, over the failure itself).
func loadCounts(cs []atomic.Int64) []int64 {
	out := make([]int64, len(cs))
	for i := range cs {
		out[i] = cs[i].Load()
	}
	return out
}
