package broker

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"reflect"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/internal/wsstream"
)

// start runs a broker on random loopback ports for one test.
func start(t testing.TB, opts Options) *Broker {
	t.Helper()
	opts.TCP = "127.0.0.1:0"
	opts.WS = "127.0.0.1:0"
	if _, fuzz := t.(*testing.F); testing.Verbose() && !fuzz { // F's log is not for other goroutines
		w := &testLog{w: zerolog.NewTestWriter(t)}
		t.Cleanup(w.end) // runs after b.Close (cleanups run last first)
		opts.Log = zerolog.New(w).Level(zerolog.DebugLevel)
	}
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// testLog is a test's log for its broker that drops what is written once
// the test ends: mochi's event loop logs its halt after Server.Close has
// returned, and a test's log panics when written after the test.
type testLog struct {
	mu    sync.Mutex
	w     zerolog.TestWriter
	ended bool
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return len(p), nil
	}
	return l.w.Write(p)
}

func (l *testLog) end() {
	l.mu.Lock()
	l.ended = true
	l.mu.Unlock()
}

// settle waits until the message loop has applied every publish handed to
// it before: the broker's own barrier (Broker.Sync). A client's publish is
// handed in once it is acknowledged, so tests publish at QoS 1 (or follow
// QoS 0 publishes with one at QoS 1) before they settle.
func settle(t testing.TB, b *Broker) {
	t.Helper()
	if err := b.Sync(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// msg is one received message.
type msg struct {
	topic    string
	payload  string
	qos      byte
	retained bool
}

// inbox records messages as they arrive, for a test to wait on.
type inbox[T any] struct {
	mu   sync.Mutex
	msgs []T
	got  chan struct{} // one slot: something arrived
}

func (in *inbox[T]) add(m T) {
	in.mu.Lock()
	in.msgs = append(in.msgs, m)
	in.mu.Unlock()
	select {
	case in.got <- struct{}{}:
	default:
	}
}

// wait waits until n messages arrived and returns them.
func (in *inbox[T]) wait(t testing.TB, n int) []T {
	t.Helper()
	deadline := time.After(testTimeout)
	for {
		in.mu.Lock()
		if len(in.msgs) >= n {
			out := append([]T(nil), in.msgs...)
			in.mu.Unlock()
			return out
		}
		in.mu.Unlock()
		select {
		case <-in.got:
		case <-deadline:
			in.mu.Lock()
			defer in.mu.Unlock()
			t.Fatalf("got %d messages, want %d: %+v", len(in.msgs), n, in.msgs)
		}
	}
}

// v3 is a paho.mqtt.golang (MQTT 3.1.1) client recording what it receives.
type v3 struct {
	paho.Client
	inbox[msg]
}

func dial3(t testing.TB, b *Broker, id string, clean bool) *v3 {
	t.Helper()
	return dial3With(t, b, paho.NewClientOptions().SetClientID(id).SetCleanSession(clean))
}

func dial3With(t testing.TB, b *Broker, o *paho.ClientOptions) *v3 {
	t.Helper()
	c := &v3{inbox: inbox[msg]{got: make(chan struct{}, 1)}}
	o.AddBroker("tcp://" + b.TCPAddr()).SetAutoReconnect(false).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { c.record(m) })
	c.Client = paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", o.ClientID, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func (c *v3) record(m paho.Message) {
	c.add(msg{m.Topic(), string(m.Payload()), m.Qos(), m.Retained()})
}

// quiet checks that nothing more than n messages arrives for a while.
func (c *v3) quiet(t testing.TB, n int) {
	t.Helper()
	time.Sleep(200 * time.Millisecond)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.msgs) != n {
		t.Fatalf("got %d messages, want exactly %d: %+v", len(c.msgs), n, c.msgs)
	}
}

func (c *v3) sub(t testing.TB, filter string, qos byte) byte {
	t.Helper()
	tok := c.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return tok.(*paho.SubscribeToken).Result()[filter]
}

func (c *v3) pub(t testing.TB, topic string, qos byte, retain bool, payload string) {
	t.Helper()
	tok := c.Publish(topic, qos, retain, payload)
	if !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// mote dials the Go client library.
func mote(t testing.TB, b *Broker, id string) *client.Client {
	t.Helper()
	c, err := client.Dial(testCtx(t), b.TCPAddr(), client.Options{ClientID: id, CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// collector gathers a client subscription's messages.
type collector struct{ inbox[client.Message] }

func newCollector() *collector {
	return &collector{inbox[client.Message]{got: make(chan struct{}, 1)}}
}

// handle is a client.Handler.
func (c *collector) handle(m client.Message) { c.add(m) }

// same compares decoded trees, normalising numbers and CBOR maps via JSON.
func same(t testing.TB, got any, want string) bool {
	t.Helper()
	b, err := json.Marshal(got)
	if err != nil {
		t.Fatalf("tree %v: %v", got, err)
	}
	var a, w any
	json.Unmarshal(b, &a)
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("want %q: %v", want, err)
	}
	return reflect.DeepEqual(a, w)
}

func jsonEqual(t testing.TB, got, want string) bool {
	t.Helper()
	var a any
	if err := json.Unmarshal([]byte(got), &a); err != nil {
		t.Fatalf("invalid JSON %q: %v", got, err)
	}
	return same(t, a, want)
}

// loadRow stores a retained row as the broker would for a plain retained
// publish, bypassing the client-side checks (for $ topics).
func loadRow(b *Broker, topic, payload string) {
	b.Publish(context.Background(), systemPrincipal, Message{Topic: topic, Payload: []byte(payload), Retain: true}) //nolint:errcheck // the broker's own publish
}

// testTimeout bounds every wait in these tests, so a broker that stops
// answering fails the test that waited, by name, instead of hanging the run.
const testTimeout = 30 * time.Second

// testCtx is a context that ends after testTimeout or with the test.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// waitTok waits for a paho token, reporting (not stopping: callers may be
// goroutines) a timeout or an error.
func waitTok(t testing.TB, what string, tok paho.Token) bool {
	t.Helper()
	if !tok.WaitTimeout(testTimeout) {
		t.Errorf("%s: no answer within %v", what, testTimeout)
		return false
	}
	if err := tok.Error(); err != nil {
		t.Errorf("%s: %v", what, err)
		return false
	}
	return true
}

// waitGroup waits for wg, failing the test if it takes over testTimeout.
func waitGroup(t testing.TB, what string, wg *sync.WaitGroup) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatalf("%s: not done within %v", what, testTimeout)
	}
}

// waitTreeSubs waits until the loop has n tree subscriptions registered.
func waitTreeSubs(t testing.TB, b *Broker, n int64) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for b.treeSubs.Load() != n || b.subsSent.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d tree subscriptions registered, want %d", b.treeSubs.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// dialWSStream opens url (subprotocol mqtt) as an MQTT byte stream, the
// way the Go client does (wsstream.Dial), over raw when it is not nil;
// tc is a wss URL's TLS configuration.
func dialWSStream(t testing.TB, url string, raw net.Conn, tc *tls.Config) *wsstream.Conn {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: testTimeout, TLSClientConfig: tc}
	if raw != nil {
		d.NetDialContext = func(context.Context, string, string) (net.Conn, error) { return raw, nil }
	}
	ws, err := wsstream.Dial(testCtx(t), d, url)
	if err != nil {
		t.Fatal(err)
	}
	c, err := wsstream.New(ws, true)
	if err != nil {
		ws.Close()
		t.Fatal(err)
	}
	return c
}
