package broker

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestQoS2ReconnectStorm (red team h-rtqos2): a persistent session's
// client (Clean Start 0, Session Expiry 3600) connects again and again
// (rounds times), each CONNECT taking the session over from the last
// connection, with QoS 2 flows outstanding both ways: its own publishes
// waiting for PUBREC or PUBCOMP (resent, PUBLISH with DUP or PUBREL, right
// after each CONNECT, before its CONNACK is read) and deliveries to it
// waiting for PUBREL, while another client publishes to it at QoS 2. The
// client keeps its QoS 2 state across connections as MQTT asks of it
// (Method A: a delivery is passed on once, at its PUBLISH, its id kept
// until PUBREL) and ignores what reaches a connection it left. Each round
// waits on a barrier the broker gives (the CONNACK, a PUBREC, all
// completed) or closes the last connection itself first. At the end every
// message was delivered exactly once each way, and nothing is left in
// flight.
//
// Failing at first (red team h-rtqos2): on e1b32db, 20 runs of
// close/v4 and close/v5 (every round closes the last connection first)
// failed 18 of 40: 3 deliveries twice, 3 flows never completed, 15 with
// $SYS in-flight left above 0; 30 runs of mixed/v4 and mixed/v5 failed
// 10 of 60: 9 on the in-flight count, one delivery twice. On 5e84230
// (before h-qos2dup) about 26 of 40 mixed failed, most delivering twice.
// 8 more runs of close/v4 and close/v5 with the diagnostics below: 16 of
// 16 left $SYS in-flight at 3 to 16 with no filed client holding
// anything (a count that leaks), 5 delivered a message of the client's
// twice or three times, and 3 ended with 59 of the 60 messages
// published to the client delivered and nothing pending (a message the
// publisher had PUBCOMP for, lost, or dropped by a bound not checked
// here). A change that closed and kept a connection's ids under the
// takeover lock (dropConn) did not help (20 runs: 5 twice, 17 in-flight).
//
// h-qos2storm found four causes (tests: TestUnwrittenPubcompKept,
// TestTakenOverRefuses, TestSurrenderWaitsForPacket) and fixed them: a
// PUBCOMP mochi could not write, dropped uncounted (the in-flight leak);
// the old reader's PUBREL, acknowledgements and displacing publishes
// changing the old client's map after mochi copied it (counted out
// twice, a delivery deleted: stuck or lost); the client's QoS 2 state
// kept for the old client when a takeover came between dropConn's close
// and keep (resends delivered twice). After them (-race, 20 runs of the
// four cases): 5 of 80 failed, each a delivery twice or $SYS in-flight
// at -1. h-storm2 traced those by packet id (4 of 160 -race runs on
// 1eb2561): mochi cloned the old client's map and cleared it later, and
// the old connection changed it between: a PUBREC its reader set was
// cleared uncopied (the resend delivered again), a delivery its writer
// took back was counted out though the new client held it (-1); and a
// resend whose PUBREC had moved was looked up after the move and
// delivered again by the old reader. Fixed by mochi change 74
// (TestMoteTakeoverMovesInflight) and idSpaces.publishing
// (TestResentQoS2AtTakeoverOnce): 80 -race runs of each case passed
// (320 of 320), about 2 s a run of the four. Each wait is bounded
// (testTimeout, the settling 10 s).
//
// h-q2: still 3 of 150 -race runs on c2bc329 (close/v5, mixed/v4,
// close/v4), each a message of the client's delivered twice with $SYS
// in-flight 1; traced on 4bd7298, 5 of 84 runs, all 7 duplicates one
// cause: a takeover waiting for a displacing QoS 2 PUBLISH was woken at
// OnPublish, the publish left OnPublish and mochi set its PUBREC before
// the takeover ran again, and the takeover put the displaced delivery
// back over the PUBREC (lost). Fixed in idSpaces.waitBusyLocked (it asks
// again once woken; TestSurrenderWaitsAgainForPubrec). After: traced
// 0 of 200 runs; plain builds alternated, main 4 of 260, this 0 of 260.
func TestQoS2ReconnectStorm(t *testing.T) {
	for _, tc := range []qos2Storm{
		{name: "mixed/v5", v: 5, modes: 4}, {name: "mixed/v4", v: 4, modes: 4},
		{name: "close/v5", v: 5, modes: 1, first: 3}, {name: "close/v4", v: 4, modes: 1, first: 3},
	} {
		t.Run(tc.name, func(t *testing.T) { runQoS2Storm(t, tc) })
	}
}

