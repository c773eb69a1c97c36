package broker

import (
	"bufio"
	"bytes"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// rawConnect5 connects an MQTT 5 client by hand: a session that lasts
// (Session Expiry 300 s) and the Maximum Packet Size given. It returns
// the connection, its reader and the CONNACK's Session Present flag.
func rawConnect5(t *testing.T, b *Broker, id string, clean bool, maxPacket uint32) (net.Conn, *bufio.Reader, bool) {
	t.Helper()
	return rawConnect5With(t, b, id, clean, packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true, MaximumPacketSize: maxPacket})
}

// rawConnect5With is rawConnect5 with the CONNECT's properties.
func rawConnect5With(t *testing.T, b *Broker, id string, clean bool, props packets.Properties) (net.Conn, *bufio.Reader, bool) {
	t.Helper()
	nc := hxDial(t, b.TCPAddr())
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: clean, Keepalive: 30, ClientIdentifier: id},
		Properties:      props,
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(nc)
	h, body, err := readPacketBody(r)
	if err != nil || h != 0x20 || len(body) < 2 || body[1] != 0 {
		t.Fatalf("CONNACK: %#x %x %v", h, body, err)
	}
	return nc, r, body[0]&1 == 1
}

// untilPong sends a PINGREQ and reads up to its PINGRESP, acknowledging
// QoS 1 publishes, and returns the topics of the PUBLISH packets before
// it and the size of the largest packet; an error is the connection
// ending first.
func untilPong(t *testing.T, nc net.Conn, r *bufio.Reader) (topics []string, largest int, err error) {
	t.Helper()
	if _, err := nc.Write([]byte{0xc0, 0}); err != nil {
		return nil, 0, err
	}
	for {
		h, body, err := readPacketBody(r)
		if err != nil {
			return topics, largest, err
		}
		largest = max(largest, 1+len(varint(len(body)))+len(body))
		switch h >> 4 {
		case packets.Pingresp:
			return topics, largest, nil
		case packets.Publish:
			n := int(body[0])<<8 | int(body[1])
			topics = append(topics, string(body[2:2+n]))
			if h&0x06 != 0 { // QoS 1: acknowledged
				if _, err := nc.Write([]byte{0x40, 2, body[2+n], body[3+n]}); err != nil {
					return topics, largest, err
				}
			}
		}
	}
}

// TestHeldTooLargeForSession: a QoS 1 message held for a session that is
// away, larger than its client's Maximum Packet Size, is discarded when
// the client comes back, as MQTT 5 says ("Where a Packet is too large to
// send, the Server MUST discard it without sending it and then behave as
// if it had completed sending that Application Message", [MQTT-3.1.2-25]),
// and the others are delivered. mochi's resend of the session's in-flight
// messages failed on it instead and ended the connection, at every
// reconnect while the session lasted: the client could never come back.
// Nor does the resend strip a message's user properties to make it fit
// (mochi drops them from any packet they would take past the limit; for a
// PUBLISH they are the application message's). The discarded messages
// are counted in $SYS/mote/toolarge.
func TestHeldTooLargeForSession(t *testing.T) {
	b := start(t, Options{})
	const limit = 200
	awayOnH(t, b, limit)

	pub := dial5(t, b, "pub", paho5.ClientConfig{}, nil)
	ctx := testCtx(t)
	for _, p := range []*paho5.Publish{
		{Topic: "h/big", QoS: 1, Payload: bytes.Repeat([]byte("x"), 500)},
		{Topic: "h/small", QoS: 1, Payload: []byte("1")},
		{Topic: "h/props", QoS: 1, Payload: []byte("2"), Properties: &paho5.PublishProperties{User: paho5.UserProperties{{Key: "k", Value: string(bytes.Repeat([]byte("v"), 300))}}}},
		{Topic: "h/last", QoS: 1, Payload: []byte("3")},
	} {
		if _, err := pub.Publish(ctx, p); err != nil { // held for "away" before the PUBACK
			t.Fatal(err)
		}
	}

	for round := range 2 { // the second: nothing is left to resend
		before := b.stats.TooLarge.Load()
		nc, r, present := rawConnect5(t, b, "away", false, limit)
		if !present {
			t.Fatalf("round %d: no session present", round)
		}
		topics, largest, err := untilPong(t, nc, r)
		if err != nil {
			t.Fatalf("round %d: the connection ended (%v) after %q", round, err, topics)
		}
		want := []string{"h/small", "h/last"}
		if round == 1 {
			want = nil
		}
		if !slicesEqual(topics, want) || largest > limit {
			t.Errorf("round %d: got %q (largest packet %d bytes), want %q", round, topics, largest, want)
		}
		// The two discarded are counted in $SYS/mote/toolarge (they were
		// not, discarded by mochi's resend).
		if got, want := b.stats.TooLarge.Load()-before, int64(2-2*round); got != want {
			t.Errorf("round %d: toolarge grew by %d, want %d", round, got, want)
		}
		nc.Close()
		waitConnGone(t, b, "away")
	}
}

