// Package floor is the least MQTT 3.1.1 broker one can write in Go with
// the standard library: `mote floor`, the go-floor broker of `mote bench`.
// It is a measuring instrument, not a broker to run: what a
// goroutine-per-connection Go broker cannot go below on a machine
// (the netpoller's hand-off, a goroutine's stack, the runtime's wake-ups),
// measured side by side with Mote, bare mochi-mqtt and Mosquitto.
//
// One goroutine per connection reads packets through a small buffer
// (readSize bytes) and answers them itself: CONNECT → CONNACK, SUBSCRIBE
// → SUBACK, UNSUBSCRIBE → UNSUBACK, PINGREQ → PINGRESP, DISCONNECT. A
// PUBLISH (QoS 0, or QoS 1, acknowledged with a PUBACK) is forwarded to
// every matching subscriber at QoS 0 as one Write under that subscriber's
// lock, by the publisher's goroutine: no queue, no writer goroutine, no
// allocation for a packet that fits the read buffer.
//
// What it leaves out, on purpose: retained messages, sessions (every
// connection starts clean, nothing survives it), QoS 1 and 2 delivery
// (a subscription is granted QoS 0, a QoS 2 publish closes the
// connection), wills, keep-alive enforcement, authentication, MQTT 5,
// topic aliases, $SYS; a client whose filters overlap gets a message once
// per matching filter. A subscriber that stops reading holds its
// publishers until its write deadline (writeWait) closes it.
//
// Bad input closes the connection with a log line: a malformed packet, a
// packet larger than maxPacket, a first packet other than CONNECT, a
// protocol level other than 4 (refused with CONNACK 0x01 first), a topic
// with wildcards, an invalid filter.
//
// Held (Hold, `mote floor --hold`, the go-hold broker of `mote bench`):
// a connection's goroutine answers the CONNECT, drops its read buffer and
// ends, and the server keeps the net.Conn until Close, reading nothing
// more from it. That is not a broker: it is what any Go broker that keeps
// its connections as net.Conn pays for an idle one at the least (the
// net package's objects for the socket, the collector's headroom over
// them), without the goroutine or the epoll entry a broker needs to
// learn of the connection's next packet. `mote bench` runs it only in
// curve-idle. A held connection's DISCONNECT or close goes unnoticed
// until Close.
//
// State and owners: a Server owns its listener, its connections' set and
// the subscription table (subs, under Server.mu); each connection's
// goroutine owns its reader and scratch buffers; a connection's socket
// writes are owned by whoever holds its wmu. Serve's caller owns the
// Server: Close stops the accept loop and every connection goroutine and
// waits for them.
package floor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

const (
	// readSize is each connection's read buffer: packets up to this size
	// are parsed in place.
	readSize = 512
	// maxPacket bounds a packet's remaining length; a larger one closes
	// the connection.
	maxPacket = 1 << 20
	// maxFilters bounds the filters of one SUBSCRIBE.
	maxFilters = 64
	// connectWait bounds the wait for a connection's CONNECT.
	connectWait = 10 * time.Second
	// writeWait bounds one write to a subscriber.
	writeWait = 10 * time.Second
)

// Server is a running floor broker.
type Server struct {
	ln  net.Listener
	log *slog.Logger

	mu    sync.RWMutex
	exact map[string][]*conn // topic → subscribers of exactly it
	wild  []wildSub          // filters with '+' or '#'
	conns map[*conn]struct{}
	done  bool
	hold  bool // Hold: connections are held after their CONNACK
	held  int  // connections held (Hold)

	wg sync.WaitGroup
}

// wildSub is one wildcard subscription.
type wildSub struct {
	filter string
	c      *conn
}

// conn is one client connection.
type conn struct {
	nc  net.Conn
	r   *bufio.Reader
	out []byte  // the publisher-side scratch for forwarded PUBLISHes
	to  []*conn // the publisher-side scratch for their subscribers

	wmu sync.Mutex // held for every write to nc
	// filters are the connection's subscriptions (owned by its goroutine;
	// the table under Server.mu mirrors them).
	filters []string
}

