package wsstream

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestStream: bytes written as several messages read back as one stream,
// in any chunking; a text frame ends a binary-only stream.
func TestStream(t *testing.T) {
	got := make(chan string, 1)
	var up websocket.Upgrader
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		c := New(ws, true)
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
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := New(ws, false)
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

// TestWriteDeadline: a write deadline set on the stream bounds every later
// write, as a net.Conn's does. gorilla sets the socket's write deadline to
// its own before each frame, so one set on the socket alone was undone,
// and a write to a peer that stopped reading waited for ever.
func TestWriteDeadline(t *testing.T) {
	var up websocket.Upgrader
	accepted := make(chan *Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		accepted <- New(ws, true)
	}))
	defer srv.Close()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	c := <-accepted
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := c.Write([]byte("late")); err == nil {
		t.Error("a write past the write deadline succeeded")
	}
}
