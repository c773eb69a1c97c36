package broker

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/rs/zerolog"
)

// awayHeld is what mochi holds in flight for the sessions whose clients
// are away, each publish at holdOffline's cost (heldCost, topic and
// payload), and how many publishes that is.
func awayHeld(b *Broker) (bytes int64, msgs int64) {
	for _, cl := range b.server.Clients.GetAll() {
		if !cl.Closed() {
			continue
		}
		n, m := heldBytes(cl)
		bytes, msgs = bytes+n, msgs+m
	}
	return bytes, msgs
}

// leaveUnacked connects a persistent session of id as user ("": no
// username), MQTT version v, subscribes it at QoS 1 to the retained rows
// of dev/+/state, reads n PUBLISHes of their replay without acknowledging
// any (they stay in flight), ends its connection without DISCONNECT and
// returns once the broker has seen the end (h) and the connection has
// handed on what it held (it left byID): the session is away.
func leaveUnacked(t *testing.T, b *Broker, h *leftHook, v byte, user, id string, n int) {
	t.Helper()
	leaveUnackedQoS(t, b, h, v, 1, user, id, n)
}

// leaveUnackedQoS is leaveUnacked subscribing at qos; at QoS 2 each
// PUBLISH gets its PUBREC (the broker then holds a PUBREL for it), and
// no PUBCOMP follows.
func leaveUnackedQoS(t *testing.T, b *Broker, h *leftHook, v, qos byte, user, id string, n int) {
	t.Helper()
	var u []string
	if user != "" {
		u = []string{user}
	}
	p, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, v, id, false, 3600, nil, u...))
	if code != 0 || present {
		t.Fatalf("%s (%q): CONNACK code %#x, present %v", id, user, code, present)
	}
	p.subscribe(t, v, "dev/+/state", qos)
	for pubs, rels := 0, 0; pubs < n || qos == 2 && rels < n; { // at QoS 2, until the broker has every PUBREC
		h, body := p.next(t, 0)
		switch h >> 4 {
		case packets.Pubrel:
			rels++
		case packets.Publish:
			pubs++
			if qos == 2 {
				m, _ := decodeRawPublish(h, body, v)
				p.c.Write([]byte{packets.Pubrec << 4, 2, byte(m.id >> 8), byte(m.id)})
			}
		}
	}
	p.c.Close()
	h.wait(t, id, 1)
	waitFor(t, id+"'s hand-off", func() bool { return b.connByID(id) == nil })
}

// trimmedInLog reads the broker's JSON log lines of held messages
// dropped past MaxOfflineBytes: client id to the user they name; one
// line a client.
func trimmedInLog(t *testing.T, log string) map[string]string {
	return warnedInLog(t, log, "held messages dropped: more than max_offline_bytes", true)
}

// TestAwayInflightBounded: clients with persistent sessions, each with a
// fresh client id, subscribe at QoS 1 to 64 retained rows, read the first
// MaxInflight (32) of the replay without acknowledging them and leave:
// what they left in flight is held for their sessions, counted against
// MaxOfflineBytes (128 KiB: about four sessions' worth) as what is held
// for them while away is, and past it dropped, counted (offline_full)
// and named in one Warn line per session. At QoS 2 the client answers
// each PUBLISH with PUBREC and never completes it: mochi holds a PUBREL
// (an 800-byte packet) for each, counted as a held message. What mochi
// holds for the sessions away stays within the bound, and the count
// (mote_offline_held_bytes) is what it holds; every row is held or
// counted dropped.
//
// Before the change the connection's in-flight messages were not
// counted: 40 sessions held 1,331,200 bytes (1,280 messages) with
// mote_offline_held_bytes at 0, 10 times the bound (MQTT 5 and 3.1.1
// alike, 3 runs of 3); counting publishes only, the QoS 2 case held
// 1,280 PUBREL entries uncounted (and failed waiting for every row to be
// held or dropped, 2 runs of 2).
func TestAwayInflightBounded(t *testing.T) {
	const rows, inflight, max, ids = 64, 32, 128 << 10, 40
	for _, tc := range []struct {
		name string
		v    byte
		qos  byte
	}{
		{"MQTT 5", 5, 1},
		{"MQTT 3.1.1", 4, 1},
		{"QoS 2, PUBREC, no PUBCOMP", 5, 2}, // the broker holds a PUBREL for each
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, log := startLogged(t, Options{MaxInflight: inflight, MaxOfflineBytes: max})
			h := addLeftHook(t, b)
			loadRows(t, b, rows)
			for i := range ids {
				leaveUnackedQoS(t, b, h, tc.v, tc.qos, "", fmt.Sprint("fresh", i), inflight)
			}
			dropped := func() int64 { return b.meter.dropped[dropOfflineFull].Load() }
			waitFor(t, "every row held or dropped", func() bool {
				_, msgs := awayHeld(b)
				return msgs+dropped() == ids*rows
			})
			held, msgs := awayHeld(b)
			t.Logf("held %d bytes (%d messages) for %d sessions away, %d dropped (bound %d)", held, msgs, ids, dropped(), max)
			if held > max {
				t.Errorf("held for sessions away: %d bytes, over MaxOfflineBytes %d", held, max)
			}
			if got := b.offline.bytes.Load(); got != held {
				t.Errorf("mote_offline_held_bytes %d, held %d", got, held)
			}
			if b.stats.SessionsEnded.Load() != 0 {
				t.Errorf("sessions ended: %d, want none (max_sessions not reached)", b.stats.SessionsEnded.Load())
			}
			trimmed := trimmedInLog(t, log.String())
			if len(trimmed) == 0 || len(trimmed) >= ids {
				t.Errorf("Warn lines for %d sessions' held messages dropped, want some and fewer than %d", len(trimmed), ids)
			}
		})
	}
}

