package broker

import (
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// Retained replays (replay.go, replayRows): every subscriber gets every
// row once, and a row's values in the order they were published, while
// rows change during the replay; under Receive Maximum 1; and replays of
// one filter share one list of rows.

// loadRows stores n retained rows dev/dNNNN/state = "0" at QoS 1.
func loadRows(t testing.TB, b *Broker, n int) {
	t.Helper()
	for i := range n {
		if err := b.Publish(testCtx(t), systemPrincipal, Message{Topic: rowTopic(i), Payload: []byte("0"), QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	settle(t, b)
}

func rowTopic(i int) string { return fmt.Sprintf("dev/d%04d/state", i) }

// TestReplayRowsOnceInOrder: subscribers replaying 1,000 retained rows
// while 100 of them change twice (to 1, then 2) get every unchanged row
// exactly once, retained, and every changed row's values in order: at
// most one retained 0, then the live 1 and 2, each once; never a retained
// value after a live one (a dashboard would go back in time), never one
// twice. MQTT 3.1.1 at QoS 0, and MQTT 5 at QoS 1 with Receive Maximum 1.
func TestReplayRowsOnceInOrder(t *testing.T) {
	const rows, changed, subs = 1000, 100, 4
	for _, tc := range []struct {
		name string
		v5   bool
	}{
		{"v3.1.1 QoS 0", false},
		{"v5 QoS 1 Receive Maximum 1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			loadRows(t, b, rows)
			ins := make([]*inbox[msg], subs)
			for i := range ins {
				ins[i] = replaySubscriber(t, b, fmt.Sprintf("sub-%d", i), tc.v5)
			}
			for v := 1; v <= 2; v++ {
				for i := rows - changed; i < rows; i++ {
					if err := b.Publish(testCtx(t), systemPrincipal, Message{Topic: rowTopic(i), Payload: []byte(fmt.Sprint(v)), QoS: 1, Retain: true}); err != nil {
						t.Fatal(err)
					}
				}
			}
			// A last live publish (not retained: delivered at once, so
			// after a barrier): once it is in, nothing else is on its way.
			settle(t, b)
			if err := b.Publish(testCtx(t), systemPrincipal, Message{Topic: "dev/last/state", Payload: []byte("end"), QoS: 1}); err != nil {
				t.Fatal(err)
			}
			for i, in := range ins {
				waitFor(t, fmt.Sprintf("sub-%d's last message", i), func() bool {
					in.mu.Lock()
					defer in.mu.Unlock()
					return len(in.msgs) > 0 && in.msgs[len(in.msgs)-1].topic == "dev/last/state"
				})
				checkReplayed(t, fmt.Sprintf("sub-%d", i), in.wait(t, 1), rows, changed)
			}
		})
	}
}

// replaySubscriber subscribes dev/+/state at QoS 1 (MQTT 5: Receive
// Maximum 1) and records what arrives.
func replaySubscriber(t *testing.T, b *Broker, id string, v5 bool) *inbox[msg] {
	t.Helper()
	if !v5 {
		c := dial3(t, b, id, true)
		c.sub(t, "dev/+/state", 0)
		return &c.inbox
	}
	in := &inbox[msg]{got: make(chan struct{}, 1)}
	one := uint16(1)
	c := dial5(t, b, id, paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) {
			in.add(msg{p.Packet.Topic, string(p.Packet.Payload), p.Packet.QoS, p.Packet.Retain})
			return true, nil
		},
	}}, &paho5.Connect{CleanStart: true, Properties: &paho5.ConnectProperties{ReceiveMaximum: &one}})
	if _, err := c.Subscribe(testCtx(t), &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "dev/+/state", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	return in
}

// checkReplayed checks one subscriber's messages (see
// TestReplayRowsOnceInOrder).
// The changed rows are the last changed of rows.
func checkReplayed(t *testing.T, who string, got []msg, rows, changed int) {
	t.Helper()
	seen := map[string][]msg{}
	for _, m := range got[:len(got)-1] {
		seen[m.topic] = append(seen[m.topic], m)
	}
	for i := range rows {
		ms, topic := seen[rowTopic(i)], rowTopic(i)
		delete(seen, topic)
		if i < rows-changed {
			if len(ms) != 1 || !ms[0].retained || ms[0].payload != "0" {
				t.Errorf("%s: %s: got %+v, want one retained 0", who, topic, ms)
			}
			continue
		}
		if len(ms) > 0 && ms[0].retained && ms[0].payload == "0" {
			ms = ms[1:]
		}
		if len(ms) != 2 || ms[0].retained || ms[1].retained || ms[0].payload != "1" || ms[1].payload != "2" {
			t.Errorf("%s: %s: got %+v after the retained 0 (if any), want live 1 then live 2", who, topic, seen[topic])
		}
	}
	for topic, ms := range seen {
		t.Errorf("%s: unexpected %s: %+v", who, topic, ms)
	}
}

// TestReplayReceiveMaximum: a retained replay at QoS 1 to a client that
// accepts one message in flight never has two in flight: the client reads
// each PUBLISH, sees its session with exactly one, and acknowledges it;
// every row comes once.
func TestReplayReceiveMaximum(t *testing.T) {
	const rows = 50
	b := start(t, Options{})
	loadRows(t, b, rows)
	r := dialRaw(t, b, "rm1", 5, true, packets.Properties{ReceiveMaximum: 1})
	r.subscribe(1, "dev/+/state", 1)
	cl := b.connOf(t, "rm1").out.(*mqttOut).cl
	got := map[string]int{}
	for range rows {
		typ, body := r.read()
		if typ != packets.Publish {
			t.Fatalf("packet type %d, want a PUBLISH", typ)
		}
		n := int(binary.BigEndian.Uint16(body))
		topic, id := string(body[2:2+n]), binary.BigEndian.Uint16(body[2+n:])
		got[topic]++
		if in := cl.State.Inflight.Len(); in != 1 {
			t.Fatalf("%d messages in flight with Receive Maximum 1", in)
		}
		r.write([]byte{0x40, 2, byte(id >> 8), byte(id)}) // PUBACK
	}
	for i := range rows {
		if got[rowTopic(i)] != 1 {
			t.Errorf("%s came %d times", rowTopic(i), got[rowTopic(i)])
		}
	}
}

// TestReplayListShared: replays of a filter share its list of rows while
// the store holds the same rows; a row added makes a new list; a list no
// replay holds goes.
func TestReplayListShared(t *testing.T) {
	var s tree.Store
	var ls replayLists
	for i := range 100 {
		s.Set(rowTopic(i), wireString("0"), 0)
	}
	a := ls.list(&s, "dev/+/state")
	if b := ls.list(&s, "dev/+/state"); b != a {
		t.Error("two replays of a filter while no row was added: two lists")
	}
	s.Set(rowTopic(1), wireString("changed"), 0) // values do not matter
	if b := ls.list(&s, "dev/+/state"); b != a {
		t.Error("a value changed: a new list")
	}
	if o := ls.list(&s, "dev/#"); o == a || len(o.refs) != 100 {
		t.Errorf("another filter: shared %v, %d rows", o == a, len(o.refs))
	}
	s.Set(rowTopic(100), wireString("0"), 0)
	b := ls.list(&s, "dev/+/state")
	if b == a || len(b.refs) != 101 || len(a.refs) != 100 {
		t.Errorf("a row added: shared %v, %d rows (the old list %d)", b == a, len(b.refs), len(a.refs))
	}
	a, b = nil, nil
	for range 10 {
		runtime.GC()
		if ls.byFilter["dev/+/state"].Value() == nil {
			return
		}
	}
	t.Error("a list no replay holds is kept")
}

func wireString(s string) wire.Value { return wire.Value{Kind: wire.String, Data: s} }

// TestReplayChangeMidway: rows that change while a replay is under way
// (its writer waits for the client's one in-flight slot, the first 512
// rows read) come as live publishes in order, not first as a retained
// publish of their newest value that the live ones then take back.
func TestReplayChangeMidway(t *testing.T) {
	const rows, changed = 1000, 100
	b := start(t, Options{})
	loadRows(t, b, rows)
	r := dialRaw(t, b, "mid", 5, true, packets.Properties{ReceiveMaximum: 1})
	r.subscribe(1, "dev/+/state", 1)
	var got []msg
	m, id := readPublish(r)
	got = append(got, m)
	for v := 1; v <= 2; v++ { // rows replay reads after the first 512
		for i := rows - changed; i < rows; i++ {
			if err := b.Publish(testCtx(t), systemPrincipal, Message{Topic: rowTopic(i), Payload: []byte(fmt.Sprint(v)), QoS: 1, Retain: true}); err != nil {
				t.Fatal(err)
			}
		}
	}
	settle(t, b) // the changes were delivered: the last publish (not retained: delivered at once) comes after them
	if err := b.Publish(testCtx(t), systemPrincipal, Message{Topic: "dev/last/state", Payload: []byte("end"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	for m.topic != "dev/last/state" {
		r.write([]byte{0x40, 2, byte(id >> 8), byte(id)}) // PUBACK
		m, id = readPublish(r)
		got = append(got, m)
	}
	checkReplayed(t, "mid", got, rows, changed)
}

// readPublish reads one PUBLISH of an MQTT 5 raw client (failing on any
// other packet): the message and its packet id.
func readPublish(r *raw) (msg, uint16) {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(testTimeout))
	br := byteReader{r.c} // reads no further than the packet
	h, err := br.ReadByte()
	if err != nil || h>>4 != packets.Publish {
		r.t.Fatalf("got packet %#x (%v), want a PUBLISH", h, err)
	}
	n, err := binary.ReadUvarint(br) // MQTT's Variable Byte Integer
	if err != nil || n > 1<<20 {
		r.t.Fatalf("remaining length %d (%v)", n, err)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r.c, body); err != nil {
		r.t.Fatal(err)
	}
	tl := int(binary.BigEndian.Uint16(body))
	m := msg{topic: string(body[2 : 2+tl]), qos: h >> 1 & 3, retained: h&1 == 1}
	rest := body[2+tl:]
	var id uint16
	if m.qos > 0 {
		id, rest = binary.BigEndian.Uint16(rest), rest[2:]
	}
	pl, k := binary.Uvarint(rest)
	m.payload = string(rest[k+int(pl):])
	return m, id
}

// byteReader reads one byte at a time.
type byteReader struct{ io.Reader }

func (b byteReader) ReadByte() (byte, error) {
	var p [1]byte
	_, err := io.ReadFull(b.Reader, p[:])
	return p[0], err
}

// TestReplayStalledSubscriber: a subscriber that stops reading in the
// middle of its replay (its writer blocked on a full socket) holds back
// nobody: other subscribers of the same filter, whose replays share its
// list of rows, get every row.
func TestReplayStalledSubscriber(t *testing.T) {
	const rows = 2000
	b := start(t, Options{})
	big := make([]byte, 8192) // 16 MB of rows: more than the socket buffers hold (Linux: 4 + 6 MB at most)
	for i := range big {
		big[i] = 'x'
	}
	for i := range rows {
		if err := b.Publish(testCtx(t), systemPrincipal, Message{Topic: rowTopic(i), Payload: big, QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	settle(t, b)
	stalled := dialRaw(t, b, "stalled", 4, true, packets.Properties{})
	stalled.subscribe(1, "dev/+/state", 0) // and never reads again
	for i := range 3 {
		c := dial3(t, b, fmt.Sprintf("fast-%d", i), true)
		c.sub(t, "dev/+/state", 0)
		got := map[string]bool{}
		for _, m := range c.wait(t, rows) {
			got[m.topic] = true
		}
		if len(got) != rows {
			t.Errorf("fast-%d: %d distinct rows, want %d", i, len(got), rows)
		}
	}
}

// TestReplayHandedToSession: a persistent session whose connection ends
// in the middle of a QoS 1 replay (Receive Maximum 1: one row in flight,
// the rest not yet read) gets every row once when it comes back: the one
// in flight resent, the rest handed to the session as the replay left
// them.
func TestReplayHandedToSession(t *testing.T) {
	const rows = 50
	b := start(t, Options{})
	loadRows(t, b, rows)
	r := dialRaw(t, b, "away", 5, false, packets.Properties{ReceiveMaximum: 1, SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true})
	r.subscribe(1, "dev/+/state", 1)
	first, _ := readPublish(r) // in flight, never acknowledged
	c := b.connOf(t, "away")
	cl := c.out.(*mqttOut).cl
	r.c.Close()
	waitDropped(t, b, c, cl)
	in := resume(t, b, "away")
	got := map[string]int{}
	for _, topic := range in.wait(t, rows) {
		got[topic]++
	}
	for i := range rows {
		if got[rowTopic(i)] != 1 {
			t.Errorf("%s came %d times after the return (the first, %s, was in flight)", rowTopic(i), got[rowTopic(i)], first.topic)
		}
	}
}

// TestReplayListsSweepAmortized: listing n filters while every list is
// still held (a storm of devices each subscribing to filters of its own,
// faster than the garbage collector runs) looks at O(n) entries in all.
// Each new filter swept every entry once 64 were filed: n²/2.
func TestReplayListsSweepAmortized(t *testing.T) {
	const n = 4096
	var s tree.Store
	for i := range n {
		s.Set(fmt.Sprintf("dev/%d/cmd", i), wireString("on"), 1)
	}
	var ls replayLists
	held := make([]*replayList, 0, n) // no list goes: no sweep forgets one
	for i := range n {
		held = append(held, ls.list(&s, fmt.Sprintf("dev/%d/+", i)))
	}
	if max := 4 * n; ls.visited > max {
		t.Errorf("listing %d filters, their lists held, the sweeps looked at %d entries, want %d at most", n, ls.visited, max)
	}
	if len(held[n-1].refs) != 1 {
		t.Errorf("the last list has %d rows, want 1", len(held[n-1].refs))
	}
}
