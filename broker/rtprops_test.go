package broker

import (
	"bytes"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// The red team of h-props (mochi changes 82 and 83: a client's CONNECT
// properties and its will behind pointers, nil while it has none): each
// test reads a client with and without either through a real connection,
// so that a nil read as something (a crash, a will lost or sent twice, a
// property of another CONNECT) shows.

// rtWillProps are the MQTT 5 will properties a will of these tests
// carries, when it carries some: each of §3.1.3.2 but the delay.
var rtWillProps = packets.Properties{
	PayloadFormat: 1, PayloadFormatFlag: true,
	ContentType:           "text/plain",
	ResponseTopic:         "rtprops/answer",
	CorrelationData:       []byte{0, 1, 2, 0xff},
	MessageExpiryInterval: 3600,
	User:                  []packets.UserProperty{{Key: "k", Val: "v"}, {Key: "k", Val: "v2"}, {Key: "", Val: ""}},
}

// rtWill is the will of a CONNECT of these tests.
type rtWill struct {
	qos     byte
	retain  bool
	payload string
	props   bool // rtWillProps (MQTT 5)
}

// rtConnect is a CONNECT of id (MQTT version v, CONNECT properties
// props) with will w on topic, if w is not nil.
func rtConnect(t *testing.T, v byte, id string, clean bool, props packets.Properties, w *rtWill, topic string) []byte {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: clean, Keepalive: 30, ClientIdentifier: id},
		Properties:      props,
	}
	if w != nil {
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, topic, []byte(w.payload)
		pk.Connect.WillQos, pk.Connect.WillRetain = w.qos, w.retain
		if w.props {
			pk.Connect.WillProperties = rtWillProps
			pk.Mods.AllowResponseInfo = true // or the encoder drops Response Topic and Correlation Data
		}
	}
	return ownerPacket(t, pk)
}

// rtDecodePublish decodes a PUBLISH an MQTT 5 peer read.
func rtDecodePublish(t *testing.T, h byte, body []byte) packets.Packet {
	t.Helper()
	pk := packets.Packet{ProtocolVersion: 5}
	if err := pk.FixedHeader.Decode(h); err != nil || pk.FixedHeader.Type != packets.Publish {
		t.Fatalf("%#x % x is not a PUBLISH (%v)", h, body, err)
	}
	pk.FixedHeader.Remaining = len(body)
	if err := pk.PublishDecode(body); err != nil {
		t.Fatalf("PUBLISH % x: %v", body, err)
	}
	return pk
}

// rtCheckWill checks a will as an MQTT 5 subscriber (at QoS 2) got it:
// topic, payload, QoS, retain flag and properties, byte for byte.
func rtCheckWill(t *testing.T, what string, pk packets.Packet, topic string, w *rtWill, retained bool) {
	t.Helper()
	if pk.TopicName != topic || string(pk.Payload) != w.payload || pk.FixedHeader.Qos != w.qos || pk.FixedHeader.Retain != retained {
		t.Errorf("%s: got %q %q QoS %d retain %v; want %q %q QoS %d retain %v", what,
			pk.TopicName, pk.Payload, pk.FixedHeader.Qos, pk.FixedHeader.Retain, topic, w.payload, w.qos, retained)
	}
	p := pk.Properties
	if !w.props {
		if p.PayloadFormatFlag || p.ContentType != "" || p.ResponseTopic != "" || len(p.CorrelationData) > 0 || len(p.User) > 0 || p.MessageExpiryInterval != 0 {
			t.Errorf("%s: a will without properties came with some: %+v", what, p)
		}
		return
	}
	want := rtWillProps
	if p.PayloadFormat != want.PayloadFormat || !p.PayloadFormatFlag || p.ContentType != want.ContentType ||
		p.ResponseTopic != want.ResponseTopic || !bytes.Equal(p.CorrelationData, want.CorrelationData) ||
		fmt.Sprint(p.User) != fmt.Sprint(want.User) {
		t.Errorf("%s: will properties %+v, want %+v", what, p, want)
	}
	switch {
	case w.retain && p.MessageExpiryInterval != 0: // a retained row never expires (SPEC §1, door.go)
		t.Errorf("%s: a retained will's Message Expiry Interval %d, want none", what, p.MessageExpiryInterval)
	case !w.retain && (p.MessageExpiryInterval == 0 || p.MessageExpiryInterval > want.MessageExpiryInterval):
		t.Errorf("%s: Message Expiry Interval %d, want (0, %d]", what, p.MessageExpiryInterval, want.MessageExpiryInterval)
	}
}

