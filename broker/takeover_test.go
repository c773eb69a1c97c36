package broker

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mote-mqtt/mote/internal/mochi"
)

// The two races between a takeover and the broker putting messages into a
// session's mochi client (see the storms in rtidle_test.go), each stopped
// at the moment it lost messages, with mochi's hooks and the broker's own
// barriers.

// TestHeldAfterInflightCopy: a message for a session that is away,
// published while mochi moves the session to a client coming back (after
// it copied the old client's in-flight messages to the new one, before it
// filed the new one), waits for the new client's connection. It used to
// be held in the old client's in-flight state, which mochi had copied
// already and was clearing: lost, no drop counted.
func TestHeldAfterInflightCopy(t *testing.T) {
	b := start(t, Options{})
	raw, c, old, pub := awayQueued(t, b, "away")
	raw.Close()
	waitClosed(t, "the hand-off", c.handOf().handed.wait())                                                         // away: q/1..q/3 held in old's in-flight state
	h := addBlockHook(t, b, mqtt.OnQosDropped, func(cl *mqtt.Client) bool { return cl == old && cl.IsTakenOver() }) // ClearInflights, after the copy
	in, cfg, cp := resumeConfig("away")
	dialed := dialAsync(t, b, "away", cfg, cp)
	waitClosed(t, "mochi's copy of the in-flight messages", h.blocked)
	publishQ(t, pub, 4)
	close(h.release)
	waitDialed(t, dialed)
	wantOrder(t, in, 4)
}

// TestHandOnToNewerClient: a connection ends with messages queued while
// its session's mochi client is another one, which took the session over
// without going through the connection (its CONNECT came while the
// connection was not filed: mochi filed it, the broker never told the
// connection). Its leftovers go to that client: held for its connection
// while it is live, in its in-flight state when it is away, and dropped
// and counted when it is another user's. They used to be dropped
// silently.
func TestHandOnToNewerClient(t *testing.T) {
	for _, tc := range []struct {
		name   string
		user   string // the newer client's
		closed bool
	}{
		{"live", "", false},
		{"away", "", true},
		{"other user", "bob", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			raw, c, _, _ := awayQueued(t, b, "away") // q/1 in flight, q/2 and q/3 queued
			newer := b.server.NewClient(nil, "test", "away", false)
			newer.Properties.Username = []byte(tc.user)
			newer.Properties.ProtocolVersion = 5
			// it resumes the session: a session that ends with its
			// connection holds nothing while away (holdOffline, D2)
			newer.Properties.EditProps().SessionExpiryInterval, newer.Properties.EditProps().SessionExpiryIntervalFlag = 300, true
			if tc.closed {
				newer.Stop(nil)
			}
			b.server.Clients.Add(newer) // mochi's takeover, unknown to c
			droppedBefore := b.meter.dropped[dropSessionEnded].Load()
			raw.Close()
			waitClosed(t, "the hand-off", c.handOf().handed.wait())
			var got []string
			switch {
			case tc.user != "":
			case tc.closed:
				for _, pk := range newer.State.Inflight.GetAll(false) {
					got = append(got, pk.TopicName)
				}
			default:
				b.arriving.lock()
				if s := b.arriving.by["away"]; s != nil && s.cl == newer {
					for _, m := range s.msgs {
						got = append(got, m.msg.topic)
					}
				}
				b.arriving.unlock()
			}
			dropped := b.meter.dropped[dropSessionEnded].Load() - droppedBefore
			want, wantDropped := []string{"q/2", "q/3"}, int64(0)
			if tc.user != "" {
				want, wantDropped = nil, 2
			}
			if !slices.Equal(got, want) || dropped != wantDropped {
				t.Fatalf("the newer client holds %v and %d were dropped (session ended), want %v and %d", got, dropped, want, wantDropped)
			}
		})
	}
}

