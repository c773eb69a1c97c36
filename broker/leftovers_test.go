package broker

import (
	"bufio"
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// connectWillPacket is a CONNECT for protocol version v whose flags carry
// the given Will Flag and Will QoS (with a will topic and payload when the
// flag is set).
func connectWillPacket(v byte, id string, willFlag bool, willQos byte) []byte {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        30,
			ClientIdentifier: id,
			WillFlag:         willFlag,
			WillQos:          willQos,
		},
	}
	if willFlag {
		pk.Connect.WillTopic = "will/" + id
		pk.Connect.WillPayload = []byte("gone")
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// TestConnectWillQos: a CONNECT whose Will QoS is 3 is a Malformed Packet
// (MQTT 5 §3.1.2.6, [MQTT-3.1.2-12]); a Will QoS other than 0 without the
// Will Flag breaks [MQTT-3.1.2-11], a Protocol Error. An MQTT 5 client
// gets CONNACK 0x81 or 0x82 and the connection closes (§3.1.4: the
// server may send a CONNACK ≥ 0x80 before closing). MQTT 3.1.1 has no
// return code for either ([MQTT-3.1.2-14], [MQTT-3.1.2-11]): the
// connection is closed without a CONNACK [MQTT-3.1.4-1]. A valid will
// QoS is still accepted. No will is published for a refused CONNECT.
func TestConnectWillQos(t *testing.T) {
	b := start(t, Options{})
	watcher := dial3(t, b, "watcher", true)
	watcher.sub(t, "will/#", 0)
	cases := []struct {
		name     string
		v        byte
		willFlag bool
		willQos  byte
		want     int // CONNACK reason code; -1 for no CONNACK, the connection closed
	}{
		{"v5 will qos 3", 5, true, 3, 0x81},
		{"v5 no will, qos 3", 5, false, 3, 0x81},
		{"v5 no will, qos 1", 5, false, 1, 0x82},
		{"v5 will qos 2", 5, true, 2, 0x00},
		{"v3 will qos 3", 4, true, 3, -1},
		{"v3 no will, qos 3", 4, false, 3, -1},
		{"v3 no will, qos 2", 4, false, 2, -1},
		{"v3 will qos 1", 4, true, 1, 0x00},
		// [MQTT-3.1.2-2] a protocol level 3.1.1 does not serve: 0x01 (mochi sent 0x82).
		{"protocol level 3", 3, false, 0, 0x01},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", b.TCPAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(testTimeout))
			c.Write(connectWillPacket(tc.v, "willqos", tc.willFlag, tc.willQos))
			r := bufio.NewReader(c)
			h, body, err := readPacketBody(r)
			if tc.want < 0 {
				if err == nil {
					t.Fatalf("got %#x % x, want the connection closed without a CONNACK", h, body)
				}
				return
			}
			if err != nil || h != 0x20 || len(body) < 2 {
				t.Fatalf("no CONNACK: %#x % x %v", h, body, err)
			}
			if int(body[1]) != tc.want {
				t.Fatalf("CONNACK reason %#x, want %#x", body[1], tc.want)
			}
			if tc.want == 0 {
				c.Write([]byte{0xe0, 0x00}) // a clean DISCONNECT: no will
				waitConnGone(t, b, "willqos")
				return
			}
			if rest, err := io.ReadAll(r); err != nil || len(rest) > 0 {
				t.Errorf("after CONNACK %#x: % x %v, want the connection closed", tc.want, rest, err)
			}
		})
	}
	alive(t, b)
	watcher.pub(t, "will/end", 0, false, "end")
	if got := watcher.wait(t, 1); got[0].topic != "will/end" {
		t.Errorf("got %+v before will/end, want no will", got)
	}
}