// Serve accepts MQTT connections on ln until Close; log gets one line per
// refused or broken connection.
func Serve(ln net.Listener, log *slog.Logger) *Server {
	s := &Server{ln: ln, log: log, exact: map[string][]*conn{}, conns: map[*conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s
}

// Hold accepts MQTT connections on ln until Close, answers each one's
// CONNECT and then holds it, reading nothing more (the package doc's
// "Held").
func Hold(ln net.Listener, log *slog.Logger) *Server {
	s := &Server{ln: ln, log: log, exact: map[string][]*conn{}, conns: map[*conn]struct{}{}, hold: true}
	s.wg.Add(1)
	go s.accept()
	return s
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops accepting, closes every connection and waits for their
// goroutines.
func (s *Server) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	s.done = true
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil { // out of files, a connection reset before accept: try again
			s.log.Warn("floor: accept", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		c := &conn{nc: nc, r: bufio.NewReaderSize(nc, readSize)}
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(c)
	}
}

// serve is a connection's goroutine: it reads and answers packets until
// the connection ends.
func (s *Server) serve(c *conn) {
	defer s.wg.Done()
	err := s.session(c)
	if errors.Is(err, errHeld) {
		return // in s.conns until Close closes it
	}
	s.mu.Lock()
	delete(s.conns, c)
	s.unsubscribe(c, c.filters)
	s.mu.Unlock()
	c.nc.Close()
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		s.log.Warn("floor: connection closed", "remote", c.nc.RemoteAddr().String(), "err", err)
	}
}

// errDisconnect ends a session that the client ended with DISCONNECT.
var errDisconnect = errors.New("disconnect")

// errHeld ends a held connection's goroutine (Hold): the server keeps the
// connection.
var errHeld = errors.New("held")

func (s *Server) session(c *conn) error {
	c.nc.SetReadDeadline(time.Now().Add(connectWait)) //nolint:errcheck // a read fails instead
	if first, err := c.r.Peek(1); err != nil {
		return fmt.Errorf("reading CONNECT: %w", err)
	} else if first[0] != 0x10 {
		return fmt.Errorf("first packet is %#x, not CONNECT", first[0])
	}
	_, body, err := c.next()
	if err != nil {
		return fmt.Errorf("reading CONNECT: %w", err)
	}
	if err := s.connect(c, body); err != nil {
		return err
	}
	c.nc.SetReadDeadline(time.Time{}) //nolint:errcheck // idle from now on (no keep-alive enforcement)
	if s.hold {
		c.r = nil // the connection keeps no buffer
		s.mu.Lock()
		s.held++
		s.mu.Unlock()
		return errHeld
	}
	for {
		typ, body, err := c.next()
		if err != nil {
			return err
		}
		switch err := s.packet(c, typ, body); {
		case errors.Is(err, errDisconnect):
			return nil
		case err != nil:
			return err
		}
	}
}

// next reads one packet: its first byte and its body, which is valid
// until the next call.
func (c *conn) next() (byte, []byte, error) {
	typ, err := c.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, shift := 0, 0
	for i := 0; ; i++ {
		b, err := c.r.ReadByte()
		if err != nil {
			return 0, nil, fmt.Errorf("remaining length: %w", err)
		}
		n |= int(b&0x7f) << shift
		if b&0x80 == 0 {
			break
		}
		if shift += 7; i == 3 {
			return 0, nil, errors.New("remaining length longer than 4 bytes")
		}
	}
	if n > maxPacket {
		return 0, nil, fmt.Errorf("packet of %d bytes, more than %d", n, maxPacket)
	}
	if n <= readSize {
		body, err := c.r.Peek(n)
		if err != nil {
			return 0, nil, fmt.Errorf("packet body: %w", err)
		}
		c.r.Discard(n) //nolint:errcheck // peeked
		return typ, body, nil
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return 0, nil, fmt.Errorf("packet body: %w", err)
	}
	return typ, body, nil
}

// str reads an MQTT string at the start of b.
func str(b []byte) (string, []byte, error) {
	if len(b) < 2 {
		return "", nil, errors.New("truncated string length")
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return "", nil, errors.New("truncated string")
	}
	return string(b[2 : 2+n]), b[2+n:], nil
}

// connect answers a CONNECT.
func (s *Server) connect(c *conn, b []byte) error {
	name, b, err := str(b)
	if err != nil {
		return fmt.Errorf("CONNECT: %w", err)
	}
	if name != "MQTT" || len(b) < 4 {
		return fmt.Errorf("CONNECT: protocol %q", name)
	}
	if b[0] != 4 {
		c.write([]byte{0x20, 2, 0, 1}) // unacceptable protocol version
		return fmt.Errorf("CONNECT: protocol level %d, only 4 (MQTT 3.1.1) is served", b[0])
	}
	if b[1]&0x01 != 0 {
		return errors.New("CONNECT: reserved flag set")
	}
	return c.write([]byte{0x20, 2, 0, 0})
}

// packet answers one packet after CONNECT.
func (s *Server) packet(c *conn, typ byte, b []byte) error {
	switch typ >> 4 {
	case 3:
		return s.publish(c, typ, b)
	case 4: // PUBACK of a subscriber: nothing is delivered at QoS 1
		return nil
	case 8:
		if typ&0x0f != 2 {
			return errors.New("SUBSCRIBE: flags not 0010")
		}
		return s.subscribe(c, b)
	case 10:
		if typ&0x0f != 2 {
			return errors.New("UNSUBSCRIBE: flags not 0010")
		}
		return s.unsubscribePacket(c, b)
	case 12:
		return c.write([]byte{0xd0, 0})
	case 14:
		return errDisconnect
	}
	return fmt.Errorf("packet type %d not served", typ>>4)
}

// publish forwards a PUBLISH to its subscribers at QoS 0 and acknowledges
// it at QoS 1. The subscribers are copied out of the table first, so no
// write is made under Server.mu.
func (s *Server) publish(c *conn, typ byte, b []byte) error {
	qos := typ >> 1 & 3
	if qos > 1 {
		return fmt.Errorf("PUBLISH at QoS %d: not served", qos)
	}
	if len(b) < 2 || len(b) < 2+int(binary.BigEndian.Uint16(b)) {
		return errors.New("PUBLISH: truncated topic")
	}
	tn := int(binary.BigEndian.Uint16(b))
	topic, rest := b[2:2+tn], b[2+tn:]
	if len(topic) == 0 || bytes.ContainsAny(topic, "+#\x00") {
		return fmt.Errorf("PUBLISH: topic %q", topic)
	}
	var id []byte
	if qos == 1 {
		if len(rest) < 2 {
			return errors.New("PUBLISH: no packet identifier")
		}
		id, rest = rest[:2], rest[2:]
	}
	// The outgoing packet: QoS 0, no retain, no DUP.
	out := append(c.out[:0], 0x30)
	out = binary.AppendUvarint(out, uint64(2+len(topic)+len(rest))) // MQTT's remaining length is this varint
	out = append(out, b[:2+tn]...)
	out = append(out, rest...)
	c.out = out
	to := c.to[:0]
	s.mu.RLock()
	to = append(to, s.exact[string(topic)]...) // no allocation: a map index by converted bytes
	for _, w := range s.wild {
		if match(w.filter, topic) {
			to = append(to, w.c)
		}
	}
	s.mu.RUnlock()
	for _, sub := range to {
		sub.write(out) //nolint:errcheck // a failed subscriber is closed; its goroutine ends it
	}
	clear(to)
	c.to = to
	if qos == 1 {
		return c.write([]byte{0x40, 2, id[0], id[1]})
	}
	return nil
}

// write writes p whole under the connection's lock, within writeWait; a
// failed write closes the connection.
func (c *conn) write(p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(writeWait)) //nolint:errcheck // the write fails instead
	if _, err := c.nc.Write(p); err != nil {
		c.nc.Close()
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// subscribe answers a SUBSCRIBE: every valid filter granted at QoS 0.
func (s *Server) subscribe(c *conn, b []byte) error {
	if len(b) < 2 {
		return errors.New("SUBSCRIBE: no packet identifier")
	}
	ack := []byte{0x90, 0, b[0], b[1]}
	var filters []string
	for b = b[2:]; len(b) > 0; {
		f, rest, err := str(b)
		if err != nil {
			return fmt.Errorf("SUBSCRIBE: %w", err)
		}
		if len(rest) < 1 || rest[0] > 2 {
			return errors.New("SUBSCRIBE: bad requested QoS")
		}
		if err := validFilter(f); err != nil {
			return fmt.Errorf("SUBSCRIBE: %w", err)
		}
		if filters = append(filters, f); len(filters) > maxFilters {
			return fmt.Errorf("SUBSCRIBE: more than %d filters", maxFilters)
		}
		ack = append(ack, 0)
		b = rest[1:]
	}
	if len(filters) == 0 {
		return errors.New("SUBSCRIBE: no filter")
	}
	ack[1] = byte(len(ack) - 2)
	s.mu.Lock()
	s.unsubscribe(c, filters) // a filter subscribed again replaces the old
	for _, f := range filters {
		if strings.ContainsAny(f, "+#") {
			s.wild = append(s.wild, wildSub{f, c})
		} else {
			s.exact[f] = append(s.exact[f], c)
		}
		c.filters = append(c.filters, f)
	}
	s.mu.Unlock()
	return c.write(ack)
}

// unsubscribePacket answers an UNSUBSCRIBE.
func (s *Server) unsubscribePacket(c *conn, b []byte) error {
	if len(b) < 2 {
		return errors.New("UNSUBSCRIBE: no packet identifier")
	}
	ack := []byte{0xb0, 2, b[0], b[1]}
	var filters []string
	for b = b[2:]; len(b) > 0; {
		f, rest, err := str(b)
		if err != nil {
			return fmt.Errorf("UNSUBSCRIBE: %w", err)
		}
		filters = append(filters, f)
		b = rest
	}
	s.mu.Lock()
	s.unsubscribe(c, filters)
	s.mu.Unlock()
	return c.write(ack)
}

// unsubscribe removes c's subscriptions to filters; s.mu is held.
func (s *Server) unsubscribe(c *conn, filters []string) {
	for _, f := range filters {
		i := indexOf(c.filters, f)
		if i < 0 {
			continue
		}
		c.filters = append(c.filters[:i], c.filters[i+1:]...)
		if strings.ContainsAny(f, "+#") {
			for j, w := range s.wild {
				if w.c == c && w.filter == f {
					s.wild = append(s.wild[:j], s.wild[j+1:]...)
					break
				}
			}
			continue
		}
		subs := s.exact[f]
		for j, sub := range subs {
			if sub == c {
				subs = append(subs[:j], subs[j+1:]...)
				break
			}
		}
		if len(subs) == 0 {
			delete(s.exact, f)
		} else {
			s.exact[f] = subs
		}
	}
}

func indexOf(xs []string, x string) int {
	for i, y := range xs {
		if y == x {
			return i
		}
	}
	return -1
}

// validFilter checks an MQTT 3.1.1 topic filter: '+' a whole level, '#'
// the whole last level.
func validFilter(f string) error {
	if f == "" || strings.ContainsRune(f, 0) {
		return fmt.Errorf("filter %q", f)
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.ContainsAny(l, "+#") && len(l) > 1 || l == "#" && i != len(levels)-1 {
			return fmt.Errorf("filter %q: a wildcard not a whole level, or '#' not last", f)
		}
	}
	return nil
}

// match reports whether topic matches the (valid) filter; a topic
// starting with '$' matches no filter starting with a wildcard.
func match(filter string, topic []byte) bool {
	if topic[0] == '$' && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return true
		}
		tl, trest, tmore := bytes.Cut(topic, []byte("/"))
		if fl != "+" && fl != string(tl) {
			return false
		}
		if !fmore || !tmore {
			// "a/#" matches "a" too.
			return fmore == tmore || fmore && frest == "#"
		}
		filter, topic = frest, trest
	}
}

// ListenAndServe serves addr until ctx ends.
func ListenAndServe(ctx context.Context, addr string, log *slog.Logger) error {
	return listenAnd(ctx, addr, log, Serve)
}

// ListenAndHold is ListenAndServe with Hold.
func ListenAndHold(ctx context.Context, addr string, log *slog.Logger) error {
	return listenAnd(ctx, addr, log, Hold)
}

func listenAnd(ctx context.Context, addr string, log *slog.Logger, serve func(net.Listener, *slog.Logger) *Server) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("floor: listen: %w", err)
	}
	s := serve(ln, log)
	<-ctx.Done()
	return s.Close()
}