// heldPayload is the payload of alice's jth message held in
// TestAwayHeldFair: the fourth (j 3) is 4 KiB, so the six of them fit only
// once one of bob's sessions has its held messages dropped.
func heldPayload(j int) string {
	if j == 3 {
		return "held 3 " + strings.Repeat("x", 4<<10)
	}
	return fmt.Sprint("held ", j)
}

// TestAwayHeldFair: bob (one user of a password file) leaves sessions
// holding QoS 1 replays in flight until they hold past MaxOfflineBytes;
// alice has six sessions away, each holding a few messages published
// while it was away. The bytes past the bound are taken from the user
// holding the most (bob), never from alice: her sessions keep what they
// held through bob's flood, a message published to them once the bound
// is full is held too (bob's make room), and each resumes with all of
// them. Bob's many fresh ids, and bob with fewer sessions away than
// alice but more bytes, alike. Only bob's sessions are named in the Warn
// lines. What is held stays within the bound.
//
// Before the change bob's in-flight messages were not counted: "fresh
// ids" held 1,380,694 bytes for a bound of 131,072, "few heavy" 215,894
// (3 runs of 3). Taking from the user with the most sessions away (as
// max_sessions does) instead of the most bytes, alice0, alice4 and
// alice5 lost their 3 held messages in both cases; holding a message
// only while it fits (no room made) dropped alice2's fourth (3 runs of
// 3 each).
func TestAwayHeldFair(t *testing.T) {
	const rows, inflight, max = 64, 32, 128 << 10
	for _, tc := range []struct {
		name string
		bob  int // sessions bob leaves, each holding inflight messages
	}{
		{"fresh ids", 40},
		{"few heavy", 5}, // 5 × 33 KiB past 128 KiB, fewer sessions than alice's 6
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, log := startLogged(t, Options{MaxInflight: inflight, MaxOfflineBytes: max, Users: users(t)})
			h := addLeftHook(t, b)
			loadRows(t, b, rows)
			pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "pub", true, 0, nil, "alice"))
			var alice []string
			for i := range 6 {
				id := fmt.Sprint("alice", i)
				alice = append(alice, id)
				leaveAs(t, b, h, awayLeave{"alice", id})
				for j := range 3 {
					pub.publish1(t, 5, "f/"+id, heldPayload(j))
				}
				waitHeld(t, b, id, 3)
			}
			for i := range tc.bob {
				leaveUnacked(t, b, h, 5, "bob", fmt.Sprint("bob", i), inflight)
			}
			holds := func(id string) int {
				cl, _ := b.server.Clients.Get(id)
				return cl.State.Inflight.Len()
			}
			for _, id := range alice {
				if n := holds(id); n != 3 {
					t.Errorf("%s holds %d messages after bob's flood, want its 3", id, n)
				}
			}
			for _, id := range alice { // the bound is full: bob's held make room
				dropped := b.meter.dropped[dropOfflineFull].Load()
				pub.publish1(t, 5, "f/"+id, heldPayload(3))
				n := 0
				waitFor(t, id+"'s fourth message held or dropped", func() bool {
					b.arriving.lock() // holdOffline drops, or makes room and holds, under it
					defer b.arriving.unlock()
					n = holds(id)
					return n != 3 || b.meter.dropped[dropOfflineFull].Load() > dropped
				})
				if n != 4 {
					t.Fatalf("%s holds %d messages, want 4", id, n)
				}
			}
			if held, _ := awayHeld(b); held > max {
				t.Errorf("held for sessions away: %d bytes, over MaxOfflineBytes %d", held, max)
			}
			for id, user := range trimmedInLog(t, log.String()) {
				if user != "bob" {
					t.Errorf("%s's held messages dropped (user %q): only bob's may be", id, user)
				}
			}
			for _, id := range alice {
				p, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, false, 3600, nil, "alice"))
				if code != 0 || !present {
					t.Fatalf("%s resumed: code %#x, Session Present %v", id, code, present)
				}
				for j := range 4 {
					m := p.readPublish(t, 5)
					if m.topic != "f/"+id || m.payload != heldPayload(j) {
						t.Fatalf("%s resumed: message %d is %q %.20q, want %.20q", id, j, m.topic, m.payload, heldPayload(j))
					}
					p.c.Write([]byte{packets.Puback << 4, 2, byte(m.id >> 8), byte(m.id)})
				}
			}
			// Back, alice's sessions hold nothing away: the count is bob's
			// once each resume is established (OnSessionEstablish
			// forgets what was counted, before mochi copies and resends it).
			waitFor(t, "the count of what is held back to bob's", func() bool {
				b.arriving.lock()
				defer b.arriving.unlock()
				held, _ := awayHeld(b)
				return b.offline.bytes.Load() == held
			})
		})
	}
}

