package broker

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestTakeoverNotHeldByDisplacingQoS2: a CONNECT resuming a session whose
// connection has a QoS 2 PUBLISH blocked on a full subscriber queue
// (publish_wait, a minute here), its packet id that of a delivery in
// flight to the client (displaced), gets its CONNACK at once; and the
// message is still delivered once: the delivery is resent on the new
// connection, and the client's resend of its PUBLISH there is answered
// PUBREC, not delivered again [MQTT-4.3.3-10]. The takeover waited for
// the publish to be settled, lateWait (5 s) at most, under the id's
// takeover lock.
func TestTakeoverNotHeldByDisplacingQoS2(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) { displacingNotHeld(t, v) })
	}
}

func displacingNotHeld(t *testing.T, v byte) {
	b := start(t, Options{QueueBytes: 1000, PublishWait: time.Minute})
	payload := "displacing-" + strings.Repeat("x", 440)
	var mu sync.Mutex
	delivered := 0
	marker := make(chan struct{})
	free := fullSubscriber(t, b, "qd-sub", "qd/q", func(d Delivery) {
		switch string(d.Payload) {
		case payload:
			mu.Lock()
			delivered++
			mu.Unlock()
		case "marker":
			close(marker)
		}
	})
	id := fmt.Sprintf("qd-tk%d", v)
	old, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, v, id, false, 3600, nil))
	old.subscribe(t, v, "qd/d", 1)
	ctx := testCtx(t)
	pub := Principal{ClientID: "qd-pub"}
	if err := b.Publish(ctx, pub, Message{Topic: "qd/d", Payload: []byte("d"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	d := old.readPublish(t, v) // not acknowledged: in flight
	if _, err := old.c.Write(publishBytes(2, false, d.id, "qd/q", payload, v == 5)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the PUBLISH to displace the delivery and block in OnPublish", func() bool {
		c, ok := b.byID.Load(id)
		if !ok {
			return false
		}
		o, ok := c.(*conn).outOf()
		if !ok {
			return false
		}
		o.ids.mu.Lock()
		defer o.ids.mu.Unlock()
		return o.ids.reserved == d.id && o.ids.phase == 1 && o.ids.displaced != nil
	})
	began := time.Now()
	nc, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, v, id, false, 3600, nil))
	if took := time.Since(began); took > lateWait/2 {
		t.Errorf("CONNACK of the takeover took %v, want well under lateWait (%v) and publish_wait", took, lateWait)
	}
	if code != 0 || !present {
		t.Fatalf("CONNACK %#x, session present %v", code, present)
	}
	old.c.Close()
	if m := nc.readPublish(t, v); m.topic != "qd/d" || m.id != d.id {
		t.Fatalf("first on the new connection: %+v, want the delivery %d resent", m, d.id)
	}
	nc.c.Write([]byte{0x40, 0x02, byte(d.id >> 8), byte(d.id)})      //nolint:errcheck // PUBACK
	free()                                                           // the old connection's publish goes on
	nc.c.Write(publishBytes(2, true, d.id, "qd/q", payload, v == 5)) //nolint:errcheck // its PUBREC read below
	if _, body := nc.next(t, 5); len(body) > 2 && body[2] != 0 {
		t.Fatalf("PUBREC of the resend % x, want success", body)
	}
	nc.c.Write([]byte{0x62, 0x02, byte(d.id >> 8), byte(d.id)}) //nolint:errcheck // PUBREL; its PUBCOMP read below
	if _, body := nc.next(t, 7); len(body) > 2 && body[2] != 0 {
		t.Fatalf("PUBCOMP % x, want success", body)
	}
	if err := b.Publish(ctx, pub, Message{Topic: "qd/q", Payload: []byte("marker")}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-marker:
	case <-ctx.Done():
		t.Fatal("marker not delivered")
	}
	mu.Lock()
	n := delivered
	mu.Unlock()
	if n != 1 {
		t.Errorf("the client's QoS 2 message delivered %d times, want once", n)
	}
	waitFor(t, "$SYS in-flight back to 0", func() bool { return atomic.LoadInt64(&b.server.Info.Inflight) == 0 })
}

