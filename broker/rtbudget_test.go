package broker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// waitingBehindHog starts a broker with a 4 MiB snapshot budget, a
// client that never reads holding most of it ($sync/hog/#), and the
// persistent MQTT 5 session "reader" (on $sync/rd/#) resumed on r,
// whose writer waits for room (the session also has pl/# at QoS 1).
func waitingBehindHog(t *testing.T) (b *Broker, hog, r *raw) {
	t.Helper()
	b = start(t, Options{MaxSnapshotBytes: 4 << 20, WriteTimeout: 5 * testTimeout})
	value := `"` + strings.Repeat("x", 1000) + `"`
	for i := range 3_000 {
		loadRow(b, fmt.Sprintf("hog/r%04d", i), value)
	}
	for i := range 1_000 {
		loadRow(b, fmt.Sprintf("rd/r%04d", i), value)
	}
	if err := b.Sync(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	persist := packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true}
	r = dialRaw(t, b, "reader", 5, false, persist)
	if code := r.subscribeCode(1, "$sync/rd/#"); code != 0 {
		t.Fatalf("SUBACK %#x", code)
	}
	readTreeMessage(t, r, 5, "$sync/rd/#")
	r.subscribe(2, "pl/#", 1) // a plain subscription of the session too
	r.c.Close()
	waitSnapshotBytes(t, b, 0)
	hc, err := dialSmallRcvbuf(b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	hog = connectRaw(t, hc, "hog", 5, true, packets.Properties{})
	if code := hog.subscribeCode(1, "$sync/hog/#"); code != 0 {
		t.Fatalf("hog: SUBACK %#x", code)
	}
	r = dialRaw(t, b, "reader", 5, false, persist)
	waitSnapshotWaiters(t, b, 1)
	return b, hog, r
}

// TestResumedWaiterAnswered: while a resumed session's writer waits for
// snapshot room, its client's PINGREQ and QoS 1 PUBLISH are still
// answered (PINGRESP, PUBACK: the read goroutine writes them, not the
// waiting writer). Written by the waiting writer, they would come only
// once the hog (which never reads) let the room go: never, so the read's
// deadline is testTimeout's, not a second (a loaded -race run's margin).
func TestResumedWaiterAnswered(t *testing.T) {
	b, _, r := waitingBehindHog(t)
	r.write([]byte{packets.Pingreq << 4, 0})
	r.write(publishBytes(1, false, 7, "rd/p", `"1"`, true))
	start := time.Now()
	r.c.SetReadDeadline(start.Add(testTimeout))
	var ping, ack bool
	for !ping || !ack {
		typ, _ := readRawPacketDeadline(t, r)
		ping = ping || typ == packets.Pingresp
		ack = ack || typ == packets.Puback
	}
	t.Logf("PINGRESP and PUBACK in %v while waiting", time.Since(start))
	if now, _ := b.snaps.waits(); now != 1 {
		t.Fatalf("%d waiting after the acks, want 1 (the test did not test the wait)", now)
	}
}

// readRawPacketDeadline is readRawPacket keeping the deadline r.c has.
func readRawPacketDeadline(t *testing.T, r *raw) (byte, []byte) {
	t.Helper()
	var h [1]byte
	if _, err := r.c.Read(h[:]); err != nil {
		t.Fatalf("no answer while waiting: %v", err)
	}
	typ, body := readRest(t, r, h[0])
	return typ >> 4, body
}

// TestResumedWaiterLeaves: a waiting resumed writer whose connection is
// taken over, closed, or whose broker closes leaves the queue and gives
// back all it held: no waiter, no byte held once the hog goes; the
// broker's Close ends within seconds.
func TestResumedWaiterLeaves(t *testing.T) {
	for _, end := range []string{"takeover", "close", "shutdown"} {
		t.Run(end, func(t *testing.T) {
			b, hog, r := waitingBehindHog(t)
			switch end {
			case "takeover":
				persist := packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true}
				r2 := dialRaw(t, b, "reader", 5, false, persist)
				deadline := time.Now().Add(testTimeout)
				for {
					now, all := b.snaps.waits()
					if now == 1 && all == 2 {
						break // the old left, the new waits
					}
					if time.Now().After(deadline) {
						t.Fatalf("after the takeover: %d waiting, %d waited; want 1, 2", now, all)
					}
					time.Sleep(time.Millisecond)
				}
				r2.c.Close()
			case "close":
				r.c.Close()
			case "shutdown":
				closed := make(chan error, 1)
				t0 := time.Now()
				go func() { closed <- b.Close() }()
				select {
				case <-closed:
					t.Logf("Close took %v", time.Since(t0))
				case <-time.After(10 * time.Second):
					t.Fatal("Close did not end within 10 s with a writer waiting for snapshot room")
				}
			}
			waitSnapshotWaiters(t, b, 0)
			hog.c.Close()
			waitSnapshotBytes(t, b, 0)
		})
	}
}

