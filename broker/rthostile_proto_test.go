package broker

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// The hostile-client pass's protocol leniencies: packets MQTT calls
// malformed or a Protocol Error that were answered as if they were not.

// TestHostileLengthOverFourBytes: a variable byte integer is at most four
// bytes (MQTT 5 §1.5.5, 3.1.1 §2.2.3); a fifth is a Malformed Packet. A
// Remaining Length in five bytes was answered DISCONNECT 0x95 Packet too
// large; a properties length or a Subscription Identifier in five bytes
// was read as a number (0, 268435455) and the packet applied. Each is
// DISCONNECT 0x81 now (3.1.1: the connection closes, as before). A four-byte
// length over the maximum packet size stays 0x95.
func TestHostileLengthOverFourBytes(t *testing.T) {
	b := start(t, Options{})
	for _, c := range []struct {
		name string
		v    byte
		send []byte
		want []string
	}{
		{"remaining length in 5 bytes", 5, []byte{0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F}, []string{"e0:81*", "closed"}},
		{"remaining length in 5 bytes, last 0", 5, []byte{0x30, 0x80, 0x80, 0x80, 0x80, 0x00}, []string{"e0:81*", "closed"}},
		{"3.1.1 remaining length in 5 bytes", 4, []byte{0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F}, []string{"closed"}},
		{"remaining length in 4 bytes, too large", 5, []byte{0x30, 0xFF, 0xFF, 0xFF, 0x7F}, []string{"e0:95*", "closed"}},
		{"properties length in 5 bytes", 5, hxPacket(0x32, hxStr("hx/a"), hxID(1), []byte{0x80, 0x80, 0x80, 0x80, 0x00}, []byte("x")), []string{"e0:81*", "closed"}},
		{"subscription identifier in 5 bytes", 5, hxSubscribe(1, hxProps([]byte{0x0B, 0xFF, 0xFF, 0xFF, 0xFF, 0x00}), "hx/s", 0), []string{"e0:81*", "closed"}},
		{"subscription identifier in 4 bytes", 5, hxSubscribe(1, hxProps([]byte{0x0B, 0xFF, 0xFF, 0xFF, 0x7F}), "hx/s", 0), []string{"90:00 01 00 00"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := hxExchange(t, b.TCPAddr(), c.v, "hx", c.send); !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	alive(t, b)
}

// TestHostileAckExtraBytes: a 3.1.1 PUBACK, PUBREC, PUBREL or PUBCOMP has
// a Remaining Length of 2, the packet id alone (§3.4.1-§3.7.1); one with
// more was taken, the bytes ignored: now malformed, the connection closed
// [MQTT-4.8.0-1]. MQTT 5's reason code and properties (§3.4.2) are still
// read, but bytes after the properties are malformed too (DISCONNECT 0x81).
func TestHostileAckExtraBytes(t *testing.T) {
	b := start(t, Options{})
	for _, c := range []struct {
		name string
		v    byte
		send []byte
		want []string
	}{
		{"3.1.1 puback + 1", 4, hxPacket(0x40, hxID(1), []byte{0}), []string{"closed"}},
		{"3.1.1 pubrec + 1", 4, hxPacket(0x50, hxID(1), []byte{0}), []string{"closed"}},
		{"3.1.1 pubrel + 2", 4, hxPacket(0x62, hxID(1), []byte{0, 0}), []string{"closed"}},
		{"3.1.1 pubcomp + 1", 4, hxPacket(0x70, hxID(1), []byte{0}), []string{"closed"}},
		{"3.1.1 pubrel", 4, hxPacket(0x62, hxID(1)), []string{"70:00 01"}},
		{"puback, reason", 5, hxPacket(0x40, hxID(1), []byte{0x10}), nil},
		{"puback, reason, properties", 5, hxPacket(0x40, hxID(1), []byte{0}, hxProps(hxUser("k", "v"))), nil},
		{"pubrel, reason, properties", 5, hxPacket(0x62, hxID(1), []byte{0}, hxProps()), []string{"70:00 01 92*"}},
		{"puback, bytes after properties", 5, hxPacket(0x40, hxID(1), []byte{0}, hxProps(), []byte{1}), []string{"e0:81*", "closed"}},
		{"pubrel, bytes after properties", 5, hxPacket(0x62, hxID(1), []byte{0}, hxProps(), []byte{1, 2}), []string{"e0:81*", "closed"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := hxExchange(t, b.TCPAddr(), c.v, "hx", c.send); !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	alive(t, b)
}

// TestHostileUnsubscribeEmptyFilter: a topic filter is at least one
// character [MQTT-4.7.3-1]. An UNSUBSCRIBE of "" was answered UNSUBACK as
// any other. A SUBSCRIBE of "" is answered per filter (MQTT 5 0x8F, 3.1.1
// 0x80); UNSUBACK has per-filter codes in MQTT 5 only: 0x8F there, and a
// 3.1.1 client's connection is closed [MQTT-4.8.0-1], nothing unsubscribed.
func TestHostileUnsubscribeEmptyFilter(t *testing.T) {
	b := start(t, Options{})
	unsub := hxUnsubscribe
	for _, c := range []struct {
		name string
		v    byte
		send [][]byte
		want []string
	}{
		{"subscribe empty", 5, [][]byte{hxSubscribe(1, hxProps(), "", 0)}, []string{"90:00 01 00 8f"}},
		{"3.1.1 subscribe empty", 4, [][]byte{hxPacket(0x82, hxID(1), hxStr(""), []byte{0})}, []string{"90:00 01 80"}},
		{"unsubscribe empty", 5, [][]byte{unsub(hxProps(), "")}, []string{"b0:00 01 00 8f"}},
		{"unsubscribe one, then empty", 5, [][]byte{hxSubscribe(1, hxProps(), "hx/a", 0), unsub(hxProps(), "hx/a", "")},
			[]string{"90:00 01 00 00", "b0:00 01 00 00 8f"}},
		{"3.1.1 unsubscribe empty", 4, [][]byte{unsub(nil, "")}, []string{"closed"}},
		{"3.1.1 unsubscribe one and empty", 4, [][]byte{unsub(nil, "hx/a", "")}, []string{"closed"}},
		{"3.1.1 unsubscribe", 4, [][]byte{unsub(nil, "hx/a")}, []string{"b0:00 01"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := hxExchange(t, b.TCPAddr(), c.v, "hx", c.send...); !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	alive(t, b)
}

// TestHostileWillResponseTopic: a Will's Response Topic is the Topic Name
// of a response (MQTT 5 §3.1.3.2.6), and a Topic Name holds no wildcard
// [MQTT-4.7.0-1] (a PUBLISH's Response Topic: [MQTT-3.3.2-14]). A CONNECT
// whose Will Response Topic held + or # was accepted, and its will would
// carry it to subscribers: CONNACK 0x82 now, the connection closed. A
// Will property given twice is a Protocol Error too (0x82, was 0x81); a
// CONNECT that does not decode was closed without a CONNACK, and is now
// answered CONNACK with its code (internal/mochi change 45).
func TestHostileWillResponseTopic(t *testing.T) {
	b := start(t, Options{})
	connect := func(resp string) []byte {
		willProps := hxProps(append([]byte{0x08}, hxStr(resp)...))
		return hxPacket(0x10, hxStr("MQTT"), []byte{5, 0x06, 0, 30}, hxProps(), hxStr("hx-will"),
			willProps, hxStr("hx/will"), hxStr("gone"))
	}
	t.Run("will property twice", func(t *testing.T) {
		nc, err := net.Dial("tcp", b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(testTimeout))
		twice := hxProps([]byte{0x18, 0, 0, 0, 1}, []byte{0x18, 0, 0, 0, 2})
		nc.Write(hxPacket(0x10, hxStr("MQTT"), []byte{5, 0x06, 0, 30}, hxProps(), hxStr("hx-will"), //nolint:errcheck // the read says
			twice, hxStr("hx/will"), hxStr("gone")))
		r := bufio.NewReader(nc)
		if h, body, err := readPacketBody(r); err != nil || h != 0x20 || len(body) < 2 || body[1] != 0x82 {
			t.Errorf("got %#x % x %v, want CONNACK 0x82", h, body, err)
		}
		if h, body, err := readPacketBody(r); err == nil {
			t.Errorf("got %#x % x after the CONNACK, want the connection closed", h, body)
		}
	})
	for _, c := range []struct {
		resp string
		want byte
	}{{"r/#", 0x82}, {"r/+/x", 0x82}, {"r/x", 0x00}} {
		t.Run(c.resp, func(t *testing.T) {
			nc, err := net.Dial("tcp", b.TCPAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(testTimeout))
			nc.Write(connect(c.resp)) //nolint:errcheck // the read says
			r := bufio.NewReader(nc)
			h, body, err := readPacketBody(r)
			if err != nil || h != 0x20 || len(body) < 2 || body[1] != c.want {
				t.Fatalf("got %#x % x %v, want CONNACK %#x", h, body, err, c.want)
			}
			if c.want == 0 {
				return
			}
			if _, _, err := readPacketBody(r); err == nil {
				t.Errorf("connection not closed after the refused CONNECT")
			}
		})
	}
	alive(t, b)
}
