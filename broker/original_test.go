package broker

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mote-mqtt/mote/bench/rawmqtt"
)

// The original dialect (SPEC §7, original.go) tested with a raw-socket
// client that writes the packets the original's clients write, byte for
// byte as cyates559/mote-native's core/mote/packets build them: CONNECT
// with protocol "mote" level 0 and keep-alive 20000, subscriptions with
// flags = QoS, "/F" for a synced tree, packet ids from 1, unsubscribes of
// F without its "/", tree publishes to "T/" at QoS 1, retained.

// startOriginal runs a broker with an original-dialect listener.
func startOriginal(t testing.TB, opts Options) *Broker {
	t.Helper()
	opts.Original, opts.OriginalWS = "127.0.0.1:0", "127.0.0.1:0"
	return start(t, opts)
}

// origClient is the raw-socket client.
type origClient struct {
	t       *testing.T
	nc      net.Conn
	pending []packet // PUBLISHes read while waiting for an ack
}

// packet is one packet read: its first byte and its body.
type packet struct {
	head byte
	body []byte
}

func (p packet) kind() byte { return p.head >> 4 }

// pub is a PUBLISH as the client reads it.
type pub struct {
	topic   string
	id      uint16
	qos     byte
	payload string
}

func (p packet) publish(t *testing.T) pub {
	t.Helper()
	if p.kind() != 3 {
		t.Fatalf("got packet type %d (% x), want PUBLISH", p.kind(), p.body)
	}
	n := int(binary.BigEndian.Uint16(p.body))
	out := pub{topic: string(p.body[2 : 2+n]), qos: p.head >> 1 & 3}
	rest := p.body[2+n:]
	if out.qos > 0 {
		out.id, rest = binary.BigEndian.Uint16(rest), rest[2:]
	}
	out.payload = string(rest)
	return out
}

func dialOriginal(t *testing.T, b *Broker) *origClient {
	t.Helper()
	nc, err := net.Dial("tcp", b.OriginalAddr())
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(testTimeout)) //nolint:errcheck // a hang fails the read
	t.Cleanup(func() { nc.Close() })
	return &origClient{t: t, nc: nc}
}

// dialOriginalWS connects as mote-native does: WebSocket at /mote/,
// subprotocol mqtt, each packet a binary message.
func dialOriginalWS(t *testing.T, b *Broker) *origClient {
	t.Helper()
	nc := dialWSStream(t, "ws://"+b.OriginalWSAddr()+"/mote/", nil, nil)
	nc.SetDeadline(time.Now().Add(testTimeout)) //nolint:errcheck // a hang fails the read
	t.Cleanup(func() { nc.Close() })
	return &origClient{t: t, nc: nc}
}

// TestOriginalKeepalive: mote-native's keep-alive of 20000 means
// milliseconds (it pings every 20.5 s): taken as 20 s, under a
// max_keepalive it would exceed as seconds; an MQTT CONNECT on the same
// listener keeps seconds.
func TestOriginalKeepalive(t *testing.T) {
	b := startOriginal(t, Options{MaxKeepAlive: 600})
	c := dialOriginal(t, b)
	c.mustConnect("native-ka")
	if cl, ok := b.server.Clients.Get("native-ka"); !ok || cl.State.Keepalive != 20 {
		t.Fatalf("keep-alive %v (%v), want 20 s", cl.State.Keepalive, ok)
	}
	m := dialOriginal(t, b)
	m.send(0x10, str("MQTT"), []byte{4, 0x02}, binary.BigEndian.AppendUint16(nil, 300), str("mqtt-ka"))
	if p := m.read(); p.head != 0x20 || p.body[1] != 0 {
		t.Fatalf("CONNACK % x % x", p.head, p.body)
	}
	if cl, ok := b.server.Clients.Get("mqtt-ka"); !ok || cl.State.Keepalive != 300 {
		t.Fatalf("MQTT keep-alive %v (%v), want 300 s", cl.State.Keepalive, ok)
	}
}

func str(s string) []byte { return rawmqtt.AppendString(nil, s) }