// TestWaiterRefusalAvailability (red-team finding F1): two persistent
// sessions of one attacker on a large $sync filter, never reading,
// reconnecting in turn (each reconnect a takeover of its own session),
// keep a resumed writer waiting at nearly every moment; while one
// waits, large $sync SUBSCRIBEs are refused 0x97, but small ones still
// have the budget's reserve. Honest clients subscribing to a ~1 KB
// filter every 50 ms are counted: the test wants at most half refused.
// At fa7cbeb it failed: 47 of 90 refused in 6 s, every probe made while
// a writer waited refused (46 of 46); at dbf77ac 21 of 28. With the
// reserve: none of about 28, 5 runs of 5. Before it, with the binary (8 MiB budget, a 6 MB
// tree, WriteTimeout 10 s) 8 resumed non-readers kept 6-7 waiting
// and every $sync SUBSCRIBE refused for the whole 15 s sampled: N
// waiting non-readers refuse everyone for about N x WriteTimeout.
func TestWaiterRefusalAvailability(t *testing.T) {
	const limit = 16 << 20
	b := start(t, Options{MaxSnapshotBytes: limit, WriteTimeout: 5 * testTimeout})
	value := `"` + strings.Repeat("x", 1000) + `"`
	for i := range 9_000 { // ~9 MB (estimate ~12 MB): two do not fit, one leaves ~7 MB
		loadRow(b, fmt.Sprintf("hog/r%04d", i), value)
	}
	loadRow(b, "small/a", `"1"`)
	if err := b.Sync(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	persist := packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true}
	attack := func(id string) {
		c, err := dialSmallRcvbuf(b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		connectRaw(t, c, id, 5, false, persist)
	}
	// Each session subscribes once (granted: nothing else held) and goes.
	for _, id := range []string{"atk-a", "atk-b"} {
		r := dialRaw(t, b, id, 5, false, persist)
		if code := r.subscribeCode(1, "$sync/hog/#"); code != 0 {
			t.Fatalf("%s: SUBACK %#x", id, code)
		}
		r.c.Close()
		waitSnapshotBytes(t, b, 0)
	}
	probe := func() byte {
		r := dialRaw(t, b, "honest", 5, true, packets.Properties{})
		defer r.c.Close()
		return r.subscribeCode(1, "$sync/small/#")
	}
	attack("atk-a") // holds ~2.2 MB, never reads
	if code := probe(); code != 0 {
		t.Fatalf("with one non-reader and room left: SUBACK %#x, want 0", code)
	}
	attack("atk-b") // waits
	waitSnapshotWaiters(t, b, 1)
	var probes, refused int
	samples := map[string]int{}
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // the attacker: takeovers of its own sessions, in turn, one after the other
		defer close(sampled)
		for turn := 0; ; turn++ {
			select {
			case <-stopSampling:
				return
			default:
			}
			c, err := takeOver(b.TCPAddr(), []string{"atk-a", "atk-b"}[turn%2])
			if err != nil {
				t.Error(err)
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	end := time.Now().Add(6 * time.Second)
	for time.Now().Before(end) {
		now, _ := b.snaps.waits()
		held, _, _ := b.snaps.stats()
		code := probe()
		samples[fmt.Sprintf("%d waiting, %d MiB, SUBACK %#x", now, held>>20, code)]++
		probes++
		if code != 0 {
			refused++
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stopSampling)
	<-sampled
	t.Logf("probes: %v", samples)
	t.Logf("honest $sync SUBSCRIBEs of ~1 KB: %d of %d refused (limit %d KiB, %d KiB held at most)", refused, probes, limit>>10, b.snaps.peakBytes()>>10)
	if refused > probes/2 {
		t.Errorf("%d of %d honest SUBSCRIBEs refused while two attacker sessions took turns waiting", refused, probes)
	}
}

// peakBytes is the most held at once.
func (s *Budget) peakBytes() int64 {
	_, peak, _ := s.stats()
	return peak
}

// takeOver connects the persistent MQTT 5 session id on a connection that
// never reads (a takeover of its connection, if any) and leaves it open
// until the broker closes.
func takeOver(addr, id string) (net.Conn, error) {
	c, err := dialSmallRcvbuf(addr)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect:    packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 60, ClientIdentifier: id},
		Properties: packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(testTimeout))
	if _, err := c.Write(buf.Bytes()); err != nil {
		return nil, fmt.Errorf("%s: CONNECT: %w", id, err)
	}
	var h [2]byte
	if _, err := io.ReadFull(c, h[:]); err != nil || h[0]>>4 != packets.Connack {
		return nil, fmt.Errorf("%s: no CONNACK (% x, %v)", id, h, err)
	}
	ok = true
	return c, nil
}

// TestEstimateFloodSubscribe: HTTP clients looping GETs of the whole
// tree (AnswerSize, 16 at once) share the estimate slots with $sync
// SUBSCRIBEs: a SUBSCRIBE of a small filter is still answered within
// 2 s (its estimate waits its turn for a slot, first come first), and
// the flood's estimates go on (neither door starves the other).
func TestEstimateFloodSubscribe(t *testing.T) {
	b := start(t, Options{})
	value := `"` + strings.Repeat("x", 1000) + `"`
	for i := range 20_000 {
		loadRow(b, fmt.Sprintf("big/r%05d", i), value)
	}
	loadRow(b, "small/a", `"1"`)
	if err := b.Sync(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	var wg sync.WaitGroup
	var estimates atomic.Int64
	for range 16 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if _, err := b.AnswerSize(ctx, systemPrincipal, "#", nil); err == nil {
					estimates.Add(1)
				}
			}
		})
	}
	defer wg.Wait()
	defer cancel()
	var worst time.Duration
	for i := range 10 {
		r := dialRaw(t, b, fmt.Sprintf("sub%d", i), 5, true, packets.Properties{})
		t0 := time.Now()
		code := r.subscribeCode(1, "$sync/small/#")
		worst = max(worst, time.Since(t0))
		r.c.Close()
		if code != 0 {
			t.Errorf("SUBACK %#x", code)
		}
	}
	t.Logf("10 $sync SUBSCRIBEs under a flood of 16 estimate loops: slowest %v; %d estimates of the flood meanwhile", worst, estimates.Load())
	if worst > 2*time.Second {
		t.Errorf("a $sync SUBSCRIBE took %v under the estimate flood, want under 2 s", worst)
	}
}

