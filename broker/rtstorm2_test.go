package broker

import (
	"bufio"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestTakeoverNotHeldByRefusedPublishWrite (red team h-rtstorm2): a
// takeover's CONNACK is not held lateWait (5 s) by the old connection's
// QoS 1 PUBLISH that mochi refuses before OnPublish (here: over
// max_user_properties) while the refusal's PUBACK waits behind a write
// to a client that stopped reading. The surrender waits for a QoS 1
// PUBLISH until mochi's lookup (OnPublish), which a refused one never
// reaches: it waited for the write, unbounded by relWait, which bounds
// only the writes it knows of (writesLocked).
func TestTakeoverNotHeldByRefusedPublishWrite(t *testing.T) {
	b := start(t, Options{MaxUserProperties: 2})
	raw, err := net.DialTCP("tcp", nil, tcpAddr(t, b.TCPAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetReadBuffer(4096) //nolint:errcheck // smaller is faster to fill; any size fills
	raw.SetDeadline(time.Now().Add(testTimeout))
	raw.Write(rawConnect(t, 5, "rfw", false, 3600, nil))
	r := bufio.NewReader(raw)
	if h, _, err := readPacketBody(r); err != nil || h != 0x20 {
		t.Fatalf("no CONNACK: %#x %v", h, err)
	}
	raw.Write(subscribePacket(5, []string{"rfw/#"}))
	if h, _, err := readPacketBody(r); err != nil || h != 0x90 {
		t.Fatalf("no SUBACK: %#x %v", h, err)
	}
	waitFor(t, "the connection filed", func() bool { return b.connByID("rfw") != nil })
	oldCl := b.connByID("rfw").out.(*mqttOut).cl
	pub := dial3(t, b, "rfw-pub", true)
	if !waitTok(t, "publish rfw/big", pub.Publish("rfw/big", 0, false, make([]byte, 16<<20))) {
		t.FailNow()
	}
	waitFor(t, "a write to the stalled client under way", func() bool {
		if oldCl.TryLock() {
			oldCl.Unlock()
			return false
		}
		return true
	})
	// A QoS 1 PUBLISH mochi refuses before OnPublish: its PUBACK 0x97
	// waits behind the write under way.
	over := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 5,
		PacketID: 3, TopicName: "rfw/x", Payload: []byte("p"),
	}
	over.Properties.User = []packets.UserProperty{{Key: "a", Val: "1"}, {Key: "b", Val: "2"}, {Key: "c", Val: "3"}}
	raw.Write(ownerPacket(t, over))
	o := b.connByID("rfw").out.(*mqttOut)
	waitFor(t, "the refused PUBLISH being processed", func() bool {
		o.ids.mu.Lock()
		defer o.ids.mu.Unlock()
		return o.ids.reserved == 3
	})

	nc, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(testTimeout))
	began := time.Now()
	nc.Write(rawConnect(t, 5, "rfw", false, 3600, nil))
	h, body, err := readPacketBody(bufio.NewReader(nc))
	took := time.Since(began)
	if err != nil || h != 0x20 || len(body) < 2 || body[1] != 0 {
		t.Fatalf("the taking-over client: %#x % x %v, want CONNACK 0", h, body, err)
	}
	t.Logf("CONNACK after %v", took)
	// Unbounded, the write held the CONNACK lateWait (5 s); bounded, about
	// relWait (0.5 s). The bound between them leaves a loaded -race run
	// room (3 relWaits, 1.5 s, did not).
	if bound := lateWait - relWait; took > bound {
		t.Errorf("CONNACK after %v, want within %v (relWait bounds the old connection's write, not lateWait)", took, bound)
	}
}

// TestQoS2ReconnectStormVariants (red team h-rtstorm2): the storm of
// TestQoS2ReconnectStorm with a client whose Receive Maximum is 1 (one
// delivery in flight, the rest queued across takeovers), one whose
// every other connection is a WebSocket (each takeover by the other
// path), and with a
// subscriber to the client's publishes stuck, its queue full, for the
// first 40 rounds (the client's publishes wait in OnPublish, up to
// publish_wait, as takeovers come): each message still delivered once
// each way, $SYS in-flight back at 0, no goroutine left once the broker
// stopped.
func TestQoS2ReconnectStormVariants(t *testing.T) {
	for _, tc := range []qos2Storm{
		{name: "recvmax1/mixed", v: 5, modes: 4, recvMax: 1},
		{name: "recvmax1/close", v: 5, modes: 1, first: 3, recvMax: 1},
		{name: "stuck/mixed/v5", v: 5, modes: 4, stuck: 40, opts: Options{PublishWait: 100 * time.Millisecond}},
		{name: "stuck/mixed/v4", v: 4, modes: 4, stuck: 40, opts: Options{PublishWait: 100 * time.Millisecond}},
		{name: "ws-tcp/mixed/v5", v: 5, modes: 4, ws: true},
		{name: "ws-tcp/close/v4", v: 4, modes: 1, first: 3, ws: true},
		{name: "stuck/close/v5", v: 5, modes: 1, first: 3, stuck: 40, opts: Options{PublishWait: 100 * time.Millisecond}},
	} {
		before := runtime.NumGoroutine()
		t.Run(tc.name, func(t *testing.T) { runQoS2Storm(t, tc) })
		// The broker stopped and every connection closed (the subtest's
		// cleanups): none of its goroutines is left.
		by := time.Now().Add(testTimeout)
		for runtime.NumGoroutine() > before && time.Now().Before(by) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			t.Errorf("%s: %d goroutines after, %d before", tc.name, n, before)
		}
	}
}

