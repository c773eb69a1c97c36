package broker

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

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
