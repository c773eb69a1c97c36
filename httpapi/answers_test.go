package httpapi

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/broker"
)

// smallBuffers is a listener whose connections have small kernel send
// buffers, so a large answer to a client that does not read stays with
// the server.
type smallBuffers struct{ net.Listener }

func (l smallBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(4096)
	}
	return c, err
}

// TestAnswerBudget: tree answers held for slow readers are bounded in
// all: while one client does not read a large answer, another large one
// that would pass MaxAnswerBytes is refused with 503 and Retry-After (a
// small one still goes), and once the slow client is gone it is answered.
// There used to be no bound: a GET of a few bytes held a whole tree until
// its client read it, on as many connections as a client opened (this
// test's second answer was 200 before the fix).
func TestAnswerBudget(t *testing.T) {
	e := setup(t, broker.Options{}, Options{MaxAnswerBytes: 1 << 20})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go e.s.Serve(smallBuffers{l}) //nolint:errcheck // ends with the server's Close
	val := strconv.Quote(strings.Repeat("x", 60_000))
	for i := range 12 { // about 720 kB
		e.publish(t, admin, fmt.Sprintf("big/%d", i), val)
	}
	e.publish(t, admin, "small/a", "1")

	slow, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	slow.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(slow, "GET /api/tree/big/%%23 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	eventually(t, "the slow answer held", func() bool { return e.s.answers.load() > 0 })

	resp, body := e.do(t, "GET", "/api/tree/big/%23", nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "large answers") {
		t.Fatalf("a second large answer while one is held: %s %.100s", resp.Status, body)
	}
	if resp, body := e.do(t, "GET", "/api/tree/small/%23", nil); resp.StatusCode != 200 {
		t.Fatalf("a small answer: %s %s", resp.Status, body)
	}
	slow.Close()
	eventually(t, "the slow answer given back", func() bool { return e.s.answers.load() == 0 })
	if resp, _ := e.do(t, "GET", "/api/tree/big/%23", nil); resp.StatusCode != 200 {
		t.Fatalf("after the slow client left: %s", resp.Status)
	}
}
