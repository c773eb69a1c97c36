package broker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// The red team of the held refusal acks (mochi change 73) and the read
// turns (turns.go): every answer of a pipelined write arrives, in order,
// whatever ends it.

// rtAnswer is an answer a test waits for: its packet type and packet id
// (0: none, a PINGRESP).
type rtAnswer struct {
	typ byte
	id  uint16
}

// rtSubscribe encodes a SUBSCRIBE of one filter at QoS 1.
func rtSubscribe(v byte, id uint16, filter string) []byte {
	body := binary.BigEndian.AppendUint16(nil, id)
	if v == 5 {
		body = append(body, 0)
	}
	body = binary.BigEndian.AppendUint16(body, uint16(len(filter)))
	body = append(append(body, filter...), 1)
	return append(append([]byte{0x82}, varint(len(body))...), body...)
}

// rtUnsubscribe encodes an UNSUBSCRIBE of one filter.
func rtUnsubscribe(v byte, id uint16, filter string) []byte {
	body := binary.BigEndian.AppendUint16(nil, id)
	if v == 5 {
		body = append(body, 0)
	}
	body = binary.BigEndian.AppendUint16(body, uint16(len(filter)))
	body = append(body, filter...)
	return append(append([]byte{0xa2}, varint(len(body))...), body...)
}

// rtMixed is a write of n packets of every kind a client pipelines, mixed
// (accepted and refused QoS 1 and QoS 2 publishes, SUBSCRIBEs granted and
// refused whole, UNSUBSCRIBEs, PINGREQs), and the answers they want, in
// order.
func rtMixed(t *testing.T, v byte, n int) ([]byte, []rtAnswer) {
	var all []byte
	var want []rtAnswer
	for i := range n {
		id := uint16(i + 1)
		switch i % 8 {
		case 0:
			all = append(all, qosPublish(t, v, "rt/ok", 1, id)...)
			want = append(want, rtAnswer{packets.Puback, id})
		case 1:
			all = append(all, qosPublish(t, v, "$SYS/rt", 1, id)...)
			want = append(want, rtAnswer{packets.Puback, id})
		case 2:
			all = append(all, qosPublish(t, v, "rt/ok2", 2, id)...)
			want = append(want, rtAnswer{packets.Pubrec, id})
		case 3:
			all = append(all, qosPublish(t, v, "$SYS/rt", 2, id)...)
			want = append(want, rtAnswer{packets.Pubrec, id})
		case 4:
			all = append(all, rtSubscribe(v, id, fmt.Sprintf("rt/sub/%d", i))...)
			want = append(want, rtAnswer{packets.Suback, id})
		case 5:
			all = append(all, refusedSubscribe(v, id)...)
			want = append(want, rtAnswer{packets.Suback, id})
		case 6:
			all = append(all, rtUnsubscribe(v, id, fmt.Sprintf("rt/sub/%d", i-2))...)
			want = append(want, rtAnswer{packets.Unsuback, id})
		case 7:
			all = append(all, 0xc0, 0)
			want = append(want, rtAnswer{packets.Pingresp, 0})
		}
	}
	return all, want
}

// TestRTRefusalAcksEveryEnd: a pipelined write of every kind of packet,
// accepted and refused, gets every answer in order (each flow's acks in
// the order of its packets [MQTT-4.6.0-2..4]; here every answer in the
// order of what it answers), whatever follows the write: nothing (the
// last answers are not left held until some next read), a DISCONNECT
// (the held acks go out before the close), a malformed packet (they go
// out before the connection ends: what the broker handled it answers),
// the client shutting its side.
func TestRTRefusalAcksEveryEnd(t *testing.T) {
	b := start(t, Options{})
	ends := []struct {
		name string
		tail []byte
		half bool // the client shuts its write side after the write
	}{
		{"nothing", nil, false},
		{"disconnect", []byte{0xe0, 0}, false},
		{"subscribe-bad-flags", []byte{0x80, 0x06, 0, 9, 0, 1, 'x', 1}, false}, // a whole SUBSCRIBE (moreInput) whose fixed header is malformed
		{"subscribe-bad-body", []byte{0x82, 0x03, 0, 9, 0}, false},             // a whole SUBSCRIBE without filters [MQTT-3.8.3-3]
		{"publish-qos3", []byte{0x36, 0x05, 0, 1, 'x', 0, 1}, false},
		{"half-close", nil, true},
	}
	for _, v := range []byte{4, 5} {
		for _, end := range ends {
			t.Run(fmt.Sprintf("v%d/%s", v, end.name), func(t *testing.T) {
				r := dialRaw(t, b, fmt.Sprintf("rt-%d-%s", v, end.name), v, true, packets.Properties{})
				all, want := rtMixed(t, v, 160)
				for id := uint16(161); id <= 165; id++ { // held when the tail comes: a refused publish's ack
					all = append(all, qosPublish(t, v, "$SYS/rt", 1, id)...)
					want = append(want, rtAnswer{packets.Puback, id})
				}
				r.write(append(all, end.tail...))
				if end.half {
					if err := r.c.(*net.TCPConn).CloseWrite(); err != nil {
						t.Fatal(err)
					}
				}
				for i, w := range want {
					typ, body := r.read()
					var id uint16
					if len(body) >= 2 && typ != packets.Pingresp {
						id = binary.BigEndian.Uint16(body)
					}
					if typ != w.typ || id != w.id {
						t.Fatalf("answer %d: type %d id %d, want type %d id %d", i, typ, id, w.typ, w.id)
					}
				}
			})
		}
	}
}