// TestResumedWaiterPlainHeld: a QoS 1 message of a plain subscription
// of a session whose writer waits for snapshot room is held behind the
// snapshot (the writer's order), not lost: it comes after the snapshot
// once the room frees; meanwhile nothing is written.
func TestResumedWaiterPlainHeld(t *testing.T) {
	b, hog, r := waitingBehindHog(t)
	if err := b.Publish(testCtx(t), systemPrincipal, Message{Topic: "pl/x", Payload: []byte("p"), QoS: 1}); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	r.c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var h [1]byte
	if n, _ := r.c.Read(h[:]); n > 0 {
		t.Fatalf("a packet (%#x) came while the writer waits", h[0])
	}
	t0 := time.Now()
	hog.c.Close()
	readTreeMessage(t, r, 5, "$sync/rd/#")
	got := readTreeMessage(t, r, 5, "pl/x")
	t.Logf("after the hog went: snapshot, then pl/x %q, %v", got, time.Since(t0))
	if !strings.HasSuffix(got, "p") { // after its packet identifier
		t.Errorf("pl/x: %q, want p", got)
	}
}

// TestBudgetChurn: takers, writers waiting for room (some giving up at a
// random moment, some whose connection holds bytes while it waits,
// settled meanwhile) and givers-back race on one Budget for a while:
// every writer that does not give up is granted (none waits for good
// once the others give back), the bound is never passed by more than
// one grant beyond it (one always fits when none is held), and at the
// end nothing is held, stuck or waiting.
func TestBudgetChurn(t *testing.T) {
	const max = 1000
	s := NewBudget(max, max/16)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for g := range 8 {
		wg.Go(func() {
			for i := range 300 {
				n := int64((g*131+i*17)%400 + 1)
				switch (g + i) % 3 {
				case 0: // a SUBSCRIBE
					if res, ok := s.hold(n, 0, false, n <= max/64); ok {
						time.Sleep(time.Duration(i%3) * 100 * time.Microsecond)
						s.settle(-n, nil, res)
					}
				default: // a resumed writer, holding own while it waits
					own := int64(0)
					if i%2 == 0 {
						if _, ok := s.hold(n/4, 0, false, false); ok {
							own = n / 4
						}
					}
					w := s.queue(n, own)
					done := make(chan struct{})
					giveUp := (g+i)%5 == 0
					if giveUp {
						time.AfterFunc(time.Duration(i%4)*100*time.Microsecond, func() { close(done) })
					}
					ok := w == nil
					if w != nil {
						if own > 0 && i%4 == 0 {
							s.settle(-own/2, w, false) // part of what it held written meanwhile
							own -= own / 2
						}
						timeout := time.AfterFunc(testTimeout, func() { failed.Add(1); close(done) })
						ok = s.await(done, w)
						timeout.Stop()
						if !ok && !giveUp {
							return
						}
					}
					if ok {
						time.Sleep(time.Duration(i%3) * 100 * time.Microsecond)
						s.add(-n)
					}
					s.add(-own)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d writers waited %v without room while the others gave back", failed.Load(), testTimeout)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held != 0 || s.inReserve != 0 || s.stuck != 0 || len(s.waiting) != 0 {
		t.Fatalf("at the end: %d held, %d in the reserve, %d stuck, %d waiting; want 0", s.held, s.inReserve, s.stuck, len(s.waiting))
	}
	t.Logf("%d waited, %d refused, %d held at most (bound %d)", s.waited, s.refused, s.peak, max)
}
