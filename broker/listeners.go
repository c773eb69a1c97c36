package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/listeners"
	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/internal/wsstream"
)

// guard runs one connection's session and turns a panic inside mochi (a
// decoder bug, say) into a log line and a closed connection, so one bad
// packet never takes the broker down. Every connection is wrapped in a
// netConn first.
//
// The CONNECT is handled on the calling goroutine (establish); the
// session's read loop runs on a goroutine of its own (serve), started here
// from a shallow frame, so the stack mochi's CONNECT path grew (16 KiB) is
// freed when this one returns and the parked reader keeps a small one
// (internal/mochi: Server.EstablishSession; bench/README.md, "Mochi
// carried in the tree (issue 15)"). Whichever of the two ends the
// connection untracks it.
func (b *Broker) guard(id string, c net.Conn) {
	nc := b.wrap(c)
	nc.original = isOriginal(id)
	if !b.handshakes.begin(nc.host()) {
		if b.logs.allow(nil, "", codeKind(packets.ErrConnectionRateExceeded)) {
			b.log.Warn().Str("listener", id).Str("remote", c.RemoteAddr().String()).Msg("too many connections before CONNECT; closed")
		}
		c.Close()
		return
	}
	nc.counted = true
	if !b.track(nc) {
		nc.handshakeDone()
		c.Close() // the broker is closing
		return
	}
	if serve := b.establish(id, nc); serve == nil {
		return
	} else if nc.quiet() {
		nc.releaseSpare()               // a sleeping connection holds no read buffer
		b.sleepers.sleep(nc, id, serve) // no reader until the client sends (sleep_linux.go)
	} else {
		go b.serve(id, nc, serve)
	}
}

// establish reads the CONNECT and establishes the session; it returns the
// read loop to serve, or nil when the connection ended (it is then
// untracked).
func (b *Broker) establish(id string, nc *netConn) (serve func() error) {
	var err error
	defer func() {
		if serve == nil {
			b.connEnded(id, nc, recover(), err)
		}
	}()
	serve, err = b.server.EstablishSession(id, nc)
	return serve
}

// serve runs an established session's read loop until the connection
// ends, or until its reader goes to sleep (sleep_linux.go): then the
// connection waits for input without a goroutine, and serve runs again on
// a new one when it comes.
func (b *Broker) serve(id string, nc *netConn, serve func() error) {
	var err error
	defer func() {
		r := recover()
		if r == nil && err == mqtt.ErrAsleep { //nolint:errorlint // mochi returns the sentinel itself
			return
		}
		b.connEnded(id, nc, r, err)
	}()
	err = serve()
	if err == mqtt.ErrAsleep { //nolint:errorlint // as above
		b.sleepers.sleep(nc, id, serve)
	}
}

// connEnded does a connection's last duties: a panic r is logged and
// counted and the connection closed; it is untracked and no longer counts
// as a handshake. Called on the connection's read goroutine once mochi
// has read its last: a read buffer still lent goes back (takeBackLent).
func (b *Broker) connEnded(id string, nc *netConn, r any, err error) {
	nc.takeBackLent()
	if r != nil {
		b.log.Error().Str("listener", id).Str("remote", nc.RemoteAddr().String()).
			Interface("panic", r).Bytes("stack", debug.Stack()).Msg("connection panicked; closed it")
		nc.Close()
		b.connPanicked(nc)
	} else if err != nil && !errors.Is(err, io.EOF) {
		b.log.Debug().Str("listener", id).Str("remote", nc.RemoteAddr().String()).Err(err).Msg("connection ended")
	}
	b.untrack(nc)
	nc.handshakeDone()
}

// track files a connection that is about to be served, so Close can end
// it even before its session exists; false once the broker is closing.
func (b *Broker) track(nc *netConn) bool {
	b.rawMu.Lock()
	defer b.rawMu.Unlock()
	if b.rawClosed {
		return false
	}
	b.raw[nc] = struct{}{}
	b.sessions.Add(1)
	return true
}

func (b *Broker) untrack(nc *netConn) {
	b.rawMu.Lock()
	delete(b.raw, nc)
	b.rawMu.Unlock()
	b.sessions.Done()
}

// closeConns closes every connection being served: each session ends,
// wills fire, and no new one starts.
func (b *Broker) closeConns() {
	b.rawMu.Lock()
	defer b.rawMu.Unlock()
	b.rawClosed = true
	for nc := range b.raw {
		nc.Close()
	}
}

