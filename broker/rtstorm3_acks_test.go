package broker

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestOwnAcksAndDeliveriesShareIDs: a client publishes at QoS 1 or 2,
// always with packet id 1 (reused once acknowledged, and once resent
// with DUP before its ack), to a topic it subscribes to, leaving the
// broker's deliveries unacknowledged (they take ids 1, 2… from the same
// 16-bit space in mochi's in-flight map, up to the client's Receive
// Maximum) until all its publishes are acknowledged. Every publish gets
// its own ack with its own id, each message comes back once (QoS 2's
// resend is the same message), in order, and once all is acknowledged
// nothing is left in flight: the $SYS in-flight count is back to 0.
// h-storm3 (mochi change 48) took a QoS 1 PUBACK out of mochi's map and
// made idSpaces.begin copy the delivery it displaces: main and h-storm3
// pass the same.
func TestOwnAcksAndDeliveriesShareIDs(t *testing.T) {
	for _, c := range []struct {
		v      byte
		rm     uint16 // Receive Maximum (MQTT 5)
		qos    byte
		rounds int
	}{
		{4, 0, 1, 6}, {4, 0, 2, 6},
		{5, 1, 1, 6}, {5, 1, 2, 6}, {5, 2, 1, 6}, {5, 2, 2, 6},
	} {
		t.Run(fmt.Sprintf("v%d rm%d qos%d", c.v, c.rm, c.qos), func(t *testing.T) {
			b := start(t, Options{})
			before := atomic.LoadInt64(&b.server.Info.Inflight)
			r := dialRaw(t, b, "c", c.v, true, packets.Properties{ReceiveMaximum: c.rm})
			r.subscribe(9, "q/#", c.qos)
			var got []string     // payloads delivered
			var pending []uint16 // delivery ids not acknowledged yet
			// next reads packets until one of type want (of the client's
			// own flow) with id 1, keeping the deliveries.
			next := func(want byte) {
				t.Helper()
				for {
					h, body := readRawPacket(t, r)
					switch typ := h >> 4; {
					case typ == packets.Publish:
						id, payload := parsePublish5(body, r.v5, h)
						got, pending = append(got, payload), append(pending, id)
					case typ == want:
						if id := binary.BigEndian.Uint16(body); id != 1 {
							t.Fatalf("ack type %d for id %d, want id 1", typ, id)
						}
						return
					default:
						t.Fatalf("packet type %d, want %d", typ, want)
					}
				}
			}
			var want []string
			for i := range c.rounds {
				payload := fmt.Sprintf("m%d", i)
				pub := publishBytes(c.qos, false, 1, "q/x", payload, r.v5)
				r.write(pub)
				want = append(want, payload)
				if i == 2 { // resent before its ack: DUP, the same id
					r.write(publishBytes(c.qos, true, 1, "q/x", payload, r.v5))
					if c.qos == 1 {
						want = append(want, payload) // a new message at QoS 1
					}
				}
				if c.qos == 1 {
					next(packets.Puback)
					if i == 2 {
						next(packets.Puback)
					}
					continue
				}
				next(packets.Pubrec)
				if i == 2 {
					next(packets.Pubrec)
				}
				r.write([]byte{0x62, 2, 0, 1}) // PUBREL
				next(packets.Pubcomp)
			}
			// Now the deliveries: acknowledged one by one, the rest come.
			deadline := time.Now().Add(testTimeout)
			for len(got) < len(want) || len(pending) > 0 {
				if time.Now().After(deadline) {
					t.Fatalf("got %q, want %q", got, want)
				}
				if len(pending) > 0 {
					id := pending[0]
					pending = pending[1:]
					if c.qos == 1 {
						r.write([]byte{0x40, 2, byte(id >> 8), byte(id)})
						continue
					}
					r.write([]byte{0x50, 2, byte(id >> 8), byte(id)}) // PUBREC
					for {
						h, body := readRawPacket(t, r)
						if h>>4 == packets.Publish {
							id, payload := parsePublish5(body, r.v5, h)
							got, pending = append(got, payload), append(pending, id)
							continue
						}
						if h>>4 != packets.Pubrel || binary.BigEndian.Uint16(body) != id {
							t.Fatalf("packet %#x %x after PUBREC %d, want its PUBREL", h, body, id)
						}
						break
					}
					r.write([]byte{0x70, 2, byte(id >> 8), byte(id)}) // PUBCOMP
					continue
				}
				r.c.SetReadDeadline(time.Now().Add(testTimeout)) // a delivery stuck fails the read
				var hb [1]byte
				if _, err := io.ReadFull(r.c, hb[:]); err != nil {
					t.Fatalf("delivered %q, want %q: %v (writer parked: %v)", got, want, err, writerParked())
				}
				h, body := readRest(t, r, hb[0])
				if h>>4 != packets.Publish {
					t.Fatalf("packet %#x, want a delivery", h)
				}
				id, payload := parsePublish5(body, r.v5, h)
				got, pending = append(got, payload), append(pending, id)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("delivered %q, want %q", got, want)
			}
			// A round trip: a PINGREQ's answer comes after the acks were read.
			r.write([]byte{0xc0, 0})
			if h, _ := readRawPacket(t, r); h>>4 != packets.Pingresp {
				t.Fatalf("packet %#x, want PINGRESP", h)
			}
			if n := atomic.LoadInt64(&b.server.Info.Inflight) - before; n != 0 {
				t.Fatalf("$SYS in flight: %d more than before, want 0", n)
			}
		})
	}
}

