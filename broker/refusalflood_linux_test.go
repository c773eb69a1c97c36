package broker

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// refusedSubscribe encodes a SUBSCRIBE of one filter the broker refuses
// ("a/#/b": '#' not last, [MQTT-4.7.1-1]).
func refusedSubscribe(v byte, id uint16) []byte {
	body := binary.BigEndian.AppendUint16(nil, id)
	if v == 5 {
		body = append(body, 0)
	}
	body = binary.BigEndian.AppendUint16(body, 5)
	body = append(append(body, "a/#/b"...), 1)
	return append(append([]byte{0x82}, varint(len(body))...), body...)
}

// writeCounter counts the writes of a broker connection's netConn.
type writeCounter struct {
	net.Conn
	n atomic.Int64
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.n.Add(1)
	return w.Conn.Write(p)
}

// countWrites has the broker's end of c count its writes (mochi's: acks,
// SUBACKs) from now on. c must be idle: the broker's end is found by its
// address and its connection swapped under its write lock.
func countWrites(t *testing.T, b *Broker, c net.Conn) *atomic.Int64 {
	t.Helper()
	b.rawMu.Lock()
	defer b.rawMu.Unlock()
	for nc := range b.raw {
		if nc.RemoteAddr().String() == c.LocalAddr().String() {
			w := &writeCounter{Conn: nc.Conn}
			nc.wmu.Lock()
			nc.Conn = w
			nc.wmu.Unlock()
			return &w.n
		}
	}
	t.Fatalf("no broker connection from %s", c.LocalAddr())
	return nil
}

// TestRefusalAcksWrittenTogether: a client that sends many refused
// packets in one write gets every answer, in order, in a few writes of
// the broker's, as accepted QoS 1 publishes get their PUBACKs
// (TestAcksHeldWhilePipelined): refused QoS 1 publishes (MQTT 5: PUBACK
// with the reason code, written by Mote's hook), SUBSCRIBEs refused whole
// (SUBACK 0x8F / 0x80), and both mixed. A write(2) each made a client
// flooding them cost the broker a system call a packet, under the client's
// write lock (bench/README.md, "Refusal floods").
func TestRefusalAcksWrittenTogether(t *testing.T) {
	b := start(t, Options{})
	const n = 200
	cases := []struct {
		name string
		v    byte
		sub  func(i int) bool // whether packet i is a refused SUBSCRIBE, else a refused QoS 1 publish
		most int64            // writes the answers may take
	}{
		{"v5/publishes", 5, func(int) bool { return false }, n / 5},   // held: 20 (a Reason String each, ~100 bytes); a write each: 200
		{"v5/subscribes", 5, func(int) bool { return true }, n / 10},  // held: 6; a write each: 200
		{"v5/mixed", 5, func(i int) bool { return i%5 == 3 }, n / 10}, // held: 9; a write each: 200
		{"v4/subscribes", 4, func(int) bool { return true }, n / 10},  // held: 5; a write each: 200
		{"v4/mixed", 4, func(i int) bool { return i%5 == 3 }, n / 10}, // held: 9; before: 87 (PUBACKs were held, not across a SUBSCRIBE)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := dialRaw(t, b, "flood-"+tc.name, tc.v, true, packets.Properties{})
			var all []byte
			for i := range n {
				id := uint16(i + 1)
				if tc.sub(i) {
					all = append(all, refusedSubscribe(tc.v, id)...)
				} else {
					all = append(all, qosPublish(t, tc.v, "$SYS/flood", 1, id)...)
				}
			}
			writes := countWrites(t, b, r.c)
			r.write(all)
			for i := range n {
				typ, body := r.read()
				id := binary.BigEndian.Uint16(body)
				want := byte(packets.Puback)
				if tc.sub(i) {
					want = packets.Suback
				}
				if typ != want || id != uint16(i+1) {
					t.Fatalf("answer %d: type %d id %d, want type %d id %d", i, typ, id, want, i+1)
				}
				refused := tc.v == 4 || body[2] >= 0x80 // a 3.1.1 PUBACK has no code: the report says why
				if tc.sub(i) {
					refused = body[len(body)-1] >= 0x80
				}
				if !refused {
					t.Fatalf("answer %d (type %d) not a refusal: % x", i, typ, body)
				}
			}
			t.Logf("%d refused packets answered in %d writes", n, writes.Load())
			if w := writes.Load(); w > tc.most {
				t.Fatalf("%d refused packets answered in %d writes, want at most %d", n, w, tc.most)
			}
		})
	}
}

