package broker

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mote-mqtt/mote/internal/wsstream"
)

// dialStalledWS connects a WebSocket MQTT client (MQTT 5, client id id)
// subscribed to filter, over a socket with a small receive buffer that
// the test stops reading once the SUBACK is in: the raw socket is
// returned for the test to close.
func dialStalledWS(t *testing.T, b *Broker, id, filter string) *net.TCPConn {
	t.Helper()
	raw, err := net.DialTCP("tcp", nil, tcpAddr(t, b.WSAddr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	raw.SetReadBuffer(4096) //nolint:errcheck // smaller is faster to fill; any size fills
	raw.SetDeadline(time.Now().Add(testTimeout))
	d := websocket.Dialer{
		Subprotocols:     []string{"mqtt"},
		HandshakeTimeout: testTimeout,
		NetDial:          func(string, string) (net.Conn, error) { return raw, nil },
	}
	ws, _, err := d.Dial("ws://"+b.WSAddr()+"/mqtt", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := wsstream.New(ws, true)
	c.Write(connectPacket(5, id))
	r := bufio.NewReader(c)
	if h, _, err := readPacketBody(r); err != nil || h != 0x20 {
		t.Fatalf("no CONNACK: %#x %v", h, err)
	}
	c.Write(subscribePacket(5, []string{filter}))
	if h, _, err := readPacketBody(r); err != nil || h != 0x90 {
		t.Fatalf("no SUBACK: %#x %v", h, err)
	}
	return raw
}

// TestWebSocketWriteTimeout: a WebSocket client that stopped reading is
// closed once a write to it has waited WriteTimeout, as a TCP or TLS one
// is. gorilla's websocket sets the socket's write deadline to its own
// before each frame it writes, none unless set through it: the deadline
// the broker's connection set (netConn.armWrite) was undone, the write
// waited for ever, holding the client's lock, and so would the
// DISCONNECT of a takeover (its bound undone the same way) under the
// client id's takeover lock.
func TestWebSocketWriteTimeout(t *testing.T) {
	b := start(t, Options{WriteTimeout: 200 * time.Millisecond, QueueBytes: 64 << 20})
	dialStalledWS(t, b, "wsstall", "wsstall/#")
	waitFor(t, "the connection filed", func() bool { return b.connByID("wsstall") != nil })
	cl := b.connByID("wsstall").out.(*mqttOut).cl
	pub := dial3(t, b, "pub", true)
	pub.pub(t, "wsstall/big", 0, false, string(make([]byte, 16<<20)))
	waitFor(t, "the stalled WebSocket client closed after WriteTimeout", cl.Closed)
	alive(t, b)
}