// netConn is a client connection as mochi reads and writes it. Before mochi
// sees a byte, it reads the MQTT fixed headers going by: a connection that
// has not sent a whole CONNECT within ConnectTimeout is closed, a CONNECT
// over MaxConnectSize is refused before mochi allocates it (nothing is
// authenticated yet), and a later packet over the maximum packet size gets
// DISCONNECT 0x95 (MQTT 5) before the connection closes, one whose
// Remaining Length runs past four bytes DISCONNECT 0x81. Every write has a
// deadline, and writes never interleave.
type netConn struct {
	net.Conn
	maxConnect   int32 // Options.MaxConnectSize (at most MaxInt32)
	maxPacket    int32 // Options.MaxPacketSize (at most MaxInt32; an MQTT packet is at most 268,435,460 bytes)
	writeTimeout time.Duration

	// read side: touched only by the connection's read goroutine
	packets int // packets whose header was read
	b       *Broker
	pre     *message // made with the PUBLISH body PublishBody gave last, until OnPublish takes it (bodies.go)
	preBody *byte    // that body's first byte
	// A Remaining Length is at most 268,435,455 (four bytes of seven
	// bits), a CONNECT's body at most maxConnect: int32s, in one word.
	length int32        // remaining length being read (state 1), bytes of body left (state 2)
	body   int32        // bytes of the CONNECT body seen (to find the level)
	turn   readTurn     // its read turns, if it floods refused packets (turns.go)
	rdl    atomic.Int64 // the read deadline as mochi set it last (SetReadDeadline): ns since Broker.born by the monotonic clock; 0: none
	// The read side's flags, together with the small fields of the rest
	// (each with its own guard) at the end, so that none is padded to a
	// word: 288 → 256 bytes, one size class down.
	state     uint8 // 0: header byte, 1: length bytes, 2: body; stateFailed, stateMalformed: the next read fails
	shift     uint8 // the next length byte's shift (7 a byte)
	connected bool  // the CONNECT is complete
	counted   bool  // counted in b.handshakes until the CONNECT is complete or the connection closes
	level     byte  // protocol level of the CONNECT (5: MQTT 5)
	original  bool  // the original dialect's listener: its clients' CONNECT is rewritten (original.go)
	moteName  bool  // the CONNECT so far names protocol "mote" (original.go)
	inEpoll   bool  // in the sleepers' epoll set (sleep_linux.go; under its mu)

	wmu       sync.Mutex    // one write at a time
	sleep     atomic.Uint32 // where the reader is: awake, waiting since an epoch, kicked, asleep, closing (sleep_linux.go)
	lingering bool          // under dmu: Close set the read deadline of its linger, which no later deadline moves
	raw       *rawIO        // plain TCP: non-blocking direct writes (direct.go); nil otherwise
	werr      error         // under wmu: a write failed, perhaps in the middle of a packet: nothing is written after it

	dmu   sync.Mutex // guards the deadlines' settings: the write deadline's, last and bound; the read deadline's after a kick or a Close (lingering)
	last  time.Time  // the write deadline last set (armWrite)
	bound *time.Time // SetWriteDeadline's: no write goes on past it (the connection is being taken over); nil: none. A pointer: set only for a takeover, and a time.Time more moved netConn up a size class (240 → 256 bytes)

	closeErr  error
	closeOnce sync.Once
	hsDone    atomic.Bool // handshakeDone ran
	aborted   atomic.Bool // Close resets

	// filed is the broker's conn of this connection's client while it is
	// filed in Broker.conns (attach to dropConn), nil before and after: the
	// hooks find it here, at every packet, without a map lookup (hook.conn).
	filed atomic.Pointer[conn]
}

// errConnectTooLarge and errPacketTooLarge end a connection whose packet
// declares more than the broker accepts; errMalformedLength one whose
// Remaining Length runs past four bytes.
var (
	errConnectTooLarge = errors.New("broker: CONNECT packet too large")
	errPacketTooLarge  = errors.New("broker: packet too large")
	errMalformedLength = errors.New("broker: remaining length over four bytes")
)

func (b *Broker) wrap(c net.Conn) *netConn {
	c.SetReadDeadline(time.Now().Add(b.opts.ConnectTimeout)) //nolint:errcheck // mochi's keep-alive deadline replaces it after CONNECT
	// notsent_linux.go
	if err := setNotSentLowat(c); err != nil {
		b.log.Warn().Err(err).Str("remote", c.RemoteAddr().String()).Msg("TCP_NOTSENT_LOWAT not set: the kernel may buffer a replay ahead of PINGRESP")
	}
	return &netConn{Conn: c, maxConnect: int32(min(b.opts.MaxConnectSize, math.MaxInt32)), maxPacket: int32(min(b.opts.MaxPacketSize, math.MaxInt32)), writeTimeout: b.opts.WriteTimeout,
		raw: newRawIO(c, &b.readBufs), b: b}
}

