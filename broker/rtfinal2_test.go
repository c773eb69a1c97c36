package broker

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestDelayedWillExpiryFromPublish (h-rtfinal2 attack on mochi change 44,
// CreatedOnDemand, with h-will's ended sessions): a will's Message Expiry
// Interval counts from when the will is published [MQTT-3.1.3-9]
// (§3.1.3.2.4: "the Publication Expiry Interval when the Server publishes
// the Will Message"), not from its CONNECT: a will published after its
// 2 s delay, or at once because a Clean Start 1 CONNECT ended its
// session, reaches a subscriber with its 30 s nearly whole (29 or 30).
func TestDelayedWillExpiryFromPublish(t *testing.T) {
	cases := []struct {
		name  string
		delay uint32
		clean bool // the id reconnects with Clean Start 1 after the close, ending the session
	}{
		{"after its delay", 2, false},
		{"session ended by clean start", 3600, true},
	}
	b := start(t, Options{})
	watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "exp-watcher", true, 0, nil))
	watcher.subscribe(t, 5, "will/#", 1)
	for n, tc := range cases {
		id := "exp-" + string(rune('a'+n))
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: 5,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: id,
				WillFlag: true, WillTopic: "will/" + id, WillPayload: []byte("gone"), WillQos: 1},
		}
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 3600, true
		pk.Connect.WillProperties.WillDelayInterval = tc.delay
		pk.Connect.WillProperties.MessageExpiryInterval = 30
		a, _, code := rawPeer(t, b.TCPAddr(), ownerPacket(t, pk))
		if code != 0 {
			t.Fatalf("%s: CONNACK %#x", tc.name, code)
		}
		a.c.Close()
		waitWillHeld(t, b, id)
		if tc.clean {
			rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, true, 0, nil))
		}
		h, body := watcher.next(t, 3)
		got := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: h >> 1 & 3}, ProtocolVersion: 5}
		if err := got.PublishDecode(body); err != nil || got.TopicName != "will/"+id {
			t.Fatalf("%s: %v %q, want the will", tc.name, err, got.TopicName)
		}
		if e := got.Properties.MessageExpiryInterval; e < 29 || e > 30 {
			t.Errorf("%s: the will's Message Expiry Interval is %d, want 29 or 30", tc.name, e)
		}
		watcher.c.Write([]byte{0x40, 2, byte(got.PacketID >> 8), byte(got.PacketID)})
	}
}

// publishGate holds, once armed, the PUBLISH of one client id in
// OnPublish (after the receive quota's check, before the ack's entry in
// flight) until released, and reports that client's end (OnDisconnect).
type publishGate struct {
	mqtt.HookBase
	armed   atomic.Pointer[string]
	held    chan *mqtt.Client
	release chan struct{}
	ended   chan *mqtt.Client // the connections ended (tests read every one)
}

// addPublishGate adds a publishGate, not armed, to b's hooks.
func addPublishGate(t *testing.T, b *Broker) *publishGate {
	t.Helper()
	gate := &publishGate{held: make(chan *mqtt.Client), release: make(chan struct{}), ended: make(chan *mqtt.Client, 16)}
	if err := b.server.AddHook(gate, nil); err != nil {
		t.Fatal(err)
	}
	return gate
}

// holdPublish arms g for client id and sends a QoS 1 PUBLISH to topic on
// its connection p, and returns once g holds it in OnPublish: p's read
// goroutine waits there until g.release.
func (g *publishGate) holdPublish(t *testing.T, p *x5Peer, id, topic string) {
	t.Helper()
	g.armed.Store(&id)
	if _, err := p.c.Write(ownerPacket(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		ProtocolVersion: 5, PacketID: 3, TopicName: topic, Payload: []byte("x")})); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.held:
	case <-time.After(testTimeout):
		t.Fatalf("%s's PUBLISH not held", id)
	}
}

func (*publishGate) ID() string { return "publish-gate" }
func (*publishGate) Provides(b byte) bool {
	return b == mqtt.OnPublish || b == mqtt.OnDisconnect
}
func (g *publishGate) OnPublish(cl *mqtt.Client, _ *packets.Packet) error {
	if id := g.armed.Load(); id != nil && *id == cl.ID && g.armed.CompareAndSwap(id, nil) {
		g.held <- cl
		<-g.release
	}
	return nil
}
func (g *publishGate) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	g.ended <- cl
}

