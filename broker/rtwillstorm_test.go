package broker

import (
	"bufio"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// establishGate holds the CONNECT of one client id in OnSessionEstablish,
// after Mote's hook (it is added after it): under the id's takeover lock,
// before mochi cuts the old connection off (inheritSession).
type establishGate struct {
	mqtt.HookBase
	armed   atomic.Pointer[string]
	held    chan struct{}
	release chan struct{}
}

func (*establishGate) ID() string           { return "establish-gate" }
func (*establishGate) Provides(b byte) bool { return b == mqtt.OnSessionEstablish }
func (g *establishGate) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if id := g.armed.Load(); id == nil || *id != cl.ID || !g.armed.CompareAndSwap(id, nil) {
		return
	}
	g.held <- struct{}{}
	select {
	case <-g.release:
	case <-time.After(testTimeout):
	}
}

// dialHeld sends connect for id on a new connection and waits until the
// gate holds it; the CONNACK is read by the caller, after release.
func (g *establishGate) dialHeld(t *testing.T, b *Broker, id string, connect []byte) *ownerPeer {
	t.Helper()
	g.armed.Store(&id)
	c, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testTimeout))
	if _, err := c.Write(connect); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.held:
	case <-time.After(testTimeout):
		t.Fatalf("%s: CONNECT not held", id)
	}
	return &ownerPeer{c: c, r: bufio.NewReader(c)}
}

// TestNormalDisconnectBeforeTakeoverCutKeepsWillUnsent: A is connected
// with a will; B's CONNECT of A's id is past Mote's OnSessionEstablish
// (which takes A's will as due: wills.takeover) but has not cut A's
// connection off yet (inheritSession) when A's DISCONNECT 0x00 is read and
// processed: A's connection ends with a normal DISCONNECT, so its will
// MUST NOT be published [MQTT-3.1.2-10] [MQTT-3.14.4-3], whatever B's
// CONNECT is (Clean Start 1, 0; a will delay of 0 or more). Every will
// map of the id is empty at the end.
func TestNormalDisconnectBeforeTakeoverCutKeepsWillUnsent(t *testing.T) {
	cases := []struct {
		name  string
		clean bool
		delay uint32
	}{
		{"clean start, no delay", true, 0},
		{"clean start, delay", true, 3600},
		{"resume, no delay", false, 0},
		{"resume, delay", false, 3600},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			gate := &establishGate{held: make(chan struct{}), release: make(chan struct{})}
			if err := b.server.AddHook(gate, nil); err != nil {
				t.Fatal(err)
			}
			id := fmt.Sprintf("nd-%d", i)
			watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id+"-watcher", true, 0, nil))
			watcher.subscribe(t, 5, "will/#", 0)
			a, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 300, &rawWill{topic: "will/a", payload: "a", delay: tc.delay}))
			// A's connection is filed under the id's takeover lock
			// (OnSessionEstablished), which B's held CONNECT holds.
			waitFor(t, "A's connection filed", func() bool { return b.connByID(id) != nil })
			bp := gate.dialHeld(t, b, id, rawConnect(t, 5, id, tc.clean, 300, nil))
			a.c.Write([]byte{0xE0, 0x00}) //nolint:errcheck // a normal DISCONNECT
			a.waitClosed(t)
			waitFor(t, "A's connection ended", func() bool { // its DISCONNECT processed, OnDisconnect called
				left := false
				b.conns.Range(func(k, _ any) bool {
					left = left || k.(*mqtt.Client).ID == id
					return true
				})
				return !left
			})
			close(gate.release)
			if h, body := bp.next(t, 0); h != 0x20 || len(body) < 2 || body[1] != 0 {
				t.Fatalf("B: got %#x % x, want CONNACK 0", h, body)
			}
			bp.c.Write([]byte{0xE0, 0x00}) //nolint:errcheck // B leaves normally too
			bp.waitClosed(t)
			willsSettled(t, b, id)
			pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id+"-pub", true, 0, nil))
			pub.publish1(t, 5, "will/marker", "")
			if got := watcher.topicsUntil(t, "will/marker"); len(got) != 0 {
				t.Errorf("wills published %q; want none (A left with DISCONNECT 0x00)", got)
			}
			b.wills.mu.Lock()
			defer b.wills.mu.Unlock()
			if w := b.wills.delayed[id]; w != nil {
				t.Errorf("a will of %s still waits: %s", id, w.m.Topic)
			}
		})
	}
}

// connackEncodeGate: see willcap_test.go.

// TestResumeCancelsWillSetAsideByFailedConnack: A's will waits out its
// delay (the session offline); B resumes the session (Clean Start 0),
// which sets A's will aside until its CONNACK is written; before it is, C
// resumes the session too, cutting B off (B's CONNACK then fails), and C's
// CONNACK is written. C connected to the session before A's Will Delay
// Interval passed, so A's will is cancelled [MQTT-3.1.3-9]: it is neither
// published nor left waiting once all of them have left with DISCONNECT,
// and no will map holds anything of the id — even when C has left before
// B's CONNACK fails (so B's end cannot tell that a connection was made to
// the session: will.cancelled, set by C, which held A's will too).
func TestResumeCancelsWillSetAsideByFailedConnack(t *testing.T) {
	b := start(t, Options{})
	gate := &connackEncodeGate{held: make(chan struct{}), release: make(chan struct{})}
	if err := b.server.AddHook(gate, nil); err != nil {
		t.Fatal(err)
	}
	const id = "rf-x"
	watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "rf-watcher", true, 0, nil))
	watcher.subscribe(t, 5, "will/#", 0)
	a, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, &rawWill{topic: "will/a", payload: "a", delay: 3600}))
	a.c.Close()
	waitWillHeld(t, b, id)
	// B: its CONNACK held before it is written.
	idv := id
	gate.armed.Store(&idv)
	bc, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bc.Close() })
	if _, err := bc.Write(rawConnect(t, 5, id, false, 3600, nil)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gate.held:
	case <-time.After(testTimeout):
		t.Fatal("B's CONNACK not held")
	}
	c, present, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil)) // C: Clean Start 0
	if !present {
		t.Error("C: session not present")
	}
	c.c.Write([]byte{0xE0, 0x00}) //nolint:errcheck // a normal DISCONNECT: the session stays
	c.waitClosed(t)
	// C has left before B's CONNACK fails: B's end must not find the
	// session disconnected and put A's will back to wait.
	waitFor(t, "C's connection ended", func() bool { return b.connByID(id) == nil })
	close(gate.release) // B's CONNACK fails: C closed its connection
	willsSettled(t, b, id)
	b.wills.mu.Lock()
	d := b.wills.delayed[id] != nil
	b.wills.mu.Unlock()
	pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "rf-pub", true, 0, nil))
	pub.publish1(t, 5, "will/marker", "")
	if got := watcher.topicsUntil(t, "will/marker"); len(got) != 0 || d {
		t.Errorf("wills published %q, one waiting %v; want none (C's resume cancelled will/a)", got, d)
	}
}
