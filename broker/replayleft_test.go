package broker

import (
	"fmt"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// The rest of a QoS 1/2 retained replay that a persistent session's
// connection did not finish (handReplaysOn): its writer reads it a bounded
// trip to the loop at a time, so neither the loop nor the writers queued
// behind it wait for whole replays, and the session still gets every row.

// awayMidReplay connects a persistent MQTT 5 session id (Receive Maximum
// 1), subscribes it to dev/+/state at QoS 1 and reads the first row of
// its replay, which stays in flight: its writer waits, the rest unread.
func awayMidReplay(t *testing.T, b *Broker, id string) (*raw, *conn) {
	t.Helper()
	r := dialRaw(t, b, id, 5, false, packets.Properties{ReceiveMaximum: 1, SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true})
	r.subscribe(1, "dev/+/state", 1)
	readPublish(r) // in flight, never acknowledged
	return r, b.connOf(t, id)
}

// TestReplayLeftTripsBounded: sessions whose connections end with most of
// a 1,000-row QoS 1 replay unread hand it on in trips to the loop of at
// most replayRowsMax rows. The loop is held (a call that waits) while the
// connections end, so every writer's first trip queues behind it; a call
// queued after those trips sees how far each replay was read. Each replay
// must have been read no further than its first trip goes, and every
// session, back, gets each row once (the one in flight resent).
func TestReplayLeftTripsBounded(t *testing.T) {
	const rows, sessions = 1000, 3 // past one trip (replayRowsMax); within what an away session holds (MaxInflight); fewer than handingAtOnce
	b := start(t, Options{})
	loadRows(t, b, rows)
	raws := make([]*raw, sessions)
	conns := make([]*conn, sessions)
	for i := range sessions {
		raws[i], conns[i] = awayMidReplay(t, b, fmt.Sprintf("away-%d", i))
	}

	entered, gate, held := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() { // owned by the test: it ends once gate is closed (below, or at cleanup)
		defer close(held)
		b.onLoop(b.stop, func() { close(entered); <-gate })
	}()
	release := func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
	}
	t.Cleanup(func() { release(); <-held })
	waitClosed(t, "the loop held", entered)

	for i, r := range raws {
		cl := conns[i].out.(*mqttOut).cl
		r.c.Close()
		waitDropped(t, b, conns[i], cl)
	}
	// Each ended connection's writer queues its first trip (at most
	// handingAtOnce writers at once: sessions is fewer).
	waitFor(t, "the writers' first trips", func() bool { return queuedCalls(b) >= sessions })
	var left [][]*replayItem
	for _, c := range conns {
		left = append(left, c.q.leftReplays())
	}
	read := make([][]int, sessions) // how far each replay was read once the first trips ran
	marked := make(chan struct{})
	b.reqs.push(request{kind: reqCall, call: func() {
		defer close(marked)
		for i, rs := range left {
			for _, r := range rs {
				read[i] = append(read[i], r.next)
			}
		}
	}})
	release()
	waitClosed(t, "the call after the first trips", marked)
	for i, c := range conns {
		waitClosed(t, "the hand-off", c.handOf().handed.wait())
		if len(read[i]) != 1 {
			t.Fatalf("away-%d: %d replays left, want 1", i, len(read[i]))
		}
		// The writer had read one trip and sent its first row.
		if n := read[i][0]; n > 1+replayRowsMax {
			t.Errorf("away-%d: its replay was read to row %d in one trip to the loop, want at most %d", i, n, 1+replayRowsMax)
		}
	}

	for i := range sessions {
		in := resume(t, b, fmt.Sprintf("away-%d", i))
		got := map[string]int{}
		for _, topic := range in.wait(t, rows) {
			got[topic]++
		}
		for j := range rows {
			if got[rowTopic(j)] != 1 {
				t.Errorf("away-%d: %s came %d times after the return", i, rowTopic(j), got[rowTopic(j)])
			}
		}
	}
}

// queuedCalls is how many calls wait in the loop's inbox (reqCall: no
// publish, detach or subscription).
func queuedCalls(b *Broker) int {
	b.reqs.mu.Lock()
	defer b.reqs.mu.Unlock()
	n := 0
	for i := range b.reqs.items {
		if b.reqs.items[i].kind == reqCall {
			n++
		}
	}
	return n
}
