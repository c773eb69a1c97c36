package broker

import (
	"bufio"
	"bytes"
	"net"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// The broker behaves as a plain MQTT broker to unmodified clients.

func TestPlain311QoS(t *testing.T) {
	b := start(t, Options{})
	sub := dial3(t, b, "sub", true)
	sub.sub(t, "a/#", 2)
	pub := dial3(t, b, "pub", true)
	for q := byte(0); q <= 2; q++ {
		pub.pub(t, "a/q", q, false, "m"+itoa(int(q)))
	}
	got := sub.wait(t, 3)
	for q, m := range got {
		if m.payload != "m"+itoa(q) || m.qos != byte(q) || m.retained {
			t.Errorf("message %d: %+v", q, m)
		}
	}
	sub.quiet(t, 3)
}

func TestPlain311Retained(t *testing.T) {
	b := start(t, Options{})
	pub := dial3(t, b, "pub", true)
	pub.pub(t, "r/a", 1, true, "1")
	pub.pub(t, "r/b", 2, true, "2")
	pub.pub(t, "r/b", 0, true, "") // deletes r/b
	pub.pub(t, "r/c", 0, false, "not retained")
	pub.pub(t, "r/c", 1, false, "not retained") // acknowledged: every publish before it is in too
	settle(t, b)
	sub := dial3(t, b, "sub", true)
	sub.sub(t, "r/+", 2)
	got := sub.wait(t, 1)
	sub.quiet(t, 1)
	if got[0].topic != "r/a" || got[0].payload != "1" || !got[0].retained || got[0].qos != 1 {
		t.Errorf("retained %+v", got[0])
	}
	// A retained publish reaches current subscribers as a normal message.
	pub.pub(t, "r/d", 1, true, "4")
	if m := sub.wait(t, 2)[1]; m.topic != "r/d" || m.retained {
		t.Errorf("live retained %+v", m)
	}
}

func TestPlain311Will(t *testing.T) {
	b := start(t, Options{})
	sub := dial3(t, b, "sub", true)
	sub.sub(t, "status/#", 1)
	o := paho.NewClientOptions().SetClientID("dying").SetCleanSession(true).SetWill("status/dying", "gone", 1, true)
	dying := dial3With(t, b, o)
	// Drop the connection without DISCONNECT: the will fires.
	b.connOf(t, "dying").out.(*mqttOut).cl.Net.Conn.Close()
	_ = dying
	if m := sub.wait(t, 1)[0]; m.topic != "status/dying" || m.payload != "gone" {
		t.Fatalf("will %+v", m)
	}
	// The retained will is a row too.
	settle(t, b)
	app := dial3(t, b, "app", true)
	app.sub(t, "$sync/status/+", 0)
	if m := app.wait(t, 1)[0]; !jsonEqual(t, m.payload, `{"dying":"gone"}`) {
		t.Fatalf("snapshot %s", m.payload)
	}
}

func TestPlain311PersistentSession(t *testing.T) {
	b := start(t, Options{})
	s := dial3(t, b, "keeper", false)
	s.sub(t, "p/#", 1)
	s.Disconnect(100)
	pub := dial3(t, b, "pub", true)
	pub.pub(t, "p/1", 1, false, "while away")
	time.Sleep(100 * time.Millisecond)
	back := dial3(t, b, "keeper", false)
	if m := back.wait(t, 1)[0]; m.topic != "p/1" || m.payload != "while away" {
		t.Fatalf("resumed session got %+v", m)
	}
}

// dial5 connects a raw paho.golang (MQTT 5) client.
func dial5(t testing.TB, b *Broker, id string, cfg paho5.ClientConfig, cp *paho5.Connect) *paho5.Client {
	t.Helper()
	nc, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Conn = nc
	c := paho5.NewClient(cfg)
	if cp == nil {
		cp = &paho5.Connect{CleanStart: true}
	}
	cp.ClientID, cp.KeepAlive = id, 30
	ctx := testCtx(t)
	if _, err := c.Connect(ctx, cp); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(&paho5.Disconnect{}) })
	return c
}