// allocatedBy is the bytes allocated (by every goroutine) while f ran.
func allocatedBy(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestShareGroupGrowth: a $share group of N members costs O(log N) bytes
// a member added or re-subscribed, not a copy of the group: members
// 10,000 to 20,000 of one group cost no more a member than the first
// 10,000, and a member re-subscribing to a group of 20,000 costs a few
// KiB. (The group's member list was copied whole on every change: O(N²)
// to build a group, about 0.5 MiB a member at 10,000.) Bytes, not time:
// the machine is shared.
func TestShareGroupGrowth(t *testing.T) {
	const half = 10_000
	const filter = "$share/g/t"
	x := &subIndex{}
	add := func(from, to int) uint64 {
		return allocatedBy(func() {
			for i := from; i < to; i++ {
				if !x.subscribe("c"+strconv.Itoa(i), packets.Subscription{Filter: filter}) {
					t.Fatalf("member %d not new", i)
				}
			}
		})
	}
	first := add(0, half)
	second := add(half, 2*half)
	const resubs = 1000
	resub := allocatedBy(func() {
		for i := range resubs {
			if x.subscribe("c"+strconv.Itoa(i*7), packets.Subscription{Filter: filter, Qos: 1}) {
				t.Fatalf("re-subscription %d new", i)
			}
		}
	})
	t.Logf("bytes a member: %d (members 1–10k), %d (10k–20k); a re-subscription at 20k: %d", first/half, second/half, resub/resubs)
	if second > 2*first {
		t.Errorf("members 10k–20k cost %d B, the first 10k %d B: growing with the group", second, first)
	}
	if per := second / half; per > 16<<10 {
		t.Errorf("%d B a member added to a group of 10k–20k, want under 16 KiB", per)
	}
	if per := resub / resubs; per > 16<<10 {
		t.Errorf("%d B a re-subscription to a group of 20k, want under 16 KiB", per)
	}
	if sc := x.match("t", ""); len(sc.out) != 1 {
		t.Errorf("t matches %d clients, want 1 (one member of the group)", len(sc.out))
	} else {
		sc.release()
	}
	for i := range 2 * half {
		if !x.unsubscribe(filter, "c"+strconv.Itoa(i)) {
			t.Fatalf("member %d not found", i)
		}
	}
	if !x.isEmpty() {
		t.Fatalf("the index holds %q with no subscription left", x.dump())
	}
}

// BenchmarkShareGroupBuild: N clients joining one $share group, in the
// broker's index and in mochi's (which the broker still writes).
func BenchmarkShareGroupBuild(b *testing.B) {
	for _, n := range []int{10_000, 20_000} {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = "c" + strconv.Itoa(i)
		}
		sub := packets.Subscription{Filter: "$share/g/t"}
		b.Run("index/members="+strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				x := &subIndex{}
				for _, id := range ids {
					x.subscribe(id, sub)
				}
			}
		})
		b.Run("mochi/members="+strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				x := mqtt.NewTopicsIndex()
				for _, id := range ids {
					x.Subscribe(id, sub)
				}
			}
		})
	}
}

// leftovers lists what the broker still holds of MQTT connections and
// sessions ("" when nothing): the connection count, mochi's clients
// (mote_sessions) and the broker's own registries.
func leftovers(b *Broker) string {
	var out []string
	note := func(what string, n int) {
		if n != 0 {
			out = append(out, what+"="+strconv.Itoa(n))
		}
	}
	count := func(m ranger) (n int) {
		m.Range(func(_, _ any) bool { n++; return true })
		return n
	}
	note("connected", int(atomic.LoadInt64(&b.server.Info.ClientsConnected)))
	note("mochi clients", b.server.Clients.Len())
	note("mochi subscriptions", int(atomic.LoadInt64(&b.server.Info.Subscriptions)))
	note("conns", count(&b.conns))
	note("byID", count(&b.byID))
	note("parked", count(&b.parked))
	b.arriving.lock()
	note("arriving", len(b.arriving.by))
	b.arriving.unlock()
	b.keptIn.mu.Lock()
	note("keptIn", len(b.keptIn.by))
	b.keptIn.mu.Unlock()
	b.offline.mu.Lock()
	note("offline", len(b.offline.by))
	b.offline.mu.Unlock()
	b.handshakes.mu.Lock()
	note("handshakes", b.handshakes.all)
	note("handshake hosts", len(b.handshakes.byHost)) // begin and end found the same host
	b.handshakes.mu.Unlock()
	b.rawMu.Lock()
	note("raw", len(b.raw))
	b.rawMu.Unlock()
	if !b.plainIdx.isEmpty() {
		out = append(out, "plain subscriptions")
	}
	return strings.Join(out, " ")
}

