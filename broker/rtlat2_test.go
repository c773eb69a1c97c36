package broker

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// rtlat2Sub subscribes nc to filter at QoS 2 with a subscription
// identifier (0: none).
func rtlat2Sub(t *testing.T, nc net.Conn, r *bufio.Reader, filter string, subID byte) {
	t.Helper()
	props := []byte{0}
	if subID > 0 {
		props = []byte{2, 0x0B, subID}
	}
	body := append(append([]byte{0, 1}, props...), append(mqttStr(filter), 2)...)
	if _, err := nc.Write(rawPacket(0x82, body)); err != nil {
		t.Fatal(err)
	}
	if h, ack, err := readPacketBody(r); err != nil || h != 0x90 || ack[len(ack)-1] != 2 {
		t.Fatalf("SUBACK: %#x %x %v", h, ack, err)
	}
}

// rtlat2Read reads n PUBLISH packets (MQTT 5), acknowledging them (QoS 1
// and 2 flows), and returns them decoded, by topic.
func rtlat2Read(t *testing.T, nc net.Conn, r *bufio.Reader, n int) map[string]packets.Packet {
	t.Helper()
	got := make(map[string]packets.Packet)
	for len(got) < n {
		h, body, err := readPacketBody(r)
		if err != nil {
			t.Fatalf("after %d of %d publishes: %v", len(got), n, err)
		}
		switch h >> 4 {
		case packets.Publish:
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: (h >> 1) & 3, Retain: h&1 != 0}, ProtocolVersion: 5}
			if err := pk.PublishDecode(body); err != nil {
				t.Fatalf("PUBLISH %x: %v", body, err)
			}
			if _, dup := got[pk.TopicName]; dup {
				t.Fatalf("%s twice", pk.TopicName)
			}
			got[pk.TopicName] = pk
			switch pk.FixedHeader.Qos {
			case 1:
				_, err = nc.Write([]byte{0x40, 2, byte(pk.PacketID >> 8), byte(pk.PacketID)})
			case 2:
				_, err = nc.Write([]byte{0x50, 2, byte(pk.PacketID >> 8), byte(pk.PacketID)})
			}
		case packets.Pubrel:
			_, err = nc.Write([]byte{0x70, 2, body[0], body[1]})
		default:
			t.Fatalf("packet %#x %x", h, body)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return got
}

// rtlat2Props are the distinct MQTT 5 properties of publisher c's i-th
// publish: every property a PUBLISH forwards, several user properties.
func rtlat2Props(c, i int) packets.Properties {
	s := fmt.Sprintf("%d-%d", c, i)
	return packets.Properties{
		PayloadFormat: byte(i % 2), PayloadFormatFlag: true,
		ContentType:     "ct/" + s,
		ResponseTopic:   "rt/" + s,
		CorrelationData: []byte("corr-" + s + "\x00\xff"),
		User:            []packets.UserProperty{{Key: "k" + s, Val: "v" + s}, {Key: "seq", Val: s}, {Key: "k" + s, Val: ""}},
	}
}

