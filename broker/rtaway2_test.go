package broker

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mote-mqtt/mote/internal/mochi"
)

// TestAwayResumeHammer: sessions leave and come back (DISCONNECT, or a
// new connection taking the session over) while a publisher floods QoS 0
// and QoS 1 messages to them: a client gets every QoS 0 message whose
// publish began after its CONNACK and returned before it left, and every
// QoS 1 message (once the session is back for good), nothing counted
// dropped. deliverTo skips messages to sessions away without arriving's
// mutex (arriving.settled): a message it skipped that give would have
// held shows here as a gap.
func TestAwayResumeHammer(t *testing.T) {
	for _, tc := range []struct {
		name     string
		takeover bool // a new connection takes the session over instead of DISCONNECT
		sessions int
		rounds   int
	}{
		{name: "disconnect", sessions: 8, rounds: 30},
		{name: "takeover", takeover: true, sessions: 8, rounds: 30},
		// Many ids, over many of arriving's shards, some sharing one:
		// settled is per shard (a client arriving for one id, or a holder
		// marking it, turns the shortcut off for its shard only).
		{name: "many ids", sessions: 40, rounds: 6},
		{name: "many ids takeover", takeover: true, sessions: 40, rounds: 6},
	} {
		t.Run(tc.name, func(t *testing.T) { hammerAway(t, tc.takeover, tc.sessions, tc.rounds) })
	}
}

func hammerAway(t *testing.T, takeover bool, sessions, rounds int) {
	var started, returned atomic.Int64 // seq of the next publish begun, and returned
	b := start(t, Options{MaxInflight: 60000})
	left := addLeftHook(t, b)
	// From the broker's OnSessionEstablish on (it registers the client
	// coming back: arriving.register), a message reaches the client: the
	// first publish begun then, per session, is where a connection's
	// window opens (its CONNACK comes later).
	opened := make([]atomic.Int64, sessions)
	establish := &establishFunc{f: func(cl *mqtt.Client) {
		var i int
		if _, err := fmt.Sscanf(cl.ID, "ham-%d", &i); err == nil {
			opened[i].Store(started.Load())
		}
	}}
	if err := b.server.AddHook(establish, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(testCtx(t), 90*time.Second)
	defer cancel()
	var slowest atomic.Int64
	stop := make(chan struct{})
	pubDone := make(chan error, 1)
	qosOf := func(seq int64) byte { return byte(seq % 2) }

	type got struct {
		mu  sync.Mutex
		all map[int64]bool
	}
	// dial connects id's session; what comes is noted in g (this
	// connection's) and all (the session's).
	dial := func(id string, g, all *got, ch chan int64) (paho.Client, error) {
		o := paho.NewClientOptions().AddBroker("tcp://" + b.TCPAddr()).SetClientID(id).
			SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).SetOrderMatters(true)
		o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			seq, _ := strconv.ParseInt(string(m.Payload()), 10, 64)
			for _, x := range []*got{g, all} {
				x.mu.Lock()
				x.all[seq] = true
				x.mu.Unlock()
			}
			select {
			case ch <- seq:
			default:
			}
		})
		c := paho.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			return nil, fmt.Errorf("connect %s: %v", id, tok.Error())
		}
		return c, nil
	}

	// Subscribe every session, then leave it away.
	gots := make([]*got, sessions)
	for i := range sessions {
		gots[i] = &got{all: map[int64]bool{}}
		c, err := dial(fmt.Sprint("ham-", i), gots[i], gots[i], make(chan int64, 1))
		if err != nil {
			t.Fatal(err)
		}
		if tok := c.Subscribe("h/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		c.Disconnect(0)
		if err := awayNow(b, left, fmt.Sprint("ham-", i)); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		// Paced (load, not synchronisation): the clients, under the race
		// detector, keep up, so the slow-client policy drops nothing.
		tick := time.NewTicker(500 * time.Microsecond)
		defer tick.Stop()
		for seq := int64(0); ; seq++ {
			select {
			case <-stop:
				pubDone <- nil
				return
			case <-tick.C:
			}
			started.Store(seq + 1)
			m := Message{Topic: "h/x", Payload: []byte(strconv.FormatInt(seq, 10)), QoS: qosOf(seq)}
			t0 := time.Now()
			err := b.Publish(ctx, systemPrincipal, m)
			if d := int64(time.Since(t0)); d > slowest.Load() {
				slowest.Store(d)
			}
			if err != nil {
				pubDone <- err
				return
			}
			returned.Store(seq + 1)
		}
	}()

	errs := make(chan error, sessions)
	var wg sync.WaitGroup
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- hammerSession(ctx, fmt.Sprint("ham-", i), rounds, takeover, &started, &returned, qosOf,
				func(ch chan int64) (paho.Client, func() map[int64]bool, error) {
					g := &got{all: map[int64]bool{}}
					c, err := dial(fmt.Sprint("ham-", i), g, gots[i], ch)
					// What the session got: a connection taken over may
					// still be written what was queued to it (its client
					// is the same application), so the session's whole set.
					snap := func() map[int64]bool {
						gots[i].mu.Lock()
						defer gots[i].mu.Unlock()
						return maps.Clone(gots[i].all)
					}
					return c, snap, err
				},
				func() error { return awayNow(b, left, fmt.Sprint("ham-", i)) }, &opened[i])
		}()
	}
	wg.Wait()
	close(stop)
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	total := returned.Load()
	// Every QoS 1 message reaches every session, once it is back for good.
	for i := range sessions {
		ch := make(chan int64, 1)
		c, err := dial(fmt.Sprint("ham-", i), gots[i], gots[i], ch)
		if err != nil {
			t.Fatal(err)
		}
		missing := func() []int64 {
			gots[i].mu.Lock()
			defer gots[i].mu.Unlock()
			var m []int64
			for s := int64(0); s < total; s++ {
				if qosOf(s) == 1 && !gots[i].all[s] {
					m = append(m, s)
				}
			}
			return m
		}
		deadline := time.After(20 * time.Second)
		for len(missing()) > 0 {
			select {
			case <-ch:
			case <-deadline:
				m := missing()
				t.Errorf("ham-%d: %d QoS 1 messages of %d never came (first %v)", i, len(m), total/2, m[:min(len(m), 10)])
			}
			if t.Failed() {
				break
			}
		}
		c.Disconnect(0)
	}
	if d := b.stats.Dropped.Load(); d != 0 {
		t.Errorf("%d messages counted dropped, want none (sized so none need be)", d)
	}
	t.Logf("%d messages published, the slowest publish %v", total, time.Duration(slowest.Load()))
}

