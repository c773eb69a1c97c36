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
	gate := &publishGate{held: make(chan *mqtt.Client), release: make(chan struct{}), ended: make(chan *mqtt.Client, 16)}
	if err := b.server.AddHook(gate, nil); err != nil {
		t.Fatal(err)
	}
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
// the server MUST NOT forward it again [MQTT-4.3.3-10]. Today it is
// delivered twice: the PUBREC goes into the old client's in-flight map
// after the takeover copied it (surrendered its inbound ids), and only
// leaves Info.Inflight there (mochi change 55); the new session does not
// know the id. Known defect (h-willstorm report): skipped until fixed.
func TestQoS2ResendAfterTakeoverOnce(t *testing.T) {
	t.Skip("known defect: a QoS 2 PUBREC set after a takeover's copy is lost to the resumed session (duplicate delivery)")
	b := start(t, Options{})
	gate := &publishGate{held: make(chan *mqtt.Client), release: make(chan struct{}), ended: make(chan *mqtt.Client, 16)}
	if err := b.server.AddHook(gate, nil); err != nil {
		t.Fatal(err)
	}
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
	gate.release <- struct{}{}
	<-gate.ended                              // the old connection's
	n.c.Write(publish(true))                  //nolint:errcheck // its PUBREC read below
	n.next(t, 5)                              // PUBREC
	n.c.Write([]byte{0x62, 0x02, 0x00, 0x09}) //nolint:errcheck // PUBREL; its PUBCOMP read below
	n.next(t, 7)
	pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2-pub", true, 0, nil))
	pub.publish1(t, 5, "q2/marker", "")
	if got := watcher.topicsUntil(t, "q2/marker"); fmt.Sprint(got) != "[q2/x]" {
		t.Errorf("delivered %q, want q2/x once", got)
	}
}
