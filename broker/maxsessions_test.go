package broker

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/rs/zerolog"
)

// leftHook reports each client's end (OnDisconnect) by client id. Added
// after the broker's hook, it runs after the broker's OnDisconnect: once
// it reports an id, that client's session was filed as away and the
// sessions past Options.MaxSessions ended (sessionLeft).
type leftHook struct {
	mqtt.HookBase
	mu   sync.Mutex
	seen map[string]int
	ch   chan struct{} // one slot: an end was reported
}

func (*leftHook) ID() string           { return "left" }
func (*leftHook) Provides(b byte) bool { return b == mqtt.OnDisconnect }
func (h *leftHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.mu.Lock()
	h.seen[cl.ID]++
	h.mu.Unlock()
	select {
	case h.ch <- struct{}{}:
	default:
	}
}

// addLeftHook adds a leftHook to b.
func addLeftHook(t testing.TB, b *Broker) *leftHook {
	t.Helper()
	h := &leftHook{seen: map[string]int{}, ch: make(chan struct{}, 1)}
	if err := b.server.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	return h
}

// wait waits until n ends of id's clients were reported in all.
func (h *leftHook) wait(t testing.TB, id string, n int) {
	t.Helper()
	deadline := time.After(testTimeout)
	for {
		h.mu.Lock()
		got := h.seen[id]
		h.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-h.ch:
		case <-deadline:
			t.Fatalf("%s's end (OnDisconnect) not reported", id)
		}
	}
}

// subscribeAll subscribes p to filters at QoS 1 in one SUBSCRIBE and
// waits for its SUBACK.
func (p *ownerPeer) subscribeAll(t *testing.T, v byte, filters ...string) {
	t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: v, PacketID: 1}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	p.c.Write(ownerPacket(t, pk))
	if _, body := p.next(t, 9); len(body) < 2+len(filters) || body[len(body)-1] >= 0x80 {
		t.Fatalf("SUBACK % x", body)
	}
}

// pingNone sends a PINGREQ and fails if a PUBLISH comes before its
// PINGRESP: the session has nothing held for its client.
func (p *ownerPeer) pingNone(t *testing.T, what string) {
	t.Helper()
	p.c.Write([]byte{0xc0, 0})
	for {
		h, body, err := readPacketBody(p.r)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		switch h >> 4 {
		case packets.Pingresp:
			return
		case packets.Publish:
			t.Fatalf("%s: got PUBLISH % x, want nothing", what, body)
		}
	}
}

// leave connects a persistent session of id (MQTT version v; MQTT 5:
// Session Expiry and Will Delay an hour), subscribed to filters, with a
// will on will/<id>, and ends its connection without DISCONNECT; it
// returns once the broker has seen the end (h).
func leave(t *testing.T, b *Broker, h *leftHook, v byte, id string, filters ...string) {
	t.Helper()
	p, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, v, id, false, 3600, &rawWill{topic: "will/" + id, payload: id, delay: 3600}))
	if code != 0 || present {
		t.Fatalf("%s: CONNACK code %#x, present %v", id, code, present)
	}
	if len(filters) > 0 {
		p.subscribeAll(t, v, filters...)
	}
	p.c.Close()
	h.wait(t, id, 1)
}

// waitHeld waits until mochi holds n messages in flight for the session
// of id, away: a publish reaching it while its ended connection still
// hands its queue on (conn.handOffLocked) is held once that is done.
func waitHeld(t *testing.T, b *Broker, id string, n int) {
	t.Helper()
	waitFor(t, id+"'s held message", func() bool {
		cl, ok := b.server.Clients.Get(id)
		return ok && cl.State.Inflight.Len() == n
	})
}

// indexed reports whether client id is subscribed to topic in the
// broker's index (delivery's) or mochi's.
func indexed(b *Broker, topic, id string) (broker, mochi bool) {
	sc := b.plainIdx.match(topic, "")
	for _, m := range sc.out {
		broker = broker || m.client == id
	}
	sc.release()
	_, mochi = b.server.Topics.Subscribers(topic).Subscriptions[id]
	return broker, mochi
}

