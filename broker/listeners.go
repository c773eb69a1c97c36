package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/internal/wsstream"
)

// guard runs one connection's session and turns a panic inside mochi (a
// decoder bug, say) into a log line and a closed connection, so one bad
// packet never takes the broker down.
func guard(log zerolog.Logger, onPanic func(net.Conn), id string, c net.Conn, establish listeners.EstablishFn) {
	c = &deadlineConn{Conn: c, timeout: writeTimeout}
	defer func() {
		if r := recover(); r != nil {
			log.Error().Str("listener", id).Str("remote", c.RemoteAddr().String()).
				Interface("panic", r).Bytes("stack", debug.Stack()).Msg("connection panicked; closed it")
			c.Close()
			if onPanic != nil {
				onPanic(c)
			}
		}
	}()
	if err := establish(id, c); err != nil && !errors.Is(err, io.EOF) {
		log.Debug().Str("listener", id).Str("remote", c.RemoteAddr().String()).Err(err).Msg("connection ended")
	}
}

// writeTimeout bounds one write to a client. mochi holds the client's lock
// while it writes, so a client that stops reading would otherwise stall
// every goroutine that publishes to it; past this the connection closes.
const writeTimeout = 10 * time.Second

// deadlineConn sets a write deadline before every write.
type deadlineConn struct {
	net.Conn
	timeout time.Duration
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	return c.Conn.Write(p)
}

// tcpListener is mochi's Listener for plain TCP. It binds in Init, so a
// busy port is an error at start and ":0" gives a real address.
type tcpListener struct {
	id, addr string
	tls      *tls.Config // nil for plain TCP
	log      zerolog.Logger
	onPanic  func(net.Conn)
	ln       net.Listener
	wg       sync.WaitGroup
}

func (l *tcpListener) ID() string { return l.id }
func (l *tcpListener) Protocol() string {
	if l.tls != nil {
		return "tls"
	}
	return "tcp"
}

func (l *tcpListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

// listen binds addr, with TLS when tc is set.
func listen(protocol, addr string, tc *tls.Config) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("broker: listen %s %s: %w", protocol, addr, err)
	}
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	return ln, nil
}

func (l *tcpListener) Init(*slog.Logger) (err error) {
	l.ln, err = listen(l.Protocol(), l.addr, l.tls)
	return err
}

func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors (EMFILE) and the like pass: wait and
			// accept again, as net/http does, rather than stop listening.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Error().Err(err).Str("listener", l.id).Dur("retry_in", backoff).Msg("accept failed")
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			guard(l.log, l.onPanic, l.id, c, establish)
		}()
	}
}

// Close stops accepting. It does not call mochi's closeClients: that
// (GetByListener) read-locks mochi's client map twice, which deadlocks
// against clients disconnecting at the same moment; the broker closes its
// clients itself (Broker.Close).
func (l *tcpListener) Close(listeners.CloseFn) {
	if l.ln != nil {
		l.ln.Close()
	}
}

// wsListener serves MQTT over WebSocket (subprotocol "mqtt") on one path.
type wsListener struct {
	id, addr, path string
	tls            *tls.Config // nil for plain WebSocket
	log            zerolog.Logger
	onPanic        func(net.Conn)
	ln             net.Listener
	srv            *http.Server
	establish      listeners.EstablishFn
}

func (l *wsListener) ID() string { return l.id }
func (l *wsListener) Protocol() string {
	if l.tls != nil {
		return "wss"
	}
	return "ws"
}

func (l *wsListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

func (l *wsListener) Init(*slog.Logger) error {
	ln, err := listen(l.Protocol(), l.addr, l.tls)
	if err != nil {
		return err
	}
	l.ln = ln
	up := &websocket.Upgrader{
		Subprotocols:    []string{"mqtt"},
		CheckOrigin:     func(*http.Request) bool { return true }, // browsers connect from any page
		ReadBufferSize:  4096,
		WriteBufferSize: 4096,
	}
	mux := http.NewServeMux()
	mux.HandleFunc(l.path, func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return // Upgrade has answered with an HTTP error
		}
		guard(l.log, l.onPanic, l.id, wsstream.New(ws, true), l.establish)
	})
	l.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return nil
}

func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.establish = establish
	if err := l.srv.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		l.log.Error().Err(err).Str("listener", l.id).Msg("websocket listener stopped")
	}
}

// Close stops accepting; see tcpListener.Close.
func (l *wsListener) Close(listeners.CloseFn) {
	if l.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		l.srv.Shutdown(ctx) // hijacked WebSocket connections are the broker's to close
	}
}
