package broker

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// qosPublish encodes a PUBLISH of qos with packet id id.
func qosPublish(t *testing.T, v byte, topic string, qos byte, id uint16) []byte {
	t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, ProtocolVersion: v,
		TopicName: topic, PacketID: id, Payload: []byte(fmt.Sprintf(`{"n":%d}`, id))}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestAcksHeldWhilePipelined: a client that sends many QoS 1 and QoS 2
// publishes in one write gets every PUBACK / PUBREC, in order (mochi holds
// an ack while the next packet already waits in its read buffer, then
// writes them together: internal/mochi writeAck); a publish followed by
// part of the next gets its ack at once, without waiting for the rest.
func TestAcksHeldWhilePipelined(t *testing.T) {
	b := start(t, Options{})
	for _, v := range []byte{4, 5} {
		for _, qos := range []byte{1, 2} {
			t.Run(fmt.Sprintf("v%d/qos%d", v, qos), func(t *testing.T) {
				r := dialRaw(t, b, fmt.Sprintf("pipe%d%d", v, qos), v, true, packets.Properties{})
				const n = 200
				var all []byte
				for id := uint16(1); id <= n; id++ {
					all = append(all, qosPublish(t, v, "$tree/pipe/a", qos, id)...)
				}
				r.write(all)
				want := byte(packets.Puback)
				if qos == 2 {
					want = packets.Pubrec
				}
				for id := uint16(1); id <= n; id++ {
					typ, body := r.read()
					if typ != want || binary.BigEndian.Uint16(body) != id {
						t.Fatalf("ack %d: type %d id %d, want type %d id %d", id, typ, binary.BigEndian.Uint16(body), want, id)
					}
				}
				if qos == 2 { // PUBRELs, pipelined too: PUBCOMPs in order
					all = all[:0]
					for id := uint16(1); id <= n; id++ {
						all = append(all, 0x62, 0x02, byte(id>>8), byte(id))
					}
					r.write(all)
					for id := uint16(1); id <= n; id++ {
						typ, body := r.read()
						if typ != packets.Pubcomp || binary.BigEndian.Uint16(body) != id {
							t.Fatalf("PUBCOMP %d: type %d id %d", id, typ, binary.BigEndian.Uint16(body))
						}
					}
				}
				// An ack held behind a packet that needs none (a QoS 0
				// publish) is written before the broker waits for input.
				r.write(append(qosPublish(t, v, "$tree/pipe/c", qos, 900), qosPublish(t, v, "$tree/pipe/c", 0, 0)...))
				if typ, body := r.read(); typ != want || binary.BigEndian.Uint16(body) != 900 {
					t.Fatalf("ack held behind a QoS 0 publish: type %d id %d", typ, binary.BigEndian.Uint16(body))
				}
				// A publish and the first bytes of the next: the first's
				// ack comes before the rest is sent.
				p1 := qosPublish(t, v, "$tree/pipe/b", qos, 1000)
				p2 := qosPublish(t, v, "$tree/pipe/b", qos, 1001)
				r.write(append(p1, p2[:4]...))
				if typ, body := r.read(); typ != want || binary.BigEndian.Uint16(body) != 1000 {
					t.Fatalf("ack of a publish followed by a partial one: type %d id %d", typ, binary.BigEndian.Uint16(body))
				}
				r.write(p2[4:])
				if typ, body := r.read(); typ != want || binary.BigEndian.Uint16(body) != 1001 {
					t.Fatalf("ack of the completed publish: type %d id %d", typ, binary.BigEndian.Uint16(body))
				}
			})
		}
	}
}

// TestAcksHeldBeforeClose: a publish followed, in the same write, by a
// packet that ends the connection (a DISCONNECT, a malformed packet, a
// malformed PUBLISH, a second CONNECT) still gets its ack before the connection closes: an ack
// held while the last packet waited must not be dropped with it.
func TestAcksHeldBeforeClose(t *testing.T) {
	b := start(t, Options{})
	cases := []struct {
		name string
		last []byte
	}{
		{"disconnect", []byte{0xe0, 0x00}},
		{"malformed", []byte{0x00, 0x00}},                                            // packet type 0 is reserved
		{"malformed publish", []byte{0x36, 0x02, 0, 1}},                              // QoS 3
		{"connect", []byte{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, 0}}, // a second CONNECT
	}
	for _, v := range []byte{4, 5} {
		for _, qos := range []byte{1, 2} {
			for _, c := range cases {
				t.Run(fmt.Sprintf("v%d/qos%d/%s", v, qos, c.name), func(t *testing.T) {
					r := dialRaw(t, b, fmt.Sprintf("close%d%d%s", v, qos, c.name), v, true, packets.Properties{})
					r.write(append(qosPublish(t, v, "$tree/close/a", qos, 7), c.last...))
					want := byte(packets.Puback)
					if qos == 2 {
						want = packets.Pubrec
					}
					if typ, body := r.read(); typ != want || binary.BigEndian.Uint16(body) != 7 {
						t.Fatalf("ack before close: type %d id %d, want type %d id 7", typ, binary.BigEndian.Uint16(body), want)
					}
				})
			}
		}
	}
}

