package broker

import (
	"bufio"
	"bytes"
	"net"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestLastPahoAllProperties: a real MQTT 5 client (paho.golang) that
// sends every property it can — in CONNECT (with will properties), in
// SUBSCRIBE (a subscription identifier, user properties) and in PUBLISH
// (user properties repeated with the same key, a topic alias set then
// used alone) — passes mochi changes 25 and 30 (duplicate properties,
// value ranges, properties' length): connected, subscribed, delivered
// with its properties, and its will delivered with its User Properties
// (paho.golang v0.23 packs will properties with CONNECT's rules and
// leaves out the rest: TestLastWillProperties sends them raw).
func TestLastPahoAllProperties(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	got := make(chan paho5.PublishReceived, 8)
	sub := dial5(t, b, "sub", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p; return true, nil },
	}}, nil)
	id := 7
	if _, err := sub.Subscribe(ctx, &paho5.Subscribe{
		Properties:    &paho5.SubscribeProperties{SubscriptionIdentifier: &id, User: paho5.UserProperties{{Key: "k", Value: "1"}, {Key: "k", Value: "2"}}},
		Subscriptions: []paho5.SubscribeOptions{{Topic: "pp/#", QoS: 1, RetainAsPublished: true}},
	}); err != nil {
		t.Fatal(err)
	}
	u32 := func(v uint32) *uint32 { return &v }
	u16 := func(v uint16) *uint16 { return &v }
	one := byte(1)
	nc, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	pub := paho5.NewClient(paho5.ClientConfig{Conn: nc})
	ca, err := pub.Connect(ctx, &paho5.Connect{ClientID: "pub", KeepAlive: 30, CleanStart: true,
		Properties: &paho5.ConnectProperties{SessionExpiryInterval: u32(0), ReceiveMaximum: u16(5), TopicAliasMaximum: u16(10),
			MaximumPacketSize: u32(1 << 20), RequestProblemInfo: true, RequestResponseInfo: true,
			User: paho5.UserProperties{{Key: "a", Value: "1"}, {Key: "a", Value: "2"}, {Key: "b", Value: ""}}},
		WillMessage: &paho5.WillMessage{Topic: "pp/will", Payload: []byte("gone"), QoS: 1},
		WillProperties: &paho5.WillProperties{WillDelayInterval: u32(0), PayloadFormat: &one, MessageExpiry: u32(60), ContentType: "text/plain",
			ResponseTopic: "pp/resp", CorrelationData: []byte{1, 2}, User: paho5.UserProperties{{Key: "w", Value: "1"}, {Key: "w", Value: "2"}}},
	})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ca)
	}
	props := func(alias uint16) *paho5.PublishProperties {
		return &paho5.PublishProperties{CorrelationData: []byte("c"), ContentType: "ct", ResponseTopic: "pp/r", PayloadFormat: &one,
			MessageExpiry: u32(60), TopicAlias: u16(alias), User: paho5.UserProperties{{Key: "u", Value: "1"}, {Key: "u", Value: "2"}}}
	}
	for i, topic := range []string{"pp/a", ""} { // the second by alias alone
		r, err := pub.Publish(ctx, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte("x"), Properties: props(1)})
		if err != nil || r.ReasonCode != 0 {
			t.Fatalf("publish %d: %v %+v", i, err, r)
		}
	}
	nc.Close() // the will
	for i, want := range []string{"pp/a", "pp/a", "pp/will"} {
		var p paho5.PublishReceived
		select {
		case p = <-got:
		case <-ctx.Done():
			t.Fatalf("message %d never came", i)
		}
		pk := p.Packet
		if want == "pp/will" { // paho.golang packs will properties as CONNECT's: only User goes out
			if pk.Topic != want || pk.Properties == nil || len(pk.Properties.User) != 2 || pk.Properties.User[1].Value != "2" {
				t.Errorf("will: %s %+v", pk.Topic, pk.Properties)
			}
			continue
		}
		if pk.Topic != want || pk.Properties == nil || pk.Properties.ContentType == "" || len(pk.Properties.User) != 2 ||
			pk.Properties.User[0].Value != "1" || pk.Properties.User[1].Value != "2" || pk.Properties.ResponseTopic == "" ||
			pk.Properties.SubscriptionIdentifier == nil || *pk.Properties.SubscriptionIdentifier != 7 {
			t.Errorf("message %d: %s %+v", i, pk.Topic, pk.Properties)
		}
	}
	alive(t, b)
}

// TestLastWillProperties: a will's properties sent as the MQTT 5 client
// sends them (a raw CONNECT: paho.golang leaves them out) reach its
// subscriber: Payload Format, Content Type, Response Topic, Correlation
// Data, User Properties (repeated), and the Message Expiry Interval,
// which "is sent as the Publication Expiry Interval when the Server
// publishes the Will Message" (§3.1.3.2.4).
func TestLastWillProperties(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	got := make(chan paho5.PublishReceived, 1)
	sub := dial5(t, b, "sub", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p; return true, nil },
	}}, nil)
	if _, err := sub.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "wp/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "dying",
			WillFlag: true, WillQos: 1, WillTopic: "wp/dying", WillPayload: []byte("gone"),
			WillProperties: packets.Properties{PayloadFormat: 1, PayloadFormatFlag: true, MessageExpiryInterval: 600, ContentType: "text/plain",
				ResponseTopic: "wp/resp", CorrelationData: []byte{1, 2}, User: []packets.UserProperty{{Key: "w", Val: "1"}, {Key: "w", Val: "2"}}}},
	}
	pk.Mods.AllowResponseInfo = true // mochi's encoder leaves Response Topic and Correlation Data out without it
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
	if _, err := nc.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	if h, body, err := readPacketBody(bufio.NewReader(nc)); err != nil || h != 0x20 || body[1] != 0 {
		t.Fatalf("CONNACK %#x % x %v", h, body, err)
	}
	nc.Close()
	var p paho5.PublishReceived
	select {
	case p = <-got:
	case <-ctx.Done():
		t.Fatal("no will")
	}
	pp := p.Packet.Properties
	if pp == nil || pp.PayloadFormat == nil || *pp.PayloadFormat != 1 || pp.ContentType != "text/plain" || pp.ResponseTopic != "wp/resp" ||
		!bytes.Equal(pp.CorrelationData, []byte{1, 2}) || len(pp.User) != 2 {
		t.Errorf("will properties %+v", pp)
	}
	if pp == nil || pp.MessageExpiry == nil || *pp.MessageExpiry == 0 || *pp.MessageExpiry > 600 {
		t.Errorf("will's Message Expiry Interval %v, want 1..600 [§3.1.3.2.4]", pp.MessageExpiry)
	}
}