func (c *origClient) send(head byte, body ...[]byte) {
	c.t.Helper()
	var b []byte
	for _, p := range body {
		b = append(b, p...)
	}
	out := []byte{head}
	n := len(b)
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		out = append(out, d)
		if n == 0 {
			break
		}
	}
	if _, err := c.nc.Write(append(out, b...)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *origClient) read() packet {
	c.t.Helper()
	p, err := c.tryRead()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return p
}

func (c *origClient) tryRead() (packet, error) {
	var h [1]byte
	if _, err := io.ReadFull(c.nc, h[:]); err != nil {
		return packet{}, err
	}
	n, shift := 0, 0
	for {
		var d [1]byte
		if _, err := io.ReadFull(c.nc, d[:]); err != nil {
			return packet{}, err
		}
		n |= int(d[0]&0x7f) << shift
		shift += 7
		if d[0]&0x80 == 0 {
			break
		}
	}
	body := make([]byte, n)
	_, err := io.ReadFull(c.nc, body)
	return packet{head: h[0], body: body}, err
}

// connect sends mote-native's CONNECT: protocol "mote", level 0, clean,
// keep-alive 20000 (it means milliseconds; the broker takes seconds).
func (c *origClient) connect(id, user, pass string) packet {
	c.t.Helper()
	flags := byte(0x02)
	var tail [][]byte
	if user != "" {
		flags |= 0x80 | 0x40
		tail = append(tail, str(user), str(pass))
	}
	c.send(0x10, append([][]byte{str("mote"), {0, flags}, binary.BigEndian.AppendUint16(nil, 20000), str(id)}, tail...)...)
	return c.read()
}

func (c *origClient) mustConnect(id string) {
	c.t.Helper()
	if p := c.connect(id, "", ""); p.head != 0x20 || len(p.body) != 2 || p.body[1] != 0 {
		c.t.Fatalf("CONNACK % x % x, want accepted", p.head, p.body)
	}
}

func id16(id uint16) []byte { return binary.BigEndian.AppendUint16(nil, id) }

// subscribe sends one SUBSCRIBE and returns its SUBACK codes.
func (c *origClient) subscribe(id uint16, qos byte, filters ...string) []byte {
	c.t.Helper()
	body := [][]byte{id16(id)}
	for _, f := range filters {
		body = append(body, str(f), []byte{qos})
	}
	c.send(0x82, body...)
	p := c.read()
	if p.kind() != 9 || binary.BigEndian.Uint16(p.body) != id {
		c.t.Fatalf("got % x % x, want SUBACK %d", p.head, p.body, id)
	}
	return p.body[2:]
}

func (c *origClient) unsubscribe(id uint16, filter string) {
	c.t.Helper()
	c.send(0xa2, id16(id), str(filter))
	if p := c.read(); p.kind() != 11 || binary.BigEndian.Uint16(p.body) != id {
		c.t.Fatalf("got % x % x, want UNSUBACK %d", p.head, p.body, id)
	}
}

// publish sends a PUBLISH as mote-native does and, at QoS 1, waits for
// its PUBACK.
func (c *origClient) publish(id uint16, topic, payload string, qos byte, retain bool) {
	c.t.Helper()
	head := byte(0x30) | qos<<1
	if retain {
		head |= 1
	}
	body := [][]byte{str(topic)}
	if qos > 0 {
		body = append(body, id16(id))
	}
	c.send(head, append(body, []byte(payload))...)
	if qos == 1 {
		// A $set is acknowledged once applied: its delta may come first.
		p := c.read()
		for ; p.kind() == 3; p = c.read() {
			c.pending = append(c.pending, p)
		}
		if p.kind() != 4 || binary.BigEndian.Uint16(p.body) != id {
			c.t.Fatalf("got % x % x, want PUBACK %d", p.head, p.body, id)
		}
	}
}

// next reads the next PUBLISH and acknowledges it, as mote-native does.
func (c *origClient) next() pub {
	c.t.Helper()
	var pk packet
	if len(c.pending) > 0 {
		pk, c.pending = c.pending[0], c.pending[1:]
	} else {
		pk = c.read()
	}
	p := pk.publish(c.t)
	if p.qos == 1 {
		c.send(0x40, id16(p.id))
	}
	if p.qos > 0 && p.id == 0 {
		c.t.Errorf("PUBLISH at QoS %d with packet id 0 (the original's bug)", p.qos)
	}
	return p
}