// TestTakeoverDuringQoSAck (h-rtfinal2 attack on changes 48, 49 and 53):
// a client's QoS 1 or 2 PUBLISH is being acknowledged (held in OnPublish)
// when a CONNECT of its id (Clean Start 0, the session resumed) takes it
// over. Once both connections have ended, $SYS's in-flight count is back
// to 0: an entry the old connection puts in flight after the takeover
// cloned its messages must not stay counted. Before mochi change 55 the
// QoS 2 case stayed at 1 (its PUBREC, set after the clone); QoS 1
// (change 48: no entry) was 0.
func TestTakeoverDuringQoSAck(t *testing.T) {
	b := start(t, Options{})
	gate := addPublishGate(t, b)
	for _, qos := range []byte{1, 2} {
		id := "ack-takeover-" + string(rune('0'+qos))
		a, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil))
		gate.armed.Store(&id)
		a.c.Write(ownerPacket(t, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, ProtocolVersion: 5,
			PacketID: 9, TopicName: "ack/" + id, Payload: []byte("x"),
		}))
		select {
		case <-gate.held:
		case <-time.After(testTimeout):
			t.Fatalf("qos %d: PUBLISH not held", qos)
		}
		np, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil))
		if code != 0 || !present {
			t.Fatalf("qos %d: CONNACK %#x, present %v", qos, code, present)
		}
		gate.release <- struct{}{}
		np.c.Write([]byte{0xe0, 0x00})
		np.waitClosed(t)
		for ended := 0; ended < 2; ended++ { // the old connection's end and the new one's
			select {
			case <-gate.ended:
			case <-time.After(testTimeout):
				t.Fatalf("qos %d: %d of the 2 connections ended", qos, ended)
			}
		}
		if qos == 2 {
			// The PUBREC, set after the takeover's copy, is the resumed
			// session's (it awaits the PUBREL, [MQTT-4.3.3-10]; before
			// the fix it was cleared from the old client, lost to the
			// session): counted once while the session keeps it, and its
			// PUBREL on the next connection completes it.
			if n := atomic.LoadInt64(&b.server.Info.Inflight); n != 1 {
				t.Fatalf("qos 2: $SYS in-flight %d with the session keeping the PUBREC, want 1", n)
			}
			r, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil))
			r.c.Write([]byte{0x62, 0x02, 0x00, 0x09}) //nolint:errcheck // PUBREL; its PUBCOMP read below
			if _, body := r.next(t, 7); len(body) > 2 && body[2] != 0 {
				t.Fatalf("qos 2: PUBCOMP % x, want success", body)
			}
		}
		// Both ended (OnDisconnect); the old one's leftovers are cleared
		// just after: the count comes back to 0, or never.
		waitFor(t, "$SYS in-flight back to 0", func() bool { return atomic.LoadInt64(&b.server.Info.Inflight) == 0 })
	}
}