// readRawPacket reads one packet of r: its first byte and body.
func readRawPacket(t *testing.T, r *raw) (byte, []byte) {
	t.Helper()
	r.c.SetReadDeadline(time.Now().Add(testTimeout))
	var h [1]byte
	if _, err := io.ReadFull(r.c, h[:]); err != nil {
		t.Fatal(err)
	}
	return readRest(t, r, h[0])
}

// publishBytes is a PUBLISH packet.
func publishBytes(qos byte, dup bool, id uint16, topic, payload string, v5 bool) []byte {
	body := binary.BigEndian.AppendUint16(nil, uint16(len(topic)))
	body = append(body, topic...)
	if qos > 0 {
		body = binary.BigEndian.AppendUint16(body, id)
	}
	if v5 {
		body = append(body, 0)
	}
	body = append(body, payload...)
	h := 0x30 | qos<<1
	if dup {
		h |= 0x08
	}
	return append(append([]byte{h}, varint(len(body))...), body...)
}

// parsePublish5 returns a delivered PUBLISH's packet id (0 at QoS 0) and
// payload.
func parsePublish5(body []byte, v5 bool, h byte) (uint16, string) {
	tl := int(binary.BigEndian.Uint16(body))
	body = body[2+tl:]
	var id uint16
	if h&0x06 != 0 {
		id, body = binary.BigEndian.Uint16(body), body[2:]
	}
	if v5 {
		n, k := binary.Uvarint(body)
		body = body[k+int(n):]
	}
	return id, string(body)
}