// tree reads the next PUBLISH as a JSON tree on topic, every leaf a string
// or null.
func (c *origClient) tree(topic string) map[string]any {
	c.t.Helper()
	p := c.next()
	if p.topic != topic {
		c.t.Fatalf("PUBLISH on %q (%s), want %q", p.topic, p.payload, topic)
	}
	if p.qos != 1 {
		c.t.Errorf("PUBLISH on %q at QoS %d, want the granted 1", p.topic, p.qos)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(p.payload), &m); err != nil {
		c.t.Fatalf("payload %q on %q: %v", p.payload, topic, err)
	}
	var leaves func(v any)
	leaves = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for _, x := range v {
				leaves(x)
			}
		case string, nil:
		default:
			c.t.Errorf("leaf %v (%T) in %s: the original's leaves are strings", v, v, p.payload)
		}
	}
	leaves(m)
	return m
}

func wantTree(t *testing.T, got map[string]any, want string) {
	t.Helper()
	var w map[string]any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, w) {
		gb, _ := json.Marshal(got)
		t.Errorf("got %s, want %s", gb, want)
	}
}

// TestOriginalDialectFlows runs the flows of mote-native against the
// dialect listener, with a native MQTT client on the ordinary listener
// writing and reading the same rows.
// TestOriginalDialectFlows runs mote-native's flows over TCP and over
// WebSocket at /mote/, as the app itself connects (subprotocol mqtt).
func TestOriginalDialectFlows(t *testing.T) {
	t.Run("tcp", func(t *testing.T) { testOriginalDialectFlows(t, dialOriginal) })
	t.Run("ws", func(t *testing.T) { testOriginalDialectFlows(t, dialOriginalWS) })
}

