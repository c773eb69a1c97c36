package broker

import (
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
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
	b := start(t, Options{})
	l := &tcpListener{id: "t", b: b, ln: &flakyListener{errs: []error{emfile, emfile, emfile}, conn: server}}
	done := make(chan struct{})
	go func() {
		l.Serve(nil) // the listener's guard establishes the session itself
		close(done)
	}()
	// The connection accepted after EMFILE is served: CONNECT, CONNACK.
	client.SetDeadline(time.Now().Add(testTimeout))
	if _, err := client.Write(connectPacket(4, "after-emfile")); err != nil {
		t.Fatalf("the connection after EMFILE was never served: %v", err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(client, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("no CONNACK on the connection after EMFILE (% x): %v", ack, err)
	}
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("Serve did not return once the listener closed")
	}
}
