package broker

import (
	"encoding/binary"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestExpiredSessionInflightCounted: a persistent session that expires
// while QoS 1 messages are held for it takes them out of Info.Inflight
// ($SYS/broker/messages/inflight, mote_inflight_messages): its client is
// forgotten (mochi's expireClient, OnClientExpired) and nothing holds them.
//
// A defect found by the h-final34 attack (churn of 150 persistent ids
// subscribed to a publisher's topic): after the sessions expired,
// mote_offline_held_bytes fell from 112 MB to 15 MB and the sessions from
// 150 to 37, but mote_inflight_messages stayed at 34254 (main's 169c
// binary the same: 37921). Without OnClientExpired's subtraction: 3 held,
// the session expired, 3 left in the count (want 0), 4 of 4 runs.
//
// Left open: after the same churn (bench/f34attack -attack churn -n 20000,
// 66 s for the sessions to expire, then every id reconnecting clean) the
// binary with this fix leaves 1 and 5 in the count with no session at all
// (two runs; 47090 without it): a smaller drift elsewhere, not traced.
func TestExpiredSessionInflightCounted(t *testing.T) {
	b := start(t, Options{})
	expiry := packets.Properties{SessionExpiryInterval: 1, SessionExpiryIntervalFlag: true}
	sub := dialRaw(t, b, "f34-away", 5, true, expiry)
	sub.subscribe(1, "f34/#", 1)
	sub.c.Close()
	waitUntil(t, "the session away", func() bool {
		cl, ok := b.server.Clients.Get("f34-away")
		return ok && cl.Closed()
	})
	pub := dialRaw(t, b, "f34-pub", 5, true, packets.Properties{})
	const held = 3
	for i := range held {
		body := binary.BigEndian.AppendUint16(nil, uint16(len("f34/t")))
		body = append(body, "f34/t"...)
		body = binary.BigEndian.AppendUint16(body, uint16(i+1))
		body = append(body, 0, 'x')
		pub.write(append([]byte{0x32, byte(len(body))}, body...))
		for {
			if typ, _ := pub.read(); typ == packets.Puback {
				break
			}
		}
	}
	waitUntil(t, "the messages held", func() bool { return atomic.LoadInt64(&b.server.Info.Inflight) == held })
	waitUntil(t, "the session expired", func() bool {
		_, ok := b.server.Clients.Get("f34-away")
		return !ok
	})
	if n := atomic.LoadInt64(&b.server.Info.Inflight); n != 0 {
		t.Fatalf("Info.Inflight %d after the session holding them expired, want 0", n)
	}
}

// waitUntil polls cond every millisecond up to testTimeout.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(testTimeout); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, testTimeout)
		}
	}
}

// dropGate holds mochi's OnQosDropped of client id the first time, until
// release: ClearInflights calls it while it clears the client's map.
type dropGate struct {
	mqtt.HookBase
	id      string
	once    atomic.Bool
	blocked chan struct{}
	release chan struct{}
}

func (*dropGate) ID() string           { return "drop-gate" }
func (*dropGate) Provides(b byte) bool { return b == mqtt.OnQosDropped }
func (g *dropGate) OnQosDropped(cl *mqtt.Client, _ packets.Packet) {
	if cl.ID != g.id || !g.once.CompareAndSwap(false, true) {
		return
	}
	close(g.blocked)
	<-g.release
}

// TestInflightHeldForEndingSession: a QoS 1 message published while a
// session that ends with its connection (MQTT 3.1.1 CleanSession 1) is
// being removed is not held for it. Its connection gone, the client is
// closed and still filed and subscribed while mochi's RemoveSession
// clears its in-flight map (held here, in OnQosDropped, after the clear
// took its list): the message was held in the map after the clear took
// it, on a client nobody holds, and stayed in Info.Inflight for good
// (D2). Without holdOffline's check: Info.Inflight 1 after the session
// is gone, want 0, 3 of 3 runs.
func TestInflightHeldForEndingSession(t *testing.T) {
	b := start(t, Options{})
	g := &dropGate{id: "d2-clean", blocked: make(chan struct{}), release: make(chan struct{})}
	if err := b.server.AddHook(g, nil); err != nil {
		t.Fatal(err)
	}
	defer func() {
		select {
		case <-g.release:
		default:
			close(g.release)
		}
	}()
	sub := dialRaw(t, b, "d2-clean", 4, true, packets.Properties{})
	sub.subscribe(1, "d2/#", 1)
	pub := dialRaw(t, b, "d2-pub", 4, true, packets.Properties{})
	publish := func(topic string, id uint16) {
		pub.write(churnPublish(4, topic, []byte("x"), 1, id))
		for {
			if typ, _ := pub.read(); typ == packets.Puback {
				return
			}
		}
	}
	publish("d2/a", 1) // in flight to d2-clean, never acknowledged
	waitUntil(t, "the delivery in flight", func() bool { return atomic.LoadInt64(&b.server.Info.Inflight) == 1 })
	sub.c.Close()
	waitClosed(t, "the session's in-flight map being cleared", g.blocked)
	publish("d2/b", 2) // delivered (or not) before its PUBACK
	close(g.release)
	waitUntil(t, "the session removed", func() bool {
		_, ok := b.server.Clients.Get("d2-clean")
		return !ok
	})
	if n := atomic.LoadInt64(&b.server.Info.Inflight); n != 0 {
		t.Fatalf("Info.Inflight %d once the session ended, want 0", n)
	}
}
