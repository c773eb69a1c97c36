package broker

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/bench/rawmqtt"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/wire"
)

// TestRetainAckedThenRead: once a client's QoS 1 or 2 retained publish is
// acknowledged (PUBACK; PUBCOMP at QoS 2), a reader that asks after the
// acknowledgement — a SUBSCRIBE's retained replay (an MQTT client's or a
// Session's), a $sync snapshot, a read of the tree (an HTTP GET's) — has
// the row, as Mosquitto gives: in
// the replay with the retain flag set and never again live after it. The
// loop is held by a call while the loader publishes, so its publishes are
// queued, not run inline (the window a busy loop leaves), and released
// only once the reader's request has reached the broker (its SUBACK, or
// the request waiting on the loop). The bench's live-dashboard scenario
// saw loaded rows come live after the replay (h-livebench, -smoke: 25 of
// 1,000): a SUBSCRIBE read before the loop applied acknowledged rows
// replayed from the revision then applied and left them to live delivery
// (afterAcked now holds such a SUBSCRIBE until the loop has applied them).
func TestRetainAckedThenRead(t *testing.T) {
	loads := []struct {
		name string
		qos  byte
		tree bool // one $tree publish a row instead of a plain one
	}{
		{name: "plain-qos1", qos: 1},
		{name: "plain-qos2", qos: 2},
		{name: "tree-qos1", qos: 1, tree: true},
	}
	for _, v := range []byte{4, 5} {
		for _, ld := range loads {
			for _, rd := range []string{"replay", "sync", "tree", "session"} {
				t.Run(fmt.Sprintf("v%d/%s/%s", v, ld.name, rd), func(t *testing.T) {
					ackedThenRead(t, v, ld.qos, ld.tree, rd)
				})
			}
		}
	}
}

// ackedRows is how many rows the loader publishes.
const ackedRows = 50

// readItem is what a reader got: its request answered (a SUBACK, a
// Session's Subscribe returned, a tree read), or a message.
type readItem struct {
	answered bool
	msg      peerPublish
	retained bool
	err      error // the reader failed: its connection ended, or Tree refused
}

// ackedThenRead is one case of TestRetainAckedThenRead: MQTT version v,
// the loader's rows at qos (as $tree publishes if asTree), and the reader.
func ackedThenRead(t *testing.T, v, qos byte, asTree bool, reader string) {
	b := start(t, Options{})
	loader := dialRaw(t, b, "loader", v, true, packets.Properties{})
	ctx := testCtx(t)
	items := make(chan readItem, 4*ackedRows)
	var rd *raw
	var s *Session
	switch reader {
	case "replay", "sync":
		rd = dialRaw(t, b, "reader", v, true, packets.Properties{})
		rd.items(t, v, items)
	case "session":
		s = b.Open(Principal{ClientID: "reader"}, func(d Delivery) {
			items <- readItem{msg: peerPublish{topic: d.Topic, payload: string(d.Payload)}, retained: d.Retain}
		})
		t.Cleanup(s.Close)
	}
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	defer free()
	go b.onLoop(ctx.Done(), func() { close(held); <-release }) // the loop is busy
	<-held

	var load []byte
	for i := range ackedRows {
		topic, payload := fmt.Sprintf("dev/%d/state", i), fmt.Sprint(i)
		if asTree {
			topic, payload = "$tree/dev/+/state", fmt.Sprintf(`{"%d":%d}`, i, i)
		}
		p := publishBytes(qos, false, uint16(i+1), topic, payload, v == 5)
		p[0] |= 1 // retained
		load = append(load, p...)
	}
	loader.write(load)
	readAcks(t, loader, qos)
	queued := b.reqs.len() // the loader's publishes, acknowledged and waiting for the loop
	if queued == 0 {
		t.Fatal("the loader's publishes were not queued to the loop: the test misses its window")
	}

	// The reader asks, after every acknowledgement.
	switch reader {
	case "replay":
		rd.write(subscribeBytes(1, "dev/+/state", v == 5))
	case "sync":
		rd.write(subscribeBytes(1, "$sync/dev/+/state", v == 5))
	case "session":
		go func() {
			items <- readItem{answered: true, err: s.Subscribe("dev/+/state", 0)}
		}()
	case "tree":
		go func() {
			tree, _, err := b.Tree(ctx, Principal{ClientID: "reader"}, "dev/+/state", wire.CodecJSON)
			items <- readItem{answered: true, msg: peerPublish{payload: string(tree)}, err: err}
		}()
	}
	// Released once the request reached the broker: answered (while the
	// loop is held) or waiting on the loop.
	var got []readItem
	answered := false
	take := func(it readItem) readItem {
		t.Helper()
		if it.err != nil {
			t.Fatal(it.err)
		}
		got = append(got, it)
		answered = answered || it.answered
		return it
	}
	deadline := time.After(testTimeout)
	next := func() readItem {
		t.Helper()
		select {
		case it := <-items:
			return take(it)
		case <-deadline:
			t.Fatalf("no answer or no marker within %v; got %+v", testTimeout, got)
		}
		return readItem{}
	}
wait:
	for !answered {
		select {
		case it := <-items:
			take(it)
		case <-deadline:
			t.Fatal("the reader's request neither answered nor waiting on the loop")
		case <-time.After(time.Millisecond):
			if b.reqs.len() > queued {
				break wait
			}
		}
	}
	free()
	for !answered {
		next()
	}
	defer func() { // every acknowledged row applied: nothing left for a SUBSCRIBE to wait for
		settle(t, b)
		if n := b.ackedAhead.Load(); n != 0 {
			t.Errorf("ackedAhead is %d once the loop ran everything, want 0", n)
		}
	}()

	if reader == "tree" {
		var tree map[string]any
		if err := json.Unmarshal([]byte(got[0].msg.payload), &tree); err != nil || len(tree) != ackedRows {
			t.Fatalf("the tree read after the acknowledgements holds %d rows, want %d (%v): %.200s", len(tree), ackedRows, err, got[0].msg.payload)
		}
		return
	}

	// A marker after the loaded rows, once the reader is subscribed: the
	// loader's own event comes to the reader after them (MQTT 4.6), so
	// whatever of them comes live comes before it.
	loader.write(publishBytes(1, false, ackedRows+1, "dev/end/state", "end", v == 5))
	var pubs []readItem
	for _, it := range got {
		if !it.answered {
			pubs = append(pubs, it)
		}
	}
	for {
		it := next()
		if it.answered {
			continue
		}
		m := it.msg
		if m.topic == "dev/end/state" || reader == "sync" && len(pubs) > 0 && m.payload == `{"end":"end"}` {
			break
		}
		pubs = append(pubs, it)
	}

	if reader == "sync" {
		if len(pubs) != 1 {
			t.Fatalf("got %d messages before the marker's delta, want the snapshot alone: %+v", len(pubs), pubs)
		}
		var tree map[string]any
		if err := json.Unmarshal([]byte(pubs[0].msg.payload), &tree); err != nil || len(tree) != ackedRows {
			t.Fatalf("the snapshot holds %d rows, want %d (%v): %.200s", len(tree), ackedRows, err, pubs[0].msg.payload)
		}
		return
	}
	seen := map[string]bool{}
	live := 0
	for _, it := range pubs {
		if !it.retained {
			live++
			continue
		}
		if seen[it.msg.topic] {
			t.Errorf("%s replayed twice", it.msg.topic)
		}
		seen[it.msg.topic] = true
	}
	if live > 0 || len(seen) != ackedRows {
		t.Fatalf("%d rows in the retained replay, %d live after it; want all %d in the replay, none live", len(seen), live, ackedRows)
	}
}