// qos2Storm is a variant of TestQoS2ReconnectStorm.
type qos2Storm struct {
	name    string
	v       byte
	modes   int    // round r waits as mode r%modes says
	first   int    // the first mode
	recvMax uint16 // the storm client's Receive Maximum (MQTT 5); 0: none sent
	ws      bool   // every other connection of the storm client is a WebSocket
	stuck   int    // a subscriber to every publish of the test is stuck, its queue full, until round stuck (0: none): they wait in OnPublish
	opts    Options
}

// runQoS2Storm runs one variant of TestQoS2ReconnectStorm.
func runQoS2Storm(t *testing.T, tc qos2Storm) {
	const rounds, inbound = 120, 60
	v := tc.v
	b := start(t, tc.opts)
	id := "st-" + strings.ReplaceAll(tc.name, "/", "-")
	watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id+"-watch", true, 0, nil))
	watcher.subscribe(t, 5, id+"/in/#", 0)
	free := func() {}
	if tc.stuck > 0 {
		free = fullSubscriberTo(t, b, id+"-stuck", id+"/#", id+"/fill", nil)
	}
	x := &stormClient{t: t, v: v, id: id, recvMax: tc.recvMax, out: map[uint16]*stormOut{}, in: map[uint16]bool{}, got: map[string]int{}}
	if tc.ws {
		x.wsAddr = b.WSAddr()
	}
	t.Cleanup(x.closeAll)
	x.connect(t, b.TCPAddr(), true, false)
	x.subscribe(t, id+"/out/#")
	pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id+"-pub", true, 0, nil))
	pubDone := make(chan error, 1)
	go func() { pubDone <- publishQoS2(pub, id+"/out/x", inbound) }()
	for r := range rounds {
		if r == tc.stuck {
			free()
		}
		mode := tc.first + r%tc.modes
		if mode == 3 {
			x.closeCurrent() // the client closes its connection as it connects again
		}
		msg := x.connect(t, b.TCPAddr(), false, true)
		switch mode {
		case 1:
			waitFor(t, "the round's PUBREC", func() bool { return x.received(msg) })
		case 2:
			waitFor(t, "the client's publishes completed", x.completed)
		}
	}
	select {
	case err := <-pubDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testTimeout):
		t.Fatal("the publisher did not finish")
	}
	x.connect(t, b.TCPAddr(), false, false)
	settleBy := time.Now().Add(10 * time.Second)
	for !x.settled(inbound) && time.Now().Before(settleBy) {
		time.Sleep(time.Millisecond)
	}
	if !x.settled(inbound) {
		x.mu.Lock()
		msg := fmt.Sprintf("not settled: %d own publishes waiting, deliveries waiting for PUBREL %v, %d of %d delivered", len(x.out), x.in, len(x.got), inbound)
		x.mu.Unlock()
		t.Fatal(msg)
	}
	pub.publish1(t, 5, id+"/in/marker", "")
	count := map[string]int{}
	for _, topic := range watcher.topicsUntil(t, id+"/in/marker") {
		count[topic]++
	}
	for i := range rounds {
		if n := count[fmt.Sprintf("%s/in/%d", id, i)]; n != 1 {
			t.Errorf("the client's message %d delivered %d times, want once", i, n)
		}
	}
	if len(count) != rounds {
		t.Errorf("%d topics delivered, want %d", len(count), rounds)
	}
	x.mu.Lock()
	for i := range inbound {
		if n := x.got[fmt.Sprint(i)]; n != 1 {
			t.Errorf("message %d to the client delivered %d times, want once", i, n)
		}
	}
	x.mu.Unlock()
	deadline := time.Now().Add(testTimeout)
	for atomic.LoadInt64(&b.server.Info.Inflight) != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := atomic.LoadInt64(&b.server.Info.Inflight); n != 0 {
		var held []string
		for cid, cl := range b.server.Clients.GetAll() {
			for _, pk := range cl.State.Inflight.GetAll(false) {
				held = append(held, fmt.Sprintf("%s:%d:type%d", cid, pk.PacketID, pk.FixedHeader.Type))
			}
		}
		t.Errorf("$SYS in-flight %d, held by filed clients: %v", n, held)
	}
	// The session is filed: nothing is kept for it apart (keptInbound),
	// and its connection waits for no late publish of a connection gone
	// (unresolved: the old reader still in OnPublish).
	b.keptIn.mu.Lock()
	kept := len(b.keptIn.by)
	b.keptIn.mu.Unlock()
	o := b.connByID(id).out.(*mqttOut)
	o.ids.mu.Lock()
	late := 0
	for _, l := range o.ids.late {
		select {
		case <-l.done: // resolved: a PUBREC it holds is counted in flight, checked above
		default:
			late++
		}
	}
	o.ids.mu.Unlock()
	if kept != 0 || late != 0 {
		t.Errorf("kept apart for %d sessions, %d late publishes unresolved, want none", kept, late)
	}
}

