//go:build linux

package broker

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// A non-blocking write the socket takes only part of leaves the rest to
// the connection, and whatever is written next (mochi's ack, with the
// client's lock, between the direct write and the writer's flush) comes
// after it: no packet is cut by another (red team: the rest was the
// caller's, and an ack written in between landed inside a PUBLISH).
func TestDirectRestFirst(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.(*net.TCPConn).SetWriteBuffer(4096) //nolint:errcheck // smaller is only quicker
	nc := &netConn{Conn: srv, raw: newRawIO(srv), writeTimeout: 10 * time.Second}

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
