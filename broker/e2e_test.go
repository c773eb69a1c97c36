package broker

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"
)

// start runs a broker on random loopback ports for one test.
func start(t testing.TB, opts Options) *Broker {
	t.Helper()
	opts.TCP = "127.0.0.1:0"
	opts.WS = "127.0.0.1:0"
	if testing.Verbose() {
		opts.Log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
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

// msg is one received message.
type msg struct {
	topic    string
	payload  string
	qos      byte
	retained bool
}

// v3 is a paho.mqtt.golang (MQTT 3.1.1) client recording what it receives.
type v3 struct {
	paho.Client
	mu   sync.Mutex
	msgs []msg
	got  chan struct{}
}

func dial3(t testing.TB, b *Broker, id string, clean bool) *v3 {
	t.Helper()
	c := &v3{got: make(chan struct{}, 1)}
	o := paho.NewClientOptions().AddBroker("tcp://" + b.TCPAddr()).SetClientID(id).
		SetCleanSession(clean).SetAutoReconnect(false).SetOrderMatters(true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { c.record(m) })
	c.Client = paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func (c *v3) record(m paho.Message) {
	c.mu.Lock()
	c.msgs = append(c.msgs, msg{m.Topic(), string(m.Payload()), m.Qos(), m.Retained()})
	c.mu.Unlock()
	select {
	case c.got <- struct{}{}:
	default:
	}
}

// wait waits until n messages arrived and returns them.
func (c *v3) wait(t testing.TB, n int) []msg {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		c.mu.Lock()
		if len(c.msgs) >= n {
			out := append([]msg(nil), c.msgs...)
			c.mu.Unlock()
			return out
		}
		c.mu.Unlock()
		select {
		case <-c.got:
		case <-deadline:
			c.mu.Lock()
			defer c.mu.Unlock()
			t.Fatalf("got %d messages, want %d: %+v", len(c.msgs), n, c.msgs)
		}
	}
}

func (c *v3) sub(t testing.TB, filter string, qos byte) {
	t.Helper()
	tok := c.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

func (c *v3) pub(t testing.TB, topic string, qos byte, retain bool, payload string) {
	t.Helper()
	tok := c.Publish(topic, qos, retain, payload)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func jsonEqual(t testing.TB, got, want string) bool {
	t.Helper()
	var a, b any
	if err := json.Unmarshal([]byte(got), &a); err != nil {
		t.Fatalf("invalid JSON %q: %v", got, err)
	}
	json.Unmarshal([]byte(want), &b)
	return reflect.DeepEqual(a, b)
}

func TestSyncSnapshotThenDelta(t *testing.T) {
	b := start(t, Options{})
	dev := dial3(t, b, "dev", true)
	dev.pub(t, "$tree/light/bedroom", 1, true, `{"is_on":1,"brightness":55}`)
	dev.pub(t, "light/livingroom/is_on", 1, true, `0`)
	app := dial3(t, b, "app", true)
	time.Sleep(50 * time.Millisecond) // let the loop apply both
	app.sub(t, "$sync/light/+/is_on", 1)
	got := app.wait(t, 1)
	if got[0].topic != "$sync/light/+/is_on" || !jsonEqual(t, got[0].payload, `{"bedroom":1,"livingroom":0}`) {
		t.Fatalf("snapshot %+v", got[0])
	}
	dev.pub(t, "$tree/light/+/is_on", 1, true, `{"bedroom":0,"hall":1}`)
	got = app.wait(t, 2)
	if !jsonEqual(t, got[1].payload, `{"bedroom":0,"hall":1}`) || got[1].qos != 1 {
		t.Fatalf("delta %+v", got[1])
	}
	plain := dial3(t, b, "plain", true)
	plain.sub(t, "light/#", 0)
	rows := plain.wait(t, 4)
	want := map[string]string{"light/bedroom/is_on": "0", "light/bedroom/brightness": "55", "light/livingroom/is_on": "0", "light/hall/is_on": "1"}
	for _, m := range rows {
		if want[m.topic] != m.payload || !m.retained {
			t.Errorf("plain retained %+v", m)
		}
	}
	fmt.Println(rows)
	_ = strings.Contains
}