// awayOnH makes the persistent session "away" (Maximum Packet Size
// limit) subscribed to h/# at QoS 1, offline.
func awayOnH(t *testing.T, b *Broker, limit uint32) {
	t.Helper()
	nc, r, _ := rawConnect5(t, b, "away", true, limit)
	sub := []byte{0, 1, 0, 0, 3, 'h', '/', '#', 1} // packet id 1, no properties, h/# at QoS 1
	if _, err := nc.Write(append(append([]byte{0x82}, varint(len(sub))...), sub...)); err != nil {
		t.Fatal(err)
	}
	if h, _, err := readPacketBody(r); err != nil || h != 0x90 {
		t.Fatalf("SUBACK: %#x %v", h, err)
	}
	nc.Close()
	waitConnGone(t, b, "away")
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestPlainTooLargeWithProperties: a plain message whose user properties
// take it past the client's Maximum Packet Size is discarded, not sent
// stripped of them [MQTT-3.1.2-25] — a retained replay and a live
// publish; the next message arrives (the client was not disconnected).
func TestPlainTooLargeWithProperties(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	pub := dial5(t, b, "pub", paho5.ClientConfig{}, nil)
	big := &paho5.PublishProperties{User: paho5.UserProperties{{Key: "k", Value: string(bytes.Repeat([]byte("v"), 300))}}}
	if _, err := pub.Publish(ctx, &paho5.Publish{Topic: "pp/kept", QoS: 1, Retain: true, Payload: []byte("1"), Properties: big}); err != nil {
		t.Fatal(err)
	}
	settle(t, b)
	got := make(chan *paho5.Publish, 10)
	size := uint32(200)
	sub := dial5(t, b, "small", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
	}}, &paho5.Connect{CleanStart: true, Properties: &paho5.ConnectProperties{MaximumPacketSize: &size}})
	if _, err := sub.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "pp/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*paho5.Publish{
		{Topic: "pp/live", QoS: 1, Payload: []byte("2"), Properties: big},
		{Topic: "pp/live", QoS: 0, Payload: []byte("3"), Properties: big},
		{Topic: "pp/marker", QoS: 1, Payload: []byte("4")},
	} {
		if _, err := pub.Publish(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case p := <-got:
		if p.Topic != "pp/marker" {
			t.Errorf("got %s=%s with %d user properties, want only pp/marker", p.Topic, p.Payload, len(p.Properties.User))
		}
	case <-time.After(testTimeout):
		t.Fatal("pp/marker never came")
	}
}

// TestDeltaTooLarge: a delta larger than the client's Maximum Packet Size
// (deltas are not split, SPEC §2) is skipped, never sent over the limit:
// the client gets a report (§5) and the next delta's mote-seq shows the
// gap, and stays connected.
func TestDeltaTooLarge(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	w.pub(t, "dz/a", "1")
	settle(t, b)
	const limit = 600
	got := make(chan *paho5.Publish, 100)
	size := uint32(limit)
	c := dial5(t, b, "small", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
	}}, &paho5.Connect{ClientID: "small", CleanStart: true, Properties: &paho5.ConnectProperties{MaximumPacketSize: &size}})
	ctx := testCtx(t)
	if _, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: ErrorTopic + "small", QoS: 1}, {Topic: "$sync/dz/+", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	next := func() *paho5.Publish {
		t.Helper()
		select {
		case p := <-got:
			var buf bytes.Buffer
			p.PacketID = 1
			if _, err := p.Packet().WriteTo(&buf); err != nil {
				t.Fatal(err)
			}
			if buf.Len() > limit {
				t.Fatalf("a %d-byte packet, over the client's %d", buf.Len(), limit)
			}
			return p
		case <-time.After(testTimeout):
			t.Fatal("nothing received")
		}
		return nil
	}
	if p := next(); p.Properties.User.Get("mote-seq") != "0" {
		t.Fatalf("first %s seq %q, want the snapshot", p.Topic, p.Properties.User.Get("mote-seq"))
	}
	w.pub(t, "dz/b", strconv.Quote(strings.Repeat("v", 2*limit))) // its delta cannot fit
	// The report comes once the writer skipped that delta: dz/c's change
	// cannot fold into it then (folded, it would be skipped too).
	if report := next(); report.Topic != ErrorTopic+"small" || !strings.Contains(string(report.Payload), "Maximum Packet Size") {
		t.Fatalf("%s %s, want the report", report.Topic, report.Payload)
	}
	w.pub(t, "dz/c", "3")
	delta := next()
	if delta.Topic != "$sync/dz/+" {
		t.Fatalf("%s %s, want the delta", delta.Topic, delta.Payload)
	}
	if seq := delta.Properties.User.Get("mote-seq"); seq != "2" || !jsonEqual(t, string(delta.Payload), `{"c":3}`) {
		t.Errorf("delta %s seq %s, want {\"c\":3} seq 2 (1 skipped)", delta.Payload, seq)
	}
}