// TestRTRefusedBurstAnsweredPromptly: a client that sends refused QoS 1
// publishes in one write (and a QoS 0 one last, which has no ack to
// carry the held ones out) and then waits gets every PUBACK within a bound,
// not at its next read, in the bursts of a 3.1.1 client publishing to a
// refused topic (each burst past turnRefusals: its next read is a
// flooder's); and with every read turn taken by someone else (a reader
// stuck in a hook holding its turn) each burst still gets its answers,
// late by at most turnWait, and the connection lives.
func TestRTRefusedBurstAnsweredPromptly(t *testing.T) {
	b := start(t, Options{})
	const bound = 2 * time.Second
	for _, v := range []byte{4, 5} {
		for _, taken := range []bool{false, true} {
			t.Run(fmt.Sprintf("v%d/taken=%v", v, taken), func(t *testing.T) {
				if taken {
					for range cap(b.turns) {
						b.turns <- struct{}{}
					}
					t.Cleanup(func() {
						for range cap(b.turns) {
							<-b.turns
						}
					})
				}
				r := dialRaw(t, b, fmt.Sprintf("burst-%d-%v", v, taken), v, true, packets.Properties{})
				id := uint16(1)
				for _, size := range []int{5, 40, 40, 5, 40, 1} {
					var all []byte
					first := id
					for range size {
						all = append(all, qosPublish(t, v, "$SYS/rt", 1, id)...)
						id++
					}
					// and a QoS 0 one, answered with nothing: the acks
					// held before it wait for no write of its own
					all = append(all, qosPublish(t, v, "$SYS/rt", 0, 0)...)
					began := time.Now()
					r.write(all)
					for want := first; want < id; want++ {
						r.c.SetReadDeadline(time.Now().Add(bound))
						typ, body, err := rtReadPacket(r.c)
						if err != nil {
							t.Fatalf("burst of %d: ack %d: %v after %v", size, want, err, time.Since(began))
						}
						if typ != packets.Puback || binary.BigEndian.Uint16(body) != want {
							t.Fatalf("burst of %d: type %d % x, want PUBACK %d", size, typ, body, want)
						}
					}
					if d := time.Since(began); d > bound {
						t.Fatalf("burst of %d answered in %v", size, d)
					}
				}
			})
		}
	}
}

// rtReadPacket reads one packet from c, with c's read deadline.
func rtReadPacket(c net.Conn) (byte, []byte, error) {
	var h [1]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return 0, nil, err
	}
	n, mult := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return 0, nil, errors.New("malformed remaining length")
		}
		var d [1]byte
		if _, err := io.ReadFull(c, d[:]); err != nil {
			return 0, nil, err
		}
		n += int(d[0]&0x7f) * mult
		if d[0]&0x80 == 0 {
			break
		}
		mult *= 128
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c, body); err != nil {
		return 0, nil, err
	}
	return h[0] >> 4, body, nil
}

// TestRTDeliverRefusalsNoTurn: messages the broker skips for a
// subscriber (a tree message over its Maximum Packet Size: writer.go's
// "deliver" refusal, made on its writer for what others published) do
// not make the subscriber a flooder: with every read turn taken, its next
// read (a PINGREQ) is handled at once, not after turnWait. The read turns
// counted every refusal made for the connection, so 16 messages skipped
// between two of its reads had its next read wait for a turn, as if it
// had sent 16 refused packets.
func TestRTDeliverRefusalsNoTurn(t *testing.T) {
	b := start(t, Options{})
	r := dialRaw(t, b, "skipped", 5, true, packets.Properties{})
	c := b.connOf(t, "skipped")
	for range cap(b.turns) {
		b.turns <- struct{}{} // every turn a flooder's
	}
	t.Cleanup(func() {
		for range cap(b.turns) {
			<-b.turns
		}
	})
	// A PINGRESP within turnWait once of a few tries: a read waiting for
	// a turn takes at least turnWait every time; one not waiting may
	// still be scheduled late on a loaded machine, but not every time.
	var took []time.Duration
	for range 5 {
		for range 2 * turnRefusals {
			b.refuse(c.p, "deliver", "$tree/big", fmt.Errorf("%w: skipped", errTooLarge))
		}
		began := time.Now()
		r.write([]byte{0xc0, 0})
		if typ, _ := r.read(); typ != packets.Pingresp {
			t.Fatalf("type %d, want PINGRESP", typ)
		}
		d := time.Since(began)
		if d < turnWait {
			return
		}
		took = append(took, d)
	}
	t.Fatalf("PINGRESP after %v: the reader waited for a read turn for refusals it did not send", took)
}