// TestQoS2ResendAfterTakeoverOnce: a client's QoS 2 PUBLISH is being
// handled (held in OnPublish: already delivered by Mote's hook, its
// PUBREC not yet in flight) when a CONNECT of its id resumes the session
// (Clean Start 0). The client, which never got the PUBREC, resends the
// PUBLISH (DUP, same packet id) on the new connection: until the PUBREL
// the server MUST NOT forward it again [MQTT-4.3.3-10]. It was delivered
// twice (h-willstorm report): the PUBREC went into the old client's
// in-flight map after the takeover copied it, and only left Info.Inflight
// there (mochi change 55). Now the old reader hands it to the session
// (lateRec), and a resend read before that waits for it: the resend
// is answered PUBREC (success) and not delivered, in either order.
func TestQoS2ResendAfterTakeoverOnce(t *testing.T) {
	for _, tc := range []struct {
		name     string
		afterEnd bool // the resend is written once the old connection ended, else while its PUBLISH is held
	}{
		{"resend after the old connection ended", true},
		{"resend while the old connection holds the publish", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			gate := addPublishGate(t, b)
			watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2-watcher", true, 0, nil))
			watcher.subscribe(t, 5, "q2/#", 0)
			id := "q2-x"
			a, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil))
			publish := func(dup bool) []byte {
				return ownerPacket(t, packets.Packet{
					FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Dup: dup}, ProtocolVersion: 5,
					PacketID: 9, TopicName: "q2/x", Payload: []byte("x"),
				})
			}
			gate.armed.Store(&id)
			a.c.Write(publish(false)) //nolint:errcheck // held below
			select {
			case <-gate.held:
			case <-time.After(testTimeout):
				t.Fatal("PUBLISH not held")
			}
			n, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil))
			if code != 0 || !present {
				t.Fatalf("CONNACK %#x, present %v", code, present)
			}
			if !tc.afterEnd {
				n.c.Write(publish(true)) //nolint:errcheck // its PUBREC read below
			}
			gate.release <- struct{}{}
			<-gate.ended // the old connection's
			if tc.afterEnd {
				n.c.Write(publish(true)) //nolint:errcheck // its PUBREC read below
			}
			if _, body := n.next(t, 5); len(body) > 2 && body[2] != 0 {
				t.Fatalf("PUBREC % x, want success", body)
			}
			n.c.Write([]byte{0x62, 0x02, 0x00, 0x09}) //nolint:errcheck // PUBREL; its PUBCOMP read below
			if _, body := n.next(t, 7); len(body) > 2 && body[2] != 0 {
				t.Fatalf("PUBCOMP % x, want success", body)
			}
			pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2-pub", true, 0, nil))
			pub.publish1(t, 5, "q2/marker", "")
			if got := watcher.topicsUntil(t, "q2/marker"); fmt.Sprint(got) != "[q2/x]" {
				t.Errorf("delivered %q, want q2/x once", got)
			}
		})
	}
}

// TestQoS2HeldAcrossCleanTakeover: as TestTakeoverDuringQoSAck's QoS 2
// case, but the CONNECT starts clean (Clean Start 1): the session ends,
// and the PUBREC the old connection sets after the takeover is no one's
// (lateRec dropped, mochi change 55 clears it); once both connections
// ended the in-flight count is 0, and a PUBLISH with the id on the new
// connection is a new message.
func TestQoS2HeldAcrossCleanTakeover(t *testing.T) {
	b := start(t, Options{})
	gate := addPublishGate(t, b)
	watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2c-watcher", true, 0, nil))
	watcher.subscribe(t, 5, "q2c/#", 0)
	id := "q2c-x"
	a, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil))
	publish := ownerPacket(t, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, ProtocolVersion: 5,
		PacketID: 9, TopicName: "q2c/x", Payload: []byte("x"),
	})
	gate.armed.Store(&id)
	a.c.Write(publish) //nolint:errcheck // held below
	select {
	case <-gate.held:
	case <-time.After(testTimeout):
		t.Fatal("PUBLISH not held")
	}
	n, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, true, 3600, nil))
	if code != 0 || present {
		t.Fatalf("CONNACK %#x, present %v", code, present)
	}
	gate.release <- struct{}{}
	<-gate.ended       // the old connection's
	n.c.Write(publish) //nolint:errcheck // a new message: its PUBREC read below
	if _, body := n.next(t, 5); len(body) > 2 && body[2] != 0 {
		t.Fatalf("PUBREC % x, want success", body)
	}
	n.c.Write([]byte{0x62, 0x02, 0x00, 0x09}) //nolint:errcheck // PUBREL; its PUBCOMP read below
	if _, body := n.next(t, 7); len(body) > 2 && body[2] != 0 {
		t.Fatalf("PUBCOMP % x, want success", body)
	}
	pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2c-pub", true, 0, nil))
	pub.publish1(t, 5, "q2c/marker", "")
	if got := watcher.topicsUntil(t, "q2c/marker"); fmt.Sprint(got) != "[q2c/x q2c/x]" {
		t.Errorf("delivered %q, want q2c/x twice (two messages)", got)
	}
	waitFor(t, "$SYS in-flight back to 0", func() bool { return atomic.LoadInt64(&b.server.Info.Inflight) == 0 })
}
