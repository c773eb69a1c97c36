package broker

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// Red team of packetids.go and arriving.go (h-rtids).

// rawSession is a raw MQTT client (v 4 = 3.1.1, or 5) with a persistent
// session; its CONNACK is read.
type rawSession struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
	v    byte
}

func dialSession(t *testing.T, b *Broker, v byte, id string, props packets.Properties) *rawSession {
	t.Helper()
	conn, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: id},
		Properties:      props,
	}
	if v == 5 {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 300, true
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(testTimeout))
	s := &rawSession{t: t, conn: conn, r: bufio.NewReader(conn), v: v}
	s.write(buf.Bytes())
	s.want("CONNACK", 0x20)
	return s
}

func (s *rawSession) write(p []byte) {
	s.t.Helper()
	if _, err := s.conn.Write(p); err != nil {
		s.t.Fatal(err)
	}
}

// send writes a packet of first byte h and body (an MQTT 5 body gets no
// properties here: callers add the 0 length).
func (s *rawSession) send(h byte, body []byte) {
	s.t.Helper()
	s.write(append(append([]byte{h}, varint(len(body))...), body...))
}

// want reads the next packet, of type typ (the high nibble), and returns
// its first byte and body.
func (s *rawSession) want(what string, typ byte) (byte, []byte) {
	s.t.Helper()
	h, body, err := readWhole(s.r)
	if err != nil || h&0xf0 != typ {
		s.t.Fatalf("%s: got packet %#x %x (%v), want %#x", what, h, body, err, typ)
	}
	return h, body
}

// skipTo reads packets of type skip until one of type typ.
func (s *rawSession) skipTo(what string, typ, skip byte) (byte, []byte) {
	s.t.Helper()
	for {
		h, body, err := readWhole(s.r)
		if err == nil && h&0xf0 == typ {
			return h, body
		}
		if err != nil || h&0xf0 != skip {
			s.t.Fatalf("%s: got packet %#x %x (%v), want %#x", what, h, body, err, typ)
		}
	}
}

// publish is a QoS 2 PUBLISH of payload to topic with id (dup: resent).
func (s *rawSession) publish(qos byte, dup bool, id uint16, topic, payload string) {
	s.t.Helper()
	h := byte(0x30) | qos<<1
	if dup {
		h |= 0x08
	}
	body := append([]byte{0, byte(len(topic))}, topic...)
	body = append(body, byte(id>>8), byte(id))
	if s.v == 5 {
		body = append(body, 0)
	}
	s.send(h, append(body, payload...))
}

// TestInboundQoS2Takeover: a client's QoS 2 publish waiting for its PUBREL
// is session state [MQTT-4.3.3-10]: a client that takes its session over
// (its old connection still open: mochi copies the in-flight map then)
// and resends the PUBLISH with DUP must not have it delivered twice.
// idSpaces kept it in its side map, which mochi does not copy: the resend
// was a new message.
func TestInboundQoS2Takeover(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(map[byte]string{4: "3.1.1", 5: "5"}[v], func(t *testing.T) {
			b := start(t, Options{})
			in, cfg, _ := resumeConfig("sub")
			sub := dial5(t, b, "sub", cfg, nil)
			if _, err := sub.Subscribe(testCtx(t), &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "d/#", QoS: 2}}}); err != nil {
				t.Fatal(err)
			}
			old := dialSession(t, b, v, "q2", packets.Properties{})
			old.publish(2, false, 7, "d/x", "once")
			old.want("PUBREC", 0x50)
			// The client comes back on another connection before the
			// broker noticed the first is gone.
			cur := dialSession(t, b, v, "q2", packets.Properties{})
			cur.publish(2, true, 7, "d/x", "once")
			cur.want("PUBREC", 0x50)
			// (mochi resends the session's PUBREC too.)
			cur.send(0x62, []byte{0, 7})
			cur.skipTo("PUBCOMP", 0x70, 0x50)
			cur.publish(1, false, 8, "d/end", "end")
			cur.want("PUBACK", 0x40)
			got := in.wait(t, 2)
			if got[0] != "d/x" || got[1] != "d/end" {
				t.Fatalf("the subscriber got %q, want d/x once, then d/end", got)
			}
		})
	}
}

var _ = mqtt.OnQosPublish

// resumeRaw writes a CONNECT resuming id's session (MQTT 5) on a new raw
// connection and does not wait for the CONNACK.
func resumeRaw(t *testing.T, b *Broker, id string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: id},
		Properties:      packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	return conn
}