func testOriginalDialectFlows(t *testing.T, dial func(*testing.T, *Broker) *origClient) {
	b := startOriginal(t, Options{})
	native := dial3(t, b, "native", true)
	for topic, v := range map[string]string{"light/bedroom/is_on": "1", "light/livingroom/is_on": "0", "light/bedroom/color": "#FFFFFF"} {
		waitTok(t, "publish", native.Publish(topic, 1, true, v))
	}
	waitTok(t, "subscribe", native.Subscribe("$sync/light/+/is_on", 1, nil))
	if m := native.wait(t, 1)[0]; !sameJSON(m.payload, `{"bedroom":1,"livingroom":0}`) {
		t.Fatalf("native snapshot %s", m.payload)
	}

	c := dial(t, b)
	c.mustConnect("native-1700000000000")

	// addSubscription: "/F", answered on F with the snapshot, string leaves.
	if codes := c.subscribe(1, 1, "/light/+/is_on"); string(codes) != "\x01" {
		t.Fatalf("SUBACK codes % x", codes)
	}
	wantTree(t, c.tree("light/+/is_on"), `{"bedroom":"1","livingroom":"0"}`)

	// A native QoS 0 publish reaches the dialect at the granted QoS 1 (the
	// app ignores a PUBLISH without a packet id); a deletion is null.
	waitTok(t, "publish", native.Publish("light/bedroom/is_on", 0, true, "0"))
	wantTree(t, c.tree("light/+/is_on"), `{"bedroom":"0"}`)
	waitTok(t, "publish", native.Publish("light/livingroom/is_on", 1, true, ""))
	wantTree(t, c.tree("light/+/is_on"), `{"livingroom":null}`)

	// retainTree: "T/", string leaves become rows as plain publishes
	// would (the native client sees a number).
	c.publish(2, "light/+/is_on/", `{"kitchen":"1","hall":"ON"}`, 1, true)
	wantTree(t, c.tree("light/+/is_on"), `{"kitchen":"1","hall":"ON"}`)
	// (Deltas the native client has not read yet fold into one: merge
	// them.)
	merged := map[string]any{}
	for i := 2; merged["kitchen"] == nil || merged["hall"] == nil; i++ {
		m := native.wait(t, i)[i-1]
		var d map[string]any
		if err := json.Unmarshal([]byte(m.payload), &d); err != nil {
			t.Fatalf("native delta %q: %v", m.payload, err)
		}
		maps.Copy(merged, d)
	}
	if merged["kitchen"] != float64(1) || merged["hall"] != "ON" {
		t.Errorf("native deltas %v, want the typed rows kitchen 1, hall ON", merged)
	}
	settle(t, b)
	if got := treeJSON(t, b, "light/kitchen/#"); got != `1` && got != `{"is_on":1}` {
		t.Errorf("row light/kitchen/is_on: %s", got)
	}

	// The "/" flag "+": the rows under T the tree does not name go.
	c.publish(3, "light/bedroom/+/", `{"/":"+","is_on":"1","brightness":"55"}`, 1, true)
	wantTree(t, c.tree("light/+/is_on"), `{"bedroom":"1"}`)
	settle(t, b)
	if got := treeJSON(t, b, "light/bedroom/+"); !sameJSON(got, `{"is_on":1,"brightness":55}`) {
		t.Errorf("light/bedroom after a replace: %s (color should be gone, no \"/\" row)", got)
	}

	// A retained publish to a filter is a $set of the rows it matches.
	c.publish(4, "light/+/is_on", "0", 1, true)
	wantTree(t, c.tree("light/+/is_on"), `{"bedroom":"0","kitchen":"0","hall":"0"}`)

	// removeSubscription: UNSUBSCRIBE F, without the "/". Nothing more
	// comes for it: the next message is the next subscription's snapshot.
	c.unsubscribe(5, "light/+/is_on")
	waitTok(t, "publish", native.Publish("light/bedroom/is_on", 1, true, "1"))
	settle(t, b)
	c.subscribe(6, 1, "/light/bedroom/is_on") // no wildcard: the bare payload
	if p := c.next(); p.topic != "light/bedroom/is_on" || p.payload != "1" {
		t.Fatalf("got %+v, want the bare row on light/bedroom/is_on", p)
	}
	c.subscribe(7, 1, "/light/nowhere")
	if p := c.next(); p.topic != "light/nowhere" || p.payload != "" {
		t.Fatalf("got %+v, want an empty snapshot on light/nowhere", p)
	}

	// addListener: F without "/": deltas only, events included, no snapshot.
	c.subscribe(8, 1, "cmd/+")
	c.subscribe(9, 1, "cmd/lamp")
	waitTok(t, "publish", native.Publish("cmd/lamp", 0, false, "on"))
	got := map[string]string{}
	for range 2 {
		p := c.next()
		got[p.topic] = p.payload
	}
	if want := map[string]string{"cmd/+": `{"lamp":"on"}`, "cmd/lamp": "on"}; !reflect.DeepEqual(got, want) {
		t.Errorf("events: %v, want %v", got, want)
	}

	// Subscribing "/F" after "F" replaces it (one subscription per F, as
	// in the original): one snapshot, then one delta per change.
	c.subscribe(10, 1, "/cmd/+")
	wantTree(t, c.tree("cmd/+"), `{}`)
	waitTok(t, "publish", native.Publish("cmd/lamp", 1, false, "off"))
	got = map[string]string{}
	for range 2 {
		p := c.next()
		got[p.topic] = p.payload
	}
	if want := map[string]string{"cmd/+": `{"lamp":"off"}`, "cmd/lamp": "off"}; !reflect.DeepEqual(got, want) {
		t.Errorf("events: %v, want %v", got, want)
	}
	c.subscribe(11, 1, "/light/nowhere/+")
	wantTree(t, c.tree("light/nowhere/+"), `{}`) // and not a second cmd/+ delta

	// PINGREQ is answered.
	c.send(0xc0)
	if p := c.read(); p.head != 0xd0 {
		t.Errorf("PINGREQ answered % x", p.head)
	}
}

