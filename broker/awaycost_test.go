package broker

import (
	"fmt"
	"strconv"
	"testing"
)

// TestAwayDeliveryShortcut: deliverTo skips a message to a session away
// before anything is made for it when give would drop it (QoS 0; QoS 1/2
// to a session holding MaxInflight, counted offline_full); the shortcut
// must not widen. A persistent session (MQTT 3.1.1 and 5) subscribed to
// t/# is away, or its client is coming back (held in OnSessionEstablish,
// after the broker registered it, before mochi files it), while three
// messages are published to it (plain and retained): held in flight
// (QoS 1/2 while away, up to MaxInflight), held for the client coming
// back (QoS 0 too), or dropped uncounted (QoS 0 to a session away, as
// before). The client, once back, gets what was held, and nothing else.
func TestAwayDeliveryShortcut(t *testing.T) {
	p3 := []string{"m0", "m1", "m2"}
	for _, tc := range []struct {
		name        string
		v           byte
		subQoS      byte
		msgQoS      byte
		retain      bool
		comingBack  bool
		maxInflight uint16 // 0: the default
		prefill     int    // QoS 1 messages held before, payloads p0 …
		wantHeld    int    // in flight while away, once published
		wantDropped int64  // counted
		wantGot     []string
		unread      bool // what comes once back is not read (it waits for acknowledgements)
	}{
		{name: "v4/away/qos0", v: 4, subQoS: 1},
		{name: "v4/away/qos0 retained", v: 4, subQoS: 1, retain: true},
		{name: "v4/away/qos1", v: 4, subQoS: 1, msgQoS: 1, wantHeld: 3, wantGot: p3},
		{name: "v4/away/qos1 retained", v: 4, subQoS: 1, msgQoS: 1, retain: true, wantHeld: 3, wantGot: p3},
		{name: "v4/away/qos1 to a qos0 subscription", v: 4, msgQoS: 1},
		{name: "v4/away/qos1 full", v: 4, subQoS: 1, msgQoS: 1, maxInflight: 2, wantHeld: 2, wantDropped: 1, wantGot: p3[:2]},
		{name: "v5/away/qos0", v: 5, subQoS: 1},
		{name: "v5/away/qos1", v: 5, subQoS: 1, msgQoS: 1, wantHeld: 3, wantGot: p3},
		{name: "v5/away/qos2", v: 5, subQoS: 2, msgQoS: 2, wantHeld: 3, wantGot: p3},
		{name: "v5/away/qos1 full", v: 5, subQoS: 1, msgQoS: 1, maxInflight: 3, prefill: 3, wantHeld: 3, wantDropped: 3, wantGot: []string{"p0", "p1", "p2"}},
		{name: "v4/coming back/qos0", v: 4, subQoS: 1, comingBack: true, wantGot: p3},
		{name: "v4/coming back/qos0 retained", v: 4, subQoS: 1, retain: true, comingBack: true, wantGot: p3},
		{name: "v4/coming back/qos1", v: 4, subQoS: 1, msgQoS: 1, comingBack: true, wantGot: p3},
		{name: "v5/coming back/qos0", v: 5, subQoS: 1, comingBack: true, wantGot: p3},
		{name: "v5/coming back/qos1 to a qos0 subscription", v: 5, msgQoS: 1, comingBack: true, wantGot: p3},
		// Its session holds MaxInflight: what waits for the client coming
		// back is bounded by MaxInflight on its own (arriving.give).
		{name: "v4/coming back/qos1 full", v: 4, subQoS: 1, msgQoS: 1, comingBack: true, maxInflight: 2, prefill: 2, wantDropped: 1, unread: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{MaxInflight: tc.maxInflight})
			h := addLeftHook(t, b)
			const id = "away"
			gated, arrived, release := gateEstablish(t, b, id)
			p, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, tc.v, id, false, 3600, nil))
			p.subscribe(t, tc.v, "t/#", tc.subQoS)
			p.c.Close()
			h.wait(t, id, 1)
			waitFor(t, "the session's hand-off", func() bool { return b.connByID(id) == nil })
			publish := func(payload string, qos byte) {
				t.Helper()
				m := Message{Topic: "t/" + payload, Payload: []byte(payload), QoS: qos, Retain: tc.retain}
				if err := b.Publish(testCtx(t), systemPrincipal, m); err != nil { // returns once delivered
					t.Fatal(err)
				}
			}
			for j := range tc.prefill {
				publish(fmt.Sprint("p", j), 1)
			}

			var back *ownerPeer
			if tc.comingBack {
				gated.Store(true)
				back = dialOwner(t, b)
				if _, err := back.c.Write(rawConnect(t, tc.v, id, false, 3600, nil)); err != nil {
					t.Fatal(err)
				}
				<-arrived // bounded: the peer's deadline ends a CONNECT that never comes
			}
			dropped := b.stats.Dropped.Load()
			for j := range 3 {
				publish(fmt.Sprint("m", j), tc.msgQoS)
			}
			if got := b.stats.Dropped.Load() - dropped; got != tc.wantDropped {
				t.Errorf("%d messages counted dropped, want %d", got, tc.wantDropped)
			}
			if tc.comingBack {
				release <- struct{}{}
			} else {
				cl, ok := b.server.Clients.Get(id)
				if !ok {
					t.Fatal("the session is gone")
				}
				b.arriving.lock() // holdOffline holds under it
				held := cl.State.Inflight.Len()
				b.arriving.unlock()
				if held != tc.wantHeld {
					t.Errorf("held in flight for the session away: %d, want %d", held, tc.wantHeld)
				}
				back = dialOwner(t, b)
				if _, err := back.c.Write(rawConnect(t, tc.v, id, false, 3600, nil)); err != nil {
					t.Fatal(err)
				}
			}
			if h, body := back.next(t, 2); len(body) < 2 || body[1] != 0 {
				t.Fatalf("CONNACK %#x % x", h, body)
			}
			if tc.unread {
				return
			}
			for j, want := range tc.wantGot {
				if m := back.readPublish(t, tc.v); m.payload != want {
					t.Fatalf("publish %d once back: %q, want %q", j, m.payload, want)
				}
			}
			back.pingNone(t, "once back, after what was held")
		})
	}
}

// TestAwayQoS0Allocs: a QoS 0 message to 50 sessions away (QoS 1
// subscriptions) allocates nothing per session: before, each cost a queue
// item and a held-packet build, only for holdOffline to drop them (about
// 50 allocations a message).
func TestAwayQoS0Allocs(t *testing.T) {
	b := start(t, Options{})
	h := addLeftHook(t, b)
	const n = 50
	for i := range n {
		id := "away-" + strconv.Itoa(i)
		p, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 4, id, false, 0, nil))
		p.subscribe(t, 4, "t/#", 1)
		p.c.Close()
		h.wait(t, id, 1)
		waitFor(t, id+"'s hand-off", func() bool { return b.connByID(id) == nil })
	}
	msg := message{topic: "t/x", payload: []byte("0123456789")}
	// The fewest of a few measurements: the broker's other goroutines'
	// allocations count too.
	allocs := float64(-1)
	for i := 0; i < 3 && allocs != 1; i++ {
		a := testing.AllocsPerRun(200, func() {
			m := msg
			b.deliverPlain(&m, pubWait{})
		})
		if allocs < 0 || a < allocs {
			allocs = a
		}
	}
	if allocs > n/5 {
		t.Errorf("a QoS 0 message to %d sessions away: %.1f allocations, want at most %d", n, allocs, n/5)
	}
}
