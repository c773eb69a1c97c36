package broker

import (
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/retain"
)

// pendingWills lists the wills of id waiting out their delay.
func pendingWills(b *Broker, id string) []*will {
	b.wills.mu.Lock()
	defer b.wills.mu.Unlock()
	if w := b.wills.delayed[id]; w != nil {
		return []*will{w}
	}
	return nil
}

// TestDelayedWillsOnePerID: a hostile client repeats a CONNECT of one
// client id (MQTT 5, Clean Start 0, Session Expiry and Will Delay an
// hour) and resets the connection before its CONNACK is written, 200
// times. Each CONNECT resumes the one session, its will due as the
// connection ends. One will waits, the last connection's: each new
// connection to the session was made before the older will's delay
// passed [MQTT-3.1.3-9]; none is published. Before, every such CONNECT
// left its will and timer beside the others (200 waiting, each take a
// scan of them).
func TestDelayedWillsOnePerID(t *testing.T) {
	b := start(t, Options{})
	gate := &sessionGate{held: make(chan *mqtt.Client), gone: make(chan struct{})}
	if err := b.server.AddHook(gate, nil); err != nil {
		t.Fatal(err)
	}
	watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "cap-watcher", true, 0, nil))
	watcher.subscribe(t, 5, "will/#", 0)
	const id, n = "cap-x", 200
	for i := range n {
		gate.armed.Store(&[]string{id}[0])
		c, err := net.Dial("tcp", b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(rawConnect(t, 5, id, false, 3600, &rawWill{"will/" + id, fmt.Sprint(i), 3600, false}))
		select {
		case <-gate.held:
		case <-time.After(testTimeout):
			t.Fatalf("CONNECT %d not held", i)
		}
		resetConn(c)
		gate.gone <- struct{}{}
		// Its client stopped too (connGone): the next CONNECT resumes the
		// session offline, as waitWillHeld waits for.
		waitFor(t, fmt.Sprintf("will %d held, its connection gone", i), func() bool {
			d := pendingWills(b, id)
			return len(d) > 0 && string(d[len(d)-1].m.Payload) == fmt.Sprint(i) && connGone(b, id)
		})
	}
	if d := pendingWills(b, id); len(d) != 1 {
		t.Errorf("%d wills of %s wait, want 1 (the last connection's)", len(d), id)
	}
	b.wills.mu.Lock()
	if n := len(b.wills.resuming); n != 0 {
		t.Errorf("%d wills still set aside, want none (each CONNECT's end settled its own)", n)
	}
	b.wills.mu.Unlock()
	other, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "cap-marker", true, 0, nil))
	other.publish1(t, 5, "will/marker", "")
	if got := watcher.topicsUntil(t, "will/marker"); len(got) > 0 {
		t.Errorf("published %d wills %.60q, want none", len(got), got)
	}
}