func treeJSON(t *testing.T, b *Broker, filter string) string {
	t.Helper()
	out, _, err := b.Tree(testCtx(t), systemPrincipal, filter, 0)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestOriginalRefusals: MQTT 5 and unknown protocols are refused with a
// CONNACK that says so; bad trees, filters and topics are refused with
// nothing applied, and the connection goes on.
func TestOriginalRefusals(t *testing.T) {
	b := startOriginal(t, Options{})

	v5 := dialOriginal(t, b)
	v5.send(0x10, str("MQTT"), []byte{5, 0x02}, id16(60), []byte{0}, str("v5"))
	if p := v5.read(); p.head != 0x20 || len(p.body) < 2 || p.body[1] != 0x84 {
		t.Errorf("MQTT 5 CONNACK % x % x, want reason 0x84 unsupported protocol version", p.head, p.body)
	}
	if _, err := v5.tryRead(); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Errorf("after the refusal: %v, want the connection closed", err)
	}

	bad := dialOriginal(t, b)
	bad.send(0x10, str("motf"), []byte{0, 0x02}, id16(60), str("bad"))
	if p, err := bad.tryRead(); err == nil && (p.head != 0x20 || p.body[1] == 0) {
		t.Errorf("protocol motf: % x % x, want refused", p.head, p.body)
	}

	c := dialOriginal(t, b)
	c.mustConnect("hostile")
	c.subscribe(1, 1, "$SYS/mote/errors/hostile") // a listener: deltas only, the bare report
	if codes := c.subscribe(2, 1, "/", "/a/#/b", "/a/+", "$share/g/x"); string(codes) != "\x80\x80\x01\x80" {
		t.Errorf("SUBACK % x, want 80 80 01 80", codes)
	}
	for _, f := range []string{"/", "/a/#/b", "$share/g/x"} {
		var r Report
		if p := c.next(); p.topic != "$SYS/mote/errors/hostile" || json.Unmarshal([]byte(p.payload), &r) != nil || r.Op != "subscribe" || r.Topic != f {
			t.Errorf("got %+v, want the report of subscribing %q", p, f)
		}
	}
	wantTree(t, c.tree("a/+"), `{}`)

	deep := strings.Repeat(`{"k":`, 40) + `"v"` + strings.Repeat("}", 40)
	for i, tc := range []struct{ topic, payload, why string }{
		{"a/+/", `{"x":`, "invalid tree payload"},
		{"a/+/", `["x"]`, ""},
		{"a/+/", deep, "nested too deep"},
		{"a/+/", `{"x/y":"1"}`, ""},
		{"$SYS/x/", `"1"`, "reserved"},
		{"a/#/b", "1", "invalid"},
	} {
		c.publish(uint16(10+i), tc.topic, tc.payload, 1, true)
		p := c.next()
		if p.topic != "$SYS/mote/errors/hostile" || !strings.Contains(p.payload, tc.why) {
			t.Errorf("%s %.40s: report %+v, want one saying %q", tc.topic, tc.payload, p, tc.why)
		}
	}
	c.publish(30, "a/+", "1", 1, false) // not retained: the original failed on it
	if p := c.next(); !strings.Contains(p.payload, "must be retained") {
		t.Errorf("report %+v", p)
	}
	settle(t, b)
	if got := treeJSON(t, b, "a/#"); got != `{}` {
		t.Errorf("rows under a after refusals: %s", got)
	}
	c.publish(31, "a/+/", `{"ok":"yes"}`, 1, true) // the connection goes on
	wantTree(t, c.tree("a/+"), `{"ok":"yes"}`)
}

// TestOriginalACL: a dialect client's publishes and trees pass the same
// per-row checks as any client's.
func TestOriginalACL(t *testing.T) {
	b := hostileBroker(t, Options{Original: "127.0.0.1:0"})
	carol := dial3With(t, b, paho.NewClientOptions().SetClientID("carol").SetUsername("carol").SetPassword("carol-pw"))
	for _, topic := range []string{"home/a/x", "home/b/y"} {
		waitTok(t, "publish", carol.Publish(topic, 1, true, "1"))
	}

	c := dialOriginal(t, b)
	if p := c.connect("alice-1", "alice", "wrong"); p.body[1] == 0 {
		t.Fatalf("wrong password: CONNACK % x, want refused", p.body)
	}
	c = dialOriginal(t, b)
	if p := c.connect("alice-1", "alice", "alice-pw"); p.body[1] != 0 {
		t.Fatalf("CONNACK % x", p.body)
	}
	c.subscribe(1, 1, "/home/+/+")
	wantTree(t, c.tree("home/+/+"), `{"a":{"x":"1"}}`)
	c.publish(2, "home/+/z/", `{"a":"2","b":"2"}`, 1, true) // home/b/z is bob's: refused whole
	c.publish(3, "home/+/x", "0", 1, true)                  // $set: bob's rows are left alone
	wantTree(t, c.tree("home/+/+"), `{"a":{"x":"0"}}`)
	settle(t, b)
	if got := treeJSON(t, b, "home/+/+"); !sameJSON(got, `{"a":{"x":0},"b":{"y":1}}`) {
		t.Errorf("rows: %s", got)
	}
}

