//go:build linux

package broker

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// A non-blocking write the socket takes only part of leaves the rest to
// the connection, and whatever is written next (mochi's ack, with the
// client's lock, between the direct write and the writer's flush) comes
// after it: no packet is cut by another (red team: the rest was the
// caller's, and an ack written in between landed inside a PUBLISH).
func TestDirectRestFirst(t *testing.T) {
	cli, srv := tcpPair(t)
	srv.(*net.TCPConn).SetWriteBuffer(4096) //nolint:errcheck // smaller is only quicker
	nc := &netConn{Conn: srv, raw: newRawIO(srv, nil), writeTimeout: 10 * time.Second}

	p := make([]byte, 1<<20) // more than the socket takes at once
	for i := range p {
		p[i] = byte(i%251) + 1
	}
	n, took, err := nc.tryWrite(p)
	if err != nil || !took {
		t.Fatalf("tryWrite: %d %v %v", n, took, err)
	}
	if n >= len(p) {
		t.Skip("the socket took 1 MiB at once")
	}
	if !nc.hasRest() {
		t.Fatal("a short direct write left no rest")
	}
	ack := []byte{0x40, 0x02, 0x00, 0x01} // a PUBACK mochi writes
	done := make(chan error, 1)
	go func() { _, err := nc.Write(ack); done <- err }()

	cli.SetReadDeadline(time.Now().Add(15 * time.Second)) //nolint:errcheck // the read fails instead
	got := make([]byte, len(p)+len(ack))
	if k, err := io.ReadFull(cli, got); err != nil {
		t.Fatalf("read %d of %d (the socket took %d at once): %v; write: %v", k, len(got), n, err, <-done)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(p)], p) || !bytes.Equal(got[len(p):], ack) {
		i := 0
		for i < len(p) && got[i] == p[i] {
			i++
		}
		t.Fatalf("the ack cut the direct write: first difference at byte %d of %d (the socket took %d)", i, len(p), n)
	}
	if nc.hasRest() {
		t.Fatal("rest kept after the write")
	}
}

// The same through the broker: a subscriber that stops reading has a
// direct write cut short, then pings (mochi writes the PINGRESP under the
// client's lock while the rest waits): every packet it reads is whole,
// the messages in order, and the PINGRESP comes too. Before the fix the
// PINGRESP could land inside the cut PUBLISH (a race: this test may pass
// without the fix; TestDirectRestFirst fails without it).
func TestDirectRestThenAck(t *testing.T) {
	b := start(t, Options{QueueBytes: 64 << 20, WriteTimeout: 10 * time.Minute})
	for round := range 5 {
		id := "slow" + strconv.Itoa(round)
		nc := dialSmallRcvBuf(t, b)
		sub := benchConn(t, nc, id)
		topic := "r/" + strconv.Itoa(round)
		sub.subscribe(t, topic)
		ctx := testCtx(t)
		payload := bytes.Repeat([]byte("x"), 8<<10)
		sent := 0
		rest := b.stats.DirectRest.Load()
		for b.stats.DirectRest.Load() == rest {
			waitIdle(t, b, id)
			if sent == 4000 {
				t.Fatalf("no direct write was cut short after %d messages", sent)
			}
			binary.BigEndian.PutUint32(payload, uint32(sent))
			if err := b.Publish(ctx, Principal{ClientID: "pub"}, Message{Topic: topic, Payload: bytes.Clone(payload)}); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		if _, err := nc.Write([]byte{0xC0, 0x00}); err != nil { // PINGREQ
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(testTimeout)) //nolint:errcheck // fails the reads if it fails
		pong := false
		for i := 0; i < sent || !pong; {
			switch typ := sub.read(t); typ {
			case packets.Pingresp:
				if len(sub.buf) != 0 || pong {
					t.Fatalf("round %d: bad PINGRESP (%d bytes, again %v)", round, len(sub.buf), pong)
				}
				pong = true
			case packets.Publish:
				body := sub.buf[2+len(topic):]
				if len(body) != len(payload) || int(binary.BigEndian.Uint32(body)) != i {
					t.Fatalf("round %d message %d: %d bytes, number %d", round, i, len(body), binary.BigEndian.Uint32(body))
				}
				i++
			default:
				t.Fatalf("round %d: packet type %d after %d messages: the stream is cut", round, typ, i)
			}
		}
		nc.Close()
	}
}

// tcpPair is a connected pair of loopback TCP connections, closed when
// the test ends.
func tcpPair(t *testing.T) (cli, srv net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	srv, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return cli, srv
}