// hammerSession connects the session id rounds times; each time it
// checks that every QoS 0 message published while it was connected came.
func hammerSession(ctx context.Context, id string, rounds int, takeover bool, started, returned *atomic.Int64, qosOf func(int64) byte,
	dial func(chan int64) (paho.Client, func() map[int64]bool, error), away func() error, opened *atomic.Int64) error {
	var prev paho.Client
	for r := range rounds {
		ch := make(chan int64, 1024)
		c, snap, err := dial(ch)
		if err != nil {
			return err
		}
		if prev != nil {
			prev.Disconnect(0) // taken over: its connection is gone already
		}
		lo := opened.Load() // begun after the broker registered the client coming back
		for n := 0; n < 20; {
			select {
			case <-ch:
				n++
			case <-ctx.Done():
				return fmt.Errorf("%s round %d: nothing came: %v", id, r, ctx.Err())
			}
		}
		hi := returned.Load() // returned while connected
		deadline := time.After(10 * time.Second)
	wait:
		for {
			select {
			case s := <-ch:
				if s >= hi-1 {
					break wait
				}
			case <-deadline:
				break wait
			}
		}
		got := snap()
		var missing []int64
		for s := lo; s < hi; s++ {
			if qosOf(s) == 0 && !got[s] {
				missing = append(missing, s)
			}
		}
		if len(missing) > 0 && !takeover {
			c.Disconnect(0)
			return fmt.Errorf("%s round %d: %d QoS 0 messages of [%d,%d) never came while connected (first %v)", id, r, len(missing), lo, hi, missing[:min(len(missing), 10)])
		}
		if takeover && r%2 == 0 {
			prev = c // the next round's connection takes the session over
			continue
		}
		c.Disconnect(0)
		prev = nil
		if !takeover {
			if err := away(); err != nil {
				return fmt.Errorf("%s round %d: %w", id, r, err)
			}
		}
	}
	if prev != nil {
		prev.Disconnect(0)
	}
	return nil
}

// awayNow waits until the session id's last connection ended and handed
// its messages on (OnDisconnect reported, no connection filed), bounded:
// the next CONNECT resumes a session away, not one still connected.
func awayNow(b *Broker, h *leftHook, id string) error {
	deadline := time.After(testTimeout)
	for {
		h.mu.Lock()
		n := h.seen[id]
		h.mu.Unlock()
		if n > 0 && b.connByID(id) == nil {
			h.mu.Lock()
			h.seen[id] = 0
			h.mu.Unlock()
			return nil
		}
		select {
		case <-h.ch:
		case <-time.After(time.Millisecond): // connByID changes after OnDisconnect
		case <-deadline:
			return fmt.Errorf("%s: no hand-off of its connection", id)
		}
	}
}