// waitLeftovers waits, with the test's deadline, until the broker holds
// nothing of MQTT connections and sessions.
func waitLeftovers(t *testing.T, b *Broker) {
	t.Helper()
	var got string
	deadline := time.Now().Add(testTimeout)
	for got = leftovers(b); got != ""; got = leftovers(b) {
		if time.Now().After(deadline) {
			t.Fatalf("the broker still holds: %s", got)
		}
		time.Sleep(time.Millisecond)
	}
}

// connackGate holds OnSessionEstablish (after the broker's, before mochi
// files the client and writes its CONNACK) for client ids starting with
// "gate" until the client has reset its connection: the CONNACK write then
// fails.
type connackGate struct {
	mqtt.HookBase
	held chan *mqtt.Client
	gone chan struct{}
}

func (*connackGate) ID() string           { return "connack-gate" }
func (*connackGate) Provides(b byte) bool { return b == mqtt.OnSessionEstablish }
func (h *connackGate) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if !strings.HasPrefix(cl.ID, "gate") {
		return
	}
	h.held <- cl
	<-h.gone
	// Wait until the reset has reached this side: the CONNECT was read
	// whole, so the raw connection's next read ends with it.
	nc := cl.Net.Conn.(*netConn).Conn
	nc.SetReadDeadline(time.Now().Add(testTimeout))
	var one [1]byte
	nc.Read(one[:]) //nolint:errcheck // an error is what it waits for
}

// resetConn closes c with a TCP reset (SO_LINGER 0): the broker's next
// write to it fails.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// TestConnectFailureLeavesNothing: connections whose CONNECT handling
// fails after mochi filed the client (the CONNACK write fails: the client
// reset the connection meanwhile), or that end at any other moment around
// the CONNECT, leave nothing behind once they are gone: no connection
// counted, no client in mochi's list (a clean session whose CONNACK could
// not be written stayed there, closed, for MaximumSessionExpiryInterval,
// 136 years, and never had its OnDisconnect), and nothing in the broker's
// registries. All sessions are clean; 127.0.0.1 only; a bounded count.
func TestConnectFailureLeavesNothing(t *testing.T) {
	b := start(t, Options{})
	gate := &connackGate{held: make(chan *mqtt.Client), gone: make(chan struct{})}
	if err := b.server.AddHook(gate, nil); err != nil {
		t.Fatal(err)
	}
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(testTimeout))
		return c
	}

	t.Run("CONNACK write fails", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			v        byte
			takeover bool // a live connection of the same id is taken over
		}{
			{"v3", 4, false},
			{"v5", 5, false},
			{"v3 takeover", 4, true},
			{"v5 takeover", 5, true},
		} {
			id := "gate-" + strings.ReplaceAll(tc.name, " ", "-")
			var first net.Conn
			if tc.takeover {
				first = dial()
				defer first.Close()
				first.Write(connectPacket(tc.v, "live-"+id))
				// filed under its own id first: the gate holds only "gate…" ids
				if h, _, err := readPacketBody(bufio.NewReader(first)); err != nil || h != 0x20 {
					t.Fatalf("%s: no CONNACK for the first connection: %#x %v", tc.name, h, err)
				}
			}
			c := dial()
			c.Write(connectPacket(tc.v, id))
			select {
			case <-gate.held:
			case <-time.After(testTimeout):
				t.Fatalf("%s: CONNECT not held", tc.name)
			}
			resetConn(c)
			gate.gone <- struct{}{}
			if first != nil {
				first.Close()
			}
			waitLeftovers(t, b)
		}
	})

	t.Run("killed at random", func(t *testing.T) {
		const conns, workers = 400, 8
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(w), 17))
				for i := w; i < conns; i += workers {
					v := byte(4 + r.IntN(2))
					id := "storm" + strconv.Itoa(r.IntN(12)) // shared ids: takeovers
					c, err := net.Dial("tcp", b.TCPAddr())
					if err != nil {
						t.Error(err)
						return
					}
					c.SetDeadline(time.Now().Add(testTimeout))
					pk := connectPacket(v, id)
					switch r.IntN(6) {
					case 0: // reset in the middle of the CONNECT
						c.Write(pk[:1+r.IntN(len(pk)-1)])
						resetConn(c)
					case 1: // reset right after the CONNECT
						c.Write(pk)
						resetConn(c)
					case 2: // FIN right after the CONNECT
						c.Write(pk)
						c.Close()
					case 3: // reset after the CONNACK
						c.Write(pk)
						readPacketBody(bufio.NewReader(c)) //nolint:errcheck // may be taken over
						resetConn(c)
					case 4: // subscribe, then reset
						c.Write(pk)
						if v == 5 {
							c.Write([]byte{0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'x', 0x01})
						} else {
							c.Write([]byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'x', 0x01})
						}
						resetConn(c)
					default: // a clean DISCONNECT after the CONNACK
						c.Write(pk)
						readPacketBody(bufio.NewReader(c)) //nolint:errcheck // may be taken over
						c.Write([]byte{0xe0, 0x00})
						c.Close()
					}
				}
			})
		}
		wg.Wait()
		waitLeftovers(t, b)
	})
	alive(t, b)
	waitLeftovers(t, b)
}