// TestAcksHeldBeforeRefusal: a publish the ACL refuses, sent right after
// one it allows, closes an MQTT 3.1.1 connection (a refused QoS 1 publish
// has no other answer there); the allowed publish's ack, held while the
// refused one waited, is written before the close.
func TestAcksHeldBeforeRefusal(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic readwrite house/#\ntopic deny house/secret/#\n"))
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Users: users(t), ACL: acl})
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			c, err := net.Dial("tcp", b.TCPAddr())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: v,
				Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 60, ClientIdentifier: fmt.Sprintf("refused%d", v),
					UsernameFlag: true, Username: []byte("alice"), PasswordFlag: true, Password: []byte("alice-pw")}}
			var buf bytes.Buffer
			if err := pk.ConnectEncode(&buf); err != nil {
				t.Fatal(err)
			}
			r := &raw{t: t, c: c, v5: v == 5}
			r.write(buf.Bytes())
			if typ, body := r.read(); typ != packets.Connack || body[1] != 0 {
				t.Fatalf("CONNACK: type %d body %v", typ, body)
			}
			r.write(append(qosPublish(t, v, "house/a", 1, 7), qosPublish(t, v, "house/secret/a", 1, 8)...))
			if typ, body := r.read(); typ != packets.Puback || binary.BigEndian.Uint16(body) != 7 {
				t.Fatalf("ack of the allowed publish: type %d id %d", typ, binary.BigEndian.Uint16(body))
			}
		})
	}
}

// TestAcksHeldNotBehindWait: the ack of a publish is not held while the
// publish after it waits for room in a full subscriber's queue
// (publish_wait): the client gets it at once, as it did before acks were
// held, not when the wait ends (up to 5 × publish_wait).
func TestAcksHeldNotBehindWait(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) { ackNotBehindWait(t, v) })
	}
}

func ackNotBehindWait(t *testing.T, v byte) {
	b := start(t, Options{QueueBytes: 1000, PublishWait: time.Minute})
	release := make(chan struct{})
	released := false
	free := func() {
		if !released {
			released = true
			close(release)
		}
	}
	defer free()
	got := make(chan struct{}, 1)
	s := b.Open(Principal{ClientID: "held-sub"}, func(Delivery) {
		select {
		case got <- struct{}{}:
		default:
		}
		<-release // the subscriber's reader is stuck: its queue fills
	})
	defer s.Close()
	if err := s.Subscribe("rt/held", 0); err != nil {
		t.Fatal(err)
	}
	pub := Principal{ClientID: "held-fill"}
	ctx := testCtx(t)
	if err := b.Publish(ctx, pub, Message{Topic: "rt/held", Payload: []byte("first")}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got: // the writer holds the first message
	case <-ctx.Done():
		t.Fatal("first message not delivered")
	}
	room := func() bool { // for one more small message (under 400 bytes)
		s.c.q.mu.Lock()
		defer s.c.q.mu.Unlock()
		return s.c.q.bytes+400 <= s.c.q.max
	}
	for room() {
		if err := b.Publish(ctx, pub, Message{Topic: "rt/held", Payload: []byte("fill")}); err != nil {
			t.Fatal(err)
		}
	}
	r := dialRaw(t, b, "held-pub", v, true, packets.Properties{})
	big := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: v,
		TopicName: "rt/held", PacketID: 2, Payload: make([]byte, 450)} // both publishes fit in the 512-byte read buffer
	var buf bytes.Buffer
	if err := big.PublishEncode(&buf); err != nil {
		t.Fatal(err)
	}
	r.write(append(qosPublish(t, v, "rt/free", 1, 1), buf.Bytes()...))
	if typ, body := r.read(); typ != packets.Puback || binary.BigEndian.Uint16(body) != 1 {
		t.Fatalf("ack of the publish before the waiting one: type %d id %d", typ, binary.BigEndian.Uint16(body))
	}
	free() // the subscriber reads: the waiting publish goes through
	if typ, body := r.read(); typ != packets.Puback || binary.BigEndian.Uint16(body) != 2 {
		t.Fatalf("ack of the publish that waited: type %d id %d", typ, binary.BigEndian.Uint16(body))
	}
}