// TestSurrenderCutsLongWrite: a packet that still holds a takeover after
// relWait has the old connection's writes bounded (now), though
// writesLocked does not know of its write: mochi's refusal of a QoS 1
// PUBLISH before OnPublish, or its PUBREC to a QoS 2 PUBLISH resent with
// the id of a delivery it displaced, both written before OnPublish.
// Without the bound the surrender waited lateWait (5 s) for that write.
func TestSurrenderCutsLongWrite(t *testing.T) {
	for _, c := range []struct {
		name string
		pk   *packets.Packet
	}{
		{"publish qos 1 refused before OnPublish", pkOf(packets.Publish, 1, 6)},
		{"publish qos 2 resent, displacing", pkOf(packets.Publish, 2, 5)},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl, s := stormIDs(5) // the client's QoS 2 publish 5 waits for its PUBREL
			dc := &deadlineConn{}
			cl.Net.Conn = dc
			cl.State.Inflight.Set(*pkOf(packets.Publish, 1, 6)) // deliveries under 5 and 6
			cl.State.Inflight.Set(*pkOf(packets.Publish, 1, 5))
			if s.begin(cl, c.pk) {
				t.Fatal("refused")
			}
			began := time.Now()
			done := make(chan struct{})
			go func() {
				defer close(done)
				s.surrender(cl, false)
			}()
			cut := false
			for !cut && time.Since(began) < 2*lateWait {
				select {
				case <-done:
					t.Fatalf("the surrender ended after %v with its packet unsettled, deadlines %v", time.Since(began), dc.deadlines())
				case <-time.After(5 * time.Millisecond):
				}
				for _, d := range dc.deadlines() {
					cut = cut || !d.IsZero()
				}
			}
			took := time.Since(began)
			s.end(cl, c.pk) // the write failed: mochi goes on
			<-done
			// Bounded after relWait (0.5 s), not lateWait (5 s): the
			// bound between them leaves a loaded -race run room.
			if !cut || took > lateWait-relWait {
				t.Fatalf("writes bounded %v after %v (deadlines %v), want after relWait", cut, took, dc.deadlines())
			}
		})
	}
}
