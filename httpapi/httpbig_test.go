package httpapi

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
)

// bigTree publishes rows rows of size bytes each under prefix/.
func bigTree(t *testing.T, e *env, prefix string, rows, size int) {
	t.Helper()
	var sb strings.Builder
	sb.WriteString("{")
	for i := range rows {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `"r%d":"%s"`, i, strings.Repeat("v", size))
	}
	sb.WriteString("}")
	e.publish(t, admin, "$tree/"+prefix+"/+", sb.String())
}

// unread opens n connections to l that send GET path and never read.
func unread(t *testing.T, addr string, n int, path, accept string) {
	t.Helper()
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.(*net.TCPConn).SetReadBuffer(4096)
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: %s\r\n\r\n", path, accept)
	}
}

// TestSmallGetNotBehindLarge: a GET of a small answer is answered within
// a bound while large answers are being built or held for clients that do
// not read them. Small answers (by the estimate made before building)
// have slots of their own. Before, every GET waited for one of four shared
// slots, held while a large tree was built: with the slots held, the small
// GET got no answer (hostile run: 60 unread GETs of a 100k-row tree, a
// one-row GET waited 2.1 s, with history over 60 s).
func TestSmallGetNotBehindLarge(t *testing.T) {
	cases := []struct {
		name string
		busy func(t *testing.T, e *env, addr string)
	}{
		{"large builds hold their slots", func(t *testing.T, e *env, _ string) {
			for range maxTreeReads {
				e.s.trees <- struct{}{} // as four large trees being built
			}
			t.Cleanup(func() {
				for range maxTreeReads {
					<-e.s.trees
				}
			})
		}},
		{"unread large answers", func(t *testing.T, e *env, addr string) {
			unread(t, addr, 12, "/api/tree/big/%23", "application/json")
			eventually(t, "large answers held", func() bool { return e.s.answers.load() > 0 })
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := setup(t, broker.Options{}, Options{MaxAnswerBytes: 8 << 20})
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go e.s.Serve(smallBuffers{l})   //nolint:errcheck // ends with the server's Close
			bigTree(t, e, "big", 400, 5000) // 2 MB
			e.publish(t, admin, "big/one", "1")
			c.busy(t, e, l.Addr().String())
			// Before, the one-row GET got no answer while the slots
			// were held (for good, here): any bound finds that, and one
			// of 10 s leaves the 12 large answers being built beside
			// it under -race on a loaded machine room.
			cl := &http.Client{Timeout: 10 * time.Second}
			start := time.Now()
			resp, err := cl.Get("http://" + l.Addr().String() + "/api/tree/big/one")
			if err != nil {
				t.Fatalf("a one-row GET: %v after %v", err, time.Since(start))
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "1" {
				t.Fatalf("a one-row GET: %s %.100s", resp.Status, body)
			}
			if _, peak, _ := e.s.answers.stats(); peak > e.s.opts.MaxAnswerBytes {
				t.Errorf("answer bytes held at most %d: above the cap %d", peak, e.s.opts.MaxAnswerBytes)
			}
		})
	}
}

// TestRefusedGetBuildsNothing: a GET whose answer does not fit the
// answer budget is refused (503, Retry-After, the reason) before its tree
// is built: the answer's bytes count against the cap by their estimate
// before they exist. Before, the tree was built whole (and dropped) and
// only then checked, so the memory of answers being built and refused
// was outside the cap (hostile run: 838 MB against the 256 MiB cap).
func TestRefusedGetBuildsNothing(t *testing.T) {
	cases := []struct {
		name, query string
	}{
		{"tree", ""},
		{"history", "?history=1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := setup(t, broker.Options{}, Options{MaxAnswerBytes: 4 << 20})
			bigTree(t, e, "big", 400, 10_000) // 4 MB
			resp, body := e.do(t, "GET", "/api/tree/big/%23"+c.query, nil)
			if resp.StatusCode != 200 || len(body) < 4_000_000 {
				t.Fatalf("alone: %s, %d bytes", resp.Status, len(body))
			}
			half := e.s.opts.MaxAnswerBytes / 2
			if !e.s.answers.take(half, false) { // answers being written
				t.Fatal("the budget is not empty")
			}
			defer e.s.answers.give(half)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			resp, body = e.do(t, "GET", "/api/tree/big/%23"+c.query, nil)
			runtime.ReadMemStats(&after)
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "large answers") {
				t.Fatalf("with the budget taken: %s %.200s", resp.Status, body)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
				t.Errorf("a refused GET allocated %d bytes: its answer was built", n)
			}
		})
	}
}

// TestStreamBehindEnds: an event stream whose client does not read holds
// a bounded backlog of events: past MaxStreamBacklog (or, over every
// stream, MaxStreamsBacklog) it ends, counted as fallen behind, its bytes
// given back. Before, the session's writer waited on the client (up to
// WriteTimeout per event) while the session's queue held the rest
// (hostile run: 1,250 unread streams, 805 MB; probe p99 5.6 s): the
// stream stayed open.
func TestStreamBehindEnds(t *testing.T) {
	cases := []struct {
		name string
		o    Options
	}{
		{"its own backlog", Options{MaxStreamBacklog: 64 << 10}},
		{"every stream's", Options{MaxStreamBacklog: 64 << 20, MaxStreamsBacklog: 64 << 10}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.o.WriteTimeout, c.o.StreamStall = time.Minute, 300*time.Millisecond
			e := setup(t, broker.Options{AllowAnonymous: true}, c.o)
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go e.s.Serve(smallBuffers{l}) //nolint:errcheck // ends with the server's Close
			e.publish(t, admin, "s/a", "0")
			cn, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer cn.Close()
			cn.(*net.TCPConn).SetReadBuffer(4096)
			fmt.Fprintf(cn, "GET /api/tree/s/%%23 HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
			eventually(t, "the stream open", func() bool { return e.s.streams.Load() == 1 })
			val := strconv.Quote(strings.Repeat("x", 8000))
			ended := func() bool { return e.s.behind.Load() > 0 }
			for i := 0; i < 400 && !ended(); i++ { // 3.2 MB of deltas at most
				e.publish(t, admin, "s/a", val[:len(val)-1-i%2]+`"`)
			}
			deadline := time.Now().Add(testTimeout)
			for !ended() && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if !ended() {
				t.Fatalf("3.2 MB of deltas not read, %v later: the stream is still open (%d streams)", testTimeout, e.s.streams.Load())
			}
			eventually(t, "the stream closed", func() bool { return e.s.streams.Load() == 0 })
			eventually(t, "its backlog given back", func() bool { return e.s.backlog.Load() == 0 && e.s.answers.load() == 0 })
		})
	}
}
