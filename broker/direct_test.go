//go:build linux

package broker

import (
	"bytes"
	"encoding/binary"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// A lone subscriber's QoS 0 messages are written by the publisher's
// goroutine (no hand-off to the writer) when its writer is idle, and
// arrive whole and in order.
func TestDirectWrite(t *testing.T) {
	b := start(t, Options{})
	sub := dial3(t, b, "sub", true)
	sub.sub(t, "d/t", 0)
	ctx := testCtx(t)
	const n = 200
	for i := range n {
		waitIdle(t, b, "sub")
		before := b.stats.Direct.Load()
		if err := b.Publish(ctx, Principal{ClientID: "pub"}, Message{Topic: "d/t", Payload: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
		if b.stats.Direct.Load() != before+1 {
			t.Fatalf("message %d was not written directly to an idle writer", i)
		}
	}
	got := sub.wait(t, n)
	for i, m := range got {
		if m.payload != strconv.Itoa(i) {
			t.Fatalf("message %d is %q", i, m.payload)
		}
	}
}

// waitIdle waits until the connection of client id has an idle writer
// and an empty queue: the next QoS 0 message to it is written directly.
func waitIdle(t *testing.T, b *Broker, id string) {
	t.Helper()
	ctx := testCtx(t)
	for {
		if c := b.connByID(id); c != nil {
			c.q.mu.Lock()
			idle := c.q.role == roleNone && c.q.held == 0 && c.q.head == len(c.q.items)
			c.q.mu.Unlock()
			if idle {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the writer of %s is not idle", id)
		case <-time.After(time.Millisecond):
		}
	}
}

// QoS 0 messages written directly and QoS 1 messages through the writer,
// from one publisher, reach a subscriber in the order published
// [MQTT-4.6.0-5]: a direct write waits for nothing queued before it.
func TestDirectWriteOrderWithQueued(t *testing.T) {
	b := start(t, Options{})
	sub := dial3(t, b, "sub", true)
	sub.sub(t, "d/t", 1)
	pub := dial3(t, b, "pub", true)
	const n = 2000
	var last interface{ WaitTimeout(time.Duration) bool }
	for i := range n {
		last = pub.Publish("d/t", byte(i%3%2), false, strconv.Itoa(i)) // QoS 0, 1, 0, 0, 1, 0, …
	}
	if !last.WaitTimeout(testTimeout) {
		t.Fatal("publishes not sent")
	}
	got := sub.wait(t, n)
	for i, m := range got {
		if m.payload != strconv.Itoa(i) {
			t.Fatalf("message %d is %q (QoS %d)", i, m.payload, m.qos)
		}
	}
	t.Logf("%d of %d written directly", b.stats.Direct.Load(), n)
}

// A subscriber that stops reading: the direct write that the socket does
// not take whole leaves the rest to the writer, the publisher does not
// wait on the socket, and once the subscriber reads again every message
// arrives, whole and in order.
func TestDirectWriteRest(t *testing.T) {
	b := start(t, Options{QueueBytes: 64 << 20, WriteTimeout: 10 * time.Minute})
	nc := dialSmallRcvBuf(t, b)
	sub := benchConn(t, nc, "slow")
	sub.subscribe(t, "d/t")
	ctx := testCtx(t)
	payload := bytes.Repeat([]byte("x"), 8<<10)
	sent := 0
	// Publish (on this goroutine: the door delivers on the caller's)
	// until a direct write was cut short, within the queue's bound. A
	// direct write that waited for the socket would hang here until the
	// test's deadline.
	for b.stats.DirectRest.Load() == 0 {
		waitIdle(t, b, "slow") // so the message is written directly
		if sent == 4000 {
			t.Fatalf("no direct write was cut short after %d messages (%d direct)", sent, b.stats.Direct.Load())
		}
		binary.BigEndian.PutUint32(payload, uint32(sent))
		if err := b.Publish(ctx, Principal{ClientID: "pub"}, Message{Topic: "d/t", Payload: bytes.Clone(payload)}); err != nil {
			t.Fatal(err)
		}
		sent++
	}
	// Some more, which queue behind the rest.
	for range 20 {
		binary.BigEndian.PutUint32(payload, uint32(sent))
		if err := b.Publish(ctx, Principal{ClientID: "pub"}, Message{Topic: "d/t", Payload: bytes.Clone(payload)}); err != nil {
			t.Fatal(err)
		}
		sent++
	}
	nc.SetDeadline(time.Now().Add(testTimeout)) //nolint:errcheck // fails the reads if it fails
	for i := range sent {
		if typ := sub.read(t); typ != packets.Publish {
			t.Fatalf("message %d: packet type %d", i, typ)
		}
		body := sub.buf[2+len("d/t"):]
		if len(body) != len(payload) || int(binary.BigEndian.Uint32(body)) != i {
			t.Fatalf("message %d: %d bytes, number %d", i, len(body), binary.BigEndian.Uint32(body))
		}
	}
	if b.stats.Dropped.Load() != 0 {
		t.Errorf("%d messages dropped", b.stats.Dropped.Load())
	}
}

// The broker's side of a TCP connection has Nagle's algorithm off: a
// message written alone goes out at once.
func TestNoDelay(t *testing.T) {
	b := start(t, Options{})
	dial3(t, b, "c", true)
	b.rawMu.Lock()
	var conns []*netConn
	for nc := range b.raw {
		conns = append(conns, nc)
	}
	b.rawMu.Unlock()
	if len(conns) != 1 {
		t.Fatalf("%d connections", len(conns))
	}
	rc, err := conns[0].Conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil || v == 0 {
		t.Errorf("TCP_NODELAY = %d (%v), want on", v, serr)
	}
	if conns[0].raw == nil {
		t.Errorf("a plain TCP connection has no non-blocking writer")
	}
}

// dialSmallRcvBuf dials b's TCP listener with a 4 KiB receive buffer, so
// a client that does not read soon makes the broker's writes short.
func dialSmallRcvBuf(t testing.TB, b *Broker) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: testTimeout, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) }) //nolint:errcheck // serr
		return serr
	}}
	nc, err := d.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

// benchConn is a benchClient on a connection already dialled.
func benchConn(t testing.TB, c net.Conn, id string) *benchClient {
	t.Helper()
	return newBenchClient(t, c, id, testTimeout)
}
