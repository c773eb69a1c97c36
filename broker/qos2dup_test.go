package broker

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestQoS2StateQuickTakeover (h-qos2dup): a client's QoS 2 PUBLISH
// waiting for its PUBREL is session state that a takeover hands on
// (idSpaces.surrender finds it in the connection filed for the session).
// Here connection B, which resumed the session, is held (Broker.adopting)
// after it took that state (keptInbound, mochi's map) and before it is
// filed, while C's CONNECT takes the session over. C's resend of the
// PUBLISH (DUP, same id) must be answered PUBREC, not delivered again
// [MQTT-4.3.3-10]. Two cases: the PUBLISH was still held in OnPublish on
// A (a lateRec), or A had answered it PUBREC before B came. Before the
// fix C's takeover found A's connection (or none) and nothing of B's, the
// state ended with B, and the resend was delivered twice: the duplicate
// TestQoS2HeldAcrossTakeovers saw once in CI (B's OnSessionEstablished
// runs after its CONNACK, so C can come between).
func TestQoS2StateQuickTakeover(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    byte
		held bool // A's PUBLISH held in OnPublish; else A answered PUBREC
	}{
		{"held/v5", 5, true},
		{"held/v4", 4, true},
		{"acked/v5", 5, false},
		{"acked/v4", 4, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			gate := addPublishGate(t, b)
			id := "q2q-x"
			var armed atomic.Bool
			paused, resume := make(chan *mqtt.Client), make(chan struct{})
			hold := func(cl *mqtt.Client) {
				if cl.ID == id && armed.CompareAndSwap(true, false) {
					paused <- cl
					<-resume
				}
			}
			b.adopting.Store(&hold)
			watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2q-watcher", true, 0, nil))
			watcher.subscribe(t, 5, "q2q/#", 0)
			publish := func(dup bool) []byte {
				return ownerPacket(t, packets.Packet{
					FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2, Dup: dup}, ProtocolVersion: tc.v,
					PacketID: 9, TopicName: "q2q/x", Payload: []byte("x"),
				})
			}
			a, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, tc.v, id, false, 3600, nil))
			if tc.held {
				gate.armed.Store(&id)
				a.c.Write(publish(false)) //nolint:errcheck // held below
				select {
				case <-gate.held:
				case <-time.After(testTimeout):
					t.Fatal("PUBLISH not held")
				}
			} else {
				a.c.Write(publish(false)) //nolint:errcheck // its PUBREC read below
				if _, body := a.next(t, 5); tc.v == 5 && len(body) > 2 && body[2] != 0 {
					t.Fatalf("PUBREC % x, want success", body)
				}
			}
			armed.Store(true)
			bc, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, tc.v, id, false, 3600, nil))
			if code != 0 || !present {
				t.Fatalf("B: CONNACK %#x, present %v", code, present)
			}
			a.c.Close() // taken over (else its connection lingers, lingerFor)
			var clB *mqtt.Client
			select {
			case clB = <-paused:
			case <-time.After(testTimeout):
				t.Fatal("B's connection not held before it was filed")
			}
			cc := connectNoAck(t, b.TCPAddr(), rawConnect(t, tc.v, id, false, 3600, nil))
			waitFor(t, "C's CONNECT filed, or waiting for the id's takeover lock", func() bool {
				cur, ok := b.server.Clients.Get(id)
				return ok && cur != clB || takeoverWaiting()
			})
			close(resume)
			if h, body := cc.next(t, 0); h != 0x20 || len(body) < 2 || body[0]&1 != 1 || body[1] != 0 {
				t.Fatalf("C: got %#x % x, want CONNACK, session present", h, body)
			}
			bc.c.Close() // taken over
			if tc.held {
				gate.release <- struct{}{}
			}
			for range 2 { // A's and B's connections
				select {
				case <-gate.ended:
				case <-time.After(testTimeout):
					t.Fatal("A's and B's connections not ended")
				}
			}
			cc.c.Write(publish(true)) //nolint:errcheck // its PUBREC read below
			if _, body := cc.next(t, 5); tc.v == 5 && len(body) > 2 && body[2] != 0 {
				t.Fatalf("PUBREC % x, want success", body)
			}
			cc.c.Write([]byte{0x62, 0x02, 0x00, 0x09}) //nolint:errcheck // PUBREL; its PUBCOMP read below
			if _, body := cc.next(t, 7); tc.v == 5 && len(body) > 2 && body[2] != 0 {
				t.Fatalf("PUBCOMP % x, want success", body)
			}
			pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "q2q-pub", true, 0, nil))
			pub.publish1(t, 5, "q2q/marker", "")
			if got := watcher.topicsUntil(t, "q2q/marker"); fmt.Sprint(got) != "[q2q/x]" {
				t.Errorf("delivered %q, want q2q/x once", got)
			}
			waitFor(t, "$SYS in-flight back to 0", func() bool { return atomic.LoadInt64(&b.server.Info.Inflight) == 0 })
		})
	}
}

// connectNoAck dials addr and sends connect; the CONNACK is the caller's
// to read.
func connectNoAck(t *testing.T, addr string, connect []byte) *ownerPeer {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testTimeout))
	if _, err := c.Write(connect); err != nil {
		t.Fatal(err)
	}
	return &ownerPeer{c: c, r: bufio.NewReader(c)}
}

// takeoverWaiting reports whether a CONNECT waits for its client id's
// takeover lock (mochi's takeOverAndFile).
func takeoverWaiting() bool {
	buf := make([]byte, 1<<20)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, "(*idLocks).lock") && strings.Contains(g, "takeOverAndFile") {
			return true
		}
	}
	return false
}
