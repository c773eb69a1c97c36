package wsstream

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// wsURL is the WebSocket URL of srv (wss:// for an https:// server).
func wsURL(srv *httptest.Server) string { return "ws" + strings.TrimPrefix(srv.URL, "http") }

// serveWS starts h on a test server, over TLS if overTLS, closed when the
// test ends, and a dialer for it.
func serveWS(t *testing.T, h http.Handler, overTLS bool) (*httptest.Server, websocket.Dialer) {
	srv := httptest.NewUnstartedServer(h)
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	if overTLS {
		srv.StartTLS()
		d.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv, d
}

// TestStream: bytes written as several messages read back as one stream,
// in any chunking; a text frame ends a binary-only stream.
func TestStream(t *testing.T) {
	got := make(chan string, 1)
	var up websocket.Upgrader
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := Upgrade(&up, w, r)
		if err != nil {
			return
		}
		c, err := New(ws, true)
		if err != nil {
			t.Error(err)
			ws.Close()
			return
		}
		buf := make([]byte, 3) // smaller than the messages: reads cross them
		var sb strings.Builder
		for {
			n, err := c.Read(buf)
			sb.Write(buf[:n])
			if err != nil {
				if !errors.Is(err, ErrText) {
					t.Errorf("server read: %v", err)
				}
				got <- sb.String()
				return
			}
		}
	}))
	defer srv.Close()
	ws, err := Dial(context.Background(), websocket.Dialer{HandshakeTimeout: 10 * time.Second}, wsURL(srv))
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(ws, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range []string{"hello ", "", "web", "socket stream"} {
		if _, err := c.Write([]byte(part)); err != nil {
			t.Fatal(err)
		}
	}
	ws.WriteMessage(websocket.TextMessage, []byte("not mqtt"))
	if s := <-got; s != "hello websocket stream" {
		t.Errorf("read %q", s)
	}
	c.Close()
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("read after close succeeded")
	}
}

// TestNoSocket: a WebSocket made without Upgrade or Dial, whose writes
// could not be bounded, is refused with ErrNoSocket.
func TestNoSocket(t *testing.T) {
	var up websocket.Upgrader
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ws, err := up.Upgrade(w, r, nil); err == nil {
			ws.Close()
		}
	}))
	defer srv.Close()
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	ws, _, err := d.Dial(wsURL(srv), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if _, err := New(ws, false); !errors.Is(err, ErrNoSocket) {
		t.Errorf("New: %v, want ErrNoSocket", err)
	}
	d.NetDial = net.Dial
	if _, err := Dial(context.Background(), d, wsURL(srv)); !errors.Is(err, ErrNoSocket) {
		t.Errorf("Dial with NetDial: %v, want ErrNoSocket", err)
	}
}

// TestWriteDeadline: a write deadline set on the stream bounds every later
// write, as a net.Conn's does. gorilla sets the socket's write deadline to
// its own before each frame, so one set on the socket alone was undone,
// and a write to a peer that stopped reading waited for ever.
func TestWriteDeadline(t *testing.T) {
	var up websocket.Upgrader
	accepted := make(chan *Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := Upgrade(&up, w, r)
		if err != nil {
			return
		}
		c, err := New(ws, true)
		if err != nil {
			t.Error(err)
			ws.Close()
		}
		accepted <- c
	}))
	defer srv.Close()
	ws, err := Dial(context.Background(), websocket.Dialer{HandshakeTimeout: 10 * time.Second}, wsURL(srv))
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	c := <-accepted
	if c == nil {
		t.FailNow()
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := c.Write([]byte("late")); err == nil {
		t.Error("a write past the write deadline succeeded")
	}
}

// hookConn runs hook, once, in the n-th call of SetWriteDeadline on it
// (gorilla's, before a frame), before passing the call on: the moment
// between gorilla reading its deadline and setting it on the socket.
type hookConn struct {
	net.Conn
	n     atomic.Int64 // calls left before the hook's
	armed atomic.Bool
	hook  func()
}

func (h *hookConn) SetWriteDeadline(t time.Time) error {
	if h.armed.Load() && h.n.Add(-1) == 0 {
		h.hook()
	}
	return h.Conn.SetWriteDeadline(t)
}

func (h *hookConn) NetConn() net.Conn { return h.Conn }

// TestBoundNotUndone: a write deadline set from another goroutine (a
// takeover bounding a stalled connection's write) bounds the write under
// way to a peer that stopped reading, whenever it comes: before the
// write, or in the moment gorilla is about to set the socket's deadline
// for a frame to its own. That moment undid it: Write had read the old
// deadline (an hour) and gorilla set it again after the bound, and the
// write waited that long (with the fix reverted, 3 runs: every case but
// "before the write" failed, still blocked 3 s after the 100 ms bound).
// CI's TestTakeoverNotBehindStalledPeer/ws failed so once, 0 in 60 reruns.
func TestBoundNotUndone(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tls   bool
		frame int64 // the frame whose deadline's setting the bound comes in; 0: before the write
	}{
		{"before the write", false, 0},
		{"first frame", false, 1},
		{"later frame", false, 8},
		{"tls first frame", true, 1},
		{"tls later frame", true, 8},
	} {
		t.Run(tc.name, func(t *testing.T) { boundNotUndone(t, tc.tls, tc.frame) })
	}
}