// TestRefusalAcksNotHeldPastGrant: a SUBSCRIBE that files a filter, sent
// after refused packets in the same write, gets its SUBACK after their
// acks and before its retained message, and the acks held for the
// refused packets are not kept waiting behind it.
func TestRefusalAcksNotHeldPastGrant(t *testing.T) {
	b := start(t, Options{})
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			seed := dialRaw(t, b, fmt.Sprintf("seed%d", v), v, true, packets.Properties{})
			topic := fmt.Sprintf("kept/%d", v)
			seed.write(qosPublishRetained(t, v, topic))
			if typ, _ := seed.read(); typ != packets.Puback {
				t.Fatalf("retained publish: type %d", typ)
			}
			r := dialRaw(t, b, fmt.Sprintf("grant%d", v), v, true, packets.Properties{})
			all := append(qosPublish(t, v, "$SYS/flood", 1, 1), refusedSubscribe(v, 2)...)
			body := binary.BigEndian.AppendUint16(nil, 3)
			if v == 5 {
				body = append(body, 0)
			}
			body = binary.BigEndian.AppendUint16(body, uint16(len(topic)))
			body = append(append(body, topic...), 0)
			all = append(all, append(append([]byte{0x82}, varint(len(body))...), body...)...)
			r.write(all)
			for _, want := range []struct {
				typ byte
				id  uint16
			}{{packets.Puback, 1}, {packets.Suback, 2}, {packets.Suback, 3}, {packets.Publish, 0}} {
				typ, body := r.read()
				if typ != want.typ || (want.id != 0 && binary.BigEndian.Uint16(body) != want.id) {
					t.Fatalf("got type %d (% x), want type %d id %d", typ, body, want.typ, want.id)
				}
			}
		})
	}
}

// qosPublishRetained encodes a retained QoS 1 PUBLISH of topic, id 1.
func qosPublishRetained(t *testing.T, v byte, topic string) []byte {
	t.Helper()
	p := qosPublish(t, v, topic, 1, 1)
	p[0] |= 1
	return p
}

// TestFloodReadsInTurns: a connection that refused turnRefusals packets
// or more of a read handles its next read's packets only in a read turn
// (turns.go): with every turn taken, its next refused packets are
// answered no sooner than turnWait; once turns are free it goes on, and
// a read of nothing refused gives its turn back. Without the turns it
// was answered at once, taking a core from every other client.
func TestFloodReadsInTurns(t *testing.T) {
	b := start(t, Options{})
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			r := dialRaw(t, b, fmt.Sprintf("turns%d", v), v, true, packets.Properties{})
			burst := func(from int) time.Duration {
				var all []byte
				for i := range 2 * turnRefusals {
					all = append(all, qosPublish(t, v, "$SYS/flood", 1, uint16(from+i))...)
				}
				began := time.Now()
				r.write(all)
				for i := range 2 * turnRefusals {
					if typ, body := r.read(); typ != packets.Puback || binary.BigEndian.Uint16(body) != uint16(from+i) {
						t.Fatalf("answer %d: type %d % x", from+i, typ, body)
					}
				}
				return time.Since(began)
			}
			ping := func() {
				r.write([]byte{0xc0, 0})
				if typ, _ := r.read(); typ != packets.Pingresp {
					t.Fatalf("PINGRESP: type %d", typ)
				}
			}
			burst(1) // refused: the next read is a flooder's
			taken := 0
			giveBack := func() {
				for ; taken > 0; taken-- {
					<-b.turns
				}
			}
			t.Cleanup(giveBack) // a failure leaves none taken for the next case
			for range cap(b.turns) {
				b.turns <- struct{}{} // every turn someone else's
				taken++
			}
			if d := burst(100); d < turnWait {
				t.Fatalf("answered in %v with every turn taken, want at least %v", d, turnWait)
			}
			giveBack()
			burst(200)
			ping() // read in a turn: the burst before was refused
			ping() // gives it back
			if n := len(b.turns); n != 0 {
				t.Fatalf("%d turns held after a read of nothing refused", n)
			}
		})
	}
}
