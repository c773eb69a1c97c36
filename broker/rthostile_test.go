package broker

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// The hostile-client red team's raw-byte attacks (MQTT 5 unless noted):
// each sends hand-made packets and checks what the broker answers, then
// that a bystander was told nothing of a refused packet and that the
// broker still serves.

// Packet builders for raw attacks: a string with its length, a packet
// from its first byte and body parts, a properties block, a two-byte
// property, a packet id and a user property.
func hxStr(s string) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(s))), s...) }

func hxPacket(h byte, parts ...[]byte) []byte {
	var body []byte
	for _, p := range parts {
		body = append(body, p...)
	}
	return append(append([]byte{h}, varint(len(body))...), body...)
}

func hxProps(ps ...[]byte) []byte {
	var b []byte
	for _, p := range ps {
		b = append(b, p...)
	}
	return append(varint(len(b)), b...)
}

func hxU16(prop byte, v uint16) []byte { return binary.BigEndian.AppendUint16([]byte{prop}, v) }
func hxID(v uint16) []byte             { return binary.BigEndian.AppendUint16(nil, v) }
func hxUser(k, v string) []byte        { return append(append([]byte{0x26}, hxStr(k)...), hxStr(v)...) }

// hxPublish is an MQTT 5 PUBLISH.
func hxPublish(topic string, qos byte, id uint16, props []byte, payload string) []byte {
	parts := [][]byte{hxStr(topic)}
	if qos > 0 {
		parts = append(parts, hxID(id))
	}
	return hxPacket(0x30|qos<<1, append(parts, props, []byte(payload))...)
}

// hxUnsubscribe is an UNSUBSCRIBE (packet id 1) of filters; props is
// nil for MQTT 3.1.1.
func hxUnsubscribe(props []byte, filters ...string) []byte {
	parts := [][]byte{hxID(1), props}
	for _, f := range filters {
		parts = append(parts, hxStr(f))
	}
	return hxPacket(0xA2, parts...)
}

// hxDial opens a raw connection to addr, bounded by testTimeout and
// closed when the test ends.
func hxDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(testTimeout))
	return nc
}

// hxSubscribe is an MQTT 5 SUBSCRIBE of one filter.
func hxSubscribe(id uint16, props []byte, filter string, opts byte) []byte {
	return hxPacket(0x82, hxID(id), props, hxStr(filter), []byte{opts})
}

// hxExchange connects as id (version v), sends the packets and a
// PINGREQ, and returns what the broker answered before its PINGRESP (the
// barrier: packets are handled in order) or before it closed the
// connection, as "type:body" hex strings ("closed" last when it closed).
func hxExchange(t *testing.T, addr string, v byte, id string, send ...[]byte) []string {
	t.Helper()
	return exchangeAs(t, hxDial(t, addr), connectPacket(v, id), send...)
}

// hxMatch reports whether each answer is the one wanted, or starts with
// it when the wanted one ends in "*".
func hxMatch(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		w, prefix := strings.CutSuffix(want[i], "*")
		if got[i] != w && !(prefix && strings.HasPrefix(got[i], w)) {
			return false
		}
	}
	return true
}

