package httpapi

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/clients/client"
)

// TestStream: a snapshot, then deltas after MQTT publishes, ids the
// revisions; a reconnect with Last-Event-ID gets only what changed.
func TestStream(t *testing.T) {
	e := setup(t, broker.Options{}, Options{})
	e.publish(t, admin, "$tree/s/+", `{"a":1,"b":2}`)
	c := e.dial(t, "", "")
	s, resp := e.openStream(t, "/api/tree/s/+")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	ev := s.next(t)
	if ev.name != "snapshot" || ev.data != `{"a":1,"b":2}` || ev.id == "" {
		t.Fatalf("first event %+v", ev)
	}
	snapRev, _ := strconv.ParseUint(ev.id, 10, 64)
	if err := c.PublishTree(testCtx(t), "s/+", map[string]any{"a": 10}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	ev = s.next(t)
	if ev.name != "delta" || ev.data != `{"a":10}` {
		t.Fatalf("delta %+v", ev)
	}
	deltaRev, _ := strconv.ParseUint(ev.id, 10, 64)
	if deltaRev <= snapRev {
		t.Errorf("delta id %d after snapshot id %d", deltaRev, snapRev)
	}
	// The delta's id is the revision an MQTT snapshot now carries (nothing
	// else matching s/+ changed since).
	if m := snapshot(t, c, "s/+"); m.Rev < deltaRev || !reflect.DeepEqual(norm(t, m.Tree), map[string]any{"a": 10.0, "b": 2.0}) {
		t.Errorf("MQTT snapshot %v at %d; the stream is at %d", m.Tree, m.Rev, deltaRev)
	}
	s.close()

	// Away: b changes, c appears, a is deleted; then the client comes back.
	if err := c.PublishTree(testCtx(t), "s/+", map[string]any{"b": 20, "c": 3}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	e.publish(t, admin, "s/a", "")
	s, _ = e.openStream(t, "/api/tree/s/+", "Last-Event-ID", ev.id)
	ev = s.next(t)
	if ev.name != "resume" || !reflect.DeepEqual(jsonOf(t, []byte(ev.data)), map[string]any{"a": nil, "b": 20.0, "c": 3.0}) {
		t.Fatalf("resume %+v", ev)
	}
	e.publish(t, admin, "s/d", "4")
	if ev = s.next(t); ev.name != "delta" || ev.data != `{"d":4}` {
		t.Fatalf("delta after resume %+v", ev)
	}
	s.close()

	// A Last-Event-ID that is not a revision, too old, or ahead of the
	// broker (a client of another broker, a forged one) gets a snapshot.
	for _, id := range []string{"junk", "1", "-1", "0", "18446744073709551615", "18446744073709551616", strings.Repeat("9", 10_000)} {
		s, _ = e.openStream(t, "/api/tree/s/+", "Last-Event-ID", id)
		if ev = s.next(t); ev.name != "snapshot" || !reflect.DeepEqual(jsonOf(t, []byte(ev.data)), map[string]any{"b": 20.0, "c": 3.0, "d": 4.0}) {
			t.Errorf("Last-Event-ID %s: %+v", id, ev)
		}
		s.close()
	}
	// A value published with line breaks still goes out on one data line.
	s, _ = e.openStream(t, "/api/tree/s/+")
	s.next(t)
	e.publish(t, admin, "s/e", "{\n  \"x\": 1\r\n}")
	if ev = s.next(t); !reflect.DeepEqual(jsonOf(t, []byte(ev.data)), map[string]any{"e": map[string]any{"x": 1.0}}) {
		t.Errorf("multi-line value: %+v", ev)
	}
	// A refused filter is an error answer, not a stream.
	if _, resp := e.openStream(t, "/api/tree/s/%23/x"); resp.StatusCode != 400 {
		t.Errorf("bad filter: %s", resp.Status)
	}
}

// TestStreamHistory: with history=1 the stream starts with the history.
func TestStreamHistory(t *testing.T) {
	e := setup(t, broker.Options{}, Options{})
	e.publish(t, admin, "h/a", "1")
	s, _ := e.openStream(t, "/api/tree/h/+?history=1")
	ev := s.next(t)
	if ev.name != "snapshot" || !strings.HasPrefix(ev.data, `{"a":[[`) {
		t.Fatalf("%+v", ev)
	}
	e.publish(t, admin, "h/a", "2")
	if ev = s.next(t); ev.name != "delta" || ev.data != `{"a":2}` {
		t.Fatalf("%+v", ev)
	}
}

// TestMaxStreams: streams past the bound are refused with 503; a closed
// one makes room.
func TestMaxStreams(t *testing.T) {
	e := setup(t, broker.Options{}, Options{MaxStreams: 2, MaxStreamsPerUser: 2})
	var open []*stream
	for range 2 {
		s, resp := e.openStream(t, "/api/tree/x")
		if resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
		s.next(t)
		open = append(open, s)
	}
	s, resp := e.openStream(t, "/api/tree/x")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("third stream: %s", resp.Status)
	}
	s.close()
	open[0].close()
	eventually(t, "a stream slot", func() bool { return e.s.streams.Load() < 2 })
	s, resp = e.openStream(t, "/api/tree/x")
	if resp.StatusCode != 200 {
		t.Fatalf("after one closed: %s", resp.Status)
	}
	s.next(t)
	// Plain GETs are not streams.
	if resp, _ := e.do(t, "GET", "/api/tree/x", nil); resp.StatusCode != 200 {
		t.Errorf("GET: %s", resp.Status)
	}
}

// TestStreamClientStopsReading: a client that stops reading does not hold
// its stream: the broker's queue bound and the write deadline end it, and
// its session goes.
func TestStreamClientStopsReading(t *testing.T) {
	for _, policy := range []broker.SlowPolicy{broker.SlowDrop, broker.SlowDisconnect} {
		t.Run(string(policy), func(t *testing.T) {
			e := setup(t, broker.Options{QueueBytes: 1 << 20, PublishWait: 50 * time.Millisecond, SlowClient: policy},
				Options{WriteTimeout: 200 * time.Millisecond})
			// A raw connection that sends the request and never reads.
			conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.(*net.TCPConn).SetReadBuffer(4096)
			fmt.Fprintf(conn, "GET /api/tree/big/+ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
			eventually(t, "the stream", func() bool { return e.s.streams.Load() == 1 })
			big := strings.Repeat("x", 256<<10)
			i := 0
			for ; e.s.streams.Load() > 0; i++ {
				if i > 400 {
					t.Fatalf("the stream still runs after %d MiB published to it", i/4)
				}
				e.publish(t, admin, "big/"+strconv.Itoa(i%8), strconv.Quote(big+strconv.Itoa(i)))
			}
			t.Logf("the stream ended after %d MiB published to it", i/4)
		})
	}
}

// TestClose: Close ends the streams.
func TestClose(t *testing.T) {
	e := setup(t, broker.Options{}, Options{})
	s, _ := e.openStream(t, "/api/tree/x")
	s.next(t)
	done := make(chan error, 1)
	go func() { done <- e.s.Close() }()
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("Close hangs on a stream")
	}
	select {
	case _, ok := <-s.events:
		if ok {
			t.Error("an event after Close")
		}
	case <-time.After(testTimeout):
		t.Fatal("the stream still runs after Close")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/api/tree/x", nil)
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Error("served after Close")
	}
}

// TestStreamParts: a snapshot over the broker's maximum packet size goes
// out as its first part (snapshot) and the others as deltas, the id on the
// last only; together they are the tree.
func TestStreamParts(t *testing.T) {
	e := setup(t, broker.Options{MaxPacketSize: 4096}, Options{})
	want := map[string]any{}
	for i := range 40 {
		v := strings.Repeat("v", 200)
		e.publish(t, admin, fmt.Sprintf("p/r%02d", i), v)
		want[fmt.Sprintf("r%02d", i)] = v
	}
	s, _ := e.openStream(t, "/api/tree/p/+")
	got := map[string]any{}
	for n := 0; ; n++ {
		ev := s.next(t)
		switch {
		case n == 0 && ev.name != "snapshot", n > 0 && ev.name != "delta":
			t.Fatalf("event %d: %+v", n, ev)
		}
		for k, v := range jsonOf(t, []byte(ev.data)).(map[string]any) {
			got[k] = v
		}
		if ev.id != "" {
			if n == 0 {
				t.Fatal("the snapshot was not cut in parts")
			}
			break
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the parts make %d rows, want %d", len(got), len(want))
	}
	// A history answer in parts is refused, not cut.
	if resp, body := e.do(t, "GET", "/api/tree/p/+?history=1", nil); resp.StatusCode != 500 || !strings.Contains(string(body), "maximum packet size") {
		t.Errorf("history in parts: %d %s", resp.StatusCode, body)
	}
}

// TestStreamCountsComeBack: however a stream ends — its client resets the
// connection mid-stream, stops reading until the write deadline passes, or
// its request is cut before the headers go out — its places among
// MaxStreams and its caller's MaxStreamsPerUser come back, so no caller is
// locked out by streams that are gone.
func TestStreamCountsComeBack(t *testing.T) {
	e := setup(t, broker.Options{QueueBytes: 1 << 20, PublishWait: 50 * time.Millisecond},
		Options{WriteTimeout: 200 * time.Millisecond, MaxStreams: 4, MaxStreamsPerUser: 2})
	addr := strings.TrimPrefix(e.url, "http://")
	empty := func() bool {
		e.s.callersMu.Lock()
		defer e.s.callersMu.Unlock()
		return e.s.streams.Load() == 0 && len(e.s.callers) == 0
	}
	raw := func() *net.TCPConn {
		c, err := net.DialTimeout("tcp", addr, testTimeout)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		tc := c.(*net.TCPConn)
		tc.SetReadBuffer(4096)
		fmt.Fprintf(tc, "GET /api/tree/v/+ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
		return tc
	}
	for round := range 3 {
		// Reset mid-stream, while deltas flow.
		c := raw()
		eventually(t, "the stream", func() bool { return e.s.streams.Load() == 1 })
		e.publish(t, admin, "v/a", strconv.Itoa(round))
		c.SetLinger(0)
		c.Close()
		// Bounded by time, not by a count of publishes: on a loaded machine
		// the reset can take longer than a thousand publishes.
		deadline := time.Now().Add(testTimeout)
		for i := 0; !empty(); i++ {
			if time.Now().After(deadline) {
				t.Fatal("a reset stream is still counted")
			}
			e.publish(t, admin, "v/a", strconv.Itoa(i))
		}
		// A client that stops reading: the write deadline ends it.
		raw()
		eventually(t, "the stream", func() bool { return e.s.streams.Load() == 1 })
		big := strings.Repeat("x", 64<<10)
		deadline = time.Now().Add(testTimeout)
		for i := 0; !empty(); i++ {
			if time.Now().After(deadline) {
				t.Fatal("a stream whose client stopped reading is still counted")
			}
			e.publish(t, admin, "v/"+strconv.Itoa(i%8), strconv.Quote(big+strconv.Itoa(i)))
		}
	}
	// The caller still has both its places.
	for range 2 {
		s, resp := e.openStream(t, "/api/tree/v/+")
		if resp.StatusCode != 200 {
			t.Fatalf("after streams that ended abnormally: %s", resp.Status)
		}
		s.next(t)
	}
}