// TestDelayedWillsPublishedAtShutdown: an MQTT 5 client (Session Expiry
// and Will Delay an hour, a retained will) drops its connection; the
// broker stops. Stopping ends every session (Mote keeps them in memory
// only), so the will is published [MQTT-3.1.3-9] (Mosquitto:
// will_delay__send_all): its row is stored, there after a restart on the
// same data dir, and a subscriber connected at shutdown gets it before
// its connection closes. So is the will of a client (same settings)
// still connected when the broker stops it. Before, Close stopped the
// wills' timers: both lost.
func TestDelayedWillsPublishedAtShutdown(t *testing.T) {
	dir := t.TempDir()
	st, err := retain.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Store: st})
	watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "sd-watcher", true, 0, nil))
	watcher.subscribe(t, 5, "will/#", 0)
	const id = "sd-x"
	a, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, &rawWill{"will/" + id, "gone", 3600, true}))
	a.c.Close()
	waitWillHeld(t, b, id)
	// Connected until the broker stops it: its will comes due then.
	rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "sd-live", false, 3600, &rawWill{"will/sd-live", "stopped", 3600, true}))
	if err := b.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	got := false
	for {
		h, body, err := readPacketBody(watcher.r)
		if err != nil {
			break
		}
		if m, ok := decodeRawPublish(h, body, 5); ok && h>>4 == 3 {
			got = got || m.topic == "will/"+id && m.payload == "gone"
		}
	}
	if !got {
		t.Error("the subscriber connected at shutdown did not get the will")
	}

	st, err = retain.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	b = start(t, Options{Store: st})
	p, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "sd-reader", true, 0, nil))
	p.subscribe(t, 5, "will/#", 0)
	p.c.SetDeadline(time.Now().Add(testTimeout)) // a replay is at once; none fails the read
	var rows []string
	for range 2 {
		m := p.readPublish(t, 5)
		rows = append(rows, m.topic+" "+m.payload)
	}
	if slices.Sort(rows); fmt.Sprint(rows) != "[will/sd-live stopped will/sd-x gone]" {
		t.Errorf("after the restart, retained %q, want both wills", rows)
	}
}

// connackEncodeGate holds the CONNECT of one client id, once armed, just
// before its CONNACK is encoded and written (OnPacketEncode): its session
// is established and filed, Mote's OnSessionEstablished has not run, and
// the id's takeover lock is free.
type connackEncodeGate struct {
	mqtt.HookBase
	armed   atomic.Pointer[string]
	held    chan struct{}
	release chan struct{}
}

func (*connackEncodeGate) ID() string           { return "connack-encode-gate" }
func (*connackEncodeGate) Provides(b byte) bool { return b == mqtt.OnPacketEncode }
func (g *connackEncodeGate) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type != packets.Connack {
		return pk
	}
	if id := g.armed.Load(); id == nil || *id != cl.ID || !g.armed.CompareAndSwap(id, nil) {
		return pk
	}
	g.held <- struct{}{}
	select {
	case <-g.release:
	case <-time.After(testTimeout):
	}
	return pk
}

// TestSupersededResumeDoesNotPutWillBack: A's will waits out its delay;
// B resumes the session (Clean Start 0, no will), which sets A's will
// aside, and is held before its CONNACK is written; C resumes it too
// (cutting B off), its CONNACK written: the session's connection was made
// before A's delay passed [MQTT-3.1.3-9]. B's CONNACK then fails, and its
// end must not put A's will back to wait: C's cancel has already run.
// Without will.holders and will.cancelled (C holds what B set aside too,
// and C's answer cancels it), A's will waited again (and would be
// published once C left before its delay passed).
func TestSupersededResumeDoesNotPutWillBack(t *testing.T) {
	b := start(t, Options{})
	gate := &connackEncodeGate{held: make(chan struct{}), release: make(chan struct{})}
	if err := b.server.AddHook(gate, nil); err != nil {
		t.Fatal(err)
	}
	const id = "sr-x"
	a, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, &rawWill{"will/a", "a", 3600, false}))
	a.c.Close()
	waitWillHeld(t, b, id)

	gate.armed.Store(&[]string{id}[0])
	bc, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	bc.Write(rawConnect(t, 5, id, false, 3600, nil)) //nolint:errcheck // B: held before its CONNACK
	select {
	case <-gate.held:
	case <-time.After(testTimeout):
		t.Fatal("B's CONNECT not held")
	}
	rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil)) // C: answered
	waitFor(t, "C's connection filed", func() bool { return b.connByID(id) != nil })
	close(gate.release)
	waitFor(t, "B's set-aside will settled", func() bool {
		b.wills.mu.Lock()
		defer b.wills.mu.Unlock()
		return len(b.wills.resuming) == 0
	})
	if d := pendingWills(b, id); len(d) != 0 {
		t.Errorf("the will %s waits again; want it cancelled by C's resume", d[0].m.Topic)
	}
}