// TestArrivingSettled: settled tells, without arriving's mutex, that
// nothing it guards changed since a stamp and no client is arriving: not
// while the mutex is held (the stamp odd, or taken since), not once it
// was taken and let go, not while by holds a client coming back, and yes
// once by is empty again and no one took it since the stamp.
func TestArrivingSettled(t *testing.T) {
	// x and y: two ids of different shards; x2 shares x's.
	var a0 arriving
	x, y, x2 := "x", "", ""
	for i := 0; y == "" || x2 == ""; i++ {
		id := fmt.Sprint("id-", i)
		switch a0.shardOf(id) {
		case a0.shardOf(x):
			x2 = cmp.Or(x2, id)
		default:
			y = cmp.Or(y, id)
		}
	}
	for _, tc := range []struct {
		name string
		run  func(a *arriving) bool // settled for x, as a reader between stamp and re-check sees it
		want bool
	}{
		{name: "quiet", want: true, run: func(a *arriving) bool {
			return a.shardOf(x).settled(a.shardOf(x).stamp())
		}},
		{name: "stamped while held and marked", run: func(a *arriving) bool {
			a.lock() // a holder mid-change: what the reader read may be half of it
			defer a.unlock()
			a.mark(x)
			return a.shardOf(x).settled(a.shardOf(x).stamp())
		}},
		{name: "marked since the stamp", run: func(a *arriving) bool {
			v := a.shardOf(x).stamp()
			a.lock()
			defer a.unlock()
			a.mark(x)
			return a.shardOf(x).settled(v)
		}},
		{name: "marked and let go since the stamp", run: func(a *arriving) bool {
			v := a.shardOf(x).stamp()
			a.lock()
			a.mark(x)
			a.unlock()
			return a.shardOf(x).settled(v)
		}},
		{name: "an id of its shard marked since the stamp", run: func(a *arriving) bool {
			v := a.shardOf(x).stamp()
			a.lock()
			a.mark(x2)
			a.unlock()
			return a.shardOf(x).settled(v)
		}},
		{name: "held unmarked since the stamp", want: true, run: func(a *arriving) bool {
			v := a.shardOf(x).stamp()
			a.lock()
			defer a.unlock()
			return a.shardOf(x).settled(v)
		}},
		{name: "another shard's id marked since the stamp", want: true, run: func(a *arriving) bool {
			v := a.shardOf(x).stamp()
			a.lock()
			defer a.unlock()
			a.mark(y)
			return a.shardOf(x).settled(v)
		}},
		{name: "a client arriving", run: func(a *arriving) bool {
			a.lock()
			a.setBy(x, &arrivingSession{})
			a.unlock()
			return a.shardOf(x).settled(a.shardOf(x).stamp())
		}},
		{name: "a client of its shard arriving", run: func(a *arriving) bool {
			a.lock()
			a.setBy(x2, &arrivingSession{})
			a.unlock()
			return a.shardOf(x).settled(a.shardOf(x).stamp())
		}},
		{name: "another shard's client arriving", want: true, run: func(a *arriving) bool {
			a.lock()
			a.setBy(y, &arrivingSession{})
			a.unlock()
			return a.shardOf(x).settled(a.shardOf(x).stamp())
		}},
		{name: "the client arrived", want: true, run: func(a *arriving) bool {
			a.lock()
			a.setBy(x, &arrivingSession{})
			a.setBy(x, &arrivingSession{}) // again: counted once
			a.unlock()
			a.lock()
			a.deleteBy(x)
			a.deleteBy(x) // again: nothing to take out
			a.unlock()
			return a.shardOf(x).settled(a.shardOf(x).stamp())
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.run(&arriving{}); got != tc.want {
				t.Errorf("settled: %v, want %v", got, tc.want)
			}
		})
	}
}

// TestAwayShortcutCleanStartArriving: a session away, a client of its id
// coming back with Clean Start (MQTT 5) or CleanSession (3.1.1), held in
// OnSessionEstablish after the broker registered it: a message published
// then was checked for the session that ends, and give drops it counted
// (session ended), QoS 0 too. deliverTo's shortcut (settled) must not
// skip it uncounted while a client is arriving; the new session gets none.
func TestAwayShortcutCleanStartArriving(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    byte
		qos  byte
	}{
		{name: "v5/qos0", v: 5},
		{name: "v5/qos1", v: 5, qos: 1},
		{name: "v4/qos0", v: 4},
		{name: "v4/qos1", v: 4, qos: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{Users: users(t)})
			h := addLeftHook(t, b)
			const id = "clean"
			gated, arrived, release := gateEstablish(t, b, id)
			p, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, tc.v, id, false, 3600, nil, "alice"))
			p.subscribe(t, tc.v, "t/#", 1)
			p.c.Close()
			h.wait(t, id, 1)
			waitFor(t, "the session's hand-off", func() bool { return b.connByID(id) == nil })

			gated.Store(true)
			back := dialOwner(t, b)
			connect := rawConnect(t, tc.v, id, true, 3600, nil, "alice")
			if _, err := back.c.Write(connect); err != nil {
				t.Fatal(err)
			}
			select {
			case <-arrived:
			case <-time.After(testTimeout):
				t.Fatal("the CONNECT coming back never reached OnSessionEstablish")
			}
			ended := b.meter.dropped[dropSessionEnded].Load()
			m := Message{Topic: "t/x", Payload: []byte("old"), QoS: tc.qos}
			if err := b.Publish(testCtx(t), systemPrincipal, m); err != nil {
				t.Fatal(err)
			}
			if got := b.meter.dropped[dropSessionEnded].Load() - ended; got != 1 {
				t.Errorf("%d messages counted dropped (session ended), want 1", got)
			}
			release <- struct{}{}
			if h, body := back.next(t, 2); len(body) < 2 || body[1] != 0 {
				t.Fatalf("CONNACK %#x % x", h, body)
			}
			back.pingNone(t, "the new session, after the old one's message")
		})
	}
}