// TestOriginalOnlyOnItsListener: the ordinary listener reads "/a/+" as the
// plain MQTT filter it is.
func TestOriginalOnlyOnItsListener(t *testing.T) {
	b := startOriginal(t, Options{})
	c := dial3(t, b, "plain", true)
	waitTok(t, "subscribe", c.Subscribe("/a/+", 1, nil))
	waitTok(t, "publish", c.Publish("/a/b", 1, true, "x"))
	waitTok(t, "publish", c.Publish("/a/c/", 1, true, `{"d":"1"}`))
	if m := c.wait(t, 1)[0]; m.topic != "/a/b" || m.payload != "x" {
		t.Errorf("got %+v", m)
	}
	settle(t, b)
	if got := treeJSON(t, b, "/a/#"); !sameJSON(got, `{"b":"x","c":{"":{"/":{"d":"1"}}}}`) {
		t.Errorf("rows %s: a trailing / is a plain topic here", got)
	}
}

func sameJSON(a, b string) bool {
	var x, y any
	return json.Unmarshal([]byte(a), &x) == nil && json.Unmarshal([]byte(b), &y) == nil && reflect.DeepEqual(x, y)
}

// FuzzOriginalPublish feeds the dialect's publish reader (prepareOriginal
// and the door after it) arbitrary topics and payloads: never a panic, and
// a tree it accepts holds only valid rows.
func FuzzOriginalPublish(f *testing.F) {
	for _, s := range [][2]string{
		{"light/+/is_on/", `{"kitchen":"1","hall":"ON"}`},
		{"light/bedroom/+/", `{"/":"+","is_on":"1"}`},
		{"a/b/", `"x"`},
		{"a/+", "0"},
		{"a/#", ""},
		{"/", `{"/":{"/":"+"}}`},
		{"a/+/+/", `{"x":{"y":"\u0000"},"z":null}`},
	} {
		f.Add(s[0], []byte(s[1]), true)
	}
	b := startOriginal(f, Options{})
	p := Principal{ClientID: "fuzz", original: true}
	f.Fuzz(func(t *testing.T, topic string, payload []byte, retain bool) {
		r, err := b.prepare(p, &Message{Topic: topic, Payload: payload, QoS: 1, Retain: retain})
		if err != nil {
			return
		}
		for _, row := range r.op.Rows {
			if b.opts.Limits.CheckTopic(row.Topic) != nil || strings.ContainsAny(row.Topic, "+#") {
				t.Errorf("%q %q: row %q accepted", topic, payload, row.Topic)
			}
		}
	})
}

// FuzzOriginalListener sends the dialect's CONNECT and then arbitrary
// bytes to its listener: the broker stays up and serves a fresh dialect
// client afterwards.
func FuzzOriginalListener(f *testing.F) {
	f.Add([]byte{0x82, 0x13, 0x00, 0x01, 0x00, 0x0e, '/', 'l', 'i', 'g', 'h', 't', '/', '+', '/', 'i', 's', '_', 'o', 'n', 0x01})
	f.Add([]byte{0x33, 0x0a, 0x00, 0x04, 'a', '/', '+', '/', 0x00, 0x01, '{', '}'})
	f.Add([]byte{0xa2, 0x05, 0x00, 0x01, 0x00, 0x01, 'a'})
	b := startOriginal(f, Options{})
	connect := func(id string) []byte {
		body := append(append(append(str("mote"), 0, 0x02), id16(20000)...), str(id)...)
		return append([]byte{0x10, byte(len(body))}, body...)
	}
	n := 0
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.Dial("tcp", b.OriginalAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Millisecond)) //nolint:errcheck // reads end at the deadline
		c.Write(append(connect("fuzz"), data...))            //nolint:errcheck // the broker may close first
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		if n++; n%200 == 0 {
			p, err := net.Dial("tcp", b.OriginalAddr())
			if err != nil {
				t.Fatalf("broker down: %v", err)
			}
			defer p.Close()
			p.SetDeadline(time.Now().Add(testTimeout)) //nolint:errcheck // a hang fails the read
			p.Write(connect("probe"))                  //nolint:errcheck // the read says
			if _, err := p.Read(buf); err != nil || buf[0] != 0x20 || buf[3] != 0 {
				t.Fatalf("broker does not accept a fresh dialect client: %v % x", err, buf[:4])
			}
		}
	})
}

