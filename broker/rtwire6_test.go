package broker

import (
	"bufio"
	"strings"
	"testing"
)

// overlong is varint(n) one byte longer than it needs: "80 00" for 0,
// "FF 00" for 127 (MQTT 5 §1.5.5 [MQTT-1.5.5-1] forbids it).
func overlong(n int) []byte {
	v := varint(n)
	v[len(v)-1] |= 0x80
	return append(v, 0)
}

// withOverlongLength is packet p (a whole packet whose Remaining Length
// is minimal) with its Remaining Length one byte longer.
func withOverlongLength(p []byte) []byte {
	i := 1
	for p[i]&0x80 != 0 {
		i++
	}
	n := len(p) - i - 1
	return append(append([]byte{p[0]}, overlong(n)...), p[i+1:]...)
}

// connackCode sends the raw CONNECT pk and returns the CONNACK's reason
// code, or -1 when the connection closed without one.
func connackCode(t *testing.T, addr string, pk []byte) int {
	t.Helper()
	nc := hxDial(t, addr)
	defer nc.Close()
	nc.Write(pk) //nolint:errcheck // the read says
	h, body, err := readPacketBody(bufio.NewReader(nc))
	if err != nil {
		return -1
	}
	if h != 0x20 || len(body) < 2 {
		t.Fatalf("got %#x % x, want a CONNACK", h, body)
	}
	return int(body[1])
}

// TestHostileOverlongVarint: a Variable Byte Integer MUST use the fewest
// bytes that hold its value [MQTT-1.5.5-1]; one longer ("80 00" for 0,
// "FF 00" for 127) was read as its value. An MQTT 5 client's Remaining
// Length, Property Length (Will Properties too) and Subscription
// Identifier so encoded are now a Malformed Packet: DISCONNECT 0x81 and
// the connection closed, the packet not applied; in a CONNECT, CONNACK
// 0x81. MQTT 3.1.1 has no such rule and Mosquitto reads an overlong
// Remaining Length as its value in either version (packet__read checks
// only its 4 bytes; packet__read_varint, for MQTT 5's properties, refuses
// overlong ones): a 3.1.1 client's is still accepted.
func TestHostileOverlongVarint(t *testing.T) {
	b := start(t, Options{})
	watch := dial3(t, b, "watch", true)
	watch.sub(t, "hx/#", 0)
	malformed := []string{"e0:81*", "closed"}
	for _, c := range []struct {
		name string
		v    byte
		send []byte
		want []string
	}{
		{"pingreq length 0 in 2 bytes", 5, []byte{0xC0, 0x80, 0x00}, malformed},
		{"publish length in 2 bytes", 5, withOverlongLength(hxPublish("hx/a", 1, 1, hxProps(), "x")), malformed},
		{"publish length 127 in 3 bytes", 5, withOverlongLength(hxPublish("hx/a", 1, 1, hxProps(), strings.Repeat("x", 127-9))), malformed},
		{"publish property length 0 in 2 bytes", 5, hxPacket(0x32, hxStr("hx/a"), hxID(1), overlong(0), []byte("x")), malformed},
		{"publish property length in 4 bytes", 5, hxPacket(0x32, hxStr("hx/a"), hxID(1), []byte{0x83, 0x80, 0x80, 0x00}, []byte{0x01, 0}, []byte("x")), malformed},
		{"subscribe property length 0 in 2 bytes", 5, hxPacket(0x82, hxID(1), overlong(0), hxStr("hx/s"), []byte{0}), malformed},
		{"subscription identifier 1 in 2 bytes", 5, hxSubscribe(1, hxProps(append([]byte{0x0B}, overlong(1)...)), "hx/s", 0), malformed},
		{"subscription identifier 127 in 2 bytes", 5, hxSubscribe(1, hxProps([]byte{0x0B, 0xFF, 0x00}), "hx/s", 0), malformed},
		{"subscription identifier 128 in 3 bytes", 5, hxSubscribe(1, hxProps([]byte{0x0B, 0x80, 0x81, 0x00}), "hx/s", 0), malformed},
		{"subscription identifier 128 in 2 bytes", 5, hxSubscribe(1, hxProps([]byte{0x0B, 0x80, 0x01}), "hx/s", 0), []string{"90:00 01 00 00"}},
		{"publish, minimal", 5, hxPublish("hx/ok", 1, 1, hxProps(), "x"), []string{"40:00 01"}},
		{"3.1.1 publish length in 2 bytes", 4, withOverlongLength(hxPacket(0x32, hxStr("hx/v3"), hxID(1), []byte("x"))), []string{"40:00 01"}},
		{"3.1.1 pingreq length 0 in 4 bytes", 4, []byte{0xC0, 0x80, 0x80, 0x80, 0x00}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := hxExchange(t, b.TCPAddr(), c.v, "hx", c.send); !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}

	connect5 := func(props, will []byte) []byte {
		flags := byte(0x02)
		parts := [][]byte{hxStr("MQTT"), {5, flags, 0, 30}, props, hxStr("hx-c")}
		if will != nil {
			parts[1] = []byte{5, flags | 0x04, 0, 30}
			parts = append(parts, will, hxStr("hx/will"), hxStr("w"))
		}
		return hxPacket(0x10, parts...)
	}
	connect4 := hxPacket(0x10, hxStr("MQTT"), []byte{4, 0x02, 0, 30}, hxStr("hx-c"))
	for _, c := range []struct {
		name string
		send []byte
		want int // CONNACK reason code, -1 for none
	}{
		{"connect length in 2 bytes", withOverlongLength(connect5(hxProps(), nil)), 0x81},
		{"connect property length in 2 bytes", connect5(overlong(0), nil), 0x81},
		{"connect will property length in 2 bytes", connect5(hxProps(), overlong(0)), 0x81},
		{"connect duplicate property", connect5(hxProps([]byte{0x11, 0, 0, 0, 1}, []byte{0x11, 0, 0, 0, 1}), nil), 0x82},
		{"connect, minimal", connect5(hxProps(), nil), 0x00},
		{"3.1.1 connect length in 2 bytes", withOverlongLength(connect4), 0x00},
		{"3.1.1 connect length in 4 bytes", append([]byte{0x10}, append([]byte{0x80 | byte(len(connect4)-2), 0x80, 0x80, 0x00}, connect4[2:]...)...), 0x00},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := connackCode(t, b.TCPAddr(), c.send); got != c.want {
				t.Errorf("CONNACK %#x, want %#x", got, c.want)
			}
			waitConnGone(t, b, "hx-c")
		})
	}

	// Only the minimal publishes (and the 3.1.1 one) reached the bystander.
	watch.pub(t, "hx/end", 1, false, "end")
	var got []string
	for _, m := range watch.wait(t, 3) {
		got = append(got, m.topic)
	}
	if want := "hx/ok hx/v3 hx/end"; strings.Join(got, " ") != want {
		t.Errorf("bystander got %q, want %q", got, want)
	}
	alive(t, b)
}