// rtDisconnect is an MQTT 5 DISCONNECT with reason code and, if
// expiry >= 0, a Session Expiry Interval.
func rtDisconnect(reason byte, expiry int64) []byte {
	if expiry < 0 {
		return []byte{0xe0, 0x02, reason, 0x00}
	}
	e := uint32(expiry)
	return []byte{0xe0, 0x07, reason, 0x05, 0x11, byte(e >> 24), byte(e >> 16), byte(e >> 8), byte(e)}
}

// TestRTPropsWillEnds: a client with or without CONNECT properties
// (MQTT 3.1.1; MQTT 5 with none; MQTT 5 with a Session Expiry Interval,
// Receive Maximum, Topic Alias Maximum, Maximum Packet Size, Request
// Problem Information 0 and user properties) and a will (QoS 0-2, retain,
// every will property) ends its connection in each way
// MQTT gives: closed without DISCONNECT, DISCONNECT 0x04 (send the will),
// 0x00 (no will), 0x00 with a Session Expiry Interval of 0 or a new one,
// one raising an interval of 0 (a Protocol Error: the will goes), a
// second CONNECT (a Protocol Error). The will reaches a subscriber byte
// for byte, or nothing does; a retained will is kept; the session is
// present to a CONNECT resuming it, or not. Changes 82 and 83 made the
// properties and the will nil while a client has none: a nil read as a
// will, or a will cleared as none, or a DISCONNECT's interval lost, shows
// here.
func TestRTPropsWillEnds(t *testing.T) {
	some := packets.Properties{
		SessionExpiryInterval: 60, SessionExpiryIntervalFlag: true,
		ReceiveMaximum: 5, TopicAliasMaximum: 3, MaximumPacketSize: 1 << 20,
		RequestProblemInfo: 0, RequestProblemInfoFlag: true,
		User: []packets.UserProperty{{Key: "who", Val: "rt"}},
	}
	full := func(qos byte, retain bool) *rtWill {
		return &rtWill{qos: qos, retain: retain, payload: "gone", props: true}
	}
	plain := func(qos byte, retain bool) *rtWill { return &rtWill{qos: qos, retain: retain, payload: "gone"} }
	cases := []struct {
		name    string
		v       byte
		props   packets.Properties
		will    *rtWill
		end     string // drop, disconnect, second-connect
		packet  []byte // the DISCONNECT of end disconnect
		want    bool   // the will is published
		present bool   // a CONNECT resuming the session finds it
	}{
		{"3.1.1 dropped", 4, packets.Properties{}, plain(0, false), "drop", nil, true, true},
		{"3.1.1 qos 2 retained dropped", 4, packets.Properties{}, plain(2, true), "drop", nil, true, true},
		{"3.1.1 disconnect", 4, packets.Properties{}, plain(1, true), "disconnect", []byte{0xe0, 0x00}, false, true},
		{"3.1.1 second connect", 4, packets.Properties{}, plain(1, false), "second-connect", nil, true, true},
		{"5 none, qos 2 retained dropped", 5, packets.Properties{}, full(2, true), "drop", nil, true, false},
		{"5 none, 0x04", 5, packets.Properties{}, full(1, false), "disconnect", rtDisconnect(0x04, -1), true, false},
		{"5 none, 0x00", 5, packets.Properties{}, full(1, true), "disconnect", []byte{0xe0, 0x00}, false, false},
		{"5 none, 0x00 expiry 0", 5, packets.Properties{}, full(1, true), "disconnect", rtDisconnect(0x00, 0), false, false},
		{"5 none, 0x00 expiry raised", 5, packets.Properties{}, full(1, false), "disconnect", rtDisconnect(0x00, 10), true, false},
		{"5 none, second connect", 5, packets.Properties{}, full(0, false), "second-connect", nil, true, false},
		{"5 some, qos 2 retained dropped", 5, some, full(2, true), "drop", nil, true, true},
		{"5 some, no will props, dropped", 5, some, plain(1, false), "drop", nil, true, true},
		{"5 some, 0x04", 5, some, full(1, false), "disconnect", rtDisconnect(0x04, -1), true, true},
		{"5 some, 0x04 expiry 0", 5, some, full(1, false), "disconnect", rtDisconnect(0x04, 0), true, false},
		{"5 some, 0x00", 5, some, full(2, true), "disconnect", []byte{0xe0, 0x00}, false, true},
		{"5 some, 0x00 expiry 0", 5, some, full(1, false), "disconnect", rtDisconnect(0x00, 0), false, false},
		{"5 some, 0x00 expiry 120", 5, some, full(1, false), "disconnect", rtDisconnect(0x00, 120), false, true},
		{"5 some, second connect", 5, some, full(1, false), "second-connect", nil, true, true},
		// A will's payload may be empty (mochi refused it: change 85).
		{"3.1.1 empty will dropped", 4, packets.Properties{}, &rtWill{qos: 1}, "drop", nil, true, true},
		{"5 none, empty will with props, 0x04", 5, packets.Properties{}, &rtWill{qos: 2, props: true}, "disconnect", rtDisconnect(0x04, -1), true, false},
		{"5 some, empty will dropped", 5, some, &rtWill{}, "drop", nil, true, true},
	}
	b := start(t, Options{})
	for n, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, topic := fmt.Sprint("rtp-", n), fmt.Sprint("rtprops/will/", n)
			watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id+"-watch", true, 0, nil))
			watcher.subscribe(t, 5, topic, 2)
			connect := rtConnect(t, tc.v, id, tc.v == 4 && !tc.present, tc.props, tc.will, topic)
			a, _, code := rawPeer(t, b.TCPAddr(), connect)
			if code != 0 {
				t.Fatalf("CONNACK %#x", code)
			}
			cl, ok := b.server.Clients.Get(id)
			if !ok || (cl.Properties.Props == nil) != (tc.v == 4 || tc.props.SessionExpiryInterval == 0) {
				t.Fatalf("filed %v; properties %v", ok, cl.Properties.Props) // set before the client is filed, then not changed
			}
			switch tc.end {
			case "drop":
				resetConn(a.c)
			case "disconnect":
				a.c.Write(tc.packet)
				a.waitClosed(t)
			case "second-connect":
				a.c.Write(connect)
				a.waitClosed(t)
			}
			if tc.want {
				h, body := watcher.next(t, 3)
				rtCheckWill(t, "live", rtDecodePublish(t, h, body), topic, tc.will, false)
			}
			waitFor(t, "the will's connection gone", func() bool {
				return atomic.LoadInt64(&b.server.Info.ClientsConnected) == 1
			})
			marker, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id+"-marker", true, 0, nil))
			watcher.subscribe(t, 5, topic+"/after", 0)
			marker.publish1(t, 5, topic+"/after", "")
			if got := watcher.topicsUntil(t, topic+"/after"); len(got) != 0 {
				t.Errorf("got %v after the will, want nothing", got)
			}
			if tc.want && tc.will.retain {
				r, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id+"-late", true, 0, nil))
				r.c.Write(ownerPacket(t, packets.Packet{
					FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5,
					PacketID: 1, Filters: packets.Subscriptions{{Filter: topic, Qos: 2}},
				}))
				h, body := r.next(t, 3)
				rtCheckWill(t, "retained", rtDecodePublish(t, h, body), topic, tc.will, true)
			}
			resume := packets.Properties{SessionExpiryInterval: 60, SessionExpiryIntervalFlag: true}
			again, present, code := rawPeer(t, b.TCPAddr(), rtConnect(t, tc.v, id, false, resume, nil, ""))
			if code != 0 || present != tc.present {
				t.Errorf("resuming CONNACK %#x, session present %v; want present %v", code, present, tc.present)
			}
			if tc.v == 4 {
				again.c.Write([]byte{0xe0, 0x00})
			} else {
				again.c.Write(rtDisconnect(0x00, 0))
			}
			watcher.c.Close()
			marker.c.Close()
		})
	}
}

