package broker

import (
	"net"
	"strings"
	"testing"
)

// TestPlainTopicRefusedOnce: a plain publish's topic is checked once on
// its way, not three times (bench/README.md, branch h-lat3): mochi refuses
// a topic that is not valid UTF-8 or holds a NUL as it decodes it
// (DISCONNECT 0x81), and one that is empty or holds a wildcard in
// PublishValidate (0x82); processPublish asks again only of a topic
// starting with '$' (mochi change 95), and the door does not check an
// MQTT PUBLISH's own topic again (Message.topicValid), but still checks a
// topic an alias gave, whose alias a publish the door took aside may have
// set, and the topic's length against max_topic_length. Each bad topic
// is refused as before, over TCP and WebSocket, MQTT 3.1.1 and 5, QoS 0
// and 1, retained or not, and nothing of it reaches a subscriber.
//
// Each row fails when the check that stays is taken out: PublishValidate's
// wildcard test (the rows "+" and "#" are then taken and delivered, not a
// DISCONNECT: the door no longer checks them), the decoder's UTF-8 and
// NUL test (taken and delivered too), and the door's check of an aliased
// topic (the alias row's second publish is then acknowledged and
// delivered to "tv/+").
func TestPlainTopicRefusedOnce(t *testing.T) {
	b := start(t, Options{MaxTopicLen: 32})
	watch := dial3(t, b, "watch", true)
	watch.sub(t, "#", 0)
	alias := func(a uint16, more ...[]byte) []byte { return hxProps(append([][]byte{hxU16(0x23, a)}, more...)...) }
	long := "tv/" + strings.Repeat("l", 40) // over max_topic_length (32)
	pub4 := func(topic string, qos byte, retain bool) []byte {
		h := byte(0x30) | qos<<1
		parts := [][]byte{hxStr(topic)}
		if qos > 0 {
			parts = append(parts, hxID(1))
		}
		if retain {
			h |= 1
		}
		return hxPacket(h, append(parts, []byte("x"))...)
	}
	retained := func(p []byte) []byte { p[0] |= 1; return p }
	cases := []struct {
		name string
		v    byte
		send [][]byte
		want []string
	}{
		{"5 + QoS 0", 5, [][]byte{hxPublish("tv/+", 0, 0, hxProps(), "x")}, []string{"e0:82*", "closed"}},
		{"5 + QoS 1", 5, [][]byte{hxPublish("tv/+/a", 1, 1, hxProps(), "x")}, []string{"e0:82*", "closed"}},
		{"5 # QoS 0", 5, [][]byte{hxPublish("tv/#", 0, 0, hxProps(), "x")}, []string{"e0:82*", "closed"}},
		{"5 # retained", 5, [][]byte{retained(hxPublish("#", 1, 1, hxProps(), "x"))}, []string{"e0:82*", "closed"}},
		{"5 + in a level", 5, [][]byte{hxPublish("tv/a+b", 0, 0, hxProps(), "x")}, []string{"e0:82*", "closed"}},
		{"5 NUL", 5, [][]byte{hxPublish("tv/a\x00b", 0, 0, hxProps(), "x")}, []string{"e0:81*", "closed"}},
		{"5 NUL after UTF-8", 5, [][]byte{hxPublish("tv/é\x00", 1, 1, hxProps(), "x")}, []string{"e0:81*", "closed"}},
		{"5 invalid UTF-8", 5, [][]byte{hxPublish("tv/\xff", 0, 0, hxProps(), "x")}, []string{"e0:81*", "closed"}},
		{"5 invalid UTF-8 retained", 5, [][]byte{retained(hxPublish("tv/\xc3(", 1, 1, hxProps(), "x"))}, []string{"e0:81*", "closed"}},
		{"5 empty", 5, [][]byte{hxPublish("", 0, 0, hxProps(), "x")}, []string{"e0:82*", "closed"}},
		{"5 too long QoS 0", 5, [][]byte{hxPublish(long, 0, 0, hxProps(), "x")}, nil},
		{"5 too long QoS 1", 5, [][]byte{hxPublish(long, 1, 1, hxProps(), "x")}, []string{"40:00 01 90*"}},
		{"5 wildcard topic set aside, then its alias alone", 5, [][]byte{
			hxPublish("tv/+", 1, 1, alias(1, hxUser("mote", "tree")), `{`), // a tree that does not decode
			hxPublish("", 1, 2, alias(1), "x"),
		}, []string{"40:00 01 99*", "40:00 02 90*"}},
		{"3.1.1 +", 4, [][]byte{pub4("tv/+", 0, false)}, []string{"closed"}},
		{"3.1.1 # retained", 4, [][]byte{pub4("tv/#", 1, true)}, []string{"closed"}},
		{"3.1.1 NUL", 4, [][]byte{pub4("tv/\x00", 0, false)}, []string{"closed"}},
		{"3.1.1 invalid UTF-8", 4, [][]byte{pub4("tv/\xfe", 1, false)}, []string{"closed"}},
		{"3.1.1 empty", 4, [][]byte{pub4("", 0, false)}, []string{"closed"}},
		{"3.1.1 too long", 4, [][]byte{pub4(long, 1, false)}, []string{"40:00 01"}},
	}
	ws := func() net.Conn { return dialWSStream(t, "ws://"+b.WSAddr()+"/mqtt", nil, nil) }
	for _, front := range []struct {
		name string
		dial func() net.Conn
	}{{"tcp", func() net.Conn { return hxDial(t, b.TCPAddr()) }}, {"ws", ws}} {
		for _, c := range cases {
			t.Run(front.name+"/"+c.name, func(t *testing.T) {
				if got := topicExchange(t, front.dial(), c.v, "tv", c.send...); !hxMatch(got, c.want) {
					t.Errorf("got %q, want %q", got, c.want)
				}
			})
		}
	}
	// Nothing refused was delivered: the bystander's own message is the
	// first it gets (the refusals were answered before it was sent).
	settle(t, b)
	watch.pub(t, "tv/end", 0, false, "end")
	if msgs := watch.wait(t, 1); len(msgs) != 1 || msgs[0].topic != "tv/end" {
		t.Errorf("delivered: %+v, want only tv/end", msgs)
	}
	alive(t, b)
}

// topicExchange is hxExchange over nc, a connection of any front end:
// what the broker answered the packets sent as id (version v) before its
// PINGRESP, or before it closed the connection ("closed" last).
func topicExchange(t *testing.T, nc net.Conn, v byte, id string, send ...[]byte) []string {
	t.Helper()
	return exchangeAs(t, nc, connectPacket(v, id), send...)
}