// TestArrivingStoppedQoS0: messages held for a client coming back whose
// connection stops before it is filed (mochi's resend or CONNACK could not
// be written) go to the session when swept: QoS 1 held in flight for the
// next connection, QoS 0 dropped, as for any session that is away (held
// in flight, it would be resent with DUP at QoS 0 [MQTT-3.3.1-2] and
// never acknowledged).
func TestArrivingStoppedQoS0(t *testing.T) {
	b := start(t, Options{})
	raw, _, old, pub := awayQueued(t, b, "away")
	raw.Close()
	waitConnGone(t, b, "away") // q/2 and q/3 were held in flight with q/1
	h := addBlockHook(t, b, mqtt.OnQosPublish, func(cl *mqtt.Client) bool { return cl != old })
	resumeRaw(t, b, "away")
	waitClosed(t, "the resend", h.blocked)
	if _, err := pub.Publish(testCtx(t), &paho5.Publish{Topic: "q/zero", QoS: 0, Payload: []byte("0")}); err != nil {
		t.Fatal(err)
	}
	publishQ(t, pub, 4) // after q/zero: once it is held, q/zero is
	cl, ok := b.server.Clients.Get("away")
	if !ok || cl == old {
		t.Fatal("the new client is not the session's")
	}
	cl.Stop(errors.New("test: the connection broke"))
	close(h.release)
	b.arriving.sweep(b)
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 0 {
			t.Fatalf("QoS 0 %s held in flight as %d", pk.TopicName, pk.PacketID)
		}
	}
	in := resume(t, b, "away")
	wantOrder(t, in, 4)
}

// TestArrivingTakenOver: messages held for a client coming back that is
// taken over before its connection is filed (by the same user) go to the
// client that took the session: first, before what is published after.
// They were put in its in-flight map, unsent while it stayed connected.
func TestArrivingTakenOver(t *testing.T) {
	b := start(t, Options{})
	raw, _, old, pub := awayQueued(t, b, "away")
	raw.Close()
	waitConnGone(t, b, "away") // q/2 and q/3 were held in flight with q/1
	h := addBlockHook(t, b, mqtt.OnQosPublish, func(cl *mqtt.Client) bool { return cl != old })
	resumeRaw(t, b, "away")
	waitClosed(t, "the resend", h.blocked) // the first client back, stopped in mochi's resend
	publishQ(t, pub, 4)                    // held for it
	in := resume(t, b, "away")             // another takes the session over
	publishQ(t, pub, 5)
	wantOrder(t, in, 5)
}

// TestArrivingTakenOverHeld: as TestArrivingTakenOver, with a message
// published while the client that took over is coming back too: what was
// held for the first stays, ahead (it was dropped, uncounted).
func TestArrivingTakenOverHeld(t *testing.T) {
	b := start(t, Options{})
	raw, _, old, pub := awayQueued(t, b, "away")
	raw.Close()
	waitConnGone(t, b, "away")
	h := addBlockHook(t, b, mqtt.OnQosPublish, func(cl *mqtt.Client) bool { return cl != old })
	resumeRaw(t, b, "away")
	waitClosed(t, "the first resend", h.blocked)
	first, _ := b.server.Clients.Get("away")
	publishQ(t, pub, 4) // held for the first
	h2 := addBlockHook(t, b, mqtt.OnQosPublish, func(cl *mqtt.Client) bool { return cl != old && cl != first })
	in, cfg, cp := resumeConfig("away")
	dialed := dialAsync(t, b, "away", cfg, cp)
	waitClosed(t, "the second resend", h2.blocked)
	publishQ(t, pub, 5) // held for the second
	close(h2.release)
	waitDialed(t, dialed)
	b.connOf(t, "away")
	publishQ(t, pub, 6)
	wantOrder(t, in, 6)
}

// publishedHook stops mochi in OnPublished for one client (after the
// publish went to the door, before OnPacketProcessed), once, until
// released.
type publishedHook struct {
	mqtt.HookBase
	cl      *mqtt.Client
	blocked chan struct{}
	release chan struct{}
	once    sync.Once
}

// holdPublished adds a publishedHook for cl; release lets mochi go on
// (at the latest when t ends).
func holdPublished(t *testing.T, b *Broker, cl *mqtt.Client) (h *publishedHook, release func()) {
	t.Helper()
	h = &publishedHook{cl: cl, blocked: make(chan struct{}), release: make(chan struct{})}
	if err := b.server.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	released := false
	release = func() {
		if !released {
			released = true
			close(h.release)
		}
	}
	t.Cleanup(release)
	return h, release
}