// TestMaxSessions: n+k persistent sessions left behind with MaxSessions n
// keep n; the k away longest are ended as if expired: their delayed
// wills published (MQTT 5, Will Delay an hour), their subscriptions gone
// from both indexes, their held message dropped and counted, and a
// resume gets Session Present 0 and nothing. The newest resumes with
// Session Present 1 and its held message. Negative: no bound. Before
// the change every session was kept (5 of 5, none ended).
func TestMaxSessions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		v       byte
		max     int
		n, kept int
	}{
		{"v5 bound 3", 5, 3, 5, 3},
		{"v3.1.1 bound 3", 4, 3, 5, 3},
		{"v5 bound 1", 5, 1, 4, 1},
		{"v5 no bound", 5, -1, 5, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{MaxSessions: tc.max})
			h := addLeftHook(t, b)
			watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "watcher", true, 0, nil))
			watcher.subscribe(t, 5, "will/#", 0)
			pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "pub", true, 0, nil))
			ids := make([]string, tc.n)
			for i := range ids {
				ids[i] = fmt.Sprint("s", i)
				leave(t, b, h, tc.v, ids[i], "f/"+ids[i], "g/"+ids[i]+"/#")
				pub.publish1(t, 5, "f/"+ids[i], "held "+ids[i]) // held in flight for the session away
				waitHeld(t, b, ids[i], 1)
			}
			gone := tc.n - tc.kept
			if got := b.away.len(); got != tc.kept {
				t.Errorf("sessions away: %d, want %d", got, tc.kept)
			}
			if got := b.stats.SessionsEnded.Load(); got != int64(gone) {
				t.Errorf("sessions ended: %d, want %d", got, gone)
			}
			if got, want := b.server.Clients.Len(), tc.kept+2; got != want {
				t.Errorf("mochi keeps %d clients, want %d (the watcher, the publisher and %d away)", got, want, tc.kept)
			}
			if got := b.meter.dropped[dropSessionEnded].Load(); got != int64(gone) {
				t.Errorf("dropped session_ended: %d, want %d (one held message each)", got, gone)
			}
			if tc.v == 5 {
				// The ended sessions' delayed wills, in the order they
				// ended (oldest first), and no other: then the marker.
				pub.publish1(t, 5, "will/marker", "m")
				for _, id := range append(ids[:gone:gone], "marker") {
					if m := watcher.readPublish(t, 5); m.topic != "will/"+id {
						t.Fatalf("watcher got %q, want will/%s", m.topic, id)
					}
				}
			}
			for i, id := range ids {
				ended := i < gone
				for _, topic := range []string{"f/" + id, "g/" + id + "/x"} {
					bi, mi := indexed(b, topic, id)
					if bi == ended || mi == ended {
						t.Errorf("%s (ended %v) subscribed to %s: broker's index %v, mochi's %v", id, ended, topic, bi, mi)
					}
				}
			}
			// The oldest resumed: ended, a clean session and nothing held;
			// the newest: its session and its held message.
			for _, i := range []int{0, tc.n - 1} {
				id, ended := ids[i], i < gone
				p, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, tc.v, id, false, 3600, nil))
				if code != 0 || present == ended {
					t.Fatalf("%s (ended %v) resumed: code %#x, Session Present %v", id, ended, code, present)
				}
				if ended {
					p.pingNone(t, id+" resumed after its session ended")
					continue
				}
				if m := p.readPublish(t, tc.v); m.topic != "f/"+id || m.payload != "held "+id {
					t.Fatalf("%s resumed: got %q %q, want its held message", id, m.topic, m.payload)
				}
			}
		})
	}
}