// subscribeGate holds OnSubscribe (before mochi files the filters) of
// the first SUBSCRIBE of client id "subgate" until released.
type subscribeGate struct {
	mqtt.HookBase
	once    sync.Once
	held    chan *mqtt.Client
	release chan struct{}
}

func (*subscribeGate) ID() string           { return "subscribe-gate" }
func (*subscribeGate) Provides(b byte) bool { return b == mqtt.OnSubscribe }
func (h *subscribeGate) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.ID == "subgate" {
		h.once.Do(func() {
			h.held <- cl
			<-h.release
		})
	}
	return pk
}

// TestSubscribeDuringTakeover: a SUBSCRIBE that the old connection of a
// client id is still handling while a new connection takes the id over
// (clean) files nothing once the takeover has unfiled the old client's
// subscriptions. It filed its filter in mochi's index and the broker's
// after the takeover's UnsubscribeClient, under the client id, where no
// one unfiled it: the new client (and every later one of that id) got
// publishes to a filter it never subscribed to, and the index kept it for
// good.
func TestSubscribeDuringTakeover(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run("v"+strconv.Itoa(int(v)), func(t *testing.T) {
			b := start(t, Options{})
			gate := &subscribeGate{held: make(chan *mqtt.Client), release: make(chan struct{})}
			if err := b.server.AddHook(gate, nil); err != nil {
				t.Fatal(err)
			}
			dial := func() (net.Conn, *bufio.Reader) {
				t.Helper()
				c, err := net.Dial("tcp", b.TCPAddr())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				c.SetDeadline(time.Now().Add(testTimeout))
				c.Write(connectPacket(v, "subgate"))
				r := bufio.NewReader(c)
				if h, _, err := readPacketBody(r); err != nil || h != 0x20 {
					t.Fatalf("no CONNACK: %#x %v", h, err)
				}
				return c, r
			}
			old, _ := dial()
			if v == 5 {
				old.Write([]byte{0x82, 0x0c, 0x00, 0x01, 0x00, 0x00, 0x06, 'r', 'a', 'c', 'e', '/', 'x', 0x01})
			} else {
				old.Write([]byte{0x82, 0x0b, 0x00, 0x01, 0x00, 0x06, 'r', 'a', 'c', 'e', '/', 'x', 0x01})
			}
			var oldCl *mqtt.Client
			select {
			case oldCl = <-gate.held:
			case <-time.After(testTimeout):
				t.Fatal("SUBSCRIBE not held")
			}
			next, _ := dial() // takes the id over: the old client is unsubscribed
			close(gate.release)
			waitFor(t, "the old connection's end", func() bool {
				_, ok := b.conns.Load(oldCl)
				return !ok
			})
			if n := len(b.server.Topics.Subscribers("race/x").Subscriptions); n != 0 {
				t.Errorf("race/x has %d subscribers in mochi's index with the new client connected, want none", n)
			}
			if sc := b.plainIdx.match("race/x", ""); len(sc.out) != 0 {
				t.Errorf("race/x matches %d clients in the broker's index, want none", len(sc.out))
			} else {
				sc.release()
			}
			next.Write([]byte{0xe0, 0x00})
			waitLeftovers(t, b)
		})
	}
}
