//go:build linux

package broker

import (
	"io"
	"net"
	"testing"
	"time"
)

// TestNoDirectWriteAfterFailedWrite: after a write to a connection failed
// (it may have cut a packet: the client takes whatever follows as that
// packet's rest), a direct write writes nothing either. tryWrite wrote
// straight to the socket whatever had failed before it, so a QoS 0
// message written directly (conn.tryDirect) between a cut write and the
// connection's close reached the client inside the cut packet.
func TestNoDirectWriteAfterFailedWrite(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	nc := &netConn{Conn: sc, writeTimeout: time.Minute, raw: newRawIO(sc, nil)}
	defer nc.Close()
	if nc.raw == nil {
		t.Fatal("no raw writer for a TCP connection")
	}
	nc.SetWriteDeadline(time.Now().Add(-time.Second)) // as a takeover's bound that has passed
	if _, err := nc.Write([]byte{0xd0, 0}); err == nil {
		t.Fatal("a write past its deadline succeeded")
	}
	n, took, err := nc.tryWrite([]byte{0xd0, 0})
	if err == nil || n != 0 || took {
		t.Errorf("a direct write after a failed one: n %d took %v err %v, want an error and nothing written", n, took, err)
	}
	nc.Close()
	client.SetReadDeadline(time.Now().Add(testTimeout))
	got, _ := io.ReadAll(client) // a reset ends it with an error: what came before counts
	if len(got) != 0 {
		t.Errorf("the client read % x after a failed write, want nothing", got)
	}
}
