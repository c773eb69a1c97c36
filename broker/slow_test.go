package broker

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/clients/client"
)

// stalled subscribes to filters (QoS 0) on a raw connection and then never
// reads again.
func stalled(t *testing.T, b *Broker, id string, filters ...string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.(*net.TCPConn).SetReadBuffer(4096)
	c.Write(connectPacket(4, id))
	body := []byte{0, 1}
	for _, f := range filters {
		body = append(append(append(body, byte(len(f)>>8), byte(len(f))), f...), 0)
	}
	c.Write(append(append([]byte{0x82}, varint(len(body))...), body...))
	time.Sleep(50 * time.Millisecond)
	return c
}

// TestSlowTreeClient: a client that stops reading neither grows the
// broker's memory without bound nor delays the others. Each of its tree
// subscriptions keeps one queued delta, into which the next ones fold;
// its plain subscription gets every row, and past QueueBytes its queue
// drops or, by policy, it is disconnected. The fast client's one delta
// (150 rows of 8 KiB at most) always fits. QueueBytes holds the first
// delta of each subscription (150 of 16 KiB, with their rows) and the
// plain rows with them: the next values fold into them before the queue
// is full. (The writer is stuck from the first delta on: the socket took
// part of it, and holds the rest.)
func TestSlowTreeClient(t *testing.T) {
	const keys = 150
	var filters []string
	for k := range keys {
		filters = append(filters, fmt.Sprintf("$tree/s/k%d/#", k))
	}
	filters = append(filters, "s/#")
	for _, policy := range []SlowPolicy{SlowDrop, SlowDisconnect} {
		t.Run(string(policy), func(t *testing.T) {
			b := start(t, Options{QueueBytes: 4 << 20, SlowClient: policy})
			stalled(t, b, "slow", filters...)
			waitTreeSubs(t, b, keys)
			b.connOf(t, "slow")
			ctx := testCtx(t)
			fast := mote(t, b, "fast")
			m, err := fast.Mirror(ctx, "s/#", client.JSON, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			pub := mote(t, b, "pub")
			before := heapAndStacks()
			big := strings.Repeat("x", 8192)
			const n = 3000
			for i := range n {
				if err := pub.PublishTree(ctx, fmt.Sprintf("s/k%d", i%keys), map[string]any{"i": i, "pad": big}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
					t.Fatal(err)
				}
			}
			want := fmt.Sprint(n - 1)
			last := fmt.Sprintf("k%d", (n-1)%keys)
			if err := m.Wait(ctx, func(doc any) bool {
				k, _ := doc.(map[string]any)[last].(map[string]any)
				return fmt.Sprint(k["i"]) == want
			}); err != nil {
				t.Fatal("the fast client fell behind")
			}
			grew := int64(heapAndStacks()) - int64(before)
			if grew > 64<<20 {
				t.Errorf("memory grew %d MiB with a stalled client", grew>>20)
			}
			if policy == SlowDrop && b.stats.Dropped.Load() == 0 {
				t.Error("nothing dropped for the stalled client")
			}
			if policy == SlowDisconnect {
				deadline := time.Now().Add(testTimeout)
				for b.connCount() > 2 && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
				if n := b.connCount(); n != 2 {
					t.Errorf("%d connections left; the stalled one should be gone", n)
				}
			}
			if b.stats.Folded.Load() == 0 {
				t.Error("no delta folded for the stalled client")
			}
			t.Logf("%s: memory grew %d KiB, %d tree messages dropped, %d deltas folded", policy, grew>>10, b.stats.Dropped.Load(), b.stats.Folded.Load())
		})
	}
}

func (b *Broker) connCount() int {
	n := 0
	b.conns.Range(func(_, _ any) bool { n++; return true })
	return n
}

// TestSysCounters: the drop counter (and the others) show on $SYS/mote/….
func TestSysCounters(t *testing.T) {
	b := start(t, Options{})
	c := dial3(t, b, "sys", true)
	c.sub(t, "$SYS/mote/dropped", 0)
	if m := c.wait(t, 1)[0]; m.payload != "0" || !m.retained { // retained since the start
		t.Errorf("$SYS/mote/dropped = %+v", m)
	}
	b.stats.Dropped.Store(42) // the next tick publishes it
	if m := c.wait(t, 2)[1]; m.payload != "42" {
		t.Errorf("$SYS/mote/dropped = %q", m.payload)
	}
}
