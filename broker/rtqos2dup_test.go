package broker

import (
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestQoS2LateWaitTimesOut (h-rtqos2dup): a QoS 2 PUBLISH is held in
// OnPublish (a slow hook) past lateWait when a Clean Start 0 CONNECT takes
// its session over. The client's PUBREL for the id on the new connection
// waits lateWait, then goes on as if the publish had been refused: PUBCOMP
// 0x92. The client is then free to reuse the id: its next QoS 2 PUBLISH
// with it, once the old connection finished the held one, is a new message
// and is delivered. Before the fix the late PUBREC the old reader settled
// after the wait was still taken into the session, so the new message was
// taken for a resend and never delivered (lost); and each further packet
// with the id waited lateWait again (the reader held 5 s a packet).
func TestQoS2LateWaitTimesOut(t *testing.T) {
	b := start(t, Options{})
	gate := addPublishGate(t, b)
	watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2t-watcher", true, 0, nil))
	watcher.subscribe(t, 5, "q2t/#", 0)
	id := "q2t-x"
	a, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil))
	publish := func(topic string) []byte {
		return ownerPacket(t, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, ProtocolVersion: 5,
			PacketID: 9, TopicName: topic, Payload: []byte("x"),
		})
	}
	gate.armed.Store(&id)
	a.c.Write(publish("q2t/x")) //nolint:errcheck // held below
	select {
	case <-gate.held:
	case <-time.After(testTimeout):
		t.Fatal("PUBLISH not held")
	}
	n, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil))
	if code != 0 || !present {
		t.Fatalf("CONNACK %#x, present %v", code, present)
	}
	start := time.Now()
	n.c.Write([]byte{0x62, 0x02, 0x00, 0x09}) //nolint:errcheck // PUBREL; its PUBCOMP read below
	if _, body := n.next(t, 7); len(body) < 3 || body[2] != 0x92 {
		t.Fatalf("PUBCOMP % x, want 0x92 (the held publish not settled within lateWait)", body)
	}
	if d := time.Since(start); d < lateWait {
		t.Fatalf("PUBCOMP after %v, want after lateWait %v", d, lateWait)
	}
	start = time.Now()
	n.c.Write([]byte{0x62, 0x02, 0x00, 0x09}) //nolint:errcheck // PUBREL again: given up on, it does not wait
	if _, body := n.next(t, 7); len(body) < 3 || body[2] != 0x92 {
		t.Fatalf("second PUBCOMP % x, want 0x92", body)
	}
	if d := time.Since(start); d >= lateWait {
		t.Fatalf("second PUBCOMP after %v: it waited lateWait again", d)
	}
	gate.release <- struct{}{}
	<-gate.ended                // the old connection's
	n.c.Write(publish("q2t/y")) //nolint:errcheck // a new message: its PUBREC read below
	if _, body := n.next(t, 5); len(body) > 2 && body[2] != 0 {
		t.Fatalf("PUBREC % x, want success", body)
	}
	n.c.Write([]byte{0x62, 0x02, 0x00, 0x09}) //nolint:errcheck // PUBREL; its PUBCOMP read below
	if _, body := n.next(t, 7); len(body) > 2 && body[2] != 0 {
		t.Fatalf("PUBCOMP % x, want success", body)
	}
	pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2t-pub", true, 0, nil))
	pub.publish1(t, 5, "q2t/marker", "")
	if got := watcher.topicsUntil(t, "q2t/marker"); fmt.Sprint(got) != "[q2t/x q2t/y]" {
		t.Errorf("delivered %q, want q2t/x then q2t/y (two messages)", got)
	}
	// The PUBREC the old reader set after the wait gave up is no one's
	// (mochi change 55 clears it): nothing is left in flight.
	waitFor(t, "$SYS in-flight back to 0", func() bool { return atomic.LoadInt64(&b.server.Info.Inflight) == 0 })
}

