package broker

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// rv6Connect is an MQTT CONNECT (version v) of client id as user, whose
// password is user + "-pw" (users; userExchange's too).
func rv6Connect(v byte, id, user string) []byte {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(user + "-pw"),
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// TestRV6PublishACLOnce: a publish the ACL refuses is refused once, by
// the door, with the answer it had before mochi stopped asking its
// OnACLCheck chain about publishes (mochi change 96, PublishesChecked):
// MQTT 5 at QoS 1 and 2 a PUBACK or PUBREC 0x87, QoS 0 nothing, the
// connection kept; MQTT 3.1.1 the plain PUBACK or PUBREC (it has no
// reason codes), the connection kept; retained, a tree publish, a topic
// given by an alias alike. Each is counted once (Stats.Refused) and
// nothing of it reaches a reader of every topic. Review h-rv6.
//
// It fails when mochi asks the chain again and the chain answers for the
// ACL (PublishesChecked taken out, OnACLCheck answering canWrite): mochi
// then refuses first, MQTT 3.1.1 by DISCONNECT and QoS 0 without a
// count.
func TestRV6PublishACLOnce(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic readwrite ok/#\nuser bob\ntopic read #\n"))
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Users: users(t), ACL: acl})
	watch := dial3With(t, b, paho.NewClientOptions().SetClientID("watch").SetUsername("bob").SetPassword("bob-pw").SetCleanSession(true))
	watch.sub(t, "#", 0)
	alias := func(a uint16) []byte { return hxProps(hxU16(0x23, a)) }
	pub4 := func(topic string, qos byte, id uint16, retain bool) []byte {
		h := byte(0x30) | qos<<1
		if retain {
			h |= 1
		}
		parts := [][]byte{hxStr(topic)}
		if qos > 0 {
			parts = append(parts, hxID(id))
		}
		return hxPacket(h, append(parts, []byte("1"))...)
	}
	pubrel := func(id uint16) []byte { return hxPacket(0x62, hxID(id)) }
	cases := []struct {
		name    string
		v       byte
		send    [][]byte
		want    []string
		refused int64
	}{
		{"5 QoS 0", 5, [][]byte{hxPublish("no/x", 0, 0, hxProps(), "1")}, nil, 1},
		{"5 QoS 1", 5, [][]byte{hxPublish("no/x", 1, 1, hxProps(), "1")}, []string{"40:00 01 87*"}, 1},
		{"5 QoS 2", 5, [][]byte{hxPublish("no/x", 2, 1, hxProps(), "1"), pubrel(1)}, []string{"50:00 01 87*", "70:00 01 92*"}, 1},
		{"5 QoS 1 retained", 5, [][]byte{retainedPk(hxPublish("no/x", 1, 1, hxProps(), "1"))}, []string{"40:00 01 87*"}, 1},
		{"5 tree", 5, [][]byte{hxPublish("$tree/no", 1, 1, hxProps(), `{"x":1}`)}, []string{"40:00 01 87*"}, 1},
		{"5 tree QoS 0", 5, [][]byte{hxPublish("$tree/no", 0, 0, hxProps(), `{"x":1}`)}, nil, 1},
		{"5 alias, then the alias alone", 5, [][]byte{
			hxPublish("no/x", 1, 1, alias(1), "1"), hxPublish("", 1, 2, alias(1), "1"), hxPublish("", 0, 0, alias(1), "1"),
		}, []string{"40:00 01 87*", "40:00 02 87*"}, 3},
		{"3.1.1 QoS 0", 4, [][]byte{pub4("no/x", 0, 0, false)}, nil, 1},
		{"3.1.1 QoS 1", 4, [][]byte{pub4("no/x", 1, 1, false)}, []string{"40:00 01"}, 1},
		{"3.1.1 QoS 2", 4, [][]byte{pub4("no/x", 2, 1, false), pubrel(1)}, []string{"50:00 01", "70:00 01"}, 1},
		{"3.1.1 QoS 1 retained", 4, [][]byte{pub4("no/x", 1, 1, true)}, []string{"40:00 01"}, 1},
		{"3.1.1 tree", 4, [][]byte{pub4("$tree/no", 1, 1, false)}, []string{"40:00 01"}, 1},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := b.stats.Refused.Load()
			got := exchangeAs(t, hxDial(t, b.TCPAddr()), rv6Connect(c.v, fmt.Sprint("alice-", i), "alice"), c.send...)
			if !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
			if n := b.stats.Refused.Load() - before; n != c.refused {
				t.Errorf("%d refusals counted, want %d", n, c.refused)
			}
		})
	}
	// Nothing refused was delivered: the watcher's first message is the
	// allowed one sent after them all.
	ok := exchangeAs(t, hxDial(t, b.TCPAddr()), rv6Connect(5, "alice-ok", "alice"), hxPublish("ok/end", 1, 1, hxProps(), "end"))
	if !hxMatch(ok, []string{"40:00 01"}) {
		t.Errorf("allowed publish: %q", ok)
	}
	if msgs := watch.wait(t, 1); len(msgs) != 1 || msgs[0].topic != "ok/end" {
		t.Errorf("delivered: %+v, want only ok/end", msgs)
	}
	watch.quiet(t, 1)
}

