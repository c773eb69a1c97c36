package floor

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"testing"
	"time"
)

// start serves on a loopback port for the test's duration.
func start(t *testing.T) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := Serve(ln, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(func() { s.Close() })
	return s
}

// client is a raw MQTT 3.1.1 client.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, s *Server) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	dl, ok := t.Context().Deadline()
	if !ok {
		dl = time.Now().Add(30 * time.Second)
	}
	c.SetDeadline(dl) // a hang fails the test
	return &client{t: t, c: c, r: bufio.NewReader(c)}
}

// dialMQTT is dialRaw, then CONNECT and its CONNACK.
func dialMQTT(t *testing.T, s *Server, id string) *client {
	t.Helper()
	cl := dialRaw(t, s)
	cl.send(0x10, append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 30, 0, byte(len(id))}, id...))
	cl.expect(0x20, []byte{0, 0})
	return cl
}

func (cl *client) send(h byte, body []byte) {
	cl.t.Helper()
	pk := append([]byte{h}, binary.AppendUvarint(nil, uint64(len(body)))...)
	if _, err := cl.c.Write(append(pk, body...)); err != nil {
		cl.t.Fatal(err)
	}
}

func (cl *client) read() (byte, []byte, error) {
	h, err := cl.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, err := binary.ReadUvarint(cl.r)
	if err != nil {
		return 0, nil, err
	}
	body := make([]byte, n)
	_, err = io.ReadFull(cl.r, body)
	return h, body, err
}

func (cl *client) expect(h byte, body []byte) {
	cl.t.Helper()
	gh, gb, err := cl.read()
	if err != nil {
		cl.t.Fatalf("want %#x %x: %v", h, body, err)
	}
	if gh != h || !bytes.Equal(gb, body) {
		cl.t.Fatalf("got %#x %x, want %#x %x", gh, gb, h, body)
	}
}

// expectClosed reads until the server closes the connection; nothing
// else may arrive but the packets want.
func (cl *client) expectClosed() {
	cl.t.Helper()
	if h, b, err := cl.read(); err == nil {
		cl.t.Fatalf("got %#x %x, want the connection closed", h, b)
	} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		cl.t.Fatalf("want EOF, got %v", err)
	}
}

func isReset(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && !ne.Timeout()
}

func mqttStr(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }

func publish(topic, payload string, qos byte, id uint16) (byte, []byte) {
	b := mqttStr(topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, id)
	}
	return 0x30 | qos<<1, append(b, payload...)
}

func subscribe(id uint16, filters ...string) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	for _, f := range filters {
		b = append(append(b, mqttStr(f)...), 1)
	}
	return b
}

// TestForward: what a publisher sends reaches the subscribers whose
// filters match it, at QoS 0, and no other; a marker published after
// each case shows nothing else came first.
func TestForward(t *testing.T) {
	s := start(t)
	for _, tc := range []struct {
		name, filter, topic string
		qos                 byte
		want                bool
	}{
		{"exact", "lat/t", "lat/t", 0, true},
		{"exact other", "lat/t", "lat/u", 0, false},
		{"plus", "dev/+/state", "dev/d1/state", 0, true},
		{"plus too deep", "dev/+/state", "dev/d1/x/state", 0, false},
		{"hash", "fan/#", "fan/42", 0, true},
		{"hash parent", "fan/#", "fan", 0, true},
		{"hash all", "#", "a/b/c", 0, true},
		{"hash not $", "#", "$SYS/x", 0, false},
		{"qos1 acked, delivered at 0", "fan/#", "fan/7", 1, true},
		{"long payload past the read buffer", "big", "big", 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sub := dialMQTT(t, s, "sub")
			sub.send(0x82, subscribe(1, tc.filter, "marker"))
			sub.expect(0x90, []byte{0, 1, 0, 0})
			pub := dialMQTT(t, s, "pub")
			payload := "hello"
			if tc.name == "long payload past the read buffer" {
				payload = string(bytes.Repeat([]byte("x"), 3*readSize))
			}
			pub.send(publish(tc.topic, payload, tc.qos, 9))
			if tc.qos == 1 {
				pub.expect(0x40, []byte{0, 9})
			}
			pub.send(publish("marker", "m", 0, 0))
			if tc.want {
				_, body := publish(tc.topic, payload, 0, 0)
				sub.expect(0x30, body)
			}
			_, body := publish("marker", "m", 0, 0)
			sub.expect(0x30, body)
			pub.send(0xc0, nil)
			pub.expect(0xd0, nil)
			pub.send(0xe0, nil)
			pub.expectClosed()
		})
	}
}

// TestUnsubscribe: after an UNSUBACK, nothing more arrives for the filter.
func TestUnsubscribe(t *testing.T) {
	s := start(t)
	sub := dialMQTT(t, s, "sub")
	sub.send(0x82, subscribe(1, "a/+", "marker"))
	sub.expect(0x90, []byte{0, 1, 0, 0})
	sub.send(0xa2, append([]byte{0, 2}, mqttStr("a/+")...))
	sub.expect(0xb0, []byte{0, 2})
	pub := dialMQTT(t, s, "pub")
	pub.send(publish("a/b", "x", 0, 0))
	pub.send(publish("marker", "m", 0, 0))
	_, body := publish("marker", "m", 0, 0)
	sub.expect(0x30, body)
}

