package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/clients/client"
)

// testTimeout bounds every wait of a test: it only guards a hang, so it
// is as long as the broker tests' (under -race beside other packages'
// tests on a loaded 2-core machine, a 12 MB snapshot took 9 s).
const testTimeout = 30 * time.Second

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// env is a broker with its HTTP API, both on random loopback ports.
type env struct {
	b   *broker.Broker
	s   *Server
	url string // http://127.0.0.1:port
}

func logger(t testing.TB) zerolog.Logger {
	if testing.Verbose() {
		return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	}
	return zerolog.Nop()
}

func setup(t testing.TB, bo broker.Options, o Options) *env {
	t.Helper()
	bo.TCP, bo.WS = "127.0.0.1:0", "off"
	bo.Log = logger(t)
	b, err := broker.New(bo)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	o.Log = logger(t)
	s := New(b, o)
	l, err := s.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-served; err != nil {
			t.Error(err)
		}
	})
	return &env{b: b, s: s, url: "http://" + l.Addr().String()}
}

// do makes a request and returns the response with its body read.
func (e *env) do(t testing.TB, method, path string, body io.Reader, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), method, e.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "auth" {
			user, pw, _ := strings.Cut(hdr[i+1], ":")
			req.SetBasicAuth(user, pw)
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// publish writes through the broker's door as p, and fails the test on a
// refusal.
func (e *env) publish(t testing.TB, p broker.Principal, topic, payload string) {
	t.Helper()
	if err := e.b.Publish(testCtx(t), p, broker.Message{Topic: topic, Payload: []byte(payload), QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
}

var admin = broker.Principal{User: "admin", ClientID: "test"}

// dial connects an MQTT 5 client (clients/client).
func (e *env) dial(t testing.TB, user, pw string) *client.Client {
	t.Helper()
	c, err := client.Dial(testCtx(t), e.b.TCPAddr(), client.Options{Username: user, Password: pw})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// snapshot is the first message of a $sync subscription over MQTT.
func snapshot(t testing.TB, c *client.Client, filter string) client.Message {
	t.Helper()
	got := make(chan client.Message, 16)
	ctx := testCtx(t)
	if err := c.Subscribe(ctx, filter, client.Sync, client.JSON, 1, func(m client.Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	defer c.Unsubscribe(ctx, filter, client.Sync, client.JSON)
	select {
	case m := <-got:
		return m
	case <-ctx.Done():
		t.Fatalf("no snapshot of %s", filter)
	}
	return client.Message{}
}

// jsonOf decodes JSON text for comparison.
func jsonOf(t testing.TB, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return v
}

// norm makes a decoded tree comparable with one decoded by encoding/json.
func norm(t testing.TB, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return jsonOf(t, b)
}

// event is one Server-Sent Event.
type event struct{ name, id, data string }

// stream is an event stream being read.
type stream struct {
	resp   *http.Response
	events chan event
	cancel context.CancelFunc
}

// openStream opens GET path as an event stream, with header pairs.
func (e *env) openStream(t testing.TB, path string, hdr ...string) (*stream, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "auth" {
			user, pw, _ := strings.Cut(hdr[i+1], ":")
			req.SetBasicAuth(user, pw)
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &stream{resp: resp, events: make(chan event, 1024), cancel: cancel}
	t.Cleanup(s.close)
	if resp.StatusCode != http.StatusOK {
		return s, resp
	}
	go func() {
		defer close(s.events)
		r := bufio.NewReader(resp.Body)
		var ev event
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\n")
			switch {
			case line == "":
				if ev.name != "" || ev.data != "" {
					s.events <- ev
				}
				ev = event{}
			case strings.HasPrefix(line, ":"):
			case strings.HasPrefix(line, "event: "):
				ev.name = line[len("event: "):]
			case strings.HasPrefix(line, "id: "):
				ev.id = line[len("id: "):]
			case strings.HasPrefix(line, "data: "):
				ev.data += line[len("data: "):]
			}
		}
	}()
	return s, resp
}

func (s *stream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// next waits for the next event.
func (s *stream) next(t testing.TB) event {
	t.Helper()
	return s.nextWithin(t, testTimeout)
}

// nextWithin is next, waiting up to d: a snapshot of many megabytes,
// built, written and parsed under -race beside other packages' tests,
// took up to 9 s (TestStreamAnswerBudget, 12 MB).
func (s *stream) nextWithin(t testing.TB, d time.Duration) event {
	t.Helper()
	select {
	case ev, ok := <-s.events:
		if !ok {
			t.Fatal("the event stream ended")
		}
		return ev
	case <-time.After(d):
		t.Fatalf("no event in %v", d)
	}
	return event{}
}

// eventually waits until cond holds.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
