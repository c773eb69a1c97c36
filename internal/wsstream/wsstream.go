// Package wsstream turns a WebSocket into the byte stream MQTT expects:
// MQTT packets may span WebSocket messages and a message may hold several
// packets [MQTT-6.0.0-2]. The broker's listener and the Go client share it.
//
// # Write deadlines
//
// gorilla's websocket sets the socket's write deadline to its own recorded
// one before every frame it writes. A deadline set on the socket from
// another goroutine (a takeover bounding the write under way) was undone
// by that when it came between Write reading the stream's deadline (to
// give it to gorilla) and gorilla setting it: gorilla set the old one
// again (an hour in TestTakeoverNotBehindStalledPeer/ws, WriteTimeout by
// default), and a peer that stopped reading held the write that long.
// So every WebSocket here runs over a Socket, which gorilla's deadlines
// pass through and which never lets one be later than the stream's
// (Conn.SetWriteDeadline): the stream's deadline and the socket's are
// set together, under the lock gorilla's settings take, and no order of
// the calls undoes a bound (TestBoundNotUndone). Upgrade and Dial put
// the Socket there; New finds it. A stream's deadline already passed
// (the last write's) does not cap the pong or close gorilla answers with:
// it would fail the WebSocket of a client that pings after an idle while
// (TestPongAfterDeadline).
package wsstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// ErrText is a text frame where MQTT needs binary ones [MQTT-6.0.0-1].
var ErrText = errors.New("wsstream: websocket text frame")

// ErrNoSocket is a WebSocket not made by Upgrade or Dial: its writes
// could not be bounded (Socket).
var ErrNoSocket = errors.New("wsstream: websocket not over a wsstream.Socket")

// Socket is the connection a WebSocket runs over (under its TLS, if any,
// or over it): the write deadlines gorilla's websocket sets on it
// (SetWriteDeadline, SetDeadline) are never later than the stream's
// (Conn.SetWriteDeadline). Its other methods are the connection's.
type Socket struct {
	net.Conn
	mu  sync.Mutex // orders the settings of the connection's write deadline, so it is never later than wdl
	wdl time.Time  // the stream's write deadline (Conn.SetWriteDeadline); zero: none
}

// SetWriteDeadline sets the connection's write deadline to t, or to the
// stream's if that is sooner: gorilla calls it before every frame, with
// its own deadline (none for the stream's messages, a second for the
// pong or close it answers a ping or close with). A control frame's own
// deadline yields only to a stream's deadline still ahead: one passed is
// that of a write that ended (the broker sets one before each write and
// leaves it), and would fail the pong to a client idle that long, and
// with it the WebSocket for good (TestPongAfterDeadline). A write it
// failed failed the WebSocket already, and a bound set after the
// control frame began bounds it too (setStream), so none is undone.
func (s *Socket) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.wdl.IsZero() && (t.IsZero() || s.wdl.Before(t) && time.Now().Before(s.wdl)) {
		t = s.wdl
	}
	return s.Conn.SetWriteDeadline(t)
}

// SetDeadline sets the read deadline, and the write deadline as
// SetWriteDeadline does.
func (s *Socket) SetDeadline(t time.Time) error {
	if err := s.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return s.SetWriteDeadline(t)
}

// NetConn is the connection under the Socket.
func (s *Socket) NetConn() net.Conn { return s.Conn }

// setStream sets the stream's write deadline, and the connection's with
// it, under the lock gorilla's settings take too: whichever comes first,
// the connection's deadline ends as t or sooner.
func (s *Socket) setStream(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wdl = t
	return s.Conn.SetWriteDeadline(t)
}

// socketOf is the Socket under c's layers (TLS, hooks of tests), or nil.
func socketOf(c net.Conn) *Socket {
	for c != nil {
		if s, ok := c.(*Socket); ok {
			return s
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	return nil
}

// hijacker puts a Socket over the connection a request is upgraded on.
type hijacker struct{ http.ResponseWriter }

// Hijack takes the connection over from the HTTP server, as a Socket.
func (h hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	return &Socket{Conn: c}, brw, nil
}

// Upgrade upgrades r to a WebSocket with up, over a Socket. As
// up.Upgrade, it has answered r with an HTTP error when it fails.
func Upgrade(up *websocket.Upgrader, w http.ResponseWriter, r *http.Request) (*websocket.Conn, error) {
	return up.Upgrade(hijacker{w}, r, nil)
}

// Dial opens a WebSocket to url with d, over a Socket on the connection
// d.NetDialContext (a net.Dialer's when nil) opens. d.NetDial and
// d.NetDialTLSContext must be nil: what they opened would have no Socket.
func Dial(ctx context.Context, d websocket.Dialer, url string) (*websocket.Conn, error) {
	if d.NetDial != nil || d.NetDialTLSContext != nil {
		return nil, fmt.Errorf("wsstream: dial %s: NetDial or NetDialTLSContext set: %w", url, ErrNoSocket)
	}
	dial := d.NetDialContext
	if dial == nil {
		dial = new(net.Dialer).DialContext
	}
	d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &Socket{Conn: c}, nil
	}
	ws, resp, err := d.DialContext(ctx, url, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("wsstream: dial %s: %w (HTTP %s)", url, err, resp.Status)
		}
		return nil, fmt.Errorf("wsstream: dial %s: %w", url, err)
	}
	return ws, nil
}

// Conn is a WebSocket as a net.Conn byte stream. Deadlines and addresses
// are the underlying connection's; a write deadline bounds the writes
// through the WebSocket too (SetWriteDeadline).
type Conn struct {
	net.Conn
	ws         *websocket.Conn
	sock       *Socket // under ws: where the write deadline is set
	binaryOnly bool
	r          io.Reader  // the message being read
	mu         sync.Mutex // one writer at a time
}

// New wraps ws, made by Upgrade or Dial (else ErrNoSocket); with
// binaryOnly a text frame ends the stream with ErrText.
func New(ws *websocket.Conn, binaryOnly bool) (*Conn, error) {
	s := socketOf(ws.NetConn())
	if s == nil {
		return nil, ErrNoSocket
	}
	return &Conn{Conn: ws.NetConn(), ws: ws, sock: s, binaryOnly: binaryOnly}, nil
}

// Read reads the stream across message boundaries. Only one goroutine may
// read at a time.
func (c *Conn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if c.binaryOnly && typ != websocket.BinaryMessage {
				return 0, ErrText
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

// Write sends p as one binary message, by the write deadline; it is safe
// for concurrent use.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// SetWriteDeadline sets the deadline of the writes: of the one under way,
// and of every later one. It takes effect whenever it is called, even
// while gorilla is setting its own deadline for a frame (Socket).
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.sock.setStream(t)
}

// SetDeadline sets the read and the write deadlines (SetWriteDeadline).
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// Close closes the WebSocket.
func (c *Conn) Close() error { return c.ws.Close() }