// TestTakeoverWithAcksPending: a persistent session's client has a QoS 2
// publish waiting for its PUBREL (id 1), has just had a QoS 1 publish
// acknowledged (id 2: h-storm3 no longer puts its PUBACK in mochi's map)
// and leaves the broker's deliveries unacknowledged, when a new
// connection takes the session over: its PUBREL completes the QoS 2
// publish, the deliveries are resent and, acknowledged, leave nothing in
// flight. Same on main and h-storm3.
func TestTakeoverWithAcksPending(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			b := start(t, Options{})
			before := atomic.LoadInt64(&b.server.Info.Inflight)
			props := packets.Properties{SessionExpiryInterval: 60, SessionExpiryIntervalFlag: true}
			r1 := dialRaw(t, b, "c", v, false, props)
			r1.subscribe(9, "q/#", 1)
			got := map[string]int{}
			readUntilAck := func(r *raw, want byte, id uint16) {
				t.Helper()
				for {
					h, body := readRawPacket(t, r)
					switch h >> 4 {
					case packets.Publish:
						_, payload := parsePublish5(body, r.v5, h)
						got[payload]++
					case want:
						if binary.BigEndian.Uint16(body) != id {
							t.Fatalf("ack %d for id %d, want %d", want, binary.BigEndian.Uint16(body), id)
						}
						return
					default:
						t.Fatalf("packet %#x, want type %d", h, want)
					}
				}
			}
			r1.write(publishBytes(2, false, 1, "q/a", "a", r1.v5))
			readUntilAck(r1, packets.Pubrec, 1)
			r1.write(publishBytes(1, false, 2, "q/b", "b", r1.v5))
			readUntilAck(r1, packets.Puback, 2)
			r2 := dialRaw(t, b, "c", v, false, props) // the takeover
			r2.write([]byte{0x62, 2, 0, 1})           // PUBREL of id 1
			acked := 0
			for {
				h, body := readRawPacket(t, r2)
				switch h >> 4 {
				case packets.Publish:
					id, payload := parsePublish5(body, r2.v5, h)
					got[payload]++
					r2.write([]byte{0x40, 2, byte(id >> 8), byte(id)})
					acked++
				case packets.Pubrec: // the session's PUBREC, resent to the new connection
					if binary.BigEndian.Uint16(body) != 1 {
						t.Fatalf("PUBREC %x, want id 1", body)
					}
				case packets.Pubcomp:
					if binary.BigEndian.Uint16(body) != 1 || (r2.v5 && len(body) > 2 && body[2] != 0) {
						t.Fatalf("PUBCOMP %x, want id 1, success", body)
					}
					acked = -100 // the PUBCOMP came
				default:
					t.Fatalf("packet %#x after the takeover", h)
				}
				if got["a"] > 0 && got["b"] > 0 && acked < 0 {
					break
				}
			}
			r2.write([]byte{0xc0, 0}) // PINGREQ: the acks before it are processed
			for {
				h, body := readRawPacket(t, r2)
				if h>>4 == packets.Pingresp {
					break
				}
				if h>>4 == packets.Publish { // a resend of a delivery acked already on r1? none was
					id, _ := parsePublish5(body, r2.v5, h)
					r2.write([]byte{0x40, 2, byte(id >> 8), byte(id)})
					r2.write([]byte{0xc0, 0})
				}
			}
			if n := atomic.LoadInt64(&b.server.Info.Inflight) - before; n != 0 {
				t.Fatalf("$SYS in flight: %d more than before, want 0 (delivered %v)", n, got)
			}
		})
	}
}

// readRest reads the rest of a packet of r whose first byte h was read.
func readRest(t *testing.T, r *raw, h byte) (byte, []byte) {
	n, mult := 0, 1
	for {
		var b [1]byte
		if _, err := io.ReadFull(r.c, b[:]); err != nil {
			t.Fatal(err)
		}
		n += int(b[0]&0x7f) * mult
		mult *= 128
		if b[0]&0x80 == 0 {
			break
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r.c, body); err != nil {
		t.Fatal(err)
	}
	return h, body
}

// TestOwnPubrecFreesWriter: while a client's own QoS 2 publish is
// processed its PUBREC is in mochi's in-flight map, which the writer
// counts against the client's Receive Maximum (1 here): a delivery that
// comes then waits. The PUBREC then leaves the map (it waits for the
// PUBREL apart, idSpaces.end), and the delivery must go out: nothing
// woke the writer (only a delivery's acknowledgement did), and with none
// in flight it waited for good.
func TestOwnPubrecFreesWriter(t *testing.T) {
	b := start(t, Options{})
	r := dialRaw(t, b, "rm1", 5, true, packets.Properties{ReceiveMaximum: 1})
	r.subscribe(9, "q/#", 1)
	h, release := holdPublished(t, b, b.connOf(t, "rm1").out.(*mqttOut).cl)
	r.write(publishBytes(2, false, 5, "other/x", "x", true)) // nobody's topic
	waitClosed(t, "OnPublished", h.blocked)                  // its PUBREC in mochi's map
	if err := b.Publish(testCtx(t), Principal{ClientID: "app"}, Message{Topic: "q/a", Payload: []byte("a"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the writer to wait for room in flight", writerParked)
	release()
	r.c.SetReadDeadline(time.Now().Add(testTimeout)) // a writer stuck fails the read
	for {
		var hb [1]byte
		if _, err := io.ReadFull(r.c, hb[:]); err != nil {
			t.Fatalf("%v: the delivery of q/a never came (writer parked: %v)", err, writerParked())
		}
		hdr, body := readRest(t, r, hb[0])
		if hdr>>4 == packets.Publish {
			if _, payload := parsePublish5(body, true, hdr); payload != "a" {
				t.Fatalf("delivery %q, want a", payload)
			}
			return
		}
		if hdr>>4 != packets.Pubrec {
			t.Fatalf("packet %#x, want PUBREC 5 or the delivery", hdr)
		}
	}
}
