//go:build linux

package broker

import (
	"bufio"
	"fmt"
	"net"
	"testing"
	"time"
)

// TestHostileBytewiseHalfClose: plain TCP reads are raw system calls
// once a connection's reads found its socket empty (rawIO.rawNext). A
// client that writes its CONNECT, a QoS 1 PUBLISH and a PINGREQ one byte
// at a time (each read finds one byte, the next EAGAIN: every read after
// the first is raw), then half-closes, gets each answer, and then the
// broker ends the connection on the read that returns 0 (EOF), rather
// than spinning on it or waiting for its keepalive.
func TestHostileBytewiseHalfClose(t *testing.T) {
	b := start(t, Options{})
	nc := hxDial(t, b.TCPAddr())
	defer nc.Close()
	tc := nc.(*net.TCPConn)
	tc.SetNoDelay(true) //nolint:errcheck
	var all []byte
	all = append(all, connectPacket(5, "hb-bytes")...)
	all = append(all, hxPublish("hb/b", 1, 7, hxProps(), "x")...)
	all = append(all, 0xC0, 0)
	for _, c := range all {
		if _, err := tc.Write([]byte{c}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Microsecond)
	}
	if err := tc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	tc.SetReadDeadline(time.Now().Add(testTimeout)) //nolint:errcheck
	r := bufio.NewReader(tc)
	var got []string
	for {
		h, _, err := readPacketBody(r)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("got %q, then no EOF in %v: the half-closed connection was not ended", got, testTimeout)
			}
			break
		}
		got = append(got, fmt.Sprintf("%x", h))
	}
	if want := "[20 40 d0]"; fmt.Sprint(got) != want {
		t.Errorf("got %v, want %s then EOF", got, want)
	}
	alive(t, b)
}