// stormClient is a persistent session's client over raw connections: it
// keeps its QoS 2 state across them and acts only on what reaches the
// latest (gen).
type stormClient struct {
	t       *testing.T
	v       byte
	id      string
	recvMax uint16 // Receive Maximum in its CONNECT (MQTT 5); 0: none
	wsAddr  string // if set, every other connection is a WebSocket to it

	mu      sync.Mutex
	gen     int
	conns   []net.Conn
	out     map[uint16]*stormOut // own publishes not completed, by packet id
	in      map[uint16]bool      // deliveries answered PUBREC, waiting for PUBREL
	got     map[string]int       // deliveries passed on, by payload
	next    uint16               // the last packet id used
	sent    int                  // own publishes made
	acked   chan struct{}        // the latest connection's CONNACK or SUBACK
	present bool
	code    byte
	readers sync.WaitGroup
}

// stormOut is one of the client's own QoS 2 publishes.
type stormOut struct {
	topic string
	rec   bool // PUBREC read: PUBREL is resent, not the PUBLISH
}

// connect dials a new connection and writes CONNECT, the resends of the
// client's QoS 2 state and, with publish, a new QoS 2 publish (whose id
// it returns) in one write, then waits for the CONNACK: it must be
// success, with the session present unless first.
func (x *stormClient) connect(t *testing.T, addr string, first, publish bool) uint16 {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	x.mu.Lock()
	if x.wsAddr != "" && x.gen%2 == 1 {
		c.Close()
		raw, err := net.Dial("tcp", x.wsAddr)
		if err != nil {
			x.mu.Unlock()
			t.Fatal(err)
		}
		c = dialWSStream(t, "ws://"+x.wsAddr+"/mqtt", raw, nil)
	}
	c.SetDeadline(time.Now().Add(testTimeout))
	x.gen++
	gen := x.gen
	x.conns = append(x.conns, c)
	acked := make(chan struct{}, 1)
	x.acked = acked
	buf := rawConnect(t, x.v, x.id, false, 3600, nil)
	if x.recvMax > 0 {
		buf = ownerPacket(t, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
			Connect:    packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: x.id},
			Properties: packets.Properties{ReceiveMaximum: x.recvMax, SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true},
		})
	}
	ids := make([]uint16, 0, len(x.out))
	for id := range x.out {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if o := x.out[id]; o.rec {
			buf = append(buf, 0x62, 0x02, byte(id>>8), byte(id))
		} else {
			buf = append(buf, publishBytes(2, true, id, o.topic, "", x.v == 5)...)
		}
	}
	var msg uint16
	if publish {
		x.next++
		msg = x.next
		x.out[msg] = &stormOut{topic: fmt.Sprintf("%s/in/%d", x.id, x.sent)}
		x.sent++
		buf = append(buf, publishBytes(2, false, msg, x.out[msg].topic, "", x.v == 5)...)
	}
	x.mu.Unlock()
	x.readers.Add(1)
	go x.read(c, gen)
	if _, err := c.Write(buf); err != nil {
		t.Fatal(err)
	}
	select {
	case <-acked:
	case <-time.After(testTimeout):
		t.Fatal("no CONNACK")
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.code != 0 || x.present == first {
		t.Fatalf("CONNACK %#x, session present %v", x.code, x.present)
	}
	return msg
}

// subscribe subscribes the latest connection to filter at QoS 2.
func (x *stormClient) subscribe(t *testing.T, filter string) {
	t.Helper()
	x.mu.Lock()
	acked := make(chan struct{}, 1)
	x.acked = acked
	body := []byte{0x00, 0x01}
	if x.v == 5 {
		body = append(body, 0)
	}
	body = binary.BigEndian.AppendUint16(body, uint16(len(filter)))
	body = append(append(body, filter...), 2)
	x.conns[len(x.conns)-1].Write(append(append([]byte{0x82}, varint(len(body))...), body...)) //nolint:errcheck // its SUBACK waited for below
	x.mu.Unlock()
	select {
	case <-acked:
	case <-time.After(testTimeout):
		t.Fatal("no SUBACK")
	}
}

