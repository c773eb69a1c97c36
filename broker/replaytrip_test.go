package broker

import (
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// holdLoop holds the message loop with a call that waits until the
// returned release is called (also at cleanup).
func holdLoop(t *testing.T, b *Broker) (release func()) {
	t.Helper()
	entered, gate, held := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(held)
		b.onLoop(b.stop, func() { close(entered); <-gate })
	}()
	release = func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
	}
	t.Cleanup(func() { release(); <-held })
	waitClosed(t, "the loop held", entered)
	return release
}

// TestReplayTripNotGivenUp: a persistent session's connection ends while
// its writer waits for a trip to the loop of its QoS 1 replay (the loop
// busy). The writer used to give the trip up, and the trip still ran
// later: the replay moved past the rows it read, which nobody sent, and
// the session, back, missed them (488 of 1,000 rows came: rows 0–511
// lost, on this branch and on main alike).
func TestReplayTripNotGivenUp(t *testing.T) {
	const rows = 1000
	b := start(t, Options{})
	loadRows(t, b, rows)
	r := dialRaw(t, b, "ab", 5, false, packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true})
	c := b.connOf(t, "ab")
	release := holdLoop(t, b)
	r.subscribe(1, "dev/+/state", 1)
	waitFor(t, "the writer's first trip", func() bool { return queuedCalls(b) >= 1 })
	cl := c.out.(*mqttOut).cl
	r.c.Close()
	waitDropped(t, b, c, cl)
	release()
	waitClosed(t, "the hand-off", c.handOf().handed.wait())
	in := resume(t, b, "ab")
	got := map[string]int{}
	for _, topic := range in.wait(t, rows) {
		got[topic]++
	}
	for j := range rows {
		if got[rowTopic(j)] != 1 {
			t.Errorf("%s came %d times after the return", rowTopic(j), got[rowTopic(j)])
		}
	}
}