// readAcks reads the loader's acknowledgements of ackedRows publishes at
// qos: PUBACKs, or PUBRECs answered with PUBRELs and then PUBCOMPs; each
// must be a success (MQTT 5's reason code).
func readAcks(t *testing.T, r *raw, qos byte) {
	t.Helper()
	want := byte(packets.Puback)
	if qos == 2 {
		want = packets.Pubrec
	}
	var rels []byte
	for range ackedRows {
		typ, body := r.read()
		if typ != want || len(body) > 2 && body[2] >= 0x80 {
			t.Fatalf("got packet %d % x, want a successful %d", typ, body, want)
		}
		if qos == 2 {
			rels = append(rels, 0x62, 2, body[0], body[1])
		}
	}
	if qos < 2 {
		return
	}
	r.write(rels)
	for range ackedRows {
		if typ, body := r.read(); typ != packets.Pubcomp || len(body) > 2 && body[2] >= 0x80 {
			t.Fatalf("got packet %d % x, want a successful PUBCOMP", typ, body)
		}
	}
}

// subscribeBytes is a SUBSCRIBE of filter at QoS 0.
func subscribeBytes(id uint16, filter string, v5 bool) []byte {
	body := binary.BigEndian.AppendUint16(nil, id)
	if v5 {
		body = append(body, 0)
	}
	body = binary.BigEndian.AppendUint16(body, uint16(len(filter)))
	body = append(append(body, filter...), 0)
	return append(append([]byte{0x82}, varint(len(body))...), body...)
}

// items reads r's packets (MQTT version v) on a goroutine of the test's
// into out: a SUBACK as the request answered, a PUBLISH as a message,
// until the connection ends (closed by the test's cleanup, or failed: an
// item with err) or the test does.
func (r *raw) items(t *testing.T, v byte, out chan<- readItem) {
	done := t.Context().Done()
	send := func(it readItem) bool {
		select {
		case out <- it:
			return true
		case <-done:
			return false
		}
	}
	go func() {
		br := bufio.NewReader(r.c)
		for {
			h, body, err := readPacketFrom(br)
			if err != nil {
				send(readItem{err: fmt.Errorf("the reader's connection: %w", err)})
				return
			}
			it := readItem{answered: h>>4 == packets.Suback}
			if h>>4 == packets.Publish {
				m, ok := decodeRawPublish(h, body, v)
				if !ok {
					it.err = fmt.Errorf("PUBLISH %#x % x does not decode", h, body)
				}
				it.msg, it.retained = m, h&1 == 1
			} else if !it.answered {
				continue
			}
			if !send(it) {
				return
			}
		}
	}()
}

// readPacketFrom reads one MQTT packet: its first byte and body.
func readPacketFrom(br *bufio.Reader) (byte, []byte, error) { return rawmqtt.Read(br) }