func boundNotUndone(t *testing.T, overTLS bool, frame int64) {
	var up websocket.Upgrader
	peer := make(chan *websocket.Conn, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ws, err := up.Upgrade(w, r, nil); err == nil {
			peer <- ws // never read
		}
	})
	srv, d := serveWS(t, h, overTLS)
	var hc *hookConn
	d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := new(net.Dialer).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c.(*net.TCPConn).SetWriteBuffer(64 << 10) //nolint:errcheck // smaller only fills sooner
		hc = &hookConn{Conn: &Socket{Conn: c}}    // gorilla, (TLS,) hook, Socket, TCP
		return hc, nil
	}
	url := wsURL(srv) // wss:// for an https:// server
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer (<-peer).Close()
	c, err := New(ws, false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(time.Hour)) // the broker's WriteTimeout, as in the takeover test
	bound := func() {
		done := make(chan struct{})
		go func() { // the takeover's goroutine
			defer close(done)
			c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		}()
		<-done
	}
	if frame == 0 {
		bound()
	} else {
		hc.hook = bound
		hc.n.Store(frame)
		hc.armed.Store(true)
	}
	errc := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := c.Write(make([]byte, 8<<20)) // far more than the socket buffers hold
		errc <- err
	}()
	select {
	case err := <-errc:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("write: %v, want a timeout", err)
		}
		if _, isTLS := ws.NetConn().(*tls.Conn); isTLS != overTLS {
			t.Errorf("websocket over TLS: %v, want %v", isTLS, overTLS)
		}
	case <-time.After(30 * time.Second): // unbounded, it blocks for the hour: any bound finds it
		t.Errorf("write still blocked %v after it began, its bound 100 ms", time.Since(start))
		c.Close()
		<-errc
	}
	if frame > 0 && hc.n.Load() > 0 {
		t.Errorf("the bound came in no frame's deadline setting: %d calls short", hc.n.Load())
	}
}

// TestPongAfterDeadline: the stream's write deadline of a write that
// ended long ago (the broker's WriteTimeout, set before each write and
// left there) fails neither the pong gorilla answers a ping with nor,
// through it, every later write: the peer's ping is answered and the
// next write, with a deadline of its own, goes through. With the stream's
// deadline capping the pong's (no test before this one) both cases
// failed, 3 runs of 3: no pong, and the next write "i/o timeout".
func TestPongAfterDeadline(t *testing.T) {
	for _, overTLS := range []bool{false, true} {
		name := map[bool]string{false: "ws", true: "wss"}[overTLS]
		t.Run(name, func(t *testing.T) { pongAfterDeadline(t, overTLS) })
	}
}

func pongAfterDeadline(t *testing.T, overTLS bool) {
	var up websocket.Upgrader
	pinged := make(chan struct{}) // the peer has its pong, or gave up
	written := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := Upgrade(&up, w, r)
		if err != nil {
			written <- err
			return
		}
		c, err := New(ws, true)
		if err != nil {
			ws.Close()
			written <- err
			return
		}
		defer c.Close()
		c.SetWriteDeadline(time.Now()) // the last write's, passed
		go func() {                    // the read loop: answers pings; ends with c
			buf := make([]byte, 16)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}()
		<-pinged
		c.SetWriteDeadline(time.Now().Add(30 * time.Second)) // the next write's own
		_, err = c.Write([]byte("after"))
		written <- err
	})
	srv, d := serveWS(t, h, overTLS)
	url := wsURL(srv) // wss:// for an https:// server
	ws, err := Dial(context.Background(), d, url)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	pong := make(chan struct{}, 1)
	ws.SetPongHandler(func(string) error { pong <- struct{}{}; return nil })
	if err := ws.WriteControl(websocket.PingMessage, []byte("p"), time.Now().Add(30*time.Second)); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	msgs := make(chan string, 1)
	go func() { // the peer's reader: ends at its read deadline, or with ws
		defer close(msgs)
		for {
			_, p, err := ws.ReadMessage()
			if err != nil {
				return
			}
			msgs <- string(p)
		}
	}()
	select {
	case <-pong:
	case <-time.After(30 * time.Second): // only a hang: unanswered, no pong ever comes
		t.Error("no pong in 30 s: the ping was not answered")
	}
	close(pinged)
	if err := <-written; err != nil {
		t.Errorf("write after the ping: %v", err)
	}
	if m, ok := <-msgs; !ok || m != "after" {
		t.Errorf("peer read %q, %v; want \"after\"", m, ok)
	}
}