// TestQoS2ResendWaitingTakenOver (h-rtqos2dup): a QoS 2 PUBLISH is held
// in OnPublish when a Clean Start 0 CONNECT (B) takes its session over;
// the client resends it (DUP) on B, whose reader waits for the held one
// (lateRec), and reconnects again (C, Clean Start 0) meanwhile. B's
// reader, let go by the takeover, must not process the resend: the
// client sends it again on C, where the PUBREC the old reader handed on
// answers it. Before the fix B delivered it (B's map had no PUBREC for
// the id, and B's own PUBREC was lost with B): delivered twice
// [MQTT-4.3.3-10].
func TestQoS2ResendWaitingTakenOver(t *testing.T) {
	b := start(t, Options{})
	gate := addPublishGate(t, b)
	watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2w-watcher", true, 0, nil))
	watcher.subscribe(t, 5, "q2w/#", 0)
	id := "q2w-x"
	a, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil))
	publish := func(dup bool) []byte {
		return ownerPacket(t, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Dup: dup}, ProtocolVersion: 5,
			PacketID: 9, TopicName: "q2w/x", Payload: []byte("x"),
		})
	}
	gate.armed.Store(&id)
	a.c.Write(publish(false)) //nolint:errcheck // held below
	select {
	case <-gate.held:
	case <-time.After(testTimeout):
		t.Fatal("PUBLISH not held")
	}
	bc, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil))
	if code != 0 || !present {
		t.Fatalf("CONNACK %#x, present %v", code, present)
	}
	bc.c.Write(publish(true)) //nolint:errcheck // waits in B's reader for the held one
	waitFor(t, "B's reader waiting for the held publish", func() bool {
		buf := make([]byte, 1<<20)
		return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "(*lateRec).wait")
	})
	cc, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil))
	if code != 0 || !present {
		t.Fatalf("CONNACK %#x, present %v", code, present)
	}
	gate.release <- struct{}{}
	for range 2 { // A's and B's connections
		<-gate.ended
	}
	cc.c.Write(publish(true)) //nolint:errcheck // its PUBREC read below
	if _, body := cc.next(t, 5); len(body) > 2 && body[2] != 0 {
		t.Fatalf("PUBREC % x, want success", body)
	}
	cc.c.Write([]byte{0x62, 0x02, 0x00, 0x09}) //nolint:errcheck // PUBREL; its PUBCOMP read below
	if _, body := cc.next(t, 7); len(body) > 2 && body[2] != 0 {
		t.Fatalf("PUBCOMP % x, want success", body)
	}
	pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2w-pub", true, 0, nil))
	pub.publish1(t, 5, "q2w/marker", "")
	if got := watcher.topicsUntil(t, "q2w/marker"); fmt.Sprint(got) != "[q2w/x]" {
		t.Errorf("delivered %q, want q2w/x once", got)
	}
}

// TestQoS2HeldAcrossTakeovers (h-rtqos2dup, a guard of h-qos2dup's
// lateRec: passes with or without this branch's fixes, would deliver
// twice on main): a QoS 2 PUBLISH is held in OnPublish while three Clean Start 0
// CONNECTs in a row take its session over (MQTT 5 and 3.1.1). The lateRec
// travels from connection to connection: the resend on the last one is
// answered PUBREC, not delivered again, its PUBREL completes it, and
// nothing is left in flight.
func TestQoS2HeldAcrossTakeovers(t *testing.T) {
	for _, v := range []byte{5, 4} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			b := start(t, Options{})
			gate := addPublishGate(t, b)
			watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2m-watcher", true, 0, nil))
			watcher.subscribe(t, 5, "q2m/#", 0)
			id := "q2m-x"
			a, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, v, id, false, 3600, nil))
			publish := func(dup bool) []byte {
				return ownerPacket(t, packets.Packet{
					FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Dup: dup}, ProtocolVersion: v,
					PacketID: 9, TopicName: "q2m/x", Payload: []byte("x"),
				})
			}
			gate.armed.Store(&id)
			a.c.Write(publish(false)) //nolint:errcheck // held below
			select {
			case <-gate.held:
			case <-time.After(testTimeout):
				t.Fatal("PUBLISH not held")
			}
			n := a
			for range 3 {
				next, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, v, id, false, 3600, nil))
				if code != 0 || !present {
					t.Fatalf("CONNACK %#x, present %v", code, present)
				}
				n.c.Close() // taken over (else its connection lingers, lingerFor)
				n = next
			}
			gate.release <- struct{}{}
			for range 3 { // A's and the two taken over after it
				<-gate.ended
			}
			n.c.Write(publish(true)) //nolint:errcheck // its PUBREC read below
			if _, body := n.next(t, 5); v == 5 && len(body) > 2 && body[2] != 0 {
				t.Fatalf("PUBREC % x, want success", body)
			}
			n.c.Write([]byte{0x62, 0x02, 0x00, 0x09}) //nolint:errcheck // PUBREL; its PUBCOMP read below
			if _, body := n.next(t, 7); v == 5 && len(body) > 2 && body[2] != 0 {
				t.Fatalf("PUBCOMP % x, want success", body)
			}
			pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2m-pub", true, 0, nil))
			pub.publish1(t, 5, "q2m/marker", "")
			if got := watcher.topicsUntil(t, "q2m/marker"); fmt.Sprint(got) != "[q2m/x]" {
				t.Errorf("delivered %q, want q2m/x once", got)
			}
			waitFor(t, "$SYS in-flight back to 0", func() bool { return atomic.LoadInt64(&b.server.Info.Inflight) == 0 })
		})
	}
}