// TestRTPacketsBeforeOversizeAnswered: the whole packets a client sent
// before one over the limits (a PUBLISH declaring more than
// MaxPacketSize, a Remaining Length of five bytes), in the same write,
// are handled and answered before the connection ends (MQTT 5: then the
// DISCONNECT saying why), as they are when they come in a read of their
// own. The scan failed the whole read: its valid packets were dropped,
// unanswered, accepted publishes never delivered.
func TestRTPacketsBeforeOversizeAnswered(t *testing.T) {
	b := start(t, Options{MaxPacketSize: 1000})
	tails := []struct {
		name string
		tail []byte
		code byte // the MQTT 5 DISCONNECT's
	}{
		{"too-large", []byte{0x32, 0xff, 0xff, 0x03, 0, 1, 'x'}, 0x95},
		{"five-byte-length", []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}, 0x81},
	}
	for _, v := range []byte{4, 5} {
		for _, tail := range tails {
			t.Run(fmt.Sprintf("v%d/%s", v, tail.name), func(t *testing.T) {
				r := dialRaw(t, b, fmt.Sprintf("before-%d-%s", v, tail.name), v, true, packets.Properties{})
				var all []byte
				var want []rtAnswer
				for id := uint16(1); id <= 6; id++ {
					topic := "$SYS/rt" // refused
					if id%2 == 0 {
						topic = "rt/ok" // accepted
					}
					all = append(all, qosPublish(t, v, topic, 1, id)...)
					want = append(want, rtAnswer{packets.Puback, id})
				}
				all = append(all, 0xc0, 0)
				want = append(want, rtAnswer{packets.Pingresp, 0})
				if v == 5 {
					want = append(want, rtAnswer{packets.Disconnect, uint16(tail.code)})
				}
				r.write(append(all, tail.tail...))
				for i, w := range want {
					r.c.SetReadDeadline(time.Now().Add(testTimeout))
					typ, body, err := rtReadPacket(r.c)
					if err != nil {
						t.Fatalf("answer %d (want type %d id %d): %v", i, w.typ, w.id, err)
					}
					var id uint16
					switch {
					case typ == packets.Disconnect && len(body) > 0:
						id = uint16(body[0])
					case typ != packets.Pingresp && len(body) >= 2:
						id = binary.BigEndian.Uint16(body)
					}
					if typ != w.typ || id != w.id {
						t.Fatalf("answer %d: type %d (% x), want type %d id %d", i, typ, body, w.typ, w.id)
					}
				}
				r.c.SetReadDeadline(time.Now().Add(testTimeout))
				if _, _, err := rtReadPacket(r.c); !errors.Is(err, io.EOF) {
					t.Fatalf("after the answers: %v, want the connection closed", err)
				}
			})
		}
	}
}

// TestRTTurnBackWhenConnectionEnds: a flooder whose read, handled in a
// read turn, ends its connection (a malformed packet after its refused
// publishes, or the client gone after them) gives the turn back: a turn
// kept by an ended connection would be lost to every later flooder and,
// once all were, have each of them wait turnWait at every read.
func TestRTTurnBackWhenConnectionEnds(t *testing.T) {
	b := start(t, Options{})
	for _, end := range []struct {
		name string
		tail []byte
	}{
		{"malformed", []byte{0x36, 0x05, 0, 1, 'x', 0, 1}}, // QoS 3
		{"disconnect", []byte{0xe0, 0}},
	} {
		for _, v := range []byte{4, 5} {
			t.Run(fmt.Sprintf("v%d/%s", v, end.name), func(t *testing.T) {
				r := dialRaw(t, b, fmt.Sprintf("ends-%d-%s", v, end.name), v, true, packets.Properties{})
				burst := func(from uint16, tail []byte) {
					var all []byte
					for id := from; id < from+2*turnRefusals; id++ {
						all = append(all, qosPublish(t, v, "$SYS/rt", 1, id)...)
					}
					r.write(append(all, tail...))
					for id := from; id < from+2*turnRefusals; id++ {
						if typ, body := r.read(); typ != packets.Puback || binary.BigEndian.Uint16(body) != id {
							t.Fatalf("type %d % x, want PUBACK %d", typ, body, id)
						}
					}
				}
				burst(1, nil)                     // its next read is a flooder's
				burst(1+2*turnRefusals, end.tail) // read in a turn, and the connection ends
				r.c.SetReadDeadline(time.Now().Add(testTimeout))
				for {
					if _, _, err := rtReadPacket(r.c); err != nil {
						break // closed (after the DISCONNECT, v5)
					}
				}
				waitFor(t, "the read turn back", func() bool { return len(b.turns) == 0 })
			})
		}
	}
}