// TestAwayMemHostile (MOTE_AWAYMEM=1; MOTE_AWAYMEM_N ids, default 1,000;
// MOTE_AWAYMEM_BYTES max_offline_bytes; MOTE_AWAYMEM_QOS2=1: subscribed
// at QoS 2, each PUBLISH answered with PUBREC, no PUBCOMP)
// measures the hostile case with the default bounds (max_inflight 1,024,
// max_offline_bytes 256 MiB): 2,000 retained rows, and N clients with
// fresh ids and persistent sessions that subscribe to them at QoS 1, read
// 1,024 PUBLISHes without acknowledging any and leave. It logs what is
// held for the sessions away (mochi's in-flight messages, at
// holdOffline's cost), mote_offline_held_bytes, the messages dropped, the
// live heap and the process's RSS. On the shared 2-core machine, without
// -race: before the change 1,000 ids held 1,015 MiB (1,024,000 messages)
// with mote_offline_held_bytes 0, heap 1,341 MiB, RSS 2,563 MiB; 3,000
// held 3,046 MiB, heap 3,843 MiB, RSS 7,579 MiB. After: 255 MiB held
// (258,048 messages) and counted for 1,000 or 3,000, heap 319 and 244
// MiB, RSS 736 and 723 MiB. With max_offline_bytes 1 (every held message
// dropped), 1,000 sessions away: heap 42 MiB, 7 with mochi change 63. At
// QoS 2 (PUBREC, no PUBCOMP), 500 ids: before, 512,000 PUBRELs held,
// none counted, heap 716 MiB; after, 262,144 (256 MiB counted), heap 462
// MiB: a held PUBREL costs ~1.7 KiB, a held publish ~1.3, counted 1 KiB.
func TestAwayMemHostile(t *testing.T) {
	if os.Getenv("MOTE_AWAYMEM") == "" {
		t.Skip("MOTE_AWAYMEM=1 to measure")
	}
	n := 1000
	if s := os.Getenv("MOTE_AWAYMEM_N"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	opts := Options{TCP: "127.0.0.1:0", WS: "off", Log: zerolog.Nop()}
	if s := os.Getenv("MOTE_AWAYMEM_BYTES"); s != "" {
		opts.MaxOfflineBytes, _ = strconv.Atoi(s)
	}
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	h := addLeftHook(t, b)
	loadRows(t, b, 2000)
	report := func(what string) {
		held, msgs := awayHeld(b)
		other := 0 // PUBREL (and PUBREC) entries of the sessions away
		for _, cl := range b.server.Clients.GetAll() {
			if cl.Closed() {
				other += cl.State.Inflight.Len()
			}
		}
		other -= int(msgs)
		t.Logf("%s: held %d MiB (%d messages, and %d other entries) for %d sessions away, mote_offline_held_bytes %d MiB, dropped offline_full %d; heap %d MiB, RSS %d MiB",
			what, held>>20, msgs, other, b.away.len(), b.offline.bytes.Load()>>20, b.meter.dropped[dropOfflineFull].Load(), liveHeap()>>20, processRSS(t)>>20)
	}
	report("before")
	t0 := time.Now()
	qos := byte(1)
	if os.Getenv("MOTE_AWAYMEM_QOS2") != "" {
		qos = 2
	}
	for i := range n {
		leaveUnackedQoS(t, b, h, 5, qos, "", fmt.Sprint("hostile", i), int(DefaultMaxInflight))
	}
	report(fmt.Sprintf("%d fresh ids in %v", n, time.Since(t0).Round(time.Millisecond)))
}

// processRSS is the process's resident set size (Linux; 0 elsewhere).
func processRSS(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if kb, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(kb), " kB"), 10, 64)
			return n << 10
		}
	}
	return 0
}
