package httpapi

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
)

// rawRequest sends text on a new connection and returns the response.
func rawRequest(t *testing.T, e *env, text string) *http.Response {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(testTimeout))
	if _, err := io.WriteString(conn, text); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestMalformedEscape: net/http refuses a path with a malformed escape
// before the API sees it.
func TestMalformedEscape(t *testing.T) {
	e := setup(t, broker.Options{}, Options{})
	if resp := rawRequest(t, e, "GET /api/tree/a/%zz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); resp.StatusCode != 400 {
		t.Errorf("%s", resp.Status)
	}
}

// TestHugeBody: a 100 MB body is refused by its Content-Length before a
// byte of it is read, and one without a length once MaxBody is read; the
// server's memory does not grow by it.
func TestHugeBody(t *testing.T) {
	const huge = 100 << 20
	e := setup(t, broker.Options{}, Options{MaxBody: 1 << 20})
	// Content-Length: answered 413 though the body is never sent.
	resp := rawRequest(t, e, fmt.Sprintf("PUT /api/tree/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n", huge))
	if resp.StatusCode != 413 {
		t.Fatalf("%s", resp.Status)
	}
	// Chunked: 100 MB sent as fast as the server takes it.
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	req, _ := http.NewRequestWithContext(testCtx(t), "PUT", e.url+"/api/tree/x", io.LimitReader(zeros{}, huge))
	req.ContentLength = -1
	sent := &countingReader{r: req.Body}
	req.Body = sent
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 413 {
			t.Errorf("chunked: %s", resp.Status)
		}
	} // else the server closed the connection while the client wrote: refused too
	runtime.ReadMemStats(&after)
	grew := int64(after.TotalAlloc - before.TotalAlloc)
	t.Logf("chunked: the client sent %d MiB; %.1f MiB allocated meanwhile (server and client)", sent.n.Load()>>20, float64(grew)/(1<<20))
	if grew > 16<<20 {
		t.Errorf("%d MiB allocated for a refused body", grew>>20)
	}
	if sent.n.Load() >= huge {
		t.Errorf("the whole body was taken")
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// countingReader counts what is read of r. The transport may still be
// writing the body when the server's early answer has arrived: n is
// atomic.
type countingReader struct {
	r io.ReadCloser
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

// TestSlowHeaders: a client that sends its headers slowly is cut by
// ReadHeaderTimeout.
func TestSlowHeaders(t *testing.T) {
	e := setup(t, broker.Options{}, Options{ReadHeaderTimeout: 200 * time.Millisecond})
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	start := time.Now()
	io.WriteString(conn, "GET /api/tree/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
	for {
		if _, err := io.WriteString(conn, "X-Slow: 1\r\n"); err != nil {
			break // closed
		}
		buf := make([]byte, 512)
		conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := conn.Read(buf); err != nil && !isTimeout(err) {
			break // closed (EOF or reset)
		}
		if time.Since(start) > testTimeout {
			t.Fatal("a slow header is still being read")
		}
	}
	t.Logf("cut after %v", time.Since(start).Round(time.Millisecond))
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestSlowBody: a body that trickles is cut by ReadTimeout.
func TestSlowBody(t *testing.T) {
	e := setup(t, broker.Options{}, Options{ReadTimeout: 300 * time.Millisecond})
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	io.WriteString(conn, "PUT /api/tree/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
	r := bufio.NewReader(conn)
	done := make(chan *http.Response, 1)
	go func() {
		resp, _ := http.ReadResponse(r, nil)
		done <- resp
	}()
	deadline := time.After(testTimeout)
	for {
		select {
		case resp := <-done:
			if resp != nil && resp.StatusCode != 400 {
				t.Errorf("%s", resp.Status)
			}
			return
		case <-time.After(20 * time.Millisecond):
			if _, err := io.WriteString(conn, "1"); err != nil {
				return
			}
		case <-deadline:
			t.Fatal("a trickling body is still being read")
		}
	}
}
