package broker

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// connectEmptyID is a CONNECT with an empty client id and the given
// CleanSession (3.1.1) or Clean Start (MQTT 5) flag.
func connectEmptyID(v byte, clean bool) []byte {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: clean, Keepalive: 30},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// TestConnectEmptyClientID: an MQTT 3.1.1 CONNECT with a zero-byte client
// id and CleanSession 0 gets CONNACK 0x02 Identifier rejected and is
// closed [MQTT-3.1.3-8] (mochi answered 0x80, which 3.1.1 reserves); with
// CleanSession 1 the server assigns an id [MQTT-3.1.3-6]. MQTT 5 assigns
// one whatever Clean Start says, and names it in the CONNACK's Assigned
// Client Identifier [MQTT-3.1.3-7] [MQTT-3.2.2-16].
func TestConnectEmptyClientID(t *testing.T) {
	b := start(t, Options{})
	cases := []struct {
		name  string
		v     byte
		clean bool
		want  byte // CONNACK return or reason code
	}{
		{"v3 persistent", 4, false, 0x02},
		{"v3 clean", 4, true, 0x00},
		{"v5 clean start 0", 5, false, 0x00},
		{"v5 clean start 1", 5, true, 0x00},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", b.TCPAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(testTimeout))
			c.Write(connectEmptyID(tc.v, tc.clean))
			r := bufio.NewReader(c)
			h, body, err := readPacketBody(r)
			if err != nil || h != 0x20 || len(body) < 2 {
				t.Fatalf("no CONNACK: %#x % x %v", h, body, err)
			}
			if body[1] != tc.want {
				t.Fatalf("CONNACK code %#x, want %#x", body[1], tc.want)
			}
			if tc.want != 0 {
				if rest, err := io.ReadAll(r); err != nil || len(rest) > 0 {
					t.Errorf("after CONNACK %#x: % x %v, want the connection closed", tc.want, rest, err)
				}
				return
			}
			if tc.v == 5 {
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack, Remaining: len(body)}, ProtocolVersion: 5}
				if err := pk.ConnackDecode(body); err != nil {
					t.Fatal(err)
				}
				if pk.Properties.AssignedClientID == "" {
					t.Fatalf("no Assigned Client Identifier in CONNACK %+v", pk.Properties)
				}
				waitFor(t, "the assigned id filed", func() bool { return b.connByID(pk.Properties.AssignedClientID) != nil })
			}
			// The connection is served: a PINGREQ is answered.
			c.Write([]byte{0xc0, 0x00})
			if h, _, err := readPacketBody(r); err != nil || h != 0xd0 {
				t.Fatalf("no PINGRESP: %#x %v", h, err)
			}
		})
	}
	alive(t, b)
}

// TestTakeoverNotBehindStalledPeer: a CONNECT that takes over a client id
// whose connection is stalled (its client stopped reading, the socket
// buffers full, a write under way) gets its CONNACK without waiting for
// that write's WriteTimeout (an hour here): the takeover's DISCONNECT is
// written within a short bound, or not at all, and the old connection is
// closed. It waited for the DISCONNECT's write, up to WriteTimeout, under
// the client id's takeover lock.
func TestTakeoverNotBehindStalledPeer(t *testing.T) {
	b := start(t, Options{WriteTimeout: time.Hour, QueueBytes: 64 << 20})
	old, err := net.DialTCP("tcp", nil, tcpAddr(t, b.TCPAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	old.SetReadBuffer(4096) //nolint:errcheck // smaller is faster to fill; any size fills
	old.SetDeadline(time.Now().Add(testTimeout))
	old.Write(connectPacket(5, "stall"))
	r := bufio.NewReader(old)
	if h, _, err := readPacketBody(r); err != nil || h != 0x20 {
		t.Fatalf("no CONNACK: %#x %v", h, err)
	}
	old.Write(subscribePacket(5, []string{"stall/#"}))
	if h, _, err := readPacketBody(r); err != nil || h != 0x90 {
		t.Fatalf("no SUBACK: %#x %v", h, err)
	}
	waitFor(t, "the connection filed", func() bool { return b.connByID("stall") != nil })
	oldCl := b.connByID("stall").out.(*mqttOut).cl
	// 16 MiB that the client never reads: a write to it waits (up to
	// WriteTimeout) holding the client's lock, and so would any write after.
	pub := dial3(t, b, "pub", true)
	pub.pub(t, "stall/big", 0, false, string(make([]byte, 16<<20)))
	waitFor(t, "a write to the stalled client under way", func() bool {
		if oldCl.TryLock() {
			oldCl.Unlock()
			return false
		}
		return true
	})

	nc, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(testTimeout))
	nc.Write(connectPacket(5, "stall"))
	h, body, err := readPacketBody(bufio.NewReader(nc))
	if err != nil || h != 0x20 || len(body) < 2 || body[1] != 0 {
		t.Fatalf("the taking-over client: %#x % x %v, want CONNACK 0 (well before WriteTimeout)", h, body, err)
	}
	if !oldCl.Closed() {
		t.Error("the CONNACK came before the taken-over client was stopped")
	}
	if cur, ok := b.server.Clients.Get("stall"); !ok || cur == oldCl {
		t.Errorf("the id is filed to %p (ok %v), want the new client", cur, ok)
	}
	// The old connection is closed: reading it comes to an end.
	if _, err := io.Copy(io.Discard, old); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("the taken-over connection is still open: %v", err)
		}
	}
	alive(t, b)
}

func tcpAddr(t *testing.T, addr string) *net.TCPAddr {
	t.Helper()
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