// TestMaxSessionsResumeRace: the CONNECT of a session away (Clean Start
// 0) races with the disconnect of another client that makes it the
// session past MaxSessions (1). Either the resume comes first (Session
// Present 1: its subscription filed in both indexes, its held message
// resent) or the session ends first (Session Present 0: no
// subscription, nothing resent, its will published); never half of one.
// (MQTT 3.1.1 wills have no delay: a's is published as it leaves.)
func TestMaxSessionsResumeRace(t *testing.T) {
	rounds := 300
	if testing.Short() {
		rounds = 50
	}
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprint("v", v), func(t *testing.T) {
			b := start(t, Options{MaxSessions: 1})
			h := addLeftHook(t, b)
			pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "pub", true, 0, nil))
			watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "watcher", true, 0, nil))
			watcher.subscribe(t, 5, "will/#", 0)
			resumed, ended := 0, 0
			for i := range rounds {
				a, other := fmt.Sprint("a", i), fmt.Sprint("b", i)
				leave(t, b, h, v, a, "r/"+a) // away: the one session kept (it ended the previous round's)
				pub.publish1(t, 5, "r/"+a, "held")
				settle(t, b)
				waitHeld(t, b, a, 1)
				bp, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, v, other, false, 3600, nil))
				start := make(chan struct{})
				go func() {
					<-start
					bp.c.Close() // its session away ends a's, unless a is back first
				}()
				close(start)
				p, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, v, a, false, 3600, nil))
				h.wait(t, other, 1)
				if code != 0 {
					t.Fatalf("round %d: %s resumed with code %#x", i, a, code)
				}
				bi, mi := indexed(b, "r/"+a, a)
				if bi != present || mi != present {
					t.Fatalf("round %d: Session Present %v, but subscribed in the broker's index %v, mochi's %v", i, present, bi, mi)
				}
				// a's will (MQTT 5: delayed an hour) is published if its
				// session ended, never if it resumed: then a marker.
				pub.publish1(t, 5, "will/marker", "m")
				wills := 0
				for m := watcher.readPublish(t, 5); m.topic != "will/marker"; m = watcher.readPublish(t, 5) {
					if m.topic != "will/"+a {
						t.Fatalf("round %d: watcher got %q", i, m.topic)
					}
					wills++
				}
				if want := map[bool]int{true: 0, false: 1}[present]; v == 5 && wills != want {
					t.Fatalf("round %d: Session Present %v, %s's will published %d times, want %d", i, present, a, wills, want)
				}
				if present {
					resumed++
					if m := p.readPublish(t, v); m.topic != "r/"+a || m.payload != "held" {
						t.Fatalf("round %d: resumed, got %q %q, want the held message", i, m.topic, m.payload)
					}
				} else {
					ended++
					p.pingNone(t, fmt.Sprint("round ", i, ": session ended"))
				}
				p.c.Close() // away again: the next round's leave ends it
				h.wait(t, a, 2)
			}
			t.Logf("%d rounds: %d resumed, %d ended first", rounds, resumed, ended)
			if got, want := b.away.len(), 1; got != want {
				t.Errorf("sessions away: %d, want %d", got, want)
			}
		})
	}
}

