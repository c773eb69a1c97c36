package httpapi

import (
	"net"
	"sync"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/broker"
)

// connLimit is a listener that keeps the API's connections under
// Options.MaxConns in all and Options.MaxConnsPerHost per remote host
// (broker.ClientHost; loopback peers are the broker's own machine — a
// reverse proxy in front, usually — and have no cap of their own): a
// connection past either is closed as soon as it is accepted, before
// anything of it is read. Each connection net/http serves costs some 20
// KiB (its goroutine and buffers) however little its client sends, so
// without a bound a client opening connections and sending a header line
// every few seconds, or keeping them idle, takes memory without end. A
// connection counts until it is closed, also once hijacked (MQTT over
// WebSocket at /mqtt). The listeners of one Server share one count
// (connCount): HTTP and HTTPS together stay within the bounds.
type connLimit struct {
	net.Listener
	*connCount
	log zerolog.Logger
}

// connCount counts the connections open over one or more listeners.
type connCount struct {
	maxConns, maxPerHost int

	mu    sync.Mutex     // guards total, hosts
	total int            // connections open
	hosts map[string]int // connections open per host; a host is here while it has one
}

func newConnCount(maxConns, maxPerHost int) *connCount {
	return &connCount{maxConns: maxConns, maxPerHost: maxPerHost, hosts: map[string]int{}}
}

// newConnLimit limits l by a count of its own.
func newConnLimit(l net.Listener, maxConns, maxPerHost int, log zerolog.Logger) *connLimit {
	return limitBy(l, newConnCount(maxConns, maxPerHost), log)
}

// limitBy limits l by count, which other listeners may share.
func limitBy(l net.Listener, count *connCount, log zerolog.Logger) *connLimit {
	return &connLimit{Listener: l, connCount: count, log: log}
}

// Accept returns the next connection within the limits; it closes those
// past them.
func (l *connLimit) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host, local := hostOf(c.RemoteAddr())
		if why := l.admit(host, local); why != "" {
			l.log.Debug().Str("remote", c.RemoteAddr().String()).Msg("http: connection closed at once: " + why)
			c.Close() //nolint:errcheck // refused either way
			continue
		}
		return &limitedConn{Conn: c, l: l.connCount, host: host}, nil
	}
}

// admit counts a connection of host; it says why not ("": counted).
func (l *connCount) admit(host string, local bool) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.total >= l.maxConns:
		return "too many connections (MaxConns)"
	case !local && l.hosts[host] >= l.maxPerHost:
		return "too many connections from its host (MaxConnsPerHost)"
	}
	l.total++
	l.hosts[host]++
	return ""
}

// release counts a connection of host less.
func (l *connCount) release(host string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.hosts[host]--; l.hosts[host] <= 0 {
		delete(l.hosts, host)
	}
}

// open is the number of connections counted (for tests).
func (l *connCount) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// hostOf is the host a peer counts as, and whether it is loopback.
func hostOf(a net.Addr) (string, bool) {
	if t, ok := a.(*net.TCPAddr); ok && t.IP.IsLoopback() {
		return "loopback", true
	}
	return broker.ClientHost(a.String()), false
}

// limitedConn is a connection counted by l until its first Close.
type limitedConn struct {
	net.Conn
	l    *connCount
	host string
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.host) })
	return err
}