// read reads connection gen until it ends, answering as the client does
// while gen is the latest.
func (x *stormClient) read(c net.Conn, gen int) {
	defer x.readers.Done()
	r := bufio.NewReader(c)
	for {
		h, body, err := readPacketBody(r)
		if err != nil {
			return
		}
		x.mu.Lock()
		if gen == x.gen {
			x.handle(c, h, body)
		}
		x.mu.Unlock()
	}
}

// handle acts on one packet of the latest connection c (mu held).
func (x *stormClient) handle(c net.Conn, h byte, body []byte) {
	id := func() uint16 {
		if len(body) < 2 {
			x.t.Errorf("packet %#x % x too short", h, body)
			return 0
		}
		return binary.BigEndian.Uint16(body)
	}
	ack := func(h byte, id uint16) { c.Write([]byte{h, 0x02, byte(id >> 8), byte(id)}) } //nolint:errcheck // a lost ack is resent
	switch h >> 4 {
	case 2: // CONNACK
		x.present, x.code = len(body) > 1 && body[0]&1 == 1, body[1]
		x.acked <- struct{}{}
	case 9: // SUBACK
		x.acked <- struct{}{}
	case 3: // PUBLISH
		m, ok := decodeRawPublish(h, body, x.v)
		if !ok {
			x.t.Errorf("PUBLISH % x does not decode", body)
			return
		}
		if m.qos != 2 {
			x.t.Errorf("PUBLISH at QoS %d, want 2", m.qos)
			return
		}
		if !x.in[m.id] {
			x.in[m.id] = true
			x.got[m.payload]++
		}
		ack(0x50, m.id)
	case 6: // PUBREL
		i := id()
		delete(x.in, i)
		ack(0x70, i)
	case 5: // PUBREC
		i := id()
		if x.v == 5 && len(body) > 2 && body[2] >= 0x80 {
			x.t.Errorf("PUBREC of %d: reason %#x", i, body[2])
			return
		}
		if o := x.out[i]; o != nil {
			o.rec = true
			ack(0x62, i)
		}
	case 7: // PUBCOMP
		delete(x.out, id())
	}
}

// received reports whether the publish with id msg was answered PUBREC.
func (x *stormClient) received(msg uint16) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	o := x.out[msg]
	return o == nil || o.rec
}

// completed reports whether all the client's publishes completed.
func (x *stormClient) completed() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.out) == 0
}

// settled reports whether every flow completed both ways, n messages
// delivered to the client.
func (x *stormClient) settled(n int) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.out) == 0 && len(x.in) == 0 && len(x.got) >= n
}

// closeCurrent closes the latest connection, as a client does before it
// connects again.
func (x *stormClient) closeCurrent() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.conns[len(x.conns)-1].Close()
}

// closeAll closes every connection and waits for their readers.
func (x *stormClient) closeAll() {
	x.mu.Lock()
	for _, c := range x.conns {
		c.Close()
	}
	x.mu.Unlock()
	x.readers.Wait()
}

// publishQoS2 publishes n QoS 2 messages (payloads 0 to n-1) to topic
// from p, an MQTT 5 client, one at a time, each to its PUBCOMP.
func publishQoS2(p *ownerPeer, topic string, n int) error {
	for i := range n {
		id := uint16(i%60000 + 1)
		if _, err := p.c.Write(publishBytes(2, false, id, topic, fmt.Sprint(i), true)); err != nil {
			return fmt.Errorf("publish %d: %w", i, err)
		}
		if err := readType(p.r, 5); err != nil {
			return fmt.Errorf("PUBREC of %d: %w", i, err)
		}
		if _, err := p.c.Write([]byte{0x62, 0x02, byte(id >> 8), byte(id)}); err != nil {
			return fmt.Errorf("PUBREL of %d: %w", i, err)
		}
		if err := readType(p.r, 7); err != nil {
			return fmt.Errorf("PUBCOMP of %d: %w", i, err)
		}
	}
	return nil
}

// readType reads packets from r until one of type typ.
func readType(r *bufio.Reader, typ byte) error {
	for {
		h, _, err := readPacketBody(r)
		if err != nil {
			return err
		}
		if h>>4 == typ {
			return nil
		}
	}
}