// TestAdoptWhenSuperseded: a client's connection is filed (adopt) unless
// mochi gave the session to a newer client meanwhile; when a newer client
// is only registered (OnSessionEstablish ran, mochi has not filed it
// yet), the connection is filed and told to expect it; what was held for
// the client goes ahead of its queue.
func TestAdoptWhenSuperseded(t *testing.T) {
	for _, tc := range []struct {
		name       string
		registered bool // a newer client ran OnSessionEstablish
		filed      bool // mochi filed it (Clients.Add)
		wantFiled  bool
		wantExpect bool
	}{
		{"alone", false, false, true, false},
		{"newer registered", true, false, true, true},
		{"newer filed", true, true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			const id = "adopt"
			cl := b.server.NewClient(nil, "test", id, false)
			b.server.Clients.Add(cl)
			b.arriving.register(b, cl, false)
			m := &plainItem{msg: &message{topic: "t", payload: []byte("held")}, qos: 1}
			if c, ok := b.arriving.give(b, id, "", m); c != nil || !ok {
				t.Fatalf("give: a connection %v, %v; want the message held for the arriving client", c, ok)
			}
			newer := b.server.NewClient(nil, "test", id, false)
			if tc.registered {
				b.arriving.register(b, newer, false)
			}
			if tc.filed {
				b.server.Clients.Add(newer)
			}
			out := &mqttOut{b: b, cl: cl}
			c := newConn(b, mqttPrincipal(cl), id, false, out)
			out.q = c.q
			c.q.hold() // its writer takes nothing: what adopt queued stays to be counted
			t.Cleanup(func() { b.byID.CompareAndDelete(id, c); c.q.release(); c.close() })
			filed, expect, _ := b.arriving.adopt(b, cl, c)
			if filed != tc.wantFiled || (expect == newer) != tc.wantExpect || (expect != nil && expect != newer) {
				t.Fatalf("adopt: filed %v, expect the newer client %v; want %v, %v", filed, expect == newer, tc.wantFiled, tc.wantExpect)
			}
			if got := b.connByID(id) == c; got != tc.wantFiled {
				t.Fatalf("the connection is filed: %v, want %v", got, tc.wantFiled)
			}
			c.q.mu.Lock()
			queued := len(c.q.items) - c.q.head
			c.q.mu.Unlock()
			b.arriving.lock()
			var waiting []*plainItem
			if s := b.arriving.by[id]; s != nil {
				waiting = s.msgs
			}
			b.arriving.unlock()
			switch {
			case tc.registered && (queued != 0 || len(waiting) != 1 || waiting[0] != m):
				t.Fatalf("%d queued and %d waiting, want the held message waiting for the newer client", queued, len(waiting))
			case !tc.registered && (queued != 1 || len(waiting) != 0):
				t.Fatalf("%d queued and %d waiting, want the held message queued to the connection", queued, len(waiting))
			}
		})
	}
}

// TestConcurrentTakeoverStormKeepsQoS1: the takeover storm with two
// clients of the session's id connecting at once each time (mochi moves
// the session to both, in an order the broker does not choose; one may be
// taken over before its CONNACK), then one last client: it gets every
// QoS 1 message of a stream published meanwhile, none dropped. It runs
// adopt's two other cases (a newer client registered, or filed by mochi,
// before the broker files a client's connection) end to end.
func TestConcurrentTakeoverStormKeepsQoS1(t *testing.T) {
	b := start(t, Options{})
	b.writerIdle.Store(int64(time.Microsecond))
	const id, topic, n, rounds = "cstorm-sub", "cstorm/t", 300, 8
	var mu sync.Mutex
	seen := map[int]bool{}
	got := make(chan struct{}, 1)
	var clients []paho.Client
	dial := func() (paho.Client, error) {
		o := paho.NewClientOptions().AddBroker("tcp://" + b.TCPAddr()).SetClientID(id).SetCleanSession(false).
			SetAutoReconnect(false).SetOrderMatters(true).
			SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
				k, _ := strconv.Atoi(string(m.Payload()))
				mu.Lock()
				seen[k] = true
				mu.Unlock()
				select {
				case got <- struct{}{}:
				default:
				}
			})
		c := paho.NewClient(o)
		mu.Lock()
		clients = append(clients, c)
		mu.Unlock()
		tok := c.Connect()
		if !tok.WaitTimeout(testTimeout) {
			return nil, fmt.Errorf("connect %s: timed out", id)
		}
		return c, tok.Error()
	}
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range clients {
			c.Disconnect(0)
		}
	}()
	first, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	if tok := first.Subscribe(topic, 1, nil); !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	pub := dial3(t, b, "cstorm-pub", true)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			if tok := pub.Publish(topic, 1, false, strconv.Itoa(i)); !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
				t.Errorf("publish %d: %v", i, tok.Error())
				return
			}
		}
	}()
	for range rounds {
		var both sync.WaitGroup
		for range 2 {
			both.Add(1)
			go func() {
				defer both.Done()
				dial() //nolint:errcheck // one of the two may be taken over before its CONNACK
			}()
		}
		waitGroup(t, "two clients taking the session over", &both)
	}
	waitGroup(t, "publisher", &wg)
	if _, err := dial(); err != nil { // the session's last client
		t.Fatal(err)
	}
	settle(t, b)
	deadline := time.After(testTimeout)
	for {
		mu.Lock()
		k := len(seen)
		mu.Unlock()
		if k == n {
			break
		}
		select {
		case <-got:
		case <-deadline:
			mu.Lock()
			var missing []int
			for i := range n {
				if !seen[i] {
					missing = append(missing, i)
				}
			}
			mu.Unlock()
			t.Fatalf("%d of %d QoS 1 messages never arrived after %d rounds of two takeovers at once: %v (broker dropped %d: session ended %d, offline full %d)", len(missing), n, rounds, missing,
				b.stats.Dropped.Load(), b.meter.dropped[dropSessionEnded].Load(), b.meter.dropped[dropOfflineFull].Load())
		}
	}
}