// TestRTPropsResume: a session resumed, or a live connection taken over,
// by a CONNECT whose properties differ from the old one's: an MQTT 5
// client with properties (Topic Alias Maximum, Receive Maximum 1) resumed
// by one with none and the reverse, an MQTT 3.1.1 session resumed by
// MQTT 5 with aliases, an MQTT 5 client's id taken over live by MQTT
// 3.1.1 and the reverse. The session is present or not as the old
// CONNECT's Session Expiry Interval says, the old live connection's will
// goes, the messages reach the new connection with its own properties
// (topic aliases only when it allows them), and the session outlives the
// new connection as the new CONNECT says. The properties are per client
// (change 82: nil when a CONNECT had none): none of the old client's may
// reach the new one.
func TestRTPropsResume(t *testing.T) {
	persist := packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true}
	aliases := persist
	aliases.TopicAliasMaximum, aliases.ReceiveMaximum = 5, 1
	none := packets.Properties{}
	cases := []struct {
		name           string
		oldV           byte
		oldProps       packets.Properties
		live           bool // the old connection is up: taken over, its will goes
		newV           byte
		newProps       packets.Properties
		present        bool // the new CONNECT finds the session
		aliases        bool // its deliveries may carry topic aliases (up to 5)
		presentAfterwd bool // the session outlives the new connection
	}{
		{"5 aliases, then 5 none", 5, aliases, false, 5, none, true, false, false},
		{"5 none, then 5 aliases", 5, none, false, 5, aliases, false, true, true},
		{"3.1.1, then 5 aliases", 4, none, false, 5, aliases, true, true, true},
		{"5 aliases, then 3.1.1", 5, aliases, false, 4, none, true, false, true},
		{"5 aliases taken over live by 3.1.1", 5, aliases, true, 4, none, true, false, true},
		{"5 none taken over live by 3.1.1", 5, none, true, 4, none, false, false, true},
		{"3.1.1 taken over live by 5 aliases", 4, none, true, 5, aliases, true, true, true},
		{"3.1.1 taken over live by 5 none", 4, none, true, 5, none, true, false, false},
	}
	b := start(t, Options{})
	for n, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprint("rtres-", n)
			willTopic, msgTopic := fmt.Sprint("rtres/", n, "/will"), fmt.Sprint("rtres/", n, "/msg")
			watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id+"-watch", true, 0, nil))
			watcher.subscribe(t, 5, willTopic, 1)
			pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id+"-pub", true, 0, nil))
			publish := func() {
				for i := range 3 {
					pub.publish1(t, 5, msgTopic, fmt.Sprint(i))
				}
			}

			old, _, code := rawPeer(t, b.TCPAddr(), rtConnect(t, tc.oldV, id, false, tc.oldProps, &rtWill{qos: 1, payload: "old"}, willTopic))
			if code != 0 {
				t.Fatalf("old CONNACK %#x", code)
			}
			old.subscribe(t, tc.oldV, msgTopic, 1)
			if !tc.live {
				old.c.Write([]byte{0xe0, 0x00}) // no will
				old.waitClosed(t)
				waitFor(t, "the old connection gone", func() bool { return connGone(b, id) })
				if tc.present {
					publish()
				}
			}
			nw, present, code := rawPeer(t, b.TCPAddr(), rtConnect(t, tc.newV, id, false, tc.newProps, nil, ""))
			if code != 0 || present != tc.present {
				t.Fatalf("new CONNACK %#x, session present %v; want present %v", code, present, tc.present)
			}
			if tc.live {
				old.waitClosed(t)
				h, body := watcher.next(t, 3)
				if m := rtDecodePublish(t, h, body); m.TopicName != willTopic || string(m.Payload) != "old" {
					t.Fatalf("the watcher got %q %q, want the old connection's will", m.TopicName, m.Payload)
				}
			}
			if !tc.present {
				nw.subscribe(t, tc.newV, msgTopic, 1)
			}
			if tc.live || !tc.present {
				publish()
			}
			names := map[uint16]string{}
			for i := range 3 {
				h, body := nw.next(t, 3)
				m := packets.Packet{FixedHeader: packets.FixedHeader{Qos: h >> 1 & 3}, TopicName: "?"}
				if tc.newV == 5 {
					m = rtDecodePublish(t, h, body)
				} else if p, ok := decodeRawPublish(h, body, 4); ok {
					m.TopicName, m.Payload, m.PacketID = p.topic, []byte(p.payload), p.id
				}
				if a := m.Properties.TopicAlias; a > 0 {
					if m.TopicName != "" {
						names[a] = m.TopicName
					}
					m.TopicName = names[a]
				}
				if m.TopicName != msgTopic || string(m.Payload) != fmt.Sprint(i) || m.Properties.TopicAlias > 0 && !tc.aliases || m.Properties.TopicAlias > 5 {
					t.Errorf("message %d: %q %q alias %d; want %q %q, aliases allowed %v", i, m.TopicName, m.Payload, m.Properties.TopicAlias, msgTopic, fmt.Sprint(i), tc.aliases)
				}
				nw.c.Write([]byte{0x40, 0x02, byte(m.PacketID >> 8), byte(m.PacketID)})
			}
			nw.c.Write([]byte{0xe0, 0x00})
			nw.waitClosed(t)
			waitFor(t, "the new connection gone", func() bool { return connGone(b, id) })
			again, present, code := rawPeer(t, b.TCPAddr(), rtConnect(t, 5, id, false, persist, nil, ""))
			if code != 0 || present != tc.presentAfterwd {
				t.Errorf("afterwards CONNACK %#x, session present %v; want present %v", code, present, tc.presentAfterwd)
			}
			again.c.Write(rtDisconnect(0x00, 0))
			watcher.c.Close()
			pub.c.Close()
		})
	}
}
