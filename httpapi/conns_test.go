package httpapi

import (
	"bufio"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/broker"
)

// healthOver sends GET /healthz on c and reports whether it was answered
// 200 (false: the server closed c).
func healthOver(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetDeadline(time.Now().Add(testTimeout))
	if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("no answer and not closed")
		}
		return false
	}
	return strings.HasPrefix(line, "HTTP/1.1 200")
}

// TestMaxConns: past MaxConns a new connection is closed at once, before
// its request is read, and one closed frees its place. There used to be
// no bound: each idle or half-sent connection kept some 20 KiB, so one
// client opening connections took memory without end (this test's fourth
// connection was served before the fix).
func TestMaxConns(t *testing.T) {
	e := setup(t, broker.Options{}, Options{MaxConns: 3})
	addr := strings.TrimPrefix(e.url, "http://")
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", addr, testTimeout)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var open []net.Conn
	for i := range 3 {
		c := dial()
		if !healthOver(t, c) {
			t.Fatalf("connection %d refused", i+1)
		}
		open = append(open, c) // kept alive, idle
	}
	if healthOver(t, dial()) {
		t.Fatal("a fourth connection was served past MaxConns 3")
	}
	open[0].Close()
	eventually(t, "a place for a new connection", func() bool { return healthOver(t, dial()) })
}

// fakeConn is a connection from remote that records being closed.
type fakeConn struct {
	net.Conn
	remote net.Addr
	closed bool
}

func (c *fakeConn) RemoteAddr() net.Addr { return c.remote }
func (c *fakeConn) Close() error         { c.closed = true; return nil }

// fakeListener hands out conns, then fails.
type fakeListener struct {
	net.Listener
	conns chan net.Conn
}

func (l *fakeListener) Accept() (net.Conn, error) {
	if c, ok := <-l.conns; ok {
		return c, nil
	}
	return nil, net.ErrClosed
}

// TestConnsPerHost: one host (an IPv6 /64 as one) has at most
// MaxConnsPerHost connections; others still connect; loopback peers count
// only against MaxConns; closing a connection twice frees one place.
func TestConnsPerHost(t *testing.T) {
	tcp := func(s string) net.Addr {
		a, err := net.ResolveTCPAddr("tcp", s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	remotes := []struct {
		addr string
		want bool // accepted
	}{
		{"192.0.2.1:1", true},
		{"192.0.2.1:2", true},
		{"192.0.2.1:3", false}, // its host's third
		{"[2001:db8::1]:1", true},
		{"[2001:db8::2]:1", true},
		{"[2001:db8::3]:1", false}, // the same /64
		{"[2001:db8:0:1::1]:1", true},
		{"127.0.0.1:1", true},
		{"127.0.0.1:2", true},
		{"127.0.0.1:3", true},  // loopback: no cap per host
		{"192.0.2.9:1", false}, // MaxConns 8
	}
	fl := &fakeListener{conns: make(chan net.Conn, len(remotes))}
	var fakes []*fakeConn
	for _, r := range remotes {
		c := &fakeConn{remote: tcp(r.addr)}
		fakes = append(fakes, c)
		fl.conns <- c
	}
	close(fl.conns)
	l := newConnLimit(fl, 8, 2, zerolog.Nop())
	var accepted []net.Conn
	for {
		c, err := l.Accept()
		if err != nil {
			break
		}
		accepted = append(accepted, c)
	}
	for i, r := range remotes {
		if fakes[i].closed == r.want {
			t.Errorf("%s: accepted %v, want %v", r.addr, !fakes[i].closed, r.want)
		}
	}
	if l.open() != 8 {
		t.Errorf("%d open, want 8", l.open())
	}
	accepted[0].Close()
	accepted[0].Close()
	if l.open() != 7 || l.admit("192.0.2.1", false) != "" {
		t.Errorf("after one closed (twice): %d open, or its host still full", l.open())
	}
}
