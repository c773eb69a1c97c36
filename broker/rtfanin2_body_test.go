package broker

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// publish5q1 is an MQTT 5 QoS 1 PUBLISH with packet id id and the
// properties props.
func publish5q1(topic string, id uint16, props []byte, payload string, retain bool) []byte {
	body := binary.BigEndian.AppendUint16(nil, uint16(len(topic)))
	body = append(body, topic...)
	body = binary.BigEndian.AppendUint16(body, id)
	body = append(append(body, varint(len(props))...), props...)
	body = append(body, payload...)
	h := byte(0x32)
	if retain {
		h |= 1
	}
	return append(append([]byte{h}, varint(len(body))...), body...)
}

// TestPublishBodyNoAliasing: small PUBLISH bodies are read into memory
// made with their messages (bodies.go); a stream of them, at each size
// class's limit and one either side, with an MQTT 5 topic alias, a zero
// length payload, a retained one and a large one, split into 7-byte
// writes (TCP; WebSocket, a message each), reaches a live subscriber, a
// session away (its queue holds the messages) and the retained store each
// with its own payload: no body's memory is handed out twice or reused
// while a message holds it.
func TestPublishBodyNoAliasing(t *testing.T) {
	for _, ws := range []bool{false, true} {
		t.Run(map[bool]string{false: "tcp", true: "ws"}[ws], func(t *testing.T) { testPublishBodyNoAliasing(t, ws) })
	}
}

func testPublishBodyNoAliasing(t *testing.T, ws bool) {
	br := start(t, Options{})
	live := dial3(t, br, "rtfanin-live", true)
	live.sub(t, "t/#", 1)
	away := dial3(t, br, "rtfanin-away", false)
	away.sub(t, "t/#", 1)
	away.Disconnect(100)
	settle(t, br)

	alias := func(a uint16) []byte { return []byte{0x23, byte(a >> 8), byte(a)} }
	var stream bytes.Buffer
	var want []msg
	id := uint16(0)
	add := func(topic, sent string, props []byte, payload string, retain bool) {
		id++
		stream.Write(publish5q1(sent, id, props, payload, retain))
		want = append(want, msg{topic: topic, payload: payload, qos: 1})
	}
	payload := func(n int) string { // n bytes, told apart by their first bytes
		s := fmt.Sprintf("%d:", id+1) + strings.Repeat(string(rune('a'+int(id)%26)), n)
		return s[:n]
	}
	// The body of publish5q1("t/NN", …) with no properties is 9 bytes and the payload.
	for _, limit := range []int{48, 96, 176, maxPublishBody} {
		for _, n := range []int{limit - 1, limit, limit + 1} {
			topic := fmt.Sprintf("t/%02d", id%100)
			add(topic, topic, nil, payload(n-9), false)
		}
	}
	add("t/zero", "t/zero", nil, "", false)
	add("t/alias", "t/alias", alias(1), payload(20), false) // sets alias 1
	for range 5 {
		add("t/alias", "", alias(1), payload(30), false) // alias only
	}
	add("t/alias", "", alias(1), payload(600), false) // alias only, too large for a body
	add("t/r", "t/r", nil, "kept", true)
	add("t/alias", "", alias(1), payload(10), true) // alias only, retained
	for range 20 {
		topic := fmt.Sprintf("t/%02d", id%100)
		add(topic, topic, nil, payload(40), false)
	}

	var pub *benchClient
	if ws {
		pub = newBenchClientV(t, dialWSStream(t, "ws://"+br.WSAddr()+"/mqtt", nil, nil), "rtfanin-pub", testTimeout, 5)
	} else {
		pub = dialBenchV(t, br.TCPAddr(), "rtfanin-pub", 5)
	}
	for b := stream.Bytes(); len(b) > 0; {
		n := min(7, len(b))
		pub.write(t, b[:n])
		b = b[n:]
	}
	for acks := 0; acks < len(want); {
		typ := pub.read(t)
		if typ == packets.Puback {
			if rc := pub.buf[2:]; len(rc) > 0 && rc[0] >= 0x80 {
				t.Fatalf("PUBACK %d: reason %#x", binary.BigEndian.Uint16(pub.buf), rc[0])
			}
			acks++
		}
	}

	check := func(who string, got []msg) {
		t.Helper()
		for i := range want {
			g := got[i]
			g.retained = false
			if g != want[i] {
				t.Errorf("%s: message %d: %.60q on %s, want %.60q on %s", who, i, g.payload, g.topic, want[i].payload, want[i].topic)
			}
		}
	}
	check("live", live.wait(t, len(want)))
	back := dial3(t, br, "rtfanin-away", false)
	check("away", back.wait(t, len(want)))
	late := dial3(t, br, "rtfanin-late", true)
	late.sub(t, "t/r", 0)
	late.sub(t, "t/alias", 0)
	got := late.wait(t, 2)
	if got[0].payload != "kept" || got[1].payload != want[len(want)-21].payload {
		t.Errorf("retained: %q and %q, want %q and %q", got[0].payload, got[1].payload, "kept", want[len(want)-21].payload)
	}
}
