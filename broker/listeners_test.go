package broker

import (
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// flakyListener fails its first Accepts with errs, then hands out one end
// of a pipe, then reports itself closed.
type flakyListener struct {
	mu   sync.Mutex
	errs []error
	conn net.Conn
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		return nil, err
	}
	if c := l.conn; c != nil {
		l.conn = nil
		return c, nil
	}
	return nil, net.ErrClosed
}
func (l *flakyListener) Close() error   { return nil }
func (l *flakyListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// TestAcceptRetries: running out of file descriptors is passing; the
// listener accepts again instead of going deaf for the rest of its life.
func TestAcceptRetries(t *testing.T) {
	server, client := net.Pipe()
	defer client.Close()
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	b := &Broker{opts: Options{ConnectTimeout: time.Second, MaxConnectSize: 1024, WriteTimeout: time.Second}, log: zerolog.Nop(), raw: map[*netConn]struct{}{}}
	l := &tcpListener{id: "t", b: b, ln: &flakyListener{errs: []error{emfile, emfile, emfile}, conn: server}}
	got := make(chan net.Conn, 1)
	done := make(chan struct{})
	go func() {
		l.Serve(func(_ string, c net.Conn) error { got <- c; return nil })
		close(done)
	}()
	select {
	case <-got:
	case <-time.After(testTimeout):
		t.Fatal("the connection after EMFILE was never served")
	}
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("Serve did not return once the listener closed")
	}
}