// TestHostileUnsubscribeInvalidFilter: a non-empty UNSUBSCRIBE filter
// that breaks §4.7's syntax ("a/#/b" [MQTT-4.7.1-2], "a+"
// [MQTT-4.7.1-3], "#x", a $share filter without one) was answered as a
// filter never subscribed (MQTT 5 0x11, 3.1.1 UNSUBACK). A SUBSCRIBE of
// it gets 0x8F (3.1.1 0x80): an UNSUBSCRIBE now gets 0x8F for that filter
// in MQTT 5, the others handled; a 3.1.1 UNSUBACK has no per-filter code,
// so the connection is closed, nothing unsubscribed [MQTT-4.8.0-1], as
// for "" (mochi change 39) and as Mosquitto does for any invalid filter
// ("Invalid unsubscription string", in both versions). A filter with
// U+0000 or ill-formed UTF-8 is a Malformed Packet in either version
// [MQTT-1.5.4-1] [MQTT-1.5.4-2] (3.1.1 [MQTT-1.5.3-1] [MQTT-1.5.3-2]):
// DISCONNECT 0x81 (3.1.1: closed), as before.
func TestHostileUnsubscribeInvalidFilter(t *testing.T) {
	b := start(t, Options{})
	unsub := hxUnsubscribe
	type tc struct {
		name string
		v    byte
		send [][]byte
		want []string
	}
	var cases []tc
	for _, f := range []string{"a/#/b", "a+", "+a/b", "a/b+", "#x", "a#", "a/#/", "$sync/a/#/b", "$tree.cbor/x+", "$share/g", "$share/g+/a", "$share/g/a/#/b"} {
		cases = append(cases,
			tc{"unsubscribe " + f, 5, [][]byte{unsub(hxProps(), f)}, []string{"b0:00 01 00 8f"}},
			tc{"subscribe " + f, 5, [][]byte{hxSubscribe(1, hxProps(), f, 0)}, []string{"90:00 01 00 8f"}},
			tc{"3.1.1 unsubscribe " + f, 4, [][]byte{unsub(nil, f)}, []string{"closed"}},
		)
	}
	for _, f := range []string{"a\x00b", "a/\xffb"} {
		cases = append(cases,
			tc{"unsubscribe " + f, 5, [][]byte{unsub(hxProps(), f)}, []string{"e0:81*", "closed"}},
			tc{"3.1.1 unsubscribe " + f, 4, [][]byte{unsub(nil, f)}, []string{"closed"}},
		)
	}
	cases = append(cases,
		tc{"subscribed, then it and an invalid one", 5, [][]byte{hxSubscribe(1, hxProps(), "hx/a", 0), unsub(hxProps(), "hx/a", "a/#/b", "hx/a")},
			[]string{"90:00 01 00 00", "b0:00 01 00 00 8f 11"}},
		tc{"valid filters, none subscribed", 5, [][]byte{unsub(hxProps(), "+", "#", "a/+/b/#", "$sync/a/+", "$share/g/a/#", "/a")}, []string{"b0:00 01 00 11 11 11 11 11 11"}},
		tc{"3.1.1 valid filters", 4, [][]byte{unsub(nil, "+", "#", "a/+/b/#", "$sync/a/+")}, []string{"b0:00 01"}},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := hxExchange(t, b.TCPAddr(), c.v, "hx", c.send...); !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	alive(t, b)
}