// readGate holds a client's reader after the broker's OnPacketRead, at
// the PUBLISH of QoS qos (2 if not set) of the client id armed (once),
// and tells the connections' ends.
type readGate struct {
	mqtt.HookBase
	qos     byte
	armed   atomic.Pointer[string]
	held    chan *mqtt.Client
	release chan struct{}
	ended   chan *mqtt.Client
}

func (*readGate) ID() string { return "read-gate" }
func (*readGate) Provides(b byte) bool {
	return b == mqtt.OnPacketRead || b == mqtt.OnDisconnect
}
func (g *readGate) OnPacketRead(cl *mqtt.Client, pk *packets.Packet) error {
	qos := g.qos
	if qos == 0 {
		qos = 2
	}
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != qos {
		return nil
	}
	if id := g.armed.Load(); id != nil && *id == cl.ID && g.armed.CompareAndSwap(id, nil) {
		g.held <- cl
		<-g.release
	}
	return nil
}
func (g *readGate) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	g.ended <- cl
}

// TestResentQoS2AtTakeoverOnce: a connection resuming a session resends a
// QoS 2 PUBLISH delivered already and waiting for its PUBREL (DUP, same
// id); a CONNECT takes the session over while the resend is read but
// mochi has not looked its id up yet (held after the broker's
// OnPacketRead). The PUBREC moved to the new client with the session, so
// the old reader finds none: it must not take the resend for a new
// message. It delivered it again (TestQoS2ReconnectStorm's mixed cases,
// one duplicate in about 40 runs).
func TestResentQoS2AtTakeoverOnce(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			b := start(t, Options{})
			gate := &readGate{held: make(chan *mqtt.Client), release: make(chan struct{}), ended: make(chan *mqtt.Client, 16)}
			if err := b.server.AddHook(gate, nil); err != nil {
				t.Fatal(err)
			}
			watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2r-watch", true, 0, nil))
			watcher.subscribe(t, 5, "q2r/#", 0)
			id := fmt.Sprintf("q2r-x%d", v)
			a, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, v, id, false, 3600, nil))
			a.c.Write(publishBytes(2, false, 7, "q2r/x", "x", v == 5)) //nolint:errcheck // its PUBREC read below
			a.next(t, 5)
			bc, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, v, id, false, 3600, nil))
			if code != 0 || !present {
				t.Fatalf("B: CONNACK %#x, session present %v", code, present)
			}
			a.c.Close()
			gate.armed.Store(&id)
			bc.c.Write(publishBytes(2, true, 7, "q2r/x", "x", v == 5)) //nolint:errcheck // held below
			select {
			case <-gate.held:
			case <-time.After(testTimeout):
				t.Fatal("B's resend not held")
			}
			cc, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, v, id, false, 3600, nil))
			if code != 0 || !present {
				t.Fatalf("C: CONNACK %#x, session present %v", code, present)
			}
			bc.c.Close()
			close(gate.release)
			for range 2 { // A's and B's connections
				select {
				case <-gate.ended:
				case <-time.After(testTimeout):
					t.Fatal("A's and B's connections not ended")
				}
			}
			cc.c.Write(publishBytes(2, true, 7, "q2r/x", "x", v == 5)) //nolint:errcheck // its PUBREC read below
			if _, body := cc.next(t, 5); len(body) > 2 && body[2] != 0 {
				t.Fatalf("C: PUBREC % x, want success", body)
			}
			cc.c.Write([]byte{0x62, 0x02, 0x00, 0x07}) //nolint:errcheck // PUBREL; its PUBCOMP read below
			if _, body := cc.next(t, 7); len(body) > 2 && body[2] != 0 {
				t.Fatalf("C: PUBCOMP % x, want success", body)
			}
			pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2r-pub", true, 0, nil))
			pub.publish1(t, 5, "q2r/marker", "")
			if got := watcher.topicsUntil(t, "q2r/marker"); fmt.Sprint(got) != "[q2r/x]" {
				t.Errorf("delivered %q, want q2r/x once", got)
			}
			waitFor(t, "$SYS in-flight back to 0", func() bool { return atomic.LoadInt64(&b.server.Info.Inflight) == 0 })
		})
	}
}

