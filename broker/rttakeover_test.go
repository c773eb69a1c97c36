package broker

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"
)

// Red team of the takeover fix (arriving's mutex as the one ordering
// point for which mochi client holds a session).

// TestCleanStartTakeoverCountsQueued: a client that takes a persistent
// session over with a clean start replaces it; the QoS 1 messages queued
// on the old connection go away, and are counted as session_ended
// (docs/metrics.md, README), not dropped silently.
func TestCleanStartTakeoverCountsQueued(t *testing.T) {
	b := start(t, Options{})
	_, c, _, _ := awayQueued(t, b, "clean") // q/1 in flight, q/2 and q/3 queued
	before := b.meter.dropped[dropSessionEnded].Load()
	dial5(t, b, "clean", paho5.ClientConfig{}, &paho5.Connect{ClientID: "clean", KeepAlive: 30, CleanStart: true})
	waitClosed(t, "the hand-off", c.handOf().handed.wait())
	if got := b.meter.dropped[dropSessionEnded].Load() - before; got < 2 {
		t.Fatalf("session_ended grew by %d, want at least 2 (q/2 and q/3, queued on the replaced session)", got)
	}
}

// TestTakeoverQuitStormKeepsQoS2: a stream of QoS 2 messages to an MQTT
// 3.1.1 persistent session (clean=false) while its client id is taken
// over again and again, every other client disconnecting at once after
// its CONNACK (a takeover, then the session away at once): the last
// client gets every message [MQTT-4.4.0-1]; none is dropped. Duplicates
// are allowed (each paho client has its own store, so a PUBLISH resent
// before its PUBREC was read is delivered again), losses are not.
func TestTakeoverQuitStormKeepsQoS2(t *testing.T) {
	b := start(t, Options{})
	b.writerIdle.Store(int64(time.Microsecond))
	const id, topic, n, rounds = "q2storm-sub", "q2storm/t", 300, 16
	var mu sync.Mutex
	seen := map[int]int{}
	got := make(chan struct{}, 1)
	var clients []paho.Client
	dial := func() (paho.Client, error) {
		o := paho.NewClientOptions().AddBroker("tcp://" + b.TCPAddr()).SetClientID(id).SetCleanSession(false).
			SetAutoReconnect(false).SetOrderMatters(true).
			SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
				k, _ := strconv.Atoi(string(m.Payload()))
				mu.Lock()
				seen[k]++
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
	if tok := first.Subscribe(topic, 2, nil); !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	pub := dial3(t, b, "q2storm-pub", true)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range n {
			if tok := pub.Publish(topic, 2, false, strconv.Itoa(i)); !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
				t.Errorf("publish %d: %v", i, tok.Error())
				return
			}
		}
	}()
	for k := range rounds {
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		if k%2 == 0 {
			c.Disconnect(0) // took the session over, and leaves it at once
		}
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
				if seen[i] == 0 {
					missing = append(missing, i)
				}
			}
			mu.Unlock()
			t.Fatalf("%d of %d QoS 2 messages never arrived after %d takeovers: %v (broker dropped %d: session ended %d, offline full %d)", len(missing), n, rounds, missing,
				b.stats.Dropped.Load(), b.meter.dropped[dropSessionEnded].Load(), b.meter.dropped[dropOfflineFull].Load())
		}
	}
	if d := b.stats.Dropped.Load(); d != 0 {
		t.Fatalf("the broker dropped %d messages", d)
	}
}