// host is the client's host, as counted in Broker.handshakes: found again
// from its address at the handshake's end, not kept (netConn is 224 bytes
// without it, not 240, and holds no string).
func (c *netConn) host() string { return hostOf(c.Conn.RemoteAddr()) }

func hostOf(a net.Addr) string {
	if a == nil {
		return ""
	}
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	h, _, _ := net.SplitHostPort(a.String())
	return h
}

// Connections that have not sent a whole CONNECT yet are bounded, from one
// host and in all: each holds a descriptor and a goroutine until
// ConnectTimeout, and nothing is authenticated.
const (
	maxHandshakesPerHost = 256
	maxHandshakes        = 4096
)

// handshakes counts the connections still before their CONNECT.
type handshakes struct {
	mu     sync.Mutex
	byHost map[string]int
	all    int
}

// begin counts one more from host; false (not counted) when over a bound.
func (h *handshakes) begin(host string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.all >= maxHandshakes || h.byHost[host] >= maxHandshakesPerHost {
		return false
	}
	if h.byHost == nil {
		h.byHost = map[string]int{}
	}
	h.byHost[host]++
	h.all++
	return true
}

func (h *handshakes) end(host string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byHost[host]--; h.byHost[host] <= 0 {
		delete(h.byHost, host)
	}
	h.all--
}

// The scan's states after a read that ended at a packet over the limits
// with whole packets before it: those were handed on, and the next read
// fails at once, without reading (stateFailed + the error's kind).
const (
	stateFailed    = 3 // the packet declared more than maxPacket
	stateMalformed = 4 // its Remaining Length ran past four bytes
)

func (c *netConn) Read(p []byte) (int, error) {
	if c.state >= stateFailed {
		return c.scanned(p, 0, nil)
	}
	n, err := c.Conn.Read(p)
	return c.scanned(p, n, err)
}

// scanned follows the packet boundaries in p[:n], just read (with err):
// a packet over the limits ends the connection (MQTT 5: with a
// DISCONNECT saying why) and the read fails. The whole packets read
// before it are handed on first, and the read after them fails: they are
// handled and answered as if they had come in a read of their own (a
// client's valid packets were dropped, unanswered, whenever the bad one
// came in the same read(2)).
func (c *netConn) scanned(p []byte, n int, err error) (int, error) {
	whole, perr := c.scan(p[:n])
	if perr != nil && whole > 0 {
		c.state = stateFailed
		if errors.Is(perr, errMalformedLength) {
			c.state = stateMalformed
		}
		return whole, nil
	}
	if perr != nil {
		if errors.Is(perr, errPacketTooLarge) && c.level == 5 {
			c.Write([]byte{0xE0, 0x02, 0x95, 0x00}) //nolint:errcheck // DISCONNECT 0x95 packet too large; closing either way
		}
		if errors.Is(perr, errMalformedLength) && c.level == 5 {
			c.Write([]byte{0xE0, 0x02, 0x81, 0x00}) //nolint:errcheck // DISCONNECT 0x81 malformed packet; closing either way
		}
		return 0, perr
	}
	return n, err
}