// TestPipelinedPropertiesIntact (h-rtlat2, attack on mochi change 42 and
// messageProps): three MQTT 5 publishers pipeline 40 publishes each, in
// one write, at QoS 0, 1 and 2 (some retained, some with a Message
// Expiry), each with its own properties, decoded from the packet's bytes;
// a slow subscriber that reads only when all are in, a persistent session
// offline while they arrive, and a subscriber that comes after and gets
// the retained ones must each get every property byte for byte — with
// its own subscription identifier, the expiry counted down, none of one
// subscriber's changes seen by another.
func TestPipelinedPropertiesIntact(t *testing.T) {
	const pubs, per = 3, 40
	b := start(t, Options{})
	slow, slowR, _ := rawConnect5(t, b, "pl-slow", true, 0)
	rtlat2Sub(t, slow, slowR, "pl/#", 7)
	off, offR, _ := rawConnect5(t, b, "pl-off", false, 0)
	rtlat2Sub(t, off, offR, "pl/#", 0)
	if _, err := off.Write([]byte{0xe0, 0}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readPacketBody(offR); err == nil { // the broker closes it once it has the DISCONNECT
		t.Fatal("a packet after DISCONNECT")
	}

	type sent struct {
		qos    byte
		retain bool
		props  packets.Properties
		pay    string
	}
	want := make(map[string]sent)
	var wg sync.WaitGroup
	for c := range pubs {
		nc, r, _ := rawConnect5(t, b, fmt.Sprintf("pl-pub%d", c), true, 0)
		var all []byte
		acks := 0
		for i := range per {
			p := rtlat2Props(c, i)
			s := sent{qos: byte(i % 3), retain: i%4 == 0, props: p, pay: fmt.Sprintf("payload %d-%d", c, i)}
			if i%5 == 0 {
				s.props.MessageExpiryInterval = 3600
			}
			topic := fmt.Sprintf("pl/%d/%d", c, i)
			want[topic] = s
			var pb bytes.Buffer
			s.props.Encode(packets.Publish, packets.Mods{AllowResponseInfo: true}, &pb, 0)
			body := mqttStr(topic)
			h := byte(0x30) | s.qos<<1
			if s.retain {
				h |= 1
			}
			if s.qos > 0 {
				body = append(body, 0, byte(i+1))
				acks++
			}
			body = append(append(body, pb.Bytes()...), s.pay...)
			all = append(all, rawPacket(h, body)...)
		}
		// a QoS 1 publish last: its PUBACK says the broker has taken all
		all = append(all, rawPacket(0x32, append(append(mqttStr("pl-end"), 0, 200, 0), "x"...))...)
		if _, err := nc.Write(all); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for acks >= 0 {
				h, body, err := readPacketBody(r)
				if err != nil {
					t.Errorf("publisher %d: %v", c, err)
					return
				}
				switch h >> 4 {
				case packets.Puback, packets.Pubcomp:
					acks--
				case packets.Pubrec:
					_, err = nc.Write([]byte{0x62, 2, body[0], body[1]})
				}
				if err != nil {
					t.Errorf("publisher %d: %v", c, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	check := func(t *testing.T, who string, got map[string]packets.Packet, subID []int, retained, qos0 bool) {
		t.Helper()
		for topic, w := range want {
			if retained && !w.retain || !qos0 && w.qos == 0 {
				continue
			}
			pk, ok := got[topic]
			if !ok {
				t.Errorf("%s: no %s", who, topic)
				continue
			}
			wp := w.props
			wp.SubscriptionIdentifier = subID
			if gp := pk.Properties; wp.MessageExpiryInterval > 0 && !w.retain {
				if gp.MessageExpiryInterval > 3600 || gp.MessageExpiryInterval < 3600-uint32(testTimeout/time.Second) {
					t.Errorf("%s %s: expiry %d", who, topic, gp.MessageExpiryInterval)
				}
				wp.MessageExpiryInterval = gp.MessageExpiryInterval
			} else if w.retain {
				wp.MessageExpiryInterval = 0 // retained: rows never expire (SPEC §1)
			}
			if !reflect.DeepEqual(pk.Properties, wp) || string(pk.Payload) != w.pay || pk.FixedHeader.Retain != retained {
				t.Errorf("%s %s: %q %+v retain %v\nwant %q %+v", who, topic, pk.Payload, pk.Properties, pk.FixedHeader.Retain, w.pay, wp)
			}
		}
	}
	cases := []struct {
		name     string
		read     func(t *testing.T) map[string]packets.Packet
		subID    []int
		retained bool
		qos0     bool // QoS 0 publishes are delivered (not to an offline session)
	}{
		{"slow subscriber", func(t *testing.T) map[string]packets.Packet {
			return rtlat2Read(t, slow, slowR, pubs*per)
		}, []int{7}, false, true},
		{"offline session", func(t *testing.T) map[string]packets.Packet {
			nc, r, present := rawConnect5(t, b, "pl-off", false, 0)
			if !present {
				t.Fatal("session not present")
			}
			return rtlat2Read(t, nc, r, pubs*(per-(per+2)/3))
		}, nil, false, false},
		{"retained to a new subscriber", func(t *testing.T) map[string]packets.Packet {
			nc, r, _ := rawConnect5(t, b, "pl-late", true, 0)
			rtlat2Sub(t, nc, r, "pl/#", 9)
			return rtlat2Read(t, nc, r, pubs*((per+3)/4))
		}, []int{9}, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.read(t)
			check(t, tc.name, got, tc.subID, tc.retained, tc.qos0)
		})
	}
}

// rtlat2Connect is rawConnect5 for a persistent session that asks, or
// not, for problem information (Request Problem Information 0 or 1).
func rtlat2Connect(t *testing.T, b *Broker, id string, problemInfo byte) (net.Conn, *bufio.Reader, bool) {
	t.Helper()
	return rawConnect5With(t, b, id, false, packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true,
		RequestProblemInfo: problemInfo, RequestProblemInfoFlag: true})
}

// TestResentPublishKeepsUserProperties (h-rtlat2, PublishEncode's Mods):
// a QoS 1 message held for a persistent session while it is away is
// resent on its return (by mochi, WritePacket) with its User Properties,
// whatever the session's Request Problem Information: 0 forbids them on
// packets other than PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29], and
// a PUBLISH's are the application message's, forwarded unaltered
// [MQTT-3.3.2-17] — and the live delivery (Mote's writer) keeps them.
// Upstream's encoder dropped them, and change 41 kept that.
func TestResentPublishKeepsUserProperties(t *testing.T) {
	b := start(t, Options{})
	pub, pubR, _ := rawConnect5(t, b, "rpi-pub", true, 0)
	props := packets.Properties{ContentType: "text/plain", User: []packets.UserProperty{{Key: "k", Val: "v"}, {Key: "k2", Val: ""}}}
	for i, tc := range []struct {
		name        string
		problemInfo byte
	}{{"problem info 0", 0}, {"problem info 1", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			id, topic := fmt.Sprintf("rpi-%d", i), fmt.Sprintf("rpi/%d", i)
			nc, r, _ := rtlat2Connect(t, b, id, tc.problemInfo)
			rtlat2Sub(t, nc, r, topic, 0)
			// live: from Mote's writer
			var pb bytes.Buffer
			props.Encode(packets.Publish, packets.Mods{}, &pb, 0)
			body := append(append(mqttStr(topic), 0, 1), pb.Bytes()...)
			if _, err := pub.Write(rawPacket(0x32, append(body, "live"...))); err != nil {
				t.Fatal(err)
			}
			if h, ack, err := readPacketBody(pubR); err != nil || h != 0x40 {
				t.Fatalf("PUBACK: %#x %x %v", h, ack, err)
			}
			live := rtlat2Read(t, nc, r, 1)[topic]
			if _, err := nc.Write([]byte{0xe0, 0}); err != nil {
				t.Fatal(err)
			}
			if _, _, err := readPacketBody(r); err == nil {
				t.Fatal("a packet after DISCONNECT")
			}
			// held while away, resent on return: by mochi
			body = append(append(mqttStr(topic), 0, 2), pb.Bytes()...)
			if _, err := pub.Write(rawPacket(0x32, append(body, "held"...))); err != nil {
				t.Fatal(err)
			}
			if h, ack, err := readPacketBody(pubR); err != nil || h != 0x40 {
				t.Fatalf("PUBACK: %#x %x %v", h, ack, err)
			}
			nc, r, present := rtlat2Connect(t, b, id, tc.problemInfo)
			if !present {
				t.Fatal("session not present")
			}
			held := rtlat2Read(t, nc, r, 1)[topic]
			for _, got := range []packets.Packet{live, held} {
				if !reflect.DeepEqual(got.Properties, props) {
					t.Errorf("%q: properties %+v, want %+v", got.Payload, got.Properties, props)
				}
			}
		})
	}
}

// TestSessionChangesNoOtherDelivery (h-rtlat2, a message's properties
// shared between subscribers): a Session's fn may change what it gets
// (Open); changing a delivered plain message's User Properties or
// Correlation Data, or appending to them, must not reach another
// session's delivery, nor the retained row's properties a later MQTT
// subscriber gets. The message's properties are one for all its
// subscribers (messageProps), and the retained row keeps them.
func TestSessionChangesNoOtherDelivery(t *testing.T) {
	b := start(t, Options{})
	props := packets.Properties{ContentType: "text/plain", CorrelationData: []byte("corr"),
		User: []packets.UserProperty{{Key: "k", Val: "v"}, {Key: "k2", Val: "v2"}, {Key: "k3", Val: "v3"}}}
	changed := make(chan struct{})
	a := b.Open(Principal{ClientID: "chg-a"}, func(d Delivery) {
		d.Properties.User[0].Val = "changed"
		d.Properties.CorrelationData[0] = 'X'
		d.Properties.User = append(d.Properties.User, packets.UserProperty{Key: "mine", Val: "a"})
		close(changed)
	})
	defer a.Close()
	got := make(chan Delivery, 1)
	c := b.Open(Principal{ClientID: "chg-b"}, func(d Delivery) {
		select {
		case <-changed:
		case <-time.After(testTimeout):
		}
		got <- d
	})
	defer c.Close()
	for _, s := range []*Session{a, c} {
		if err := s.Subscribe("chg/#", 1); err != nil {
			t.Fatal(err)
		}
	}
	pub, pubR, _ := rawConnect5(t, b, "chg-pub", true, 0)
	var pb bytes.Buffer
	props.Encode(packets.Publish, packets.Mods{AllowResponseInfo: true}, &pb, 0)
	if _, err := pub.Write(rawPacket(0x33, append(append(append(mqttStr("chg/a"), 0, 1), pb.Bytes()...), "x"...))); err != nil {
		t.Fatal(err)
	}
	if h, ack, err := readPacketBody(pubR); err != nil || h != 0x40 {
		t.Fatalf("PUBACK: %#x %x %v", h, ack, err)
	}
	var d Delivery
	select {
	case d = <-got:
	case <-time.After(testTimeout):
		t.Fatal("no delivery")
	}
	late, lateR, _ := rawConnect5(t, b, "chg-late", true, 0)
	rtlat2Sub(t, late, lateR, "chg/#", 0)
	retained := rtlat2Read(t, late, lateR, 1)["chg/a"]
	for _, tc := range []struct {
		name string
		got  packets.Properties
	}{{"other session", d.Properties}, {"retained, to a later MQTT subscriber", retained.Properties}} {
		if !reflect.DeepEqual(tc.got, props) {
			t.Errorf("%s: properties %+v, want %+v", tc.name, tc.got, props)
		}
	}
}

// TestPublishAtMaximumPacketSize (h-rtlat2, change 41's lengths): an MQTT
// 5 subscriber with a Maximum Packet Size gets a message whose PUBLISH is
// exactly that size, byte for byte as the upstream encoder writes it, and
// not one a byte over [MQTT-3.1.2-24], around every remaining-length
// boundary (1→2, 2→3, 3→4 bytes: 2 MiB payloads), with properties and a
// subscription identifier.
func TestPublishAtMaximumPacketSize(t *testing.T) {
	b := start(t, Options{})
	pub, pubR, _ := rawConnect5(t, b, "mps-pub", true, 0)
	props := packets.Properties{ContentType: "c", User: []packets.UserProperty{{Key: "k", Val: "v"}}, CorrelationData: []byte{0, 1}}
	for i, max := range []int{127 + 2, 128 + 3, 16383 + 3, 16384 + 4, 2097151 + 4, 2097152 + 5} {
		t.Run(fmt.Sprint(max), func(t *testing.T) {
			topic := fmt.Sprintf("mps/%d", i)
			nc, r, _ := rawConnect5(t, b, fmt.Sprintf("mps-sub%d", i), true, uint32(max))
			rtlat2Sub(t, nc, r, topic, 3)
			// the payload that makes the delivery exactly max bytes
			out := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1, TopicName: topic,
				ProtocolVersion: 5, Properties: props, Mods: packets.Mods{AllowResponseInfo: true}}
			out.Properties.SubscriptionIdentifier = []int{3}
			n := max - 5
			for {
				out.Payload = make([]byte, n)
				var buf bytes.Buffer
				if err := out.PublishEncode(&buf); err != nil {
					t.Fatal(err)
				}
				if buf.Len() == max {
					break
				}
				n += max - buf.Len()
			}
			for j, extra := range []int{1, 0, -1} { // one over, exactly, one under
				payload := bytes.Repeat([]byte{byte('a' + j)}, n+extra)
				var pb bytes.Buffer
				props.Encode(packets.Publish, packets.Mods{AllowResponseInfo: true}, &pb, 0)
				body := append(append(append(mqttStr(topic), 0, byte(j+1)), pb.Bytes()...), payload...)
				if _, err := pub.Write(rawPacket(0x32, body)); err != nil {
					t.Fatal(err)
				}
				if h, ack, err := readPacketBody(pubR); err != nil || h != 0x40 {
					t.Fatalf("PUBACK: %#x %x %v", h, ack, err)
				}
			}
			for _, extra := range []int{0, -1} {
				h, body, err := readPacketBody(r)
				if err != nil || h != 0x32 {
					t.Fatalf("%#x %v", h, err)
				}
				want := out
				want.Payload = bytes.Repeat([]byte{byte('a' + 1 - extra)}, n+extra)
				want.PacketID = uint16(body[len(topic)+2])<<8 | uint16(body[len(topic)+3])
				var wb bytes.Buffer
				if err := want.PublishEncode(&wb); err != nil {
					t.Fatal(err)
				}
				if got := rawPacket(h, body); !bytes.Equal(got, wb.Bytes()) {
					t.Errorf("%d bytes (%x…), want %d (%x…)", len(got), got[:min(len(got), 40)], wb.Len(), wb.Bytes()[:min(wb.Len(), 40)])
				}
				if _, err := nc.Write([]byte{0x40, 2, body[len(topic)+2], body[len(topic)+3]}); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestPublishWildcardTopics (h-rtlat2, change 43's byte-by-byte wildcard
// check): a PUBLISH whose Topic Name or Response Topic holds '+' or '#'
// anywhere — alone, inside a level, next to multi-byte UTF-8 — is refused
// with a DISCONNECT (Protocol Error) [MQTT-3.3.2-2] [MQTT-3.3.2-14], and
// one with multi-byte characters whose bytes are not those is delivered.
func TestPublishWildcardTopics(t *testing.T) {
	b := start(t, Options{})
	sub, subR, _ := rawConnect5(t, b, "wc-sub", true, 0)
	rtlat2Sub(t, sub, subR, "#", 0)
	for i, tc := range []struct {
		topic, response string
		ok              bool
	}{
		{"wc/日本/x", "", true},
		{"wc/é+ü", "", false},
		{"wc/日#", "", false},
		{"+", "", false},
		{"wc/#", "", false},
		{"wc/a+b/c", "", false},
		{"wc/\u00ab\u00bb\u2b2b\u2323", "", true}, // bytes 0xab, 0xbb, 0x2b-ish trails: not '+' (0x2b) as bytes
		{"wc/r", "re/日本+", false},
		{"wc/r", "re/#", false},
		{"wc/r2", "re/日本", true},
	} {
		t.Run(fmt.Sprintf("%d %q %q", i, tc.topic, tc.response), func(t *testing.T) {
			nc, r, _ := rawConnect5(t, b, fmt.Sprintf("wc-pub%d", i), true, 0)
			var props []byte
			if tc.response != "" {
				props = append([]byte{0x08}, mqttStr(tc.response)...)
			}
			body := append(append(mqttStr(tc.topic), varint(len(props))...), props...)
			if _, err := nc.Write(rawPacket(0x30, append(body, "x"...))); err != nil {
				t.Fatal(err)
			}
			if tc.ok {
				if _, err := nc.Write([]byte{0xc0, 0}); err != nil {
					t.Fatal(err)
				}
				if h, _, err := readPacketBody(r); err != nil || h != 0xd0 {
					t.Fatalf("%#x %v, want PINGRESP", h, err)
				}
				got := rtlat2Read(t, sub, subR, 1)
				if pk, ok := got[tc.topic]; !ok || string(pk.Payload) != "x" || pk.Properties.ResponseTopic != tc.response {
					t.Fatalf("got %+v", got)
				}
				return
			}
			h, body, err := readPacketBody(r)
			if err != nil || h != 0xe0 || len(body) < 1 || (body[0] != 0x82 && body[0] != 0x90) {
				t.Fatalf("%#x %x %v, want DISCONNECT 0x82 or 0x90", h, body, err)
			}
		})
	}
}