// TestOriginalWillAndHash: a clean DISCONNECT discards the will (the
// original had no DISCONNECT and fired it), a dropped connection fires it
// (a will to "T/" is a dialect tree publish); a "#" filter gets the tree of
// SPEC §3 with string leaves, and deltas (the original sent it none).
func TestOriginalWillAndHash(t *testing.T) {
	b := startOriginal(t, Options{})
	withWill := func(id string) *origClient {
		c := dialOriginal(t, b)
		c.send(0x10, str("mote"), []byte{0, 0x02 | 0x04 | 0x20 | 0x08}, id16(20000), str(id), str("lamp/+/"), str(`{"`+id+`":"offline"}`))
		if p := c.read(); p.head != 0x20 || p.body[1] != 0 {
			t.Fatalf("CONNACK % x", p.body)
		}
		return c
	}
	w := dialOriginal(t, b)
	w.mustConnect("watcher")
	w.subscribe(1, 1, "/lamp/#")
	wantTree(t, w.tree("lamp/#"), `{}`)

	clean := withWill("clean")
	clean.send(0xe0, nil)
	if _, err := clean.tryRead(); err == nil {
		t.Error("the connection stayed open after DISCONNECT")
	}
	dropped := withWill("dropped")
	dropped.nc.Close()
	wantTree(t, w.tree("lamp/#"), `{"dropped":"offline"}`)
	settle(t, b)
	if got := treeJSON(t, b, "lamp/+"); got != `{"dropped":"offline"}` {
		t.Errorf("lamp rows %s: only the dropped client's will fires", got)
	}

	w.publish(2, "lamp/dropped/", `"online"`, 1, true) // no wildcard: the tree is one string
	wantTree(t, w.tree("lamp/#"), `{"dropped":"online"}`)
	w.publish(3, "lamp/dropped/level", "55", 1, true)
	wantTree(t, w.tree("lamp/#"), `{"dropped":{"level":"55"}}`)
	w.subscribe(4, 1, "/lamp/#")
	wantTree(t, w.tree("lamp/#"), `{"dropped":{"/":"online","level":"55"}}`)
}

// TestOriginalResumedSession: a dialect client with a persistent session
// gets its subscriptions back in the dialect (string leaves on F, a fresh
// snapshot) when it reconnects.
func TestOriginalResumedSession(t *testing.T) {
	b := startOriginal(t, Options{})
	connect := func() *origClient {
		c := dialOriginal(t, b)
		c.send(0x10, str("MQTT"), []byte{4, 0x00}, id16(60), str("keeper")) // clean session 0
		if p := c.read(); p.head != 0x20 || p.body[1] != 0 {
			t.Fatalf("CONNACK % x", p.body)
		}
		return c
	}
	c := connect()
	c.subscribe(1, 1, "/s/+")
	wantTree(t, c.tree("s/+"), `{}`)
	c.send(0xe0, nil)
	c.tryRead() //nolint:errcheck // waits for the close
	waitConnGone(t, b, "keeper")
	loadRow(b, "s/t", "20")
	c = connect()
	wantTree(t, c.tree("s/+"), `{"t":"20"}`)
}

// TestOriginalConnectInPieces: mote-native's CONNECT read however the
// bytes arrive (the rewrite to MQTT 3.1.1 goes byte by byte).
func TestOriginalConnectInPieces(t *testing.T) {
	b := startOriginal(t, Options{})
	c := dialOriginal(t, b)
	body := append(append(append(str("mote"), 0, 0x02), id16(20000)...), str("pieces")...)
	for _, x := range append([]byte{0x10, byte(len(body))}, body...) {
		if _, err := c.nc.Write([]byte{x}); err != nil {
			t.Fatal(err)
		}
	}
	if p := c.read(); p.head != 0x20 || p.body[1] != 0 {
		t.Fatalf("CONNACK % x", p.body)
	}
	c.subscribe(1, 1, "/x/+")
	wantTree(t, c.tree("x/+"), `{}`)
}