func (h *publishedHook) ID() string           { return "test-published" }
func (h *publishedHook) Provides(b byte) bool { return b == mqtt.OnPublished }
func (h *publishedHook) OnPublished(cl *mqtt.Client, _ *packets.Packet) {
	if cl != h.cl {
		return
	}
	h.once.Do(func() {
		close(h.blocked)
		<-h.release
	})
}

// writerParked says whether a connection's writer is parked waiting for
// an in-flight slot (in waitInflight's select).
func writerParked() bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "[select") && strings.Contains(g, ").waitInflight(") {
			return true
		}
	}
	return false
}

// TestDisplacedReceiveMaximum: while a client packet with the id of an
// unacknowledged delivery is processed, the delivery is out of mochi's
// map (displaced), but still in flight: a client with Receive Maximum 1
// must not get a second message meanwhile [MQTT-3.3.4-9]. The writer
// counted mochi's map only.
func TestDisplacedReceiveMaximum(t *testing.T) {
	b := start(t, Options{})
	s := dialSession(t, b, 5, "rm1", packets.Properties{ReceiveMaximum: 1})
	s.send(0x82, []byte{0, 1, 0, 0, 3, 'q', '/', '#', 1})
	s.want("SUBACK", 0x90)
	pub := dial5(t, b, "rm1-pub", paho5.ClientConfig{}, nil)
	publishQ(t, pub, 1)
	_, body := s.want("PUBLISH q/1", 0x30)
	id := uint16(body[5])<<8 | uint16(body[6]) // after the topic q/1
	c := b.connOf(t, "rm1")
	cl := c.out.(*mqttOut).cl
	h, release := holdPublished(t, b, cl)
	// The client's own QoS 1 publish, with the delivery's id, to q/own:
	// delivered to it while mochi is held in OnPublished.
	s.publish(1, false, id, "q/own", "own")
	waitClosed(t, "OnPublished", h.blocked)
	waitFor(t, "the writer to send q/own or wait", func() bool { return cl.State.Inflight.Len() > 0 || writerParked() })
	if n := cl.State.Inflight.Len(); n > 0 {
		release()
		t.Fatalf("%d more in flight while the delivery %d was displaced (Receive Maximum 1)", n, id)
	}
	release()
	s.want("PUBACK", 0x40)
	s.send(0x40, []byte{byte(id >> 8), byte(id), 0, 0}) // the delivery's PUBACK
	_, body = s.want("PUBLISH q/own", 0x30)
	if string(body[2:7]) != "q/own" {
		t.Fatalf("got a PUBLISH of %x, want q/own", body)
	}
}

// TestInboundQoS2Resumed: a client's QoS 2 publish waiting for PUBREL
// when its connection ends stays session state [MQTT-4.3.3-10] even when
// a delivery to it holds the same id: resent with DUP on the next
// connection (the PUBREC was lost), it is not delivered again.
func TestInboundQoS2Resumed(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(map[byte]string{4: "3.1.1", 5: "5"}[v], func(t *testing.T) {
			b := start(t, Options{})
			in, cfg, _ := resumeConfig("sub")
			sub := dial5(t, b, "sub", cfg, nil)
			if _, err := sub.Subscribe(testCtx(t), &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "d/#", QoS: 2}}}); err != nil {
				t.Fatal(err)
			}
			s := dialSession(t, b, v, "q2", packets.Properties{})
			body := []byte{0, 1}
			if v == 5 {
				body = append(body, 0)
			}
			s.send(0x82, append(body, 0, 3, 'q', '/', '#', 1))
			s.want("SUBACK", 0x90)
			pub := dial5(t, b, "q2-pub", paho5.ClientConfig{}, nil)
			publishQ(t, pub, 1)
			_, pb := s.want("PUBLISH q/1", 0x30) // in flight, unacknowledged
			id := uint16(pb[5])<<8 | uint16(pb[6])
			s.publish(2, false, id, "d/x", "once")
			s.want("PUBREC", 0x50) // lost, as far as the client knows
			s.conn.Close()
			waitConnGone(t, b, "q2")
			s = dialSession(t, b, v, "q2", packets.Properties{})
			s.want("PUBLISH q/1 again", 0x30)
			s.publish(2, true, id, "d/x", "once")
			s.want("PUBREC", 0x50)
			s.send(0x62, []byte{byte(id >> 8), byte(id)})
			s.skipTo("PUBCOMP", 0x70, 0x50)
			s.publish(1, false, id+1, "d/end", "end")
			s.want("PUBACK", 0x40)
			got := in.wait(t, 2)
			if got[0] != "d/x" || got[1] != "d/end" {
				t.Fatalf("the subscriber got %q, want d/x once, then d/end", got)
			}
		})
	}
}