// TestMaxSessionsMemory (MOTE_SESSIONS_MEM=1; MOTE_SESSIONS_N sessions,
// default 20,000) measures the heap that sessions of 10 subscriptions
// each, left behind, hold with no bound and with MaxSessions 1,000, and
// how long a disconnect takes to be through the broker's OnDisconnect
// (the session filed as away, and one ended past the bound). The broker
// logs nothing (a test's log keeps every line in memory), and the test's
// own connections are let go as they close. It does not wait for the
// ended connections to leave byID (conn.handOffLocked): most of them
// were still there minutes later, with or without the bound.
func TestMaxSessionsMemory(t *testing.T) {
	if os.Getenv("MOTE_SESSIONS_MEM") == "" {
		t.Skip("MOTE_SESSIONS_MEM=1 to measure")
	}
	n := 20_000
	if s := os.Getenv("MOTE_SESSIONS_N"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	for _, max := range []int{-1, 1000} {
		t.Run(fmt.Sprint("max=", max), func(t *testing.T) {
			before := liveHeap()
			b, err := New(Options{TCP: "127.0.0.1:0", WS: "off", MaxSessions: max, Log: zerolog.Nop()})
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Start(); err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			h := addLeftHook(t, b)
			var took, first, last time.Duration // all, the first and the last tenth
			for i := range n {
				id := fmt.Sprint("mem", i)
				filters := make([]string, 10)
				for j := range filters {
					filters[j] = fmt.Sprintf("m/%d/%d/+/x", i, j)
				}
				d := leaveTimed(t, b, h, id, filters)
				took += d
				switch {
				case i < n/10:
					first += d
				case i >= n-n/10:
					last += d
				}
			}
			// The ended connections hand their queues on (their writers
			// exit, conn.finish) and leave byID.
			routes := 0 // ended connections still their sessions' route (conn.handOffLocked)
			b.byID.Range(func(_, _ any) bool { routes++; return true })
			heap := liveHeap()
			if path := os.Getenv("MOTE_SESSIONS_HEAPPROFILE"); path != "" {
				f, err := os.Create(fmt.Sprint(path, ".", max))
				if err != nil {
					t.Fatal(err)
				}
				pprof.WriteHeapProfile(f) //nolint:errcheck // a measurement's aid
				f.Close()
				if f, err = os.Create(fmt.Sprint(path, ".", max, ".goroutines")); err == nil {
					pprof.Lookup("goroutine").WriteTo(f, 1) //nolint:errcheck // a measurement's aid
					f.Close()
				}
			}
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			t.Logf("max_sessions %d: %d sessions left, %d kept, %d ended; heap in use %.1f MB, live %.1f MB above the start; disconnect through OnDisconnect %v a session (the first tenth %v, the last %v); %d ended connections still routes in byID, %d writers, %d goroutines",
				max, n, b.away.len(), b.stats.SessionsEnded.Load(), float64(m.HeapInuse)/1e6, float64(int64(heap)-int64(before))/1e6, took/time.Duration(n), first/time.Duration(n/10), last/time.Duration(n/10), routes, b.stats.Writers.Load(), runtime.NumGoroutine())
		})
	}
}

// leaveTimed is leave for MQTT 5 with no will, keeping nothing of the
// connection once it is closed; it returns the time from the close to
// the broker's OnDisconnect being through.
func leaveTimed(t *testing.T, b *Broker, h *leftHook, id string, filters []string) time.Duration {
	t.Helper()
	c, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout))
	p := &ownerPeer{c: c, r: bufio.NewReader(c)}
	c.Write(rawConnect(t, 5, id, false, 3600, nil))
	if _, body := p.next(t, 2); len(body) < 2 || body[1] != 0 {
		t.Fatalf("%s: CONNACK % x", id, body)
	}
	p.subscribeAll(t, 5, filters...)
	t0 := time.Now()
	c.Close()
	h.wait(t, id, 1)
	return time.Since(t0)
}

// BenchmarkAwaySessions: filing a session as away and taking the one away
// longest out, with 1,000 and 100,000 away: the same cost (O(1)).
func BenchmarkAwaySessions(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprint("away=", n), func(b *testing.B) {
			var a awaySessions
			cls := make([]*mqtt.Client, n+1)
			for i := range cls {
				cls[i] = &mqtt.Client{ID: fmt.Sprint("c", i)}
			}
			for _, cl := range cls[:n] {
				a.leftLocked(cl, "")
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				a.leftLocked(cls[(i+n)%len(cls)], "")
				if cl, _ := a.oldestOver(n); cl == nil {
					b.Fatal("none over the bound")
				}
			}
		})
	}
}