// TestFreshTakeoverDeliversQoS1: a CONNECT that starts afresh (Clean
// Start, a 3.1.1 clean session, or one resuming a session that lasted
// only as long as its connection: MQTT 5 Session Expiry 0) takes over a
// connection whose QoS 1 PUBLISH is in flight: read and not yet handed to
// OnPublish (held after OnPacketRead), or blocked in OnPublish on a full
// subscriber queue. Nothing is copied to the new client, so nothing
// waits: the CONNACK comes at once, and the publish goes on and is
// delivered once, as on main (the branch at 4ce7eed refused the old
// reader's QoS 1 publishes once taken over).
func TestFreshTakeoverDeliversQoS1(t *testing.T) {
	for _, c := range []struct {
		name        string
		v           byte
		oldClean    bool
		oldExpiry   uint32
		newClean    bool
		newExpiry   uint32
		inOnPublish bool // blocked in OnPublish; else held before it
	}{
		{"v5 clean start/read", 5, false, 3600, true, 0, false},
		{"v5 clean start/in OnPublish", 5, false, 3600, true, 0, true},
		{"v5 expiry 0 taken over/read", 5, false, 0, false, 3600, false},
		{"v5 expiry 0 taken over/in OnPublish", 5, false, 0, false, 3600, true},
		{"v4 clean session/read", 4, false, 0, true, 0, false},
		{"v4 clean session/in OnPublish", 4, false, 0, true, 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := start(t, Options{QueueBytes: 1000, PublishWait: time.Minute})
			gate := &readGate{qos: 1, held: make(chan *mqtt.Client, 1), release: make(chan struct{}), ended: make(chan *mqtt.Client, 16)}
			if err := b.server.AddHook(gate, nil); err != nil {
				t.Fatal(err)
			}
			payload := "fresh-" + strings.Repeat("x", 440)
			var mu sync.Mutex
			delivered := 0
			marker := make(chan struct{})
			free := fullSubscriber(t, b, "qf1-sub", "qf1/q", func(d Delivery) {
				switch string(d.Payload) {
				case payload:
					mu.Lock()
					delivered++
					mu.Unlock()
				case "marker":
					close(marker)
				}
			})
			id := "qf1-tk"
			old, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, c.v, id, c.oldClean, c.oldExpiry, nil))
			if !c.inOnPublish {
				gate.armed.Store(&id)
			}
			old.c.Write(publishBytes(1, false, 3, "qf1/q", payload, c.v == 5)) //nolint:errcheck // taken over before its PUBACK
			if c.inOnPublish {
				waitFor(t, "the PUBLISH to block in OnPublish", func() bool {
					v, ok := b.byID.Load(id)
					if !ok {
						return false
					}
					o, ok := v.(*conn).outOf()
					if !ok {
						return false
					}
					o.ids.mu.Lock()
					defer o.ids.mu.Unlock()
					return o.ids.reserved == 3 && o.ids.phase == 1
				})
			} else {
				select {
				case <-gate.held:
				case <-time.After(testTimeout):
					t.Fatal("the PUBLISH not held")
				}
			}
			began := time.Now()
			rawPeer(t, b.TCPAddr(), rawConnect(t, c.v, id, c.newClean, c.newExpiry, nil))
			if took := time.Since(began); took > lateWait/2 {
				t.Errorf("CONNACK of the takeover took %v, want well under lateWait (%v)", took, lateWait)
			}
			free()
			close(gate.release)
			select {
			case <-gate.ended: // the old connection's reader is done with the publish
			case <-time.After(testTimeout):
				t.Fatal("the old connection did not end")
			}
			ctx := testCtx(t)
			if err := b.Publish(ctx, Principal{ClientID: "qf1-pub"}, Message{Topic: "qf1/q", Payload: []byte("marker")}); err != nil {
				t.Fatal(err)
			}
			select {
			case <-marker:
			case <-ctx.Done():
				t.Fatal("marker not delivered")
			}
			mu.Lock()
			defer mu.Unlock()
			if delivered != 1 {
				t.Errorf("the old connection's QoS 1 message delivered %d times, want once", delivered)
			}
		})
	}
}
