package broker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/wire"
)

// The attacks of a red team on the broker, each a regression test: a
// hostile client must neither kill the broker, nor find a path around the
// ACL, nor make it hold memory out of proportion to what it may send.

// hostileACL: alice owns home/a, bob owns home/b; carol may use everything
// but secret/…, by a pattern line without placeholders.
const hostileACL = `
user alice
topic readwrite home/a/#
user bob
topic readwrite home/b/#
user carol
topic readwrite #
pattern deny secret/#
`

func hostileBroker(t *testing.T, opts Options) *Broker {
	t.Helper()
	acl, err := auth.ParseACL("acl", []byte(hostileACL))
	if err != nil {
		t.Fatal(err)
	}
	u := auth.NewUsers()
	for _, name := range []string{"alice", "bob", "carol"} {
		u.Set(name, name+"-pw", 10)
	}
	opts.Users, opts.ACL = u, acl
	return start(t, opts)
}

// dial5As connects an MQTT 5 client as a user, and returns the CONNACK's
// error (nil: connected).
func dial5As(t *testing.T, b *Broker, user, id string, will *paho5.WillMessage, cfg paho5.ClientConfig) (*paho5.Client, *paho5.Connack, error) {
	t.Helper()
	nc, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Conn = nc
	c := paho5.NewClient(cfg)
	cp := &paho5.Connect{ClientID: id, CleanStart: true, KeepAlive: 30, Username: user, UsernameFlag: true,
		Password: []byte(user + "-pw"), PasswordFlag: true, WillMessage: will}
	ack, err := c.Connect(testCtx(t), cp)
	if err == nil {
		t.Cleanup(func() { c.Disconnect(&paho5.Disconnect{}) })
	}
	return c, ack, err
}