// scan follows the packet boundaries in bytes read; on an error, whole
// is how many bytes of p the whole packets before the bad one take (0 if
// it began in an earlier read).
func (c *netConn) scan(p []byte) (whole int, err error) {
	switch c.state {
	case stateFailed:
		return 0, fmt.Errorf("%w: %d bytes declared, limit %d", errPacketTooLarge, c.length, c.maxPacket)
	case stateMalformed:
		return 0, errMalformedLength
	}
	for i := 0; i < len(p); {
		switch c.state {
		case 0: // first byte of a fixed header
			c.state, c.length, c.shift = 1, 0, 0
			whole = i
			i++
		case 1: // remaining length, 7 bits a byte
			v := p[i]
			i++
			c.length |= int32(v&0x7f) << c.shift
			c.shift += 7
			if v&0x80 != 0 {
				if c.shift >= 28 {
					return whole, errMalformedLength // a variable byte integer is at most 4 bytes (MQTT 5 §1.5.5, 3.1.1 §2.2.3)
				}
				continue
			}
			c.packets++
			if c.packets == 1 && c.length > c.maxConnect {
				return whole, fmt.Errorf("%w: %d bytes declared, limit %d", errConnectTooLarge, c.length, c.maxConnect)
			}
			// The whole packet: its type byte, its length's bytes (shift/7)
			// and its body (MQTT 5 §3.1.2.11.4).
			if c.maxPacket > 0 && int(c.length)+1+int(c.shift/7) > int(c.maxPacket) {
				return whole, fmt.Errorf("%w: %d bytes declared, limit %d", errPacketTooLarge, c.length, c.maxPacket)
			}
			c.state = 2
			if c.length == 0 {
				c.endPacket()
			}
		case 2: // body
			k := min(int(c.length), len(p)-i)
			if c.packets == 1 && !c.connected {
				body := int(c.body)
				if c.original {
					for at := body; at < body+k && at <= 6; at++ {
						c.rewriteConnect(at, &p[i+at-body])
					}
				}
				// The protocol level is the 7th byte of a CONNECT body
				// (after the protocol name "MQTT" with its length).
				if at := 6 - body; at >= 0 && at < k {
					c.level = p[i+at]
				}
				c.body += int32(k)
			}
			c.length -= int32(k)
			i += k
			if c.length == 0 {
				c.endPacket()
			}
		}
	}
	return 0, nil
}

func (c *netConn) endPacket() {
	c.state = 0
	if c.packets == 1 {
		c.connected = true
		c.handshakeDone()
	}
}

// handshakeDone stops counting the connection as one before its CONNECT.
func (c *netConn) handshakeDone() {
	if c.hsDone.CompareAndSwap(false, true) && c.counted {
		c.b.handshakes.end(c.host())
	}
}

// Write writes p with the connection's write deadline (WriteTimeout, or
// the bound SetWriteDeadline set if sooner). After a write that failed it
// fails at once: the failed one may have cut a packet, and a packet
// written after it would be read as that packet's rest.
func (c *netConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	c.armWrite()
	// A direct write's rest goes first (direct.go).
	if _, err := c.writeRestLocked(); err != nil {
		return 0, c.failed(err)
	}
	n, err := c.Conn.Write(p)
	if err != nil {
		c.failed(err)
	}
	return n, err
}

// failed records a write's failure (wmu held): later writes fail at once
// and the close resets the connection (the client does not read, or is
// gone: a TLS close would write its close_notify after the cut packet,
// and wait for the client to take it).
func (c *netConn) failed(err error) error {
	c.werr = err
	c.abort()
	return err
}

// armWrite sets the deadline of a write about to start: WriteTimeout
// from now, or the bound set by SetWriteDeadline if sooner.
func (c *netConn) armWrite() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.last = time.Now().Add(c.writeTimeout)
	if c.bound != nil && c.bound.Before(c.last) {
		c.last = *c.bound
	}
	c.Conn.SetWriteDeadline(c.last) //nolint:errcheck // a failing deadline fails the write too
}

