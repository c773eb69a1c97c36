package broker

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
)

// TestAwayDeliveryShortcut: deliverTo skips a QoS 0 message to a session
// away before anything is made for it, when give would drop it; the
// shortcut must not widen. A persistent session (MQTT 3.1.1 and 5)
// subscribed to t/# is away, or its client is coming back (held in
// OnSessionEstablish, after the broker registered it, before mochi files
// it), while three messages are published to it (plain and retained):
// held in flight (QoS 1 both ways, counted in the session's in-flight
// state), held for the client coming back (QoS 0 too), or dropped
// uncounted (QoS 0 to a session away, as before). Nothing is counted
// dropped in any case; the client, once back, gets what was held, and
// nothing else.
func TestAwayDeliveryShortcut(t *testing.T) {
	for _, tc := range []struct {
		name       string
		v          byte
		subQoS     byte
		msgQoS     byte
		retain     bool
		comingBack bool
		wantHeld   int // in flight while away
		wantGot    int // PUBLISHes once back
	}{
		{"v4/away/qos0", 4, 1, 0, false, false, 0, 0},
		{"v4/away/qos0 retained", 4, 1, 0, true, false, 0, 0},
		{"v4/away/qos1", 4, 1, 1, false, false, 3, 3},
		{"v4/away/qos1 retained", 4, 1, 1, true, false, 3, 3},
		{"v4/away/qos1 to a qos0 subscription", 4, 0, 1, false, false, 0, 0},
		{"v5/away/qos0", 5, 1, 0, false, false, 0, 0},
		{"v5/away/qos1", 5, 1, 1, false, false, 3, 3},
		{"v5/away/qos2", 5, 2, 2, false, false, 3, 3},
		{"v4/coming back/qos0", 4, 1, 0, false, true, 0, 3},
		{"v4/coming back/qos0 retained", 4, 1, 0, true, true, 0, 3},
		{"v4/coming back/qos1", 4, 1, 1, false, true, 0, 3},
		{"v5/coming back/qos0", 5, 1, 0, false, true, 0, 3},
		{"v5/coming back/qos1 to a qos0 subscription", 5, 0, 1, false, true, 0, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			h := addLeftHook(t, b)
			const id = "away"
			arrived, release := make(chan struct{}), make(chan struct{})
			var gated atomic.Bool // set before the CONNECT it gates
			gate := &establishFunc{f: func(cl *mqtt.Client) {
				if gated.Load() && cl.ID == id {
					arrived <- struct{}{}
					<-release
				}
			}}
			if err := b.server.AddHook(gate, nil); err != nil {
				t.Fatal(err)
			}
			p, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, tc.v, id, false, 3600, nil))
			p.subscribe(t, tc.v, "t/#", tc.subQoS)
			p.c.Close()
			h.wait(t, id, 1)
			waitFor(t, "the session's hand-off", func() bool { return b.connByID(id) == nil })

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
				m := Message{Topic: "t/" + strconv.Itoa(j), Payload: []byte(fmt.Sprint("m", j)), QoS: tc.msgQoS, Retain: tc.retain}
				if err := b.Publish(testCtx(t), systemPrincipal, m); err != nil { // returns once delivered
					t.Fatal(err)
				}
			}
			if !tc.comingBack {
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
			} else {
				release <- struct{}{}
			}
			if got := b.stats.Dropped.Load() - dropped; got != 0 {
				t.Errorf("%d messages counted dropped, want none", got)
			}
			if h, body := back.next(t, 2); len(body) < 2 || body[1] != 0 {
				t.Fatalf("CONNACK %#x % x", h, body)
			}
			for j := range tc.wantGot {
				m := back.readPublish(t, tc.v)
				if want := fmt.Sprint("m", j); m.payload != want {
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
	allocs := testing.AllocsPerRun(200, func() {
		m := msg
		b.deliverPlain(&m, pubWait{})
	})
	if allocs > n/5 {
		t.Errorf("a QoS 0 message to %d sessions away: %.1f allocations, want at most %d", n, allocs, n/5)
	}
}
