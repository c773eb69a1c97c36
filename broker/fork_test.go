package broker

import (
	"bufio"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// panicHook panics reading a SUBSCRIBE to panicFilter: the stand-in for a
// bug in mochi since its one known decoder panic is fixed at the source
// (TestSubscribeDecodeMalformed).
type panicHook struct{ mqtt.HookBase }

const panicFilter = "panic/!"

func (*panicHook) ID() string { return "panic" }
func (*panicHook) Provides(b byte) bool {
	return b == mqtt.OnPacketRead
}
func (*panicHook) OnPacketRead(_ *mqtt.Client, pk *packets.Packet) error {
	if pk.FixedHeader.Type == packets.Subscribe && len(pk.Filters) > 0 && pk.Filters[0].Filter == panicFilter {
		panic("panicHook: " + panicFilter)
	}
	return nil
}

func addPanicHook(t *testing.T, b *Broker) {
	t.Helper()
	if err := b.server.AddHook(new(panicHook), nil); err != nil {
		t.Fatal(err)
	}
}

// TestPanicRecovered: a panic on a connection's read goroutine (which runs
// on a goroutine of its own after the CONNECT, Broker.serve) closes that
// connection, is counted and logged, and the broker serves everyone else.
func TestPanicRecovered(t *testing.T) {
	b := start(t, Options{})
	addPanicHook(t, b)
	other := dial3(t, b, "bystander", true)
	other.sub(t, "b/#", 0)
	c, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(connectPacket(4, "evil"))
	c.SetReadDeadline(time.Now().Add(testTimeout))
	r := bufio.NewReader(c)
	if h, err := readPacket(r); err != nil || h != 0x20 {
		t.Fatalf("no CONNACK: %#x %v", h, err)
	}
	c.Write([]byte{0x82, 0x0c, 0x00, 0x01, 0x00, 0x07, 'p', 'a', 'n', 'i', 'c', '/', '!', 0x00})
	if h, err := readPacket(r); err == nil {
		t.Errorf("got packet %#x, want the connection closed", h)
	}
	waitFor(t, "the panic counted", func() bool { return b.stats.Panics.Load() == 1 })
	waitConnGone(t, b, "evil")
	alive(t, b)
	pub := dial3(t, b, "pub", true)
	pub.pub(t, "b/1", 0, false, "still here")
	other.wait(t, 1)
}

// TestConnectionGoroutines: an established connection has one goroutine,
// its read loop, started by Broker.serve (not the goroutine that handled
// the CONNECT, whose stack mochi's CONNECT path grew), and no mochi
// WriteLoop (nothing is queued to mochi's outbound channel: deliveries are
// the broker's writer's, acks mochi's WritePacket).
func TestConnectionGoroutines(t *testing.T) {
	b := start(t, Options{})
	for _, v := range []byte{4, 5} {
		c, err := net.Dial("tcp", b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(connectPacket(v, "idle"+string('0'+v)))
		c.SetReadDeadline(time.Now().Add(testTimeout))
		r := bufio.NewReader(c)
		if h, err := readPacket(r); err != nil || h != 0x20 {
			t.Fatalf("no CONNACK: %#x %v", h, err)
		}
		// A SUBSCRIBE, acknowledged by mochi's WritePacket.
		sub := []byte{0x82, 0x08, 0x00, 0x01, 0x00, 0x03, 'a', '/', 'b', 0x00}
		if v == 5 {
			sub = []byte{0x82, 0x09, 0x00, 0x01, 0x00, 0x00, 0x03, 'a', '/', 'b', 0x00}
		}
		c.Write(sub)
		if h, err := readPacket(r); err != nil || h != 0x90 {
			t.Fatalf("no SUBACK: %#x %v", h, err)
		}
	}
	waitFor(t, "both sessions", func() bool { return b.connByID("idle4") != nil && b.connByID("idle5") != nil })
	buf := make([]byte, 1<<20)
	dump := string(buf[:runtime.Stack(buf, true)])
	readers := 0
	for _, g := range strings.Split(dump, "\n\n") {
		if strings.Contains(g, "mochi.(*Client).WriteLoop") {
			t.Errorf("a mochi WriteLoop runs:\n%s", g)
		}
		if strings.Contains(g, "mochi.(*Client).Read(") {
			readers++
			if !strings.Contains(g, "broker.(*Broker).serve(") || strings.Contains(g, "EstablishSession(") || strings.Contains(g, "(*Broker).guard(") {
				t.Errorf("a read loop not on a goroutine of its own (Broker.serve):\n%s", g)
			}
		}
	}
	if readers != 2 {
		t.Errorf("%d read loops, want 2\n%s", readers, dump)
	}
}