// TestInboundQoS2ResentV5: a QoS 2 PUBLISH sent again before its PUBREL
// (its PUBREC was lost) gets a PUBREC as the first did [MQTT-4.3.3-10];
// mochi refused it 0x91 (packet identifier in use), after which an MQTT 5
// client ends the flow: no PUBREL, and the broker's PUBREC state, taking
// one of the client's receive quota, stayed for good.
func TestInboundQoS2ResentV5(t *testing.T) {
	b := start(t, Options{})
	s := dialSession(t, b, 5, "q2", packets.Properties{})
	s.publish(2, false, 9, "d/x", "once")
	if _, body := s.want("PUBREC", 0x50); len(body) > 2 && body[2] != 0 {
		t.Fatalf("PUBREC %x", body)
	}
	s.publish(2, true, 9, "d/x", "once")
	if _, body := s.want("PUBREC again", 0x50); len(body) > 2 && body[2] != 0 {
		t.Fatalf("the resent PUBLISH got PUBREC %x, want success", body)
	}
	s.send(0x62, []byte{0, 9})
	if _, body := s.want("PUBCOMP", 0x70); len(body) > 2 && body[2] != 0 {
		t.Fatalf("PUBCOMP %x", body)
	}
}

// TestInboundQoS2Bound: the client's QoS 2 publishes waiting for PUBREL,
// kept apart from mochi's map, are bounded by the broker's Receive
// Maximum: one more is refused (MQTT 5: DISCONNECT 0x93), in a fresh
// connection and in one that resumed the session holding them.
func TestInboundQoS2Bound(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(map[byte]string{4: "3.1.1", 5: "5"}[v], func(t *testing.T) {
			b := start(t, Options{MaxInflight: 4})
			s := dialSession(t, b, v, "many", packets.Properties{})
			for id := uint16(1); id <= 4; id++ {
				s.publish(2, false, id, "d/x", "x")
				s.want("PUBREC", 0x50)
			}
			c := b.connOf(t, "many")
			o := c.out.(*mqttOut)
			// (Kept apart once mochi processed the last, just after it
			// wrote its PUBREC.)
			waitFor(t, "four publishes waiting for PUBREL", func() bool {
				o.ids.mu.Lock()
				defer o.ids.mu.Unlock()
				return len(o.ids.inbound) == 4
			})
			s.conn.Close()
			waitConnGone(t, b, "many")
			s = dialSession(t, b, v, "many", packets.Properties{})
			// mochi resends the session's four PUBRECs.
			for i := 0; i < 4; i++ {
				s.want("PUBREC resent", 0x50)
			}
			// The client resends the first (no quota taken), completes
			// it, and has room for one more.
			s.publish(2, true, 1, "d/x", "x")
			s.want("PUBREC", 0x50)
			s.send(0x62, []byte{0, 1})
			s.want("PUBCOMP", 0x70)
			s.publish(2, false, 5, "d/x", "x")
			s.want("PUBREC", 0x50)
			s.publish(2, false, 6, "d/x", "x")
			h, body, err := readWhole(s.r)
			if err == nil && !(h&0xf0 == 0xe0 && (v == 4 || len(body) > 0 && body[0] == 0x93)) {
				t.Fatalf("the publish past the quota got %#x %x, want the connection closed (0x93)", h, body)
			}
		})
	}
}

// TestDisplacedTakeover: a client takes the session over while its old
// connection processes a packet with the id of an unacknowledged delivery
// (the delivery out of mochi's map meanwhile): the new client gets the
// delivery, with the rest, in order. mochi copied the map without it.
func TestDisplacedTakeover(t *testing.T) {
	b := start(t, Options{})
	raw, _, old, pub := awayQueued(t, b, "away") // q/1 in flight; q/2, q/3 wait
	var id uint16
	for _, pk := range old.State.Inflight.GetAll(false) {
		id = pk.PacketID
	}
	h := &publishedHook{cl: old, blocked: make(chan struct{}), release: make(chan struct{})}
	if err := b.server.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	defer close(h.release)
	body := append([]byte{0, 3, 'r', '/', 'x', byte(id >> 8), byte(id), 0}, "mine"...)
	if _, err := raw.Write(append(append([]byte{0x32}, varint(len(body))...), body...)); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, "OnPublished", h.blocked)
	in := resume(t, b, "away")
	publishQ(t, pub, 4)
	wantOrder(t, in, 4)
}