func TestPlain5(t *testing.T) {
	b := start(t, Options{})
	got := make(chan *paho5.Publish, 10)
	sub := dial5(t, b, "sub5", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
	}}, nil)
	ctx := testCtx(t)
	if _, err := sub.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "five/#", QoS: 2}}}); err != nil {
		t.Fatal(err)
	}
	pub := dial5(t, b, "pub5", paho5.ClientConfig{}, nil)
	props := &paho5.PublishProperties{ContentType: "text/plain", User: paho5.UserProperties{{Key: "k", Value: "v"}}}
	for q := byte(0); q <= 2; q++ {
		if _, err := pub.Publish(ctx, &paho5.Publish{Topic: "five/x", QoS: q, Payload: []byte{'0' + q}, Properties: props}); err != nil {
			t.Fatal(err)
		}
	}
	for q := byte(0); q <= 2; q++ {
		select {
		case p := <-got:
			if p.QoS != q || string(p.Payload) != string(rune('0'+q)) || p.Properties.ContentType != "text/plain" || p.Properties.User.Get("k") != "v" {
				t.Errorf("message %d: %+v %+v", q, p, p.Properties)
			}
		case <-time.After(testTimeout):
			t.Fatal("timed out")
		}
	}
	// A retained publish keeps its properties for later subscribers.
	if _, err := pub.Publish(ctx, &paho5.Publish{Topic: "five/r", QoS: 1, Retain: true, Payload: []byte("r"), Properties: props}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(testTimeout):
		t.Fatal("retained publish not delivered")
	}
	settle(t, b)
	late := make(chan *paho5.Publish, 10)
	l := dial5(t, b, "late5", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { late <- p.Packet; return true, nil },
	}}, nil)
	if _, err := l.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "five/r", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-late:
		if !p.Retain || p.Properties.ContentType != "text/plain" || p.Properties.User.Get("k") != "v" {
			t.Errorf("retained %+v %+v", p, p.Properties)
		}
	case <-time.After(testTimeout):
		t.Fatal("no retained message")
	}
}

// TestQueuedSurviveDisconnect: QoS 1 messages queued for a persistent
// session when its connection ends or is taken over (the client has as
// many in flight as it accepts) are kept for the session and sent when it comes back, in
// order [MQTT-3.1.2-5]. They used to be dropped with the queue.
func TestQueuedSurviveDisconnect(t *testing.T) {
	for _, takeover := range []bool{false, true} {
		t.Run(map[bool]string{false: "reconnect", true: "takeover"}[takeover], func(t *testing.T) {
			queuedSurvive(t, takeover)
		})
	}
}

// queuedSurvive leaves two messages queued for a persistent session, then
// comes back: after its connection ended, or taking it over.
func queuedSurvive(t *testing.T, takeover bool) {
	b := start(t, Options{})
	raw, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	connect := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: "away"},
		Properties:      packets.Properties{ReceiveMaximum: 1, SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true},
	}
	var buf bytes.Buffer
	if err := connect.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	body := []byte{0, 1, 0, 0, 3, 'q', '/', '#', 1}
	buf.Write(append(append([]byte{0x82}, varint(len(body))...), body...))
	raw.Write(buf.Bytes())
	raw.SetReadDeadline(time.Now().Add(testTimeout))
	r := bufio.NewReader(raw)
	for _, want := range []byte{0x20, 0x90} { // CONNACK, SUBACK
		if h, err := readPacket(r); err != nil || h != want {
			t.Fatalf("got packet %#x (%v), want %#x", h, err, want)
		}
	}
	pub := dial5(t, b, "pub", paho5.ClientConfig{}, nil)
	ctx := testCtx(t)
	for i := 1; i <= 3; i++ {
		if _, err := pub.Publish(ctx, &paho5.Publish{Topic: "q/" + itoa(i), QoS: 1, Payload: []byte{'0' + byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	if h, err := readPacket(r); err != nil || h&0xf0 != 0x30 { // q/1, never acknowledged: q/2 and q/3 wait
		t.Fatalf("got packet %#x (%v), want a PUBLISH", h, err)
	}
	if !takeover {
		raw.Close()
		waitConnGone(t, b, "away")
	}
	expiry := uint32(300)

	got := make(chan *paho5.Publish, 10)
	dial5(t, b, "away", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
	}}, &paho5.Connect{CleanStart: false, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}})
	for i := 1; i <= 3; i++ {
		select {
		case p := <-got:
			if p.Topic != "q/"+itoa(i) {
				t.Errorf("message %d: %s, want q/%d", i, p.Topic, i)
			}
		case <-time.After(testTimeout):
			t.Fatalf("message %d: timed out", i)
		}
	}
}

// readPacket reads one MQTT packet and returns its first header byte.
func readPacket(r *bufio.Reader) (byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, err
	}
	n, shift := 0, 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			return 0, err
		}
		n |= int(b&0x7f) << shift
		if b < 0x80 {
			break
		}
		shift += 7
	}
	_, err = r.Discard(n)
	return h, err
}
