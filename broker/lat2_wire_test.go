package broker

import (
	"bufio"
	"bytes"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/bench/rawmqtt"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// rawPacket is one MQTT packet: its first byte, its remaining length and
// body.
func rawPacket(h byte, body []byte) []byte { return rawmqtt.Packet(h, body) }

// mqttStr is an MQTT UTF-8 string: two bytes of length, then s.
func mqttStr(s string) []byte { return rawmqtt.AppendString(nil, s) }

// TestPlainForwardBytes: the bytes a plain QoS 0 PUBLISH reaches its
// subscribers with, written out by hand, for an MQTT 3.1.1 subscriber, an
// MQTT 5 one and an MQTT 5 one with a subscription identifier, from an
// MQTT 5 publisher with properties (every one a PUBLISH forwards; the 3.1.1
// subscriber gets none) and without, and from an MQTT 3.1.1 publisher,
// retained or not (a live message is sent with RETAIN 0 [MQTT-3.3.1-9]).
// The outgoing packet goes by pointer and is encoded by mochi change 41:
// what is written must not change.
func TestPlainForwardBytes(t *testing.T) {
	b := start(t, Options{})
	sub3 := dialBench(t, b.TCPAddr(), "fw-sub3")
	sub3.subscribe(t, "fw/#")
	type sub5 struct {
		nc net.Conn
		r  *bufio.Reader
	}
	var subs5 []sub5
	for i, subID := range []byte{0, 5} {
		nc, r, _ := rawConnect5(t, b, "fw-sub5-"+string(rune('a'+i)), true, 0)
		props := []byte{0}
		if subID > 0 {
			props = []byte{2, 0x0B, subID}
		}
		body := append(append([]byte{0, 1}, props...), append(mqttStr("fw/#"), 0)...)
		if _, err := nc.Write(rawPacket(0x82, body)); err != nil {
			t.Fatal(err)
		}
		if h, ack, err := readPacketBody(r); err != nil || h != 0x90 || ack[len(ack)-1] != 0 {
			t.Fatalf("SUBACK: %#x %x %v", h, ack, err)
		}
		subs5 = append(subs5, sub5{nc, r})
	}
	pub5, _, _ := rawConnect5(t, b, "fw-pub5", true, 0)
	pub3 := dialBench(t, b.TCPAddr(), "fw-pub3")

	props := [][]byte{
		{0x01, 1}, // Payload Format Indicator
		append([]byte{0x03}, mqttStr("text/plain")...),                 // Content Type
		append([]byte{0x08}, mqttStr("re/ply")...),                     // Response Topic
		append([]byte{0x09}, mqttStr("corr")...),                       // Correlation Data
		append(append([]byte{0x26}, mqttStr("k")...), mqttStr("v")...), // User Property
	}
	all := bytes.Join(props, nil)
	withSubID := func(p []byte, id byte) []byte { // the identifier goes after Correlation Data, before User
		if id == 0 {
			return p
		}
		out := bytes.Join(props[:4], nil)
		out = append(out, 0x0B, id)
		return append(out, props[4]...)
	}
	cases := []struct {
		name    string
		v5      bool   // the publisher's version
		h       byte   // its PUBLISH's first byte
		props   []byte // its properties (MQTT 5)
		topic   string
		payload string
	}{
		{"v5 no properties", true, 0x30, nil, "fw/a", "hello"},
		{"v5 properties", true, 0x30, all, "fw/b", "{\"x\":1}"},
		{"v5 properties retained", true, 0x31, all, "fw/c", "r"},
		{"v5 empty payload", true, 0x30, nil, "fw/d", ""},
		{"v3", false, 0x30, nil, "fw/e", "three"},
		{"v3 retained", false, 0x31, nil, "fw/f", "three-r"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := mqttStr(tc.topic)
			if tc.v5 {
				body = append(append(body, varint(len(tc.props))...), tc.props...)
				body = append(body, tc.payload...)
				if _, err := pub5.Write(rawPacket(tc.h, body)); err != nil {
					t.Fatal(err)
				}
			} else {
				pub3.write(t, rawPacket(tc.h, append(body, tc.payload...)))
			}
			want3 := rawPacket(0x30, append(mqttStr(tc.topic), tc.payload...))
			sub3.c.SetReadDeadline(time.Now().Add(testTimeout))
			h, got, err := readPacketBody(sub3.r)
			if err != nil || !bytes.Equal(rawPacket(h, got), want3) {
				t.Errorf("MQTT 3.1.1 subscriber got %x (%v), want %x", rawPacket(h, got), err, want3)
			}
			for i, id := range []byte{0, 5} {
				p := withSubID(tc.props, id)
				if len(tc.props) == 0 && id > 0 {
					p = []byte{0x0B, id}
				}
				want5 := append(append(mqttStr(tc.topic), varint(len(p))...), p...)
				want5 = rawPacket(0x30, append(want5, tc.payload...))
				h, got, err := readPacketBody(subs5[i].r)
				if err != nil || !bytes.Equal(rawPacket(h, got), want5) {
					t.Errorf("MQTT 5 subscriber (subscription identifier %d) got %x (%v), want %x", id, rawPacket(h, got), err, want5)
				}
			}
		})
	}
}

// TestPreparePlainAllocs: a plain publish is one allocation in the door,
// with MQTT 5 properties or without (the message and its properties were
// two), and the properties kept are the publisher's, less its topic
// alias and subscription identifiers, with the expiry it gave.
func TestPreparePlainAllocs(t *testing.T) {
	b := start(t, Options{})
	p := Principal{ClientID: "prep", mqtt: true} // an MQTT client's: its id is the origin
	withProps := packets.Properties{ContentType: "text/plain", User: []packets.UserProperty{{Key: "k", Val: "v"}},
		TopicAlias: 3, TopicAliasFlag: true, SubscriptionIdentifier: []int{4}, MessageExpiryInterval: 60}
	for _, tc := range []struct {
		name  string
		props packets.Properties
	}{{"none", packets.Properties{}}, {"properties", withProps}} {
		t.Run(tc.name, func(t *testing.T) {
			m := Message{Topic: "prep/a", Payload: []byte("x"), Properties: tc.props}
			var r prepared
			var err error
			// The fewest of three measurements: AllocsPerRun counts the
			// running broker's other goroutines' allocations too (its
			// $SYS tick), which only add.
			n := float64(-1)
			for i := 0; i < 3 && n != 1; i++ {
				if a := testing.AllocsPerRun(100, func() { r, err = b.prepare(p, &m) }); n < 0 || a < n {
					n = a
				}
			}
			if err != nil || n != 1 {
				t.Fatalf("%v allocations (%v), want 1", n, err)
			}
			msg := r.plain
			if msg == nil || msg.topic != "prep/a" || string(msg.payload) != "x" || msg.origin != "prep" {
				t.Fatalf("message %+v", msg)
			}
			if tc.props.ContentType == "" {
				if msg.props != nil || msg.expiry != 0 {
					t.Fatalf("properties %+v, expiry %d, want none", msg.props, msg.expiry)
				}
				return
			}
			want := withProps
			want.TopicAlias, want.TopicAliasFlag, want.SubscriptionIdentifier = 0, false, nil
			if !reflect.DeepEqual(*msg.props, want) || msg.expiry < time.Now().Unix()+59 || msg.size != propsSize(&want) {
				t.Fatalf("properties %+v (expiry %d, size %d), want %+v", *msg.props, msg.expiry, msg.size, want)
			}
		})
	}
}