// TestDeepJSONPublish: a payload nested millions deep (14 MB, under the
// packet limit) used to overflow the Go stack in gjson's validator: a
// fatal error, which no recover catches. Plain, retained and $set (from a
// user who may not even write) are typed within a bounded depth.
func TestDeepJSONPublish(t *testing.T) {
	b := hostileBroker(t, Options{})
	const levels = 7_000_000
	deep := append(bytes.Repeat([]byte("["), levels), bytes.Repeat([]byte("]"), levels)...)
	ctx := testCtx(t)
	carol, err := client.Dial(ctx, b.TCPAddr(), client.Options{ClientID: "carol", Username: "carol", Password: "carol-pw", CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer carol.Close()
	if err := carol.Publish(ctx, "deep/x", deep, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	if err := carol.Set(ctx, "deep/+", deep, 1); err != nil {
		t.Fatal(err)
	}
	// alice may neither read nor write deep/x: her $set leaves it alone.
	if err := dialAs(t, b, "alice").Set(ctx, "deep/+", []byte("alice"), 1); err != nil {
		t.Fatal(err)
	}
	snap, _, err := b.Tree(ctx, systemPrincipal, "deep/x", wire.CodecJSON)
	if err != nil || !bytes.HasPrefix(snap, []byte(`"[[[`)) {
		t.Fatalf("deep/x is %.20s…, %v; want it typed as a string", snap, err)
	}
	col := newCollector()
	if err := carol.Subscribe(ctx, "deep/#", client.Plain, client.JSON, 0, col.handle); err != nil {
		t.Fatal(err)
	}
	if m := col.wait(t, 1)[0]; !bytes.Equal(m.Payload, deep) {
		t.Errorf("deep/x replayed with %d bytes, want the %d published", len(m.Payload), len(deep))
	}
}

// TestWillsAreChecked: a will is a publish of the client that set it: the
// same ACL and the same refusal of $SYS and Mote's prefixes, checked at
// CONNECT (the connection is refused with the reason) and again when it
// fires.
func TestWillsAreChecked(t *testing.T) {
	b := hostileBroker(t, Options{})
	ctx := testCtx(t)
	bob := dialAs(t, b, "bob")
	for _, topic := range []string{"home/b/x", "home/b/y"} {
		if err := bob.Publish(ctx, topic, []byte("bob"), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		topic, payload string
		code           byte
	}{
		{"home/b/x", "alice", 0x87},
		{"$tree/home", `{"b":{"x":"alice"}}`, 0x87},
		{"$SYS/mote/errors/bob1", `{"forged":1}`, 0x90},
		{"$SYS/broker/version", "forged", 0x90},
		{"$sync/home/#", "{}", 0x90},
	} {
		_, ack, err := dial5As(t, b, "alice", "alice-"+tc.topic, &paho5.WillMessage{Topic: tc.topic, Payload: []byte(tc.payload), Retain: true, QoS: 1}, paho5.ClientConfig{})
		if err == nil || ack == nil || ack.ReasonCode != tc.code {
			t.Errorf("will on %s: %v, CONNACK %+v; want refused with 0x%02x", tc.topic, err, ack, tc.code)
		}
	}
	// MQTT 3.1.1: refused with 0x05 (not authorized).
	o := paho.NewClientOptions().AddBroker("tcp://"+b.TCPAddr()).SetClientID("alice3").SetUsername("alice").SetPassword("alice-pw").
		SetWill("home/b/x", "alice", 1, true).SetAutoReconnect(false)
	c3 := paho.NewClient(o)
	if tok := c3.Connect(); !tok.WaitTimeout(testTimeout) || tok.Error() == nil {
		t.Error("MQTT 3.1.1 client with a forbidden will connected")
		c3.Disconnect(0)
	}
	// $set and .replace wills pass at CONNECT (their rows are known only
	// when they fire); when they fire, bob's rows, which alice can neither
	// see nor write, are left alone.
	for _, w := range []*paho5.WillMessage{
		{Topic: "$set/home/+/x", Payload: []byte("alice"), QoS: 1},
		{Topic: "$tree.replace/home/b", Payload: []byte("{}"), QoS: 1, Retain: true},
	} {
		if _, _, err := dial5As(t, b, "alice", "alice-"+w.Topic, w, paho5.ClientConfig{}); err != nil {
			t.Fatal(err)
		}
		b.connOf(t, "alice-"+w.Topic).out.(*mqttOut).cl.Net.Conn.Close() // no DISCONNECT: the will fires
		waitConnGone(t, b, "alice-"+w.Topic)
	}
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if s := string(b.snapshot("home/b/+")); !jsonEqual(t, s, `{"x":"bob","y":"bob"}`) {
		t.Errorf("bob's rows after alice's wills: %s", s)
	}
}

// waitConnGone waits until the broker has let go of a client's connection.
func waitConnGone(t *testing.T, b *Broker, id string) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !connGone(b, id) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still connected", id)
		}
		time.Sleep(time.Millisecond)
	}
}

// connGone reports whether the broker has let go of the connection of a
// client id: none is filed under it (connByID), and the client mochi holds
// for the id, if any, is stopped. A client gets its CONNACK a moment before
// the broker files its connection (OnSessionEstablished), and reads nothing
// before: asked only about the filing, a test that read the CONNACK and sent
// DISCONNECT was told the connection was gone before its DISCONNECT was
// read, and the next CONNECT of the id took the session over and published
// the will (TestConnGoneBeforeFiled). mochi holds the client from before
// its CONNACK until its session ends, and stops it before OnDisconnect
// unfiles the connection.
func connGone(b *Broker, id string) bool {
	if b.connByID(id) != nil {
		return false
	}
	cl, ok := b.server.Clients.Get(id)
	return !ok || cl.Closed()
}

// TestWillDelay: a will with an MQTT 5 Will Delay Interval waits it out,
// and a reconnect within it cancels the will [MQTT-3.1.3-9]; mochi used to
// apply a $tree will at once.
func TestWillDelay(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	connect := func(delay uint32) {
		t.Helper()
		expiry := uint32(3600)
		cp := &paho5.Connect{ClientID: "dev", KeepAlive: 30, CleanStart: false,
			Properties:     &paho5.ConnectProperties{SessionExpiryInterval: &expiry},
			WillMessage:    &paho5.WillMessage{Topic: "$tree/dev", Payload: []byte(`{"online":0}`), Retain: true, QoS: 1},
			WillProperties: &paho5.WillProperties{WillDelayInterval: &delay}}
		dial5(t, b, "dev", paho5.ClientConfig{}, cp)
	}
	drop := func() {
		t.Helper()
		b.connOf(t, "dev").out.(*mqttOut).cl.Net.Conn.Close()
		waitConnGone(t, b, "dev")
	}
	connect(3600)
	drop()
	connect(3600) // back within the delay: the first will is cancelled
	drop()
	b.wills.mu.Lock()
	pending := len(b.wills.delayed)
	b.wills.mu.Unlock()
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if s := string(b.snapshot("dev/online")); s != "null" || pending != 1 {
		t.Fatalf("dev/online = %s with %d wills waiting; want no row yet and one will waiting", s, pending)
	}
	connect(1) // a delay of one second, then the will fires
	drop()
	deadline := time.Now().Add(testTimeout)
	for string(b.snapshot("dev/online")) != "0" {
		if time.Now().After(deadline) {
			t.Fatal("the delayed will never fired")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPatternDenyOddNames: a pattern deny without placeholders holds for
// client ids and usernames holding '/', '+' or '#' (it used to be skipped
// for them, turning the deny into an allow).
func TestPatternDenyOddNames(t *testing.T) {
	b := hostileBroker(t, Options{})
	ctx := testCtx(t)
	for _, id := range []string{"carol/x", "carol+", "carol#"} {
		c, err := client.Dial(ctx, b.TCPAddr(), client.Options{ClientID: id, Username: "carol", Password: "carol-pw", CleanStart: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Publish(ctx, "secret/plan", []byte("x"), client.PublishOptions{QoS: 1}); !errors.Is(err, client.ErrRefused) {
			t.Errorf("%s wrote secret/plan: %v", id, err)
		}
		if err := c.Subscribe(ctx, "secret/#", client.Plain, client.JSON, 0, func(client.Message) {}); err == nil {
			t.Errorf("%s subscribed to secret/#", id)
		}
		c.Close()
	}
}

// TestLongTopics: a topic longer than the limit is refused at the door
// (0x90), so it never reaches the store, and everything after it is
// stored (bbolt refuses keys over 32 KiB; the retainer used to retry that
// commit for ever, losing every later row).
func TestLongTopics(t *testing.T) {
	dir := t.TempDir()
	b := startOn(t, dir, Options{})
	ctx := testCtx(t)
	c := mote(t, b, "long")
	long := strings.Repeat("x", 40_000)
	for code, pub := range map[string]func() error{
		"0x90": func() error { return c.Publish(ctx, long, []byte("1"), client.PublishOptions{QoS: 1, Retain: true}) },
		"0x99": func() error { // a row the tree makes: a limit of the tree (SPEC §5)
			return c.PublishTree(ctx, "t", map[string]any{long: 1}, client.PublishOptions{QoS: 1, Retain: true})
		},
		"0x90 ": func() error {
			return c.Publish(ctx, strings.Repeat("a/", 200)+"x", []byte("1"), client.PublishOptions{QoS: 1, Retain: true})
		},
	} {
		if err := pub(); err == nil || !strings.Contains(err.Error(), strings.TrimSpace(code)) {
			t.Errorf("a topic over the limits: %v, want refused with %s", err, code)
		}
	}
	if err := c.Publish(ctx, "after", []byte("1"), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := b.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	st, err := retain.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var topics []string
	st.Load(func(r retain.Row) error { topics = append(topics, r.Topic); return nil })
	if len(topics) != 1 || topics[0] != "after" {
		t.Errorf("stored %d rows %.40q, want only after", len(topics), topics)
	}
}

// TestSubscribeFlood: one SUBSCRIBE listing $sync/# and # hundreds of
// times, from a client that does not read, over 10,000 rows: the broker
// holds one snapshot or replay at a time for it, not all of them (1 GB
// and 1.8 GB before).
func TestSubscribeFlood(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	for i := range 10_000 {
		b.publish(ctx, systemPrincipal, Message{Topic: fmt.Sprintf("flood/d%05d/state", i), Payload: []byte(`{"on":true,"level":42}`), Retain: true}, waitNone)
	}
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	before := heapAndStacks()
	trees := []string{"$sync.cbor/#", "$sync/flood/#", "$sync/+/+/state", "$sync/flood/+/+"}
	plain := []string{"+/#", "flood/#", "flood/+/+", "+/+/state"}
	for range 500 {
		trees = append(trees, "$sync/#")
	}
	for range 200 {
		plain = append(plain, "#")
	}
	stalled(t, b, "flood", trees...)
	stalled(t, b, "flood2", plain...)
	// And one that subscribes again and again, one SUBSCRIBE at a time: a
	// token each, until its queue is full; then 0x97.
	again := stalled(t, b, "flood3")
	var burst []byte
	for i := range 50_000 {
		f := []string{"$sync/#", "#"}[i%2]
		body := append([]byte{byte(i >> 8), byte(i) | 1, 0, byte(len(f))}, f...)
		burst = append(append(append(burst, 0x82), varint(len(body)+1)...), append(body, 0)...)
	}
	again.Write(burst)
	time.Sleep(500 * time.Millisecond) // let the writers fill the sockets
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	grew := int64(heapAndStacks()) - int64(before)
	t.Logf("memory grew %d KiB", grew>>10)
	if grew > 64<<20 {
		t.Errorf("memory grew %d MiB for two clients that do not read", grew>>20)
	}
	alive(t, b)
}

// TestDeepJSONInCBOR: typing is bounded in depth, so a deeply nested plain
// payload (a string to the tree) costs a CBOR snapshot linear time; its
// JSON→CBOR conversion used to be quadratic, on the message loop.
func TestDeepJSONInCBOR(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	const levels = 500_000
	deep := strings.Repeat("[", levels) + strings.Repeat("]", levels)
	if err := b.Publish(ctx, systemPrincipal, Message{Topic: "n/deep", Payload: []byte(deep), Retain: true}); err != nil {
		t.Fatal(err)
	}
	nested := strings.Repeat("[", 30) + "1" + strings.Repeat("]", 30) // within the depth limit: JSON
	if err := b.Publish(ctx, systemPrincipal, Message{Topic: "n/nested", Payload: []byte(nested), Retain: true}); err != nil {
		t.Fatal(err)
	}
	c := mote(t, b, "cbor")
	col := newCollector()
	if err := c.Subscribe(ctx, "n/+", client.Sync, client.CBOR, 0, col.handle); err != nil {
		t.Fatal(err)
	}
	m := col.wait(t, 1)[0].Tree.(map[string]any)
	if s, ok := m["deep"].(string); !ok || len(s) != 2*levels {
		t.Errorf("n/deep in the snapshot: %T", m["deep"])
	}
	if _, ok := m["nested"].([]any); !ok {
		t.Errorf("n/nested in the snapshot: %T, want an array", m["nested"])
	}
}

// TestWebSocketOrigin: a page of another site cannot open a WebSocket to
// the broker (cross-site WebSocket hijacking); programs (no Origin) and
// the broker's own host can; listed origins can.
func TestWebSocketOrigin(t *testing.T) {
	dialWS := func(b *Broker, origin string) error {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: testTimeout}
		c, resp, err := d.Dial("ws://"+b.WSAddr()+"/mqtt", h)
		if err == nil {
			c.Close()
		} else if resp != nil {
			err = fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		return err
	}
	b := start(t, Options{})
	_, port, _ := net.SplitHostPort(b.WSAddr())
	for origin, ok := range map[string]bool{
		"":                              true,
		"http://127.0.0.1:" + port:      true,
		"http://127.0.0.1:8080":         false, // the same host, another port: another web application
		"http://localhost:" + port:      false, // another host name: another origin
		"https://evil.example":          false,
		"http://evil.example:" + port:   false,
		"null":                          false,
		"http://localhost.evil.example": false,
	} {
		if err := dialWS(b, origin); (err == nil) != ok {
			t.Errorf("Origin %q: %v, want allowed %v", origin, err, ok)
		}
	}
	b2 := start(t, Options{AllowedOrigins: []string{"https://app.example"}})
	if err := dialWS(b2, "https://app.example"); err != nil {
		t.Errorf("a listed origin: %v", err)
	}
	if err := dialWS(b2, "http://127.0.0.1:8080"); err == nil {
		t.Error("an origin not listed was let in")
	}
}

// TestConnectTimeoutAndSize: a connection that sends no complete CONNECT
// is closed after ConnectTimeout (330 silent ones used to exhaust a 300-fd
// limit for good); a CONNECT declaring 60 MiB is refused before anything
// is allocated or authenticated.
func TestConnectTimeoutAndSize(t *testing.T) {
	b := start(t, Options{ConnectTimeout: 200 * time.Millisecond})
	closed := func(what string, send []byte) {
		t.Helper()
		c, err := net.Dial("tcp", b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(send)
		c.SetReadDeadline(time.Now().Add(testTimeout))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("%s: %v, want the broker to close the connection", what, err)
		}
	}
	closed("silent", nil)
	closed("one byte", []byte{0x10})
	before := heapAndStacks()
	closed("60 MiB CONNECT", append([]byte{0x10}, varint(60<<20)...))
	if grew := int64(heapAndStacks()) - int64(before); grew > 16<<20 {
		t.Errorf("memory grew %d MiB for a declared CONNECT", grew>>20)
	}
	alive(t, b)
}

// TestClientIDTakeover: a persistent session belongs to the username that
// made it: another user with the same client id is refused, or, by
// setting, starts a fresh session; it never gets the queued messages.
func TestClientIDTakeover(t *testing.T) {
	for _, policy := range []TakeoverPolicy{TakeoverRefuse, TakeoverFresh} {
		t.Run(string(policy), func(t *testing.T) {
			acl, _ := auth.ParseACL("acl", []byte("user alice\ntopic readwrite #\nuser bob\ntopic readwrite #\n"))
			u := auth.NewUsers()
			u.Set("alice", "alice-pw", 10)
			u.Set("bob", "bob-pw", 10)
			b := start(t, Options{Users: u, ACL: acl, Takeover: policy})
			ctx := testCtx(t)
			a := dial3With(t, b, paho.NewClientOptions().SetClientID("shared").SetUsername("alice").SetPassword("alice-pw").SetCleanSession(false))
			a.sub(t, "q/#", 1)
			a.Disconnect(0) // the session stays, and queues q/1 for alice
			waitConnGone(t, b, "shared")
			alice := dialAs(t, b, "alice")
			if err := alice.Publish(ctx, "q/1", []byte("for alice"), client.PublishOptions{QoS: 1}); err != nil {
				t.Fatal(err)
			}
			got := newCollector()
			o := paho.NewClientOptions().AddBroker("tcp://" + b.TCPAddr()).SetClientID("shared").SetUsername("bob").SetPassword("bob-pw").
				SetCleanSession(false).SetAutoReconnect(false).SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
				got.add(client.Message{Topic: m.Topic()})
			})
			bob := paho.NewClient(o)
			tok := bob.Connect()
			tok.WaitTimeout(testTimeout)
			switch {
			case policy == TakeoverRefuse && tok.Error() == nil:
				t.Error("bob took alice's session")
			case policy == TakeoverFresh && tok.Error() != nil:
				t.Errorf("bob: %v", tok.Error())
			case policy == TakeoverFresh && tok.(*paho.ConnectToken).SessionPresent():
				t.Error("bob got alice's session")
			}
			time.Sleep(100 * time.Millisecond)
			got.mu.Lock()
			n := len(got.msgs)
			got.mu.Unlock()
			if n != 0 {
				t.Errorf("bob got %d of alice's queued messages", n)
			}
			if tok.Error() == nil {
				bob.Disconnect(0)
			}
		})
	}
}

// TestMaximumPacketSizeSkips: a message over an MQTT 5 client's Maximum
// Packet Size is skipped (and counted) [MQTT-3.1.2-25]; the next ones
// arrive (one oversize message used to mute the client for good).
func TestMaximumPacketSizeSkips(t *testing.T) {
	b := start(t, Options{})
	got := make(chan *paho5.Publish, 10)
	maxSize := uint32(1000)
	cp := &paho5.Connect{CleanStart: true, Properties: &paho5.ConnectProperties{MaximumPacketSize: &maxSize}}
	sub := dial5(t, b, "small", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
	}}, cp)
	ctx := testCtx(t)
	if _, err := sub.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "big/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	pub := mote(t, b, "pub")
	for _, n := range []int{3000, 10, 5000, 20} {
		if err := pub.Publish(ctx, "big/x", bytes.Repeat([]byte("x"), n), client.PublishOptions{QoS: 1}); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []int{10, 20} {
		select {
		case p := <-got:
			if len(p.Payload) != want {
				t.Errorf("got %d bytes, want %d", len(p.Payload), want)
			}
		case <-time.After(testTimeout):
			t.Fatalf("the %d-byte message never came", want)
		}
	}
	if n := b.stats.TooLarge.Load(); n != 2 {
		t.Errorf("%d skipped, want 2", n)
	}
}

// TestStalledSubscriber: a subscriber that stops reading, or stops
// acknowledging QoS 1 with Receive Maximum 1, costs a publisher at most
// PublishWait once, and healthy subscribers get everything; the one that
// stopped reading is disconnected when a write passes its deadline (with
// slow_client drop its socket used to stay open, a zombie).
func TestStalledSubscriber(t *testing.T) {
	b := start(t, Options{QueueBytes: 256 << 10, WriteTimeout: 300 * time.Millisecond})
	ctx := testCtx(t)
	reader := stalled(t, b, "stalled", "st/#")
	noAck, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer noAck.Close()
	noAck.Write(receiveMax1(t, "noack"))
	sub := []byte{0x82}
	body := []byte{0, 1, 0, 0, 4, 's', 't', '/', '#', 1}
	noAck.Write(append(append(sub, varint(len(body))...), body...))
	go io.Copy(io.Discard, noAck) // reads, never acknowledges
	healthy := newCollector()
	h := mote(t, b, "healthy")
	if err := h.Subscribe(ctx, "st/#", client.Plain, client.JSON, 1, healthy.handle); err != nil {
		t.Fatal(err)
	}
	b.connOf(t, "stalled")
	b.connOf(t, "noack")
	pub := mote(t, b, "pub")
	const n = 400 // 12.8 MB: more than the kernel buffers the stalled connection can fill
	payload := bytes.Repeat([]byte("p"), 32<<10)
	start := time.Now()
	for i := range n {
		if err := pub.Publish(ctx, fmt.Sprintf("st/%d", i), payload, client.PublishOptions{QoS: 1}); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(start)
	healthy.wait(t, n)
	t.Logf("%d publishes took %v; %d dropped", n, took, b.stats.Dropped.Load())
	if took > 10*time.Second { // each used to wait 5 s for the stalled subscriber
		t.Errorf("%d publishes took %v", n, took)
	}
	waitConnGone(t, b, "stalled")
	reader.SetReadDeadline(time.Now().Add(testTimeout))
	if _, err := io.Copy(io.Discard, reader); err != nil && !isReset(err) {
		t.Errorf("the stalled connection: %v, want it reset by the broker", err)
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "reset") }

// receiveMax1 is an MQTT 5 CONNECT with Receive Maximum 1.
func receiveMax1(t *testing.T, id string) []byte {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id},
		Properties:      packets.Properties{ReceiveMaximum: 1},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestSubscriptionQuotas: past MaxSubscriptionsPerPacket filters in one
// SUBSCRIBE, or MaxSubscriptions in all, filters are refused with 0x97.
func TestSubscriptionQuotas(t *testing.T) {
	b := start(t, Options{MaxSubscriptions: 3, MaxSubscriptionsPerPacket: 2})
	c := dial5(t, b, "quota", paho5.ClientConfig{}, nil)
	ctx := testCtx(t)
	codes := func(filters ...string) []byte {
		t.Helper()
		var s []paho5.SubscribeOptions
		for _, f := range filters {
			s = append(s, paho5.SubscribeOptions{Topic: f})
		}
		ack, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: s})
		if ack == nil {
			t.Fatal(err)
		}
		return ack.Reasons
	}
	if got := codes("a", "$sync/b/#", "c"); !bytes.Equal(got, []byte{0, 0, 0x97}) {
		t.Errorf("three filters in one SUBSCRIBE: %x", got)
	}
	if got := codes("a", "d"); !bytes.Equal(got, []byte{0, 0}) { // a again replaces a
		t.Errorf("a again and d: %x", got)
	}
	if got := codes("e"); !bytes.Equal(got, []byte{0x97}) {
		t.Errorf("a fourth subscription: %x", got)
	}
}

// TestNoExistenceOracle: a $set answers the same whether a row the client
// may not see exists or not, and leaves it alone; reports name no topic
// the client may not read.
func TestNoExistenceOracle(t *testing.T) {
	b := hostileBroker(t, Options{})
	ctx := testCtx(t)
	bob := dialAs(t, b, "bob")
	if err := bob.Publish(ctx, "home/b/x", []byte("1"), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	alice := dialAs(t, b, "alice")
	if err := alice.Publish(ctx, "home/a/x", []byte("1"), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"home/+/x", "home/+/y"} {
		if err := alice.Set(ctx, f, []byte("2"), 1); err != nil {
			t.Errorf("$set/%s: %v", f, err)
		}
	}
	if s := string(b.snapshot("home/+/x")); !jsonEqual(t, s, `{"a":2,"b":1}`) {
		t.Errorf("rows after alice's $set: %s", s)
	}
}

// TestLongReasonString: a refusal whose reason would pass 65,535 bytes is
// cut, so the PUBACK stays well formed.
func TestLongReasonString(t *testing.T) {
	b := start(t, Options{})
	c := mote(t, b, "reason")
	key := strings.Repeat("k", 70_000) + "+"
	err := c.PublishTree(testCtx(t), "r", map[string]any{key: 1}, client.PublishOptions{QoS: 1})
	if err == nil || !errors.Is(err, client.ErrRefused) || len(err.Error()) > 4096 {
		t.Errorf("refusal of %d bytes: %.100v", len(fmt.Sprint(err)), err)
	}
}

// TestSharedAndInternalSubscriptions: a $share subscription is checked on
// its filter ($share/g/home/a/# is alice's to take); the broker's internal
// $mote topic is not granted by default.
func TestSharedAndInternalSubscriptions(t *testing.T) {
	b := hostileBroker(t, Options{})
	ctx := testCtx(t)
	alice := dialAs(t, b, "alice")
	if err := alice.Subscribe(ctx, "$share/g/home/a/#", client.Plain, client.JSON, 0, func(client.Message) {}); err != nil {
		t.Errorf("$share/g/home/a/#: %v", err)
	}
	for _, f := range []string{"$share/g/home/b/#", "$mote/publish", "$mote/#"} {
		if err := alice.Subscribe(ctx, f, client.Plain, client.JSON, 0, func(client.Message) {}); err == nil {
			t.Errorf("%s was granted", f)
		}
	}
	if err := alice.Publish(ctx, "$mote/publish", []byte("x"), client.PublishOptions{QoS: 1}); !errors.Is(err, client.ErrRefused) {
		t.Errorf("publish to $mote/publish: %v", err)
	}
}

// TestPacketSizeAdvertised: MQTT 5 clients learn the broker's Maximum
// Packet Size in CONNACK, and a larger packet gets DISCONNECT 0x95 before
// the connection closes (it used to be a reset).
func TestPacketSizeAdvertised(t *testing.T) {
	b := start(t, Options{MaxPacketSize: 10_000})
	disc := make(chan *paho5.Disconnect, 1)
	nc, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	c := paho5.NewClient(paho5.ClientConfig{Conn: nc, OnServerDisconnect: func(d *paho5.Disconnect) { disc <- d }})
	ack, err := c.Connect(testCtx(t), &paho5.Connect{ClientID: "big", CleanStart: true, KeepAlive: 30})
	if err != nil {
		t.Fatal(err)
	}
	if ack.Properties == nil || ack.Properties.MaximumPacketSize == nil || *ack.Properties.MaximumPacketSize != 10_000 {
		t.Errorf("CONNACK Maximum Packet Size %+v", ack.Properties)
	}
	c.Publish(testCtx(t), &paho5.Publish{Topic: "x", Payload: bytes.Repeat([]byte("x"), 20_000)}) //nolint:errcheck
	select {
	case d := <-disc:
		if d.ReasonCode != 0x95 {
			t.Errorf("DISCONNECT 0x%02x, want 0x95", d.ReasonCode)
		}
	case <-time.After(testTimeout):
		t.Fatal("no DISCONNECT for an oversize packet")
	}
}

// TestErrorReportsForAnyID: a client id holding '+', '#' or '%' has its
// error topic too (percent-encoded), and only that client reads it.
func TestErrorReportsForAnyID(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	odd, err := client.Dial(ctx, b.TCPAddr(), client.Options{ClientID: "a+b#c%", CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer odd.Close()
	own, other := newCollector(), newCollector()
	if err := odd.Subscribe(ctx, ErrorTopic+"a%2Bb%23c%25", client.Plain, client.JSON, 0, own.handle); err != nil {
		t.Fatal(err)
	}
	spy := mote(t, b, "spy")
	if err := spy.Subscribe(ctx, "$SYS/mote/errors/#", client.Plain, client.JSON, 0, other.handle); err != nil {
		t.Fatal(err)
	}
	odd.Publish(ctx, "$tree/x", []byte("not json"), client.PublishOptions{QoS: 1}) //nolint:errcheck // refused
	if m := own.wait(t, 1)[0]; !strings.Contains(string(m.Payload), `"client":"a+b#c%"`) {
		t.Errorf("report %s", m.Payload)
	}
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	other.mu.Lock()
	defer other.mu.Unlock()
	if len(other.msgs) != 0 {
		t.Errorf("another client read %d reports", len(other.msgs))
	}
}

// TestUnsubscribePropertyForms: a mote=tree subscription to F replaces a
// mote=sync one (both publish on F), in mochi's session too; UNSUBSCRIBE
// of F removes it with one reason code. A ghost used to stay in mochi and
// come back with a resumed session.
func TestUnsubscribePropertyForms(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	expiry := uint32(600)
	cp := &paho5.Connect{CleanStart: true, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}}
	c := dial5(t, b, "props", paho5.ClientConfig{}, cp)
	for _, mode := range []string{"sync", "tree"} {
		if _, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "a/+"}},
			Properties: &paho5.SubscribeProperties{User: paho5.UserProperties{{Key: "mote", Value: mode}}}}); err != nil {
			t.Fatal(err)
		}
	}
	waitTreeSubs(t, b, 1)
	cl := b.connOf(t, "props").out.(*mqttOut).cl
	if n := cl.State.Subscriptions.Len(); n != 1 {
		t.Errorf("%d subscriptions in the session, want 1: %v", n, cl.State.Subscriptions.GetAll())
	}
	ack, err := c.Unsubscribe(ctx, &paho5.Unsubscribe{Topics: []string{"a/+"}})
	if err != nil || len(ack.Reasons) != 1 || ack.Reasons[0] != 0 {
		t.Fatalf("UNSUBACK %+v, %v", ack, err)
	}
	waitTreeSubs(t, b, 0)
	if n := cl.State.Subscriptions.Len(); n != 0 {
		t.Errorf("%d subscriptions left in the session: %v", n, cl.State.Subscriptions.GetAll())
	}
}

// TestStartFailureCloses: a broker whose listener cannot bind closes at
// once (no wait for a loop that never started) and lets go of its store.
func TestStartFailureCloses(t *testing.T) {
	first := start(t, Options{})
	dir := t.TempDir()
	st, err := retain.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Options{TCP: first.TCPAddr(), WS: "off", Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err == nil {
		t.Fatal("started on a busy port")
	}
	done := make(chan error, 1)
	go func() { done <- b.Close() }()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("Close after a failed Start took more than testTimeout")
	}
	again, err := retain.Open(dir) // bbolt's lock is free again
	if err != nil {
		t.Fatalf("the store is still held: %v", err)
	}
	again.Close()
}

// failingStore refuses every commit.
type failingStore struct{ retain.RowStore }

func (failingStore) Commit(retain.Batch) ([]retain.Rejected, error) {
	return nil, errors.New("disk on fire")
}
func (failingStore) Load(func(retain.Row) error) error { return nil }
func (failingStore) Meta() retain.Meta                 { return retain.Meta{Fresh: true} }
func (failingStore) MarkClean(uint64) error            { return nil }
func (failingStore) MarkRunning() error                { return nil }
func (failingStore) Markers(int) (int, uint64, error)  { return 0, 0, nil }
func (failingStore) Compact(uint64, int) (bool, error) { return false, nil }
func (failingStore) Deleted(uint64, uint64, func(string, uint64) bool) error {
	return errors.New("disk on fire")
}
func (failingStore) Close() error { return nil }

// TestCloseReportsLostRows: when the last commit fails, Close says so
// (mote broker then exits non-zero); it used to return nil.
func TestCloseReportsLostRows(t *testing.T) {
	b, err := New(Options{TCP: "127.0.0.1:0", WS: "off", Store: failingStore{}, Retain: retain.Options{Interval: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	loadRow(b, "lost/row", "1")
	if err := b.Close(); err == nil || !errors.Is(err, retain.ErrLost) {
		t.Errorf("Close: %v, want the rows reported lost", err)
	}
}