// TestArrivingSweptToArriving: messages held for a client that stopped
// before its connection was filed, swept while another client of the
// session is coming back, wait for that client's connection. They were
// put in its in-flight map after mochi's resend: unsent while it stayed.
func TestArrivingSweptToArriving(t *testing.T) {
	b := start(t, Options{})
	raw, _, old, pub := awayQueued(t, b, "away")
	raw.Close()
	waitConnGone(t, b, "away")
	h := addBlockHook(t, b, mqtt.OnQosPublish, func(cl *mqtt.Client) bool { return cl != old })
	resumeRaw(t, b, "away")
	waitClosed(t, "the first resend", h.blocked)
	first, _ := b.server.Clients.Get("away")
	publishQ(t, pub, 4) // held for the first
	first.Stop(errors.New("test: the connection broke"))
	h2 := addBlockHook(t, b, mqtt.OnQosPublish, func(cl *mqtt.Client) bool { return cl != old && cl != first })
	in, cfg, cp := resumeConfig("away")
	dialed := dialAsync(t, b, "away", cfg, cp)
	waitClosed(t, "the second resend", h2.blocked)
	b.arriving.sweep(b)
	close(h2.release)
	waitDialed(t, dialed)
	b.connOf(t, "away")
	publishQ(t, pub, 5)
	wantOrder(t, in, 5)
}

// TestInboundQoS2ResumedRM1: a client's QoS 2 publish waiting for PUBREL,
// kept with its session, does not take the slot of a client with Receive
// Maximum 1 for deliveries: the ids are separate spaces [MQTT-2.2.1-2].
// Back in mochi's map on the next connection, it counted as a delivery in
// flight: nothing was sent until the client's PUBREL.
func TestInboundQoS2ResumedRM1(t *testing.T) {
	b := start(t, Options{})
	s := dialSession(t, b, 5, "rm1", packets.Properties{ReceiveMaximum: 1})
	s.send(0x82, []byte{0, 1, 0, 0, 3, 'q', '/', '#', 1})
	s.want("SUBACK", 0x90)
	s.publish(2, false, 3, "d/x", "x")
	s.want("PUBREC", 0x50)
	s.conn.Close()
	waitConnGone(t, b, "rm1")
	s = dialSession(t, b, 5, "rm1", packets.Properties{ReceiveMaximum: 1})
	s.want("PUBREC resent", 0x50)
	b.connOf(t, "rm1")
	pub := dial5(t, b, "rm1-pub", paho5.ClientConfig{}, nil)
	publishQ(t, pub, 1)
	if _, body := s.want("PUBLISH q/1", 0x30); string(body[2:5]) != "q/1" {
		t.Fatalf("got a PUBLISH of %x, want q/1", body)
	}
	s.send(0x62, []byte{0, 3, 0, 0})
	s.want("PUBCOMP", 0x70)
}

// TestArrivingQoS0: a QoS 0 message for a session whose client is coming
// back (after mochi's resend, before the connection is filed) is the
// connected client's: it waits for the connection, in order.
func TestArrivingQoS0(t *testing.T) {
	b := start(t, Options{})
	raw, _, old, pub := awayQueued(t, b, "away")
	raw.Close()
	waitConnGone(t, b, "away")
	h := addBlockHook(t, b, mqtt.OnQosPublish, func(cl *mqtt.Client) bool { return cl != old })
	in, cfg, cp := resumeConfig("away")
	dialed := dialAsync(t, b, "away", cfg, cp)
	waitClosed(t, "the resend", h.blocked)
	if _, err := pub.Publish(testCtx(t), &paho5.Publish{Topic: "q/4", QoS: 0, Payload: []byte("4")}); err != nil {
		t.Fatal(err)
	}
	publishQ(t, pub, 5) // after q/4: once it is held, q/4 is
	close(h.release)
	waitDialed(t, dialed)
	b.connOf(t, "away")
	publishQ(t, pub, 6)
	wantOrder(t, in, 6)
}
