// Package wsstream turns a WebSocket into the byte stream MQTT expects:
// MQTT packets may span WebSocket messages and a message may hold several
// packets [MQTT-6.0.0-2]. The broker's listener and the Go client share it.
package wsstream

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// ErrText is a text frame where MQTT needs binary ones [MQTT-6.0.0-1].
var ErrText = errors.New("wsstream: websocket text frame")

// Conn is a WebSocket as a net.Conn byte stream. Deadlines and addresses
// are the underlying connection's; a write deadline reaches the writes
// through the WebSocket too (SetWriteDeadline).
type Conn struct {
	net.Conn
	ws         *websocket.Conn
	binaryOnly bool
	r          io.Reader  // the message being read
	mu         sync.Mutex // one writer at a time

	dmu sync.Mutex // guards wdl
	wdl time.Time  // the write deadline: given to the WebSocket before each write
}

// New wraps ws; with binaryOnly a text frame ends the stream with ErrText.
func New(ws *websocket.Conn, binaryOnly bool) *Conn {
	return &Conn{Conn: ws.NetConn(), ws: ws, binaryOnly: binaryOnly}
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
	c.dmu.Lock()
	wdl := c.wdl
	c.dmu.Unlock()
	c.ws.SetWriteDeadline(wdl) //nolint:errcheck // it only records the deadline
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// SetWriteDeadline sets the deadline of the writes: of the one under way
// (the socket's), and of every later one (the WebSocket's). gorilla's
// websocket sets the socket's write deadline to its own before each frame
// it writes, so a deadline set on the socket alone (the embedded
// net.Conn's) was undone by the next write, which could wait for ever on
// a peer that stopped reading.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.dmu.Lock()
	c.wdl = t
	c.dmu.Unlock()
	return c.Conn.SetWriteDeadline(t)
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
