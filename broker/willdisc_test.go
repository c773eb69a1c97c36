package broker

import (
	"bufio"
	"net"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// filingGate holds the CONNECT of one client id, once armed, just after
// its CONNACK was written and before the broker files its connection
// (mochi calls OnSessionEstablished next), until the test releases it.
type filingGate struct {
	mqtt.HookBase
	armed   atomic.Pointer[string]
	held    chan struct{}
	release chan struct{}
}

func (*filingGate) ID() string           { return "filing-gate" }
func (*filingGate) Provides(b byte) bool { return b == mqtt.OnPacketSent }
func (g *filingGate) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Connack {
		return
	}
	if id := g.armed.Load(); id == nil || *id != cl.ID || !g.armed.CompareAndSwap(id, nil) {
		return
	}
	close(g.held)
	<-g.release
}

// TestConnGoneBeforeFiled: a client that read its CONNACK and sent a
// normal DISCONNECT is not gone until the broker has read that DISCONNECT,
// which it does only once the connection is filed. waitConnGone asked only
// whether a connection was filed under the id, and said gone in between.
// TestConnectWillQos then went on while case "v5 will qos 2"'s DISCONNECT
// was unread: case "v3 will qos 1"'s CONNECT of the same id took the
// session over (Clean Start: the session ended) and published the cut-off
// connection's will in its OnSessionEstablished, after its own CONNACK
// (2–5% of runs under -race). Here the connection is held between its
// CONNACK and its filing; the next CONNECT of the id comes only once the
// broker has let go of the first.
func TestConnGoneBeforeFiled(t *testing.T) {
	b := start(t, Options{})
	gate := &filingGate{held: make(chan struct{}), release: make(chan struct{})}
	if err := b.server.AddHook(gate, nil); err != nil {
		t.Fatal(err)
	}
	watcher := dial3(t, b, "watcher", true)
	watcher.sub(t, "will/#", 0)
	const id = "wd"
	connect := func(v byte) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(testTimeout))
		c.Write(connectWillPacket(v, id, true, 1))
		if h, body, err := readPacketBody(bufio.NewReader(c)); err != nil || h != 0x20 || len(body) < 2 || body[1] != 0 {
			t.Fatalf("v%d: CONNACK %#x % x %v, want 0", v, h, body, err)
		}
		return c
	}
	released := false
	release := func() {
		if !released {
			released = true
			close(gate.release)
		}
	}
	defer release()
	armed := id
	gate.armed.Store(&armed)
	first := connect(5)
	select {
	case <-gate.held:
	case <-time.After(testTimeout):
		t.Fatal("the first connection not held after its CONNACK")
	}
	first.Write([]byte{0xe0, 0x00}) // a normal DISCONNECT: no will [MQTT-3.1.2-10]
	if connGone(b, id) {
		t.Errorf("%s gone with its DISCONNECT unread (its connection not yet filed)", id)
		// What TestConnectWillQos did next: a CONNECT of the id, which
		// takes the session over from the connection not yet filed.
		connect(4).Write([]byte{0xe0, 0x00})
	}
	release()
	waitConnGone(t, b, id)
	second := connect(4) // the session ended cleanly: nothing to take over
	second.Write([]byte{0xe0, 0x00})
	waitConnGone(t, b, id)
	alive(t, b)
	watcher.pub(t, "will/end", 0, false, "end")
	if got := watcher.wait(t, 1); got[0].topic != "will/end" {
		t.Errorf("got %+v before will/end, want no will", got)
	}
}