// retainedPk sets a PUBLISH's retain flag.
func retainedPk(p []byte) []byte { p[0] |= 1; return p }

// exchangeAs sends connect over nc, a connection of any front end, and
// then send and a PINGREQ: what the broker answered the packets before
// its PINGRESP, or before it closed the connection ("closed" last), as
// "type:body" hex strings. The CONNECT must be accepted. It closes nc.
func exchangeAs(t *testing.T, nc net.Conn, connect []byte, send ...[]byte) []string {
	t.Helper()
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(testTimeout)) //nolint:errcheck // a late answer fails the reads
	r := bufio.NewReader(nc)
	if _, err := nc.Write(connect); err != nil {
		t.Fatal(err)
	}
	if h, body, err := readPacketBody(r); err != nil || h>>4 != 2 || len(body) < 2 || body[1] != 0 {
		t.Fatalf("no CONNACK accepting: %#x % x %v", h, body, err)
	}
	for _, p := range send {
		nc.Write(p) //nolint:errcheck // a closed connection shows in the reads
	}
	nc.Write([]byte{0xC0, 0}) //nolint:errcheck // as above
	var got []string
	for {
		h, body, err := readPacketBody(r)
		if err != nil {
			return append(got, "closed")
		}
		if h == 0xD0 {
			return got
		}
		got = append(got, fmt.Sprintf("%x:% x", h, body))
	}
}

// TestRV6LongAliasedTopic: a topic longer than max_topic_length plus the
// longest prefix, with a Topic Alias: OnPacketRead sets the alias to the
// topic cut and clears the packet's alias, so the door sees an MQTT
// PUBLISH's own topic (Message.topicValid) and still refuses it by its
// length (CheckTopic), then the alias alone the same way. Review h-rv6.
func TestRV6LongAliasedTopic(t *testing.T) {
	b := start(t, Options{MaxTopicLen: 32})
	watch := dial3(t, b, "watch", true)
	watch.sub(t, "#", 0)
	long := "lt/" + strings.Repeat("é", 100) // 203 bytes: past 32 + 64
	got := topicExchange(t, hxDial(t, b.TCPAddr()), 5, "lt",
		hxPublish(long, 1, 1, hxProps(hxU16(0x23, 1)), "x"),
		hxPublish("", 1, 2, hxProps(hxU16(0x23, 1)), "x"),
		hxPublish("", 0, 0, hxProps(hxU16(0x23, 1)), "x"))
	if want := []string{"40:00 01 90*", "40:00 02 90*"}; !hxMatch(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	settle(t, b)
	watch.pub(t, "lt/end", 0, false, "end")
	if msgs := watch.wait(t, 1); len(msgs) != 1 || msgs[0].topic != "lt/end" {
		t.Errorf("delivered: %+v, want only lt/end", msgs)
	}
}