// SetWriteDeadline bounds the connection's writes by t: the write under
// way, if its own deadline is later, and every write after it. mochi sets
// it before the DISCONNECT it writes to a connection it takes over, so a
// client that stopped reading holds the takeover (and the CONNECT taking
// over) that long at most, not WriteTimeout (Server.disconnectTakenOver).
//
// A zero t lifts the bound: the write under way, if any, has its own
// deadline back.
func (c *netConn) SetWriteDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.bound = nil
	if t.IsZero() {
		return c.Conn.SetWriteDeadline(c.last)
	}
	c.bound = &t
	if !c.last.IsZero() && c.last.Before(t) {
		return nil // the write under way, if any, ends sooner
	}
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline sets the read deadline (mochi's keep-alive): every write
// has its own (armWrite), which a keep-alive must not stretch.
func (c *netConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline sets the read deadline (mochi's keep-alive), and keeps
// it (rdl) for a reader that sleeps: its wake-up timer, and the deadline
// set back after a kick (sleep_linux.go). The reader's only. Once Close
// has set the deadline of its linger it stands: a reader that refreshed
// its keep-alive after the Close (one woken by the Close, say) kept the
// connection, its session and Broker.Close waiting keep-alive × 1.5,
// not lingerFor (red team h-rtsleep, TestCloseLingerDeadlineStands).
func (c *netConn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.lingering {
		return nil
	}
	switch {
	case t.IsZero() || c.b == nil:
		c.rdl.Store(0)
	default:
		// By the monotonic clock, as the net package's deadlines go: a
		// step of the wall clock (NTP, a VM resumed) neither expires a
		// sleeper's deadline early nor stretches it (review).
		c.rdl.Store(max(int64(t.Sub(c.b.born)), 1))
	}
	return c.Conn.SetReadDeadline(t)
}

// Close ends the connection gently: the broker's side is shut for writing
// (what was written, a DISCONNECT with its reason say, still reaches the
// client) and what the client still sends is read and dropped for a moment,
// so it gets no reset before it has read everything. An aborted connection
// (a client that stopped reading) is reset at once.
func (c *netConn) Close() error {
	c.handshakeDone()
	if c.raw != nil && c.b != nil {
		c.b.sleepers.closing(c) // a reader asleep wakes to end the session
	}
	c.closeOnce.Do(func() {
		if c.aborted.Load() {
			if tc := tcpOf(c.Conn); tc != nil && tc != c.Conn {
				tc.Close() // first: TLS would write its close_notify, and wait for the client to take it
			}
			c.closeErr = c.Conn.Close()
			return
		}
		tc, ok := c.Conn.(*net.TCPConn)
		if !ok || tc.CloseWrite() != nil {
			c.closeErr = c.Conn.Close()
			return
		}
		c.dmu.Lock()
		c.lingering = true
		tc.SetReadDeadline(time.Now().Add(lingerFor)) //nolint:errcheck // bounds the drain below, and the reader
		c.dmu.Unlock()
		if c.b != nil {
			c.b.lingers.Add(1) // Broker.Close waits for it
		}
		go func() {
			io.Copy(io.Discard, io.LimitReader(tc, lingerBytes)) //nolint:errcheck // dropped
			tc.Close()
			if c.b != nil {
				c.b.lingers.Done()
			}
		}()
	})
	return c.closeErr
}

// lingerFor and lingerBytes bound what a closed connection still reads.
const (
	lingerFor   = 2 * time.Second
	lingerBytes = 1 << 20
)

// abort makes the next Close reset the connection (SO_LINGER 0) instead of
// sending what is still buffered: for a client that stopped reading, that
// data would only hold kernel memory, and a reset tells the client at once.
func (c *netConn) abort() {
	c.aborted.Store(true)
	if tc := tcpOf(c.Conn); tc != nil {
		tc.SetLinger(0) //nolint:errcheck // best effort: a plain close follows either way
	}
}

// tcpOf is the TCP connection under c's TLS or WebSocket layers, or nil.
func tcpOf(c net.Conn) *net.TCPConn {
	for c != nil {
		switch x := c.(type) {
		case *net.TCPConn:
			return x
		case *wsstream.Conn:
			c = x.Conn
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// tcpListener is mochi's Listener for plain TCP and TLS. It binds in Init,
// so a busy port is an error at start and ":0" gives a real address.
type tcpListener struct {
	id, addr string
	tls      *tls.Config // nil for plain TCP
	b        *Broker
	ln       net.Listener
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

func (l *tcpListener) Serve(listeners.EstablishFn) { // guard establishes (Server.EstablishSession)
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
			l.b.log.Error().Err(err).Str("listener", l.id).Dur("retry_in", backoff).Msg("accept failed")
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetNoDelay(true) //nolint:errcheck // Nagle off is the default; keep it so
		}
		go l.b.guard(l.id, c)
	}
}

// Close stops accepting. It does not call mochi's closeClients: the
// broker closes its clients itself (Broker.Close). (closeClients'
// GetByListener read-locked mochi's client map twice, which deadlocked
// against clients disconnecting at the same moment, until mochi change
// 56.)
func (l *tcpListener) Close(listeners.CloseFn) {
	if l.ln != nil {
		l.ln.Close()
	}
}

// wsListener serves MQTT over WebSocket (subprotocol "mqtt") on one path.
type wsListener struct {
	id, addr, path string
	tls            *tls.Config // nil for plain WebSocket
	b              *Broker
	ln             net.Listener
	srv            *http.Server
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
	up := l.b.upgrader()
	mux := http.NewServeMux()
	mux.HandleFunc(l.path, func(w http.ResponseWriter, r *http.Request) {
		l.b.serveWS(l.id, up, w, r)
	})
	l.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return nil
}

// upgrader upgrades HTTP requests to MQTT over WebSocket, with the origin
// check.
func (b *Broker) upgrader() *websocket.Upgrader {
	return &websocket.Upgrader{
		Subprotocols:    []string{"mqtt"},
		CheckOrigin:     b.originAllowed,
		ReadBufferSize:  4096,
		WriteBufferSize: 4096,
	}
}

// serveWS upgrades one request to MQTT over WebSocket and serves the
// connection, as one of listener id's, until it ends: the one path of
// every WebSocket client, whichever HTTP server accepted it.
func (b *Broker) serveWS(id string, up *websocket.Upgrader, w http.ResponseWriter, r *http.Request) {
	ws, err := wsstream.Upgrade(up, w, r)
	if err != nil {
		b.log.Debug().Err(err).Str("remote", r.RemoteAddr).Str("origin", r.Header.Get("Origin")).Msg("websocket refused")
		return // Upgrade has answered with an HTTP error
	}
	ws.SetReadLimit(int64(b.opts.MaxPacketSize) + 16) // one message: a packet, or a few small ones
	c, err := wsstream.New(ws, true)
	if err != nil {
		b.log.Error().Err(err).Str("remote", r.RemoteAddr).Msg("websocket closed")
		ws.Close()
		return
	}
	b.guard(id, c)
}

// WSHandler serves MQTT over WebSocket (subprotocol "mqtt") on another
// HTTP server, at whatever path it is mounted: the web view mounts it on
// its own origin, so its page needs no cross-origin WebSocket. Its
// connections are the WebSocket listener's in every way: the origin check
// (AllowedOrigins), the CONNECT deadline and size cap, write deadlines,
// panic recovery, and Close ends them; they count as listener "http".
// Without a password file and without AllowAnonymous it refuses (403)
// requests from other hosts than loopback, as the listeners bind to
// loopback then. Mount it only once Start has returned.
func (b *Broker) WSHandler() http.Handler {
	up := b.upgrader()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if b.anonymousLocal() && !isLoopbackName(hostOnly(r.RemoteAddr)) {
			http.Error(w, "mote: anonymous access from loopback only", http.StatusForbidden)
			return
		}
		b.serveWS("http", up, w, r)
	})
}

func (l *wsListener) Serve(listeners.EstablishFn) { // guard establishes (Server.EstablishSession)
	if err := l.srv.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		l.b.log.Error().Err(err).Str("listener", l.id).Msg("websocket listener stopped")
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

// originAllowed decides whether a browser page may act on the broker
// through request r: open a WebSocket, or use the HTTP API (cross-site
// WebSocket hijacking, cross-site requests: any page the user opens could
// otherwise read and write every row). A request without Origin is not
// from a page: authentication decides. Origin "null" (a sandboxed frame,
// a file: page) is refused. Otherwise the origin must be listed in
// AllowedOrigins ("*": any), compared as scheme, host and port; with none
// listed, the page must be of the broker's own origin: the same host and
// port as the request's Host (a page on another port of the same host is
// another web application), with scheme https on a TLS connection
// (http or https otherwise: a proxy in front may end TLS) — and when
// clients are anonymous, that host must be a loopback name, so a
// DNS-rebound name cannot pass for it.
func (b *Broker) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	scheme, hostport, ok := parseOrigin(origin)
	if !ok {
		return false
	}
	for _, o := range b.opts.AllowedOrigins {
		if o == "*" {
			return true
		}
		if s, hp, ok := parseOrigin(strings.TrimSuffix(o, "/")); ok && s == scheme && hp == hostport {
			return true
		}
	}
	if len(b.opts.AllowedOrigins) > 0 {
		return false
	}
	own := "http"
	if r.TLS != nil {
		own = "https"
		if scheme != "https" {
			return false
		}
	}
	if hostport != withoutDefaultPort(own, strings.ToLower(r.Host)) {
		return false
	}
	if a := b.access.load(); a.users == nil || a.anonymous {
		return isLoopbackName(hostOnly(r.Host))
	}
	return true
}

// parseOrigin reads a web origin "scheme://host[:port]" (RFC 6454): its
// scheme (http or https) and its host[:port] in lower case, without the
// scheme's default port. "null" and anything else is not ok.
func parseOrigin(origin string) (scheme, hostport string, ok bool) {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", "", false
	}
	scheme = strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", "", false
	}
	return scheme, withoutDefaultPort(scheme, strings.ToLower(u.Host)), true
}

// withoutDefaultPort is hostport without the default port of scheme.
func withoutDefaultPort(scheme, hostport string) string {
	if scheme == "https" {
		return strings.TrimSuffix(hostport, ":443")
	}
	return strings.TrimSuffix(hostport, ":80")
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

func isLoopbackName(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