// TestRefused: bad input closes the connection (a CONNACK refusal first
// for an MQTT 5 CONNECT) and hurts no other client.
func TestRefused(t *testing.T) {
	s := start(t)
	bystander := dialMQTT(t, s, "ok")
	bystander.send(0x82, subscribe(1, "#"))
	bystander.expect(0x90, []byte{0, 1, 0})
	for _, tc := range []struct {
		name    string
		connect bool   // CONNECT first
		raw     []byte // then these bytes
		want    []byte // answered before the close
	}{
		{name: "mqtt 5", raw: append([]byte{0x10, 13}, append(mqttStr("MQTT"), 5, 2, 0, 0, 0, 1, 'x')...), want: []byte{0x20, 2, 0, 1}},
		{name: "publish first", raw: []byte{0x30, 3, 0, 1, 'a'}},
		{name: "not mqtt", raw: []byte("GET / HTTP/1.1\r\n\r\n")},
		{name: "length past 4 bytes", connect: true, raw: []byte{0x30, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{name: "packet too large", connect: true, raw: []byte{0x30, 0xff, 0xff, 0xff, 0x7f}},
		{name: "wildcard topic", connect: true, raw: []byte{0x30, 3, 0, 1, '#'}},
		{name: "qos 2", connect: true, raw: []byte{0x34, 5, 0, 1, 'a', 0, 1}},
		{name: "bad filter", connect: true, raw: append([]byte{0x82, 7, 0, 1}, append(mqttStr("a#"), 0)...)},
		{name: "truncated topic", connect: true, raw: []byte{0x30, 2, 0, 9}},
		{name: "reserved type", connect: true, raw: []byte{0xf0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cl *client
			if tc.connect {
				cl = dialMQTT(t, s, "bad")
			} else {
				cl = dialRaw(t, s)
			}
			if _, err := cl.c.Write(tc.raw); err != nil {
				t.Fatal(err)
			}
			if tc.want != nil {
				h, body, err := cl.read()
				if err != nil || !bytes.Equal(append([]byte{h, byte(len(body))}, body...), tc.want) {
					t.Fatalf("got %#x %x %v, want %x", h, body, err, tc.want)
				}
			}
			cl.expectClosed()
			// The bystander still gets what is published.
			pub := dialMQTT(t, s, "pub")
			pub.send(publish("still/here", tc.name, 0, 0))
			_, body := publish("still/here", tc.name, 0, 0)
			bystander.expect(0x30, body)
		})
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"a", "a", true}, {"a", "b", false}, {"a/b", "a", false}, {"a", "a/b", false},
		{"+", "a", true}, {"+", "a/b", false}, {"+/+", "a/b", true}, {"a/+/c", "a/b/c", true},
		{"a/+", "a/", true}, {"#", "a/b", true}, {"a/#", "a", true}, {"a/#", "a/b/c", true},
		{"a/#", "ab", false}, {"#", "$x", false}, {"+/a", "$x/a", false}, {"$x/#", "$x/a", true},
	} {
		if got := match(tc.filter, []byte(tc.topic)); got != tc.want {
			t.Errorf("match(%q, %q) = %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

// FuzzSession feeds arbitrary bytes to a connection after a CONNECT: the
// session ends (no panic, no hang) once the input does.
func FuzzSession(f *testing.F) {
	f.Add([]byte{0x82, 6, 0, 1, 0, 1, '#', 0, 0x30, 3, 0, 1, 'a', 0xc0, 0})
	f.Add([]byte{0x32, 5, 0, 1, 'a', 0, 1, 0xa2, 5, 0, 2, 0, 1, '#'})
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0x7f})
	f.Fuzz(func(t *testing.T, in []byte) {
		s := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil)), exact: map[string][]*conn{}, conns: map[*conn]struct{}{}}
		a, b := net.Pipe()
		go io.Copy(io.Discard, b) //nolint:errcheck // drains the answers until closed
		c := &conn{nc: a, r: bufio.NewReaderSize(a, readSize)}
		connect := append([]byte{0x10, 12}, append(mqttStr("MQTT"), 4, 2, 0, 0, 0, 0)...)
		go func() {
			b.Write(append(connect, in...)) //nolint:errcheck // the session may end first
			b.Close()
		}()
		done := make(chan struct{})
		s.wg.Add(1)
		go func() { s.serve(c); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("session did not end with its input")
		}
	})
}

// TestHold: a held connection gets its CONNACK and then nothing is read
// from it (its goroutine ended), and Close closes it.
func TestHold(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := Hold(ln, slog.New(slog.NewTextHandler(io.Discard, nil)))
	const n = 20
	var cls []*client
	for i := range n {
		cls = append(cls, dialMQTT(t, s, fmt.Sprint("held-", i)))
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		s.mu.Lock()
		held, conns := s.held, len(s.conns)
		s.mu.Unlock()
		if held == n && conns == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d held, %d connections, want %d each", held, conns, n)
		}
	}
	// A DISCONNECT is not read: the connection stays, and Close closes
	// it with the DISCONNECT unread, which resets it (a server that read
	// it would have closed it cleanly: EOF).
	cls[0].send(0xe0, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := cls[0].r.ReadByte(); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("client 0 (DISCONNECT sent) after Close: %v, want a reset", err)
	}
	for i, cl := range cls[1:] {
		if _, err := cl.r.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("client %d after Close: %v, want EOF", i+1, err)
		}
	}
}