// TestHostileProperties: MQTT 5 properties that the decoder took as they
// came. A property other than User Property (and a server's Subscription
// Identifiers) given twice is a Protocol Error (§2.2.2.2: "It is a
// Protocol Error to include X more than once"), so is a Subscription
// Identifier of 0 (§3.8.2.1.2), and a property that runs past the
// properties' length is a Malformed Packet (§2.2.2.2, §1.5.5). Mochi kept
// the last value, subscribed with identifier 0, and read a property's
// value out of the payload. Each is answered DISCONNECT 0x82 (0x81) and
// the connection closed, the packet not applied; a duplicate in CONNECT
// gets CONNACK 0x82.
func TestHostileProperties(t *testing.T) {
	b := start(t, Options{})
	watch := dial3(t, b, "watch", true)
	watch.sub(t, "hx/#", 0)
	disconnect := func(code byte) []string { return []string{fmt.Sprintf("e0:%02x*", code), "closed"} }
	cases := []struct {
		name string
		send []byte
		want []string
	}{
		{"publish payload format twice", hxPublish("hx/a", 1, 1, hxProps([]byte{0x01, 0}, []byte{0x01, 0}), "x"), disconnect(0x82)},
		{"publish message expiry twice", hxPublish("hx/a", 0, 0, hxProps([]byte{0x02, 0, 0, 0, 9}, []byte{0x02, 0, 0, 0, 9}), "x"), disconnect(0x82)},
		{"publish content type twice", hxPublish("hx/a", 0, 0, hxProps(append([]byte{0x03}, hxStr("a")...), append([]byte{0x03}, hxStr("b")...)), "x"), disconnect(0x82)},
		{"publish topic alias twice", hxPublish("hx/a", 0, 0, hxProps(hxU16(0x23, 1), hxU16(0x23, 2)), "x"), disconnect(0x82)},
		{"publish property past its length", hxPacket(0x30, hxStr("hx/a"), []byte{1, 0x01}, []byte("\x01x")), disconnect(0x81)},
		{"subscribe identifier twice", hxSubscribe(1, hxProps([]byte{0x0B, 1}, []byte{0x0B, 2}), "hx/s", 0), disconnect(0x82)},
		{"subscribe identifier 0", hxSubscribe(1, hxProps([]byte{0x0B, 0}), "hx/s", 0), disconnect(0x82)},
		{"subscribe identifier past its length", hxPacket(0x82, hxID(1), []byte{1, 0x0B}, []byte{0x81}, hxStr("hx/s"), []byte{0}), disconnect(0x81)},
		{"puback reason string twice", hxPacket(0x40, hxID(9), []byte{0}, hxProps(append([]byte{0x1F}, hxStr("a")...), append([]byte{0x1F}, hxStr("b")...))), disconnect(0x82)},
		{"user properties repeat freely", hxPublish("hx/u", 1, 1, hxProps(hxUser("k", "1"), hxUser("k", "2")), "x"), []string{"40:00 01"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := hxExchange(t, b.TCPAddr(), 5, "hx", c.send)
			if !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	// Only the valid publish reached the bystander (QoS 1, acknowledged
	// before the next exchange began, so delivered before this one).
	watch.pub(t, "hx/end", 1, false, "end")
	msgs := watch.wait(t, 2)
	if len(msgs) != 2 || msgs[0].topic != "hx/u" || msgs[1].topic != "hx/end" {
		t.Errorf("bystander got %+v, want hx/u then hx/end", msgs)
	}
	if n := b.stats.Panics.Load(); n != 0 {
		t.Errorf("%d panics", n)
	}
	alive(t, b)
}

// TestHostileTopicAliases: a PUBLISH with an empty topic and a Topic
// Alias the client never set is a Protocol Error (§3.3.4: "If the
// receiver does not already have a mapping for this Topic Alias ... a
// zero length Topic Name field ... is a Protocol Error"): DISCONNECT 0x82.
// Mochi filed the alias as "" and the broker answered PUBACK 0x90 "empty
// topic", the connection kept. An alias-only publish carrying the user
// property mote=tree is a tree publish on the alias's (plain) topic; the
// broker refused it 0x90 naming its internal topic "$mote/publish". An
// alias set on a Mote topic names it, as any alias its topic
// (TestTopicAliasOfRefusedTopic); it was refused 0x90 and left unset.
func TestHostileTopicAliases(t *testing.T) {
	b := start(t, Options{})
	watch := dial3(t, b, "watch", true)
	watch.sub(t, "hx/#", 0)
	tree := hxProps(hxU16(0x23, 3), hxUser("mote", "tree"))
	cases := []struct {
		name string
		send [][]byte
		want []string
	}{
		{"unknown alias", [][]byte{hxPublish("", 1, 1, hxProps(hxU16(0x23, 3)), "x")}, []string{"e0:82*", "closed"}},
		{"unknown alias, QoS 0", [][]byte{hxPublish("", 0, 0, hxProps(hxU16(0x23, 4)), "x")}, []string{"e0:82*", "closed"}},
		{"unknown alias, mote=tree", [][]byte{hxPublish("", 1, 1, tree, `{"c":1}`)}, []string{"e0:82*", "closed"}},
		{"alias, then alias only", [][]byte{
			hxPublish("hx/p", 1, 1, hxProps(hxU16(0x23, 3)), "1"),
			hxPublish("", 1, 2, hxProps(hxU16(0x23, 3)), "2"),
		}, []string{"40:00 01", "40:00 02"}},
		{"alias, then tree publish on it", [][]byte{
			hxPublish("hx/t", 1, 1, hxProps(hxU16(0x23, 3)), "1"),
			hxPublish("", 1, 2, tree, `{"c":2}`),
		}, []string{"40:00 01", "40:00 02"}},
		{"alias on a Mote topic names it", [][]byte{
			hxPublish("$tree/hx/m", 1, 1, hxProps(hxU16(0x23, 3)), `{"c":3}`),
			hxPublish("", 1, 2, hxProps(hxU16(0x23, 3)), `{"d":4}`),
		}, []string{"40:00 01", "40:00 02"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := hxExchange(t, b.TCPAddr(), 5, "hx", c.send...)
			if !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	// The tree publish's PUBACK does not wait for the loop to deliver its
	// rows, and hx/end is another client's message (no order between
	// publishers): wait for the loop first (the bystander got hx/end
	// before hx/t/c in ~3% of runs).
	settle(t, b)
	watch.pub(t, "hx/end", 1, false, "end")
	msgs := watch.wait(t, 7)
	var got []string
	for _, m := range msgs {
		got = append(got, m.topic+"="+m.payload)
	}
	if want := "hx/p=1 hx/p=2 hx/t=1 hx/t/c=2 hx/m/c=3 hx/m/d=4 hx/end=end"; strings.Join(got, " ") != want {
		t.Errorf("bystander got %q, want %q", got, want)
	}
	if n := b.stats.Panics.Load(); n != 0 {
		t.Errorf("%d panics", n)
	}
	alive(t, b)
}

// TestHostileEnhancedAuth: Mote has no enhanced authentication (MQTT 5
// §4.12). A CONNECT with an Authentication Method was accepted (CONNACK
// 0x00, the method ignored); the server MUST close a connection whose
// method it does not support [MQTT-4.12.0-1]: CONNACK 0x8C Bad
// authentication method. So no client has a method, and an AUTH packet
// from one is a Protocol Error (§4.12: a client without one MUST NOT send
// AUTH): it was ignored, now DISCONNECT 0x82.
func TestHostileEnhancedAuth(t *testing.T) {
	b := start(t, Options{})
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect:    packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 60, ClientIdentifier: "hx-auth"},
		Properties: packets.Properties{AuthenticationMethod: "SCRAM-SHA-1", AuthenticationData: []byte("client-first")}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(testTimeout))
	nc.Write(buf.Bytes()) //nolint:errcheck // the read says
	r := bufio.NewReader(nc)
	h, body, err := readPacketBody(r)
	if err != nil || h != 0x20 || len(body) < 2 || body[1] != 0x8C {
		t.Errorf("CONNECT with an authentication method: got %#x % x %v, want CONNACK 0x8C", h, body, err)
	}
	if _, _, err := readPacketBody(r); err == nil {
		t.Errorf("connection not closed after the refused CONNECT")
	}
	for _, auth := range [][]byte{
		hxPacket(0xF0, []byte{0x18}, hxProps()),                                              // continue
		hxPacket(0xF0, []byte{0x19}, hxProps(append([]byte{0x15}, hxStr("SCRAM-SHA-1")...))), // re-authenticate
	} {
		if got, want := hxExchange(t, b.TCPAddr(), 5, "hx-auth", auth), []string{"e0:82*", "closed"}; !hxMatch(got, want) {
			t.Errorf("AUTH % x: got %q, want %q", auth, got, want)
		}
	}
	alive(t, b)
}

// TestHostileSharedAndResponse: a shared subscription with No Local is a
// Protocol Error [MQTT-3.8.3-4]; mochi answered it in the SUBACK with
// 0x82, which is not a SUBACK reason code (§3.9.3): DISCONNECT 0x82 now.
// A share name left empty ($share//f) is a malformed filter
// [MQTT-4.8.2-1], 0x8F, not 0x87 Not authorized. A PUBLISH whose Response
// Topic holds a wildcard breaks [MQTT-3.3.2-14]; it was delivered as it
// came, the bad Response Topic and all: DISCONNECT 0x82, not delivered.
func TestHostileSharedAndResponse(t *testing.T) {
	b := start(t, Options{})
	watch := dial3(t, b, "watch", true)
	watch.sub(t, "hx/#", 0)
	resp := func(topic string) []byte { return hxProps(append([]byte{0x08}, hxStr(topic)...)) }
	cases := []struct {
		name string
		send []byte
		want []string
	}{
		{"shared no local", hxSubscribe(1, hxProps(), "$share/g/hx/s", 1|4), []string{"e0:82*", "closed"}},
		{"shared, empty share name", hxSubscribe(1, hxProps(), "$share//hx/s", 1), []string{"90:00 01 00 8f"}},
		{"shared, no filter", hxSubscribe(1, hxProps(), "$share/g", 1), []string{"90:00 01 00 8f"}},
		{"shared, wildcard share name", hxSubscribe(1, hxProps(), "$share/g+/hx/s", 1), []string{"90:00 01 00 8f"}},
		{"shared", hxSubscribe(1, hxProps(), "$share/g/hx/s", 1), []string{"90:00 01 00 01"}},
		{"response topic with #", hxPublish("hx/r", 1, 1, resp("r/#"), "x"), []string{"e0:82*", "closed"}},
		{"response topic with +", hxPublish("hx/r", 0, 0, resp("r/+/x"), "x"), []string{"e0:82*", "closed"}},
		{"response topic", hxPublish("hx/r", 1, 1, resp("r/x"), "ok"), []string{"40:00 01"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := hxExchange(t, b.TCPAddr(), 5, "hx", c.send); !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	watch.pub(t, "hx/end", 1, false, "end")
	msgs := watch.wait(t, 2)
	if len(msgs) != 2 || msgs[0].payload != "ok" || msgs[1].topic != "hx/end" {
		t.Errorf("bystander got %+v, want hx/r=ok then hx/end", msgs)
	}
	alive(t, b)
}

// TestHostileQoS2AndAfterDisconnect: a QoS 2 PUBLISH sent again with its
// packet id before its PUBREL (with DUP or without) is delivered once
// [MQTT-4.3.3-9 (3.1.1: 4.3.3 Method A)]; a PUBREL for an unknown id gets
// PUBCOMP 0x92 (3.1.1: PUBCOMP); a PUBLISH after DISCONNECT in the same
// segment is not delivered [MQTT-3.14.4-2]; a second CONNECT closes the
// connection [MQTT-3.1.0-2].
func TestHostileQoS2AndAfterDisconnect(t *testing.T) {
	b := start(t, Options{})
	watch := dial3(t, b, "watch", true)
	watch.sub(t, "hx/#", 2)
	dup := func(p []byte) []byte { q := append([]byte(nil), p...); q[0] |= 0x08; return q }
	q2 := hxPublish("hx/q2", 2, 5, hxProps(), "once")
	v3q2 := hxPacket(0x34, hxStr("hx/q3"), hxID(5), []byte("once"))
	cases := []struct {
		name string
		v    byte
		send [][]byte
		want []string
	}{
		{"QoS 2 twice, then PUBREL twice", 5, [][]byte{q2, dup(q2), q2, hxPacket(0x62, hxID(5)), hxPacket(0x62, hxID(5))},
			[]string{"50:00 05", "50:00 05", "50:00 05", "70:00 05", "70:00 05 92*"}},
		{"3.1.1 QoS 2 twice, then PUBREL twice", 4, [][]byte{v3q2, dup(v3q2), hxPacket(0x62, hxID(5)), hxPacket(0x62, hxID(5))},
			[]string{"50:00 05", "50:00 05", "70:00 05", "70:00 05"}},
		{"PUBREL unknown", 5, [][]byte{hxPacket(0x62, hxID(77))}, []string{"70:00 4d 92*"}},
		{"after DISCONNECT", 5, [][]byte{append(hxPacket(0xE0, []byte{0}, hxProps()), hxPublish("hx/after", 1, 1, hxProps(), "no")...)}, []string{"closed"}},
		{"second CONNECT", 5, [][]byte{connectPacket(5, "hx"), hxPublish("hx/second", 1, 1, hxProps(), "no")}, []string{"e0:82*", "closed"}},
		{"3.1.1 second CONNECT", 4, [][]byte{connectPacket(4, "hx"), hxPacket(0x32, hxStr("hx/second"), hxID(1), []byte("no"))}, []string{"closed"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := hxExchange(t, b.TCPAddr(), c.v, "hx", c.send...); !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	watch.pub(t, "hx/end", 1, false, "end")
	msgs := watch.wait(t, 3)
	var got []string
	for _, m := range msgs {
		got = append(got, m.topic+"="+m.payload)
	}
	if want := "hx/q2=once hx/q3=once hx/end=end"; strings.Join(got, " ") != want {
		t.Errorf("bystander got %q, want %q", got, want)
	}
	alive(t, b)
}

// TestHostileConnectProperties: MQTT 5 CONNECT properties that MQTT calls
// a Protocol Error — Receive Maximum 0 (§3.1.2.11.3), Maximum Packet Size
// 0 (§3.1.2.11.4), Request Problem Information or Request Response
// Information other than 0 or 1 (§3.1.2.11.6-7), a property twice — were
// accepted (CONNACK 0x00; the zeros then read as "no limit"). The CONNECT
// is refused: the connection closes (no CONNACK, as for any CONNECT that
// does not decode, which MQTT allows [MQTT-4.13.1-1]).
func TestHostileConnectProperties(t *testing.T) {
	b := start(t, Options{})
	connect := func(props []byte) []byte {
		return hxPacket(0x10, hxStr("MQTT"), []byte{5, 0x02, 0, 30}, props, hxStr("hx-props"))
	}
	for _, c := range []struct {
		name  string
		props []byte
		ok    bool
	}{
		{"receive maximum 0", hxProps(hxU16(0x21, 0)), false},
		{"maximum packet size 0", hxProps([]byte{0x27, 0, 0, 0, 0}), false},
		{"request problem information 2", hxProps([]byte{0x17, 2}), false},
		{"request response information 2", hxProps([]byte{0x19, 2}), false},
		{"session expiry twice", hxProps([]byte{0x11, 0, 0, 0, 1}, []byte{0x11, 0, 0, 0, 2}), false},
		{"valid", hxProps(hxU16(0x21, 5), []byte{0x27, 0, 1, 0, 0}, []byte{0x17, 0}, []byte{0x19, 1}), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", b.TCPAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(testTimeout))
			nc.Write(connect(c.props)) //nolint:errcheck // the read says
			h, body, err := readPacketBody(bufio.NewReader(nc))
			accepted := err == nil && h == 0x20 && len(body) >= 2 && body[1] == 0
			if accepted != c.ok {
				t.Errorf("got %#x % x %v, want accepted %v", h, body, err, c.ok)
			}
		})
	}
	alive(t, b)
}

// TestHostileDollarTopicsAnswered: mochi dropped a PUBLISH to a topic it
// judged invalid for publishing — any topic starting "$SYS" in any case
// ($SYSTEM/a, $sysfoo), and $share, $share/g — without a word: no PUBACK
// or PUBREC at QoS 1/2 (the client waits for it for ever, its in-flight
// slot taken), no report, no log line. A publish to $share/… is now
// refused like the broker's other reserved topics (0x90, its report; a
// tree publish's "$share" key too), and $SYSTEM/a, $sysfoo (not the
// broker's $SYS level, which a tree publish may already write) are
// ordinary topics.
func TestHostileDollarTopicsAnswered(t *testing.T) {
	b := start(t, Options{})
	watch := dial3(t, b, "watch", true)
	watch.sub(t, "$SYSTEM/#", 0)
	watch.sub(t, "$sysfoo", 0)
	for _, c := range []struct {
		name string
		send []byte
		want []string
	}{
		{"$SYSTEM/a", hxPublish("$SYSTEM/a", 1, 1, hxProps(), "x"), []string{"40:00 01"}},
		{"$sysfoo", hxPublish("$sysfoo", 2, 1, hxProps(), "y"), []string{"50:00 01", "70:00 01"}},
		{"$share", hxPublish("$share", 1, 1, hxProps(), "x"), []string{"40:00 01 90*"}},
		{"$share/g", hxPublish("$share/g", 1, 1, hxProps(), "x"), []string{"40:00 01 90*"}},
		{"$share/g/a", hxPublish("$share/g/a", 1, 1, hxProps(), "x"), []string{"40:00 01 90*"}},
		{"$SHARE/g", hxPublish("$SHARE/g", 2, 1, hxProps(), "x"), []string{"50:00 01 90*", "70:00 01 92*"}}, // the PUBREC ended the flow
		{"tree key $share", hxPublish("$tree/+/+", 1, 1, hxProps(), `{"$share":{"a":1}}`), []string{"40:00 01 99*"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			send := [][]byte{c.send}
			if c.send[0]>>1&3 == 2 {
				send = append(send, hxPacket(0x62, hxID(1))) // PUBREL
			}
			if g := hxExchange(t, b.TCPAddr(), 5, "hx", send...); !hxMatch(g, c.want) {
				t.Errorf("got %q, want %q", g, c.want)
			}
		})
	}
	msgs := watch.wait(t, 2)
	if len(msgs) != 2 || msgs[0].topic != "$SYSTEM/a" || msgs[1].topic != "$sysfoo" {
		t.Errorf("subscriber got %+v, want $SYSTEM/a and $sysfoo", msgs)
	}
	alive(t, b)
}

// TestHostilePingreqWithBody: a PINGREQ has no variable header and no
// payload (§3.12: Remaining Length 0). One that declares a body was
// answered PINGRESP, its bytes ignored: now a Malformed Packet (MQTT 5
// DISCONNECT 0x81; 3.1.1 closed).
func TestHostilePingreqWithBody(t *testing.T) {
	b := start(t, Options{})
	for _, c := range []struct {
		v    byte
		want []string
	}{{5, []string{"e0:81*", "closed"}}, {4, []string{"closed"}}} {
		if got := hxExchange(t, b.TCPAddr(), c.v, "hx", []byte{0xC0, 2, 0, 0}); !hxMatch(got, c.want) {
			t.Errorf("v%d: got %q, want %q", c.v, got, c.want)
		}
	}
	alive(t, b)
}