// TestCloseDuringTakeovers: Broker.Close while clients of a few
// persistent sessions take them over again and again (MQTT 3.1.1
// clean=false, every other one leaving at once) and QoS 1 and 2 messages
// are published to them: Close returns, every connection it served ends
// (none stuck on the takeover's locks), and mochi stops in time.
func TestCloseDuringTakeovers(t *testing.T) {
	var logBuf lockedBuffer
	// MaxInflight small: a session away holds at most 64 (mochi sorts a
	// client's in-flight messages on every takeover; 1,024 of them for
	// every one of 160 takeovers is slow under -race, not stuck).
	b := start(t, Options{MaxInflight: 64, Log: zerolog.New(&logBuf).Level(zerolog.WarnLevel)})
	b.writerIdle.Store(int64(time.Microsecond))
	const ids = 8
	ctx := testCtx(t)
	var dials sync.WaitGroup
	var mu sync.Mutex
	var clients []paho.Client
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range clients {
			c.Disconnect(0)
		}
	}()
	enough, closing, closed := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var dialed atomic.Int64
	for i := range ids {
		id := fmt.Sprint("closestorm-", i)
		first := dial3(t, b, id, false)
		first.sub(t, "closestorm/#", 2)
		dials.Add(1)
		go func() {
			defer dials.Done()
			for k := 0; ctx.Err() == nil; k++ {
				o := paho.NewClientOptions().AddBroker("tcp://" + b.TCPAddr()).SetClientID(id).SetCleanSession(false).
					SetAutoReconnect(false).SetConnectTimeout(testTimeout)
				c := paho.NewClient(o)
				mu.Lock()
				clients = append(clients, c)
				mu.Unlock()
				if tok := c.Connect(); !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
					select {
					case <-closing:
					default:
						t.Errorf("%s: connect %d before Close: %v (%d dialed)", id, k, tok.Error(), dialed.Load())
					}
					return // the broker closed
				}
				if dialed.Add(1) == 20*ids {
					close(enough)
				}
				if k%2 == 0 {
					c.Disconnect(0)
				}
			}
		}()
	}
	var pubs sync.WaitGroup
	pubs.Add(1)
	go func() {
		defer pubs.Done()
		for i := 0; ; i++ {
			m := Message{Topic: "closestorm/x", Payload: []byte(strconv.Itoa(i)), QoS: byte(1 + i%2)}
			// A plain event published after Close is not refused (it has
			// no loop to go through): stop when Close returned.
			if err := b.Publish(ctx, Principal{ClientID: "closestorm-pub"}, m); err != nil {
				return
			}
			select {
			case <-closed:
				return
			default:
			}
		}
	}()
	select {
	case <-enough:
	case <-time.After(testTimeout):
		buf := make([]byte, 16<<20)
		buf = buf[:runtime.Stack(buf, true)]
		os.WriteFile(filepath.Join(os.TempDir(), "closestorm-stacks.txt"), buf, 0o644)
		close(closing)
		t.Fatalf("the takeovers stalled at %d connections (goroutines in %s)", dialed.Load(), filepath.Join(os.TempDir(), "closestorm-stacks.txt"))
	}
	close(closing)
	began := time.Now()
	go func() { b.Close(); close(closed) }()
	waitClosed(t, "Broker.Close", closed)
	t.Logf("Close took %v", time.Since(began))
	served := make(chan struct{})
	go func() { b.sessions.Wait(); close(served) }()
	waitClosed(t, "the connections Close ended", served)
	waitGroup(t, "the clients' dialers", &dials)
	waitGroup(t, "the publisher", &pubs)
	if s := logBuf.String(); strings.Contains(s, "did not stop") {
		t.Fatalf("Close gave up waiting:\n%s", s)
	}
}

// lockedBuffer is a log written by many goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestHeldForClientThatNeverConnects: a client coming back to a session
// away that never has its connection filed (OnSessionEstablish ran, mochi
// filed it, its CONNACK could not be written): what is published for the
// session meanwhile waits for it, at most MaxInflight (the rest dropped,
// counted offline_full), and is not stuck there: once the client stopped,
// the $SYS sweep holds it in the session's in-flight state, to be resent
// when the session comes back.
func TestHeldForClientThatNeverConnects(t *testing.T) {
	b := start(t, Options{MaxInflight: 8})
	const id = "neverconnects"
	c := dial3(t, b, id, false)
	c.sub(t, "nc/#", 1)
	c.Disconnect(0)
	waitConnGone(t, b, id)
	cl := b.server.NewClient(nil, "test", id, false)
	cl.Properties.ProtocolVersion = 4
	b.arriving.register(b, cl, false) // OnSessionEstablish
	b.server.Clients.Add(cl)          // mochi's takeover
	full := b.meter.dropped[dropOfflineFull].Load()
	for i := range 12 {
		if err := b.Publish(testCtx(t), Principal{ClientID: "nc-pub"}, Message{Topic: "nc/x", Payload: []byte(strconv.Itoa(i)), QoS: 1}); err != nil {
			t.Fatal(err)
		}
	}
	b.arriving.lock()
	held := 0
	if s := b.arriving.by[id]; s != nil {
		held = len(s.msgs)
	}
	b.arriving.unlock()
	if dropped := b.meter.dropped[dropOfflineFull].Load() - full; held != 8 || dropped != 4 {
		t.Fatalf("%d held for the arriving client and %d dropped (offline_full), want 8 and 4", held, dropped)
	}
	cl.Stop(nil) // its CONNACK could not be written
	waitFor(t, "the sweep", func() bool {
		b.arriving.lock()
		defer b.arriving.unlock()
		return b.arriving.by[id] == nil
	})
	if n := cl.State.Inflight.Len(); n != 8 {
		t.Fatalf("%d held in the session's in-flight state after the sweep, want 8", n)
	}
}
