package broker

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker/auth"
	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/rs/zerolog"
)

// awayLeave is one session left away in a test: its user ("" for an
// anonymous client, no username sent) and its client id.
type awayLeave struct{ user, id string }

// leaveAs connects a persistent MQTT 5 session of id as user (Session
// Expiry and Will Delay an hour, a will on will/<id>), subscribed to
// f/<id>, ends its connection without DISCONNECT and returns once the
// broker has seen the end (h): the session is filed as away and those
// past MaxSessions ended.
func leaveAs(t *testing.T, b *Broker, h *leftHook, l awayLeave) {
	t.Helper()
	var user []string
	if l.user != "" {
		user = []string{l.user}
	}
	p, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, l.id, false, 3600, &rawWill{topic: "will/" + l.id, payload: l.id, delay: 3600}, user...))
	if code != 0 || present {
		t.Fatalf("%s (%q): CONNACK code %#x, present %v", l.id, l.user, code, present)
	}
	p.subscribe(t, 5, "f/"+l.id, 1)
	p.c.Close()
	h.wait(t, l.id, 1)
}

// TestMaxSessionsPerUser: past MaxSessions the session ended is the one
// away longest of the user with the most sessions away (ties: the user
// whose oldest left first), so a user leaving ever new client ids ends
// its own sessions, and another user's few survive: they resume with
// Session Present 1 and the message held for them. An ended one's
// delayed will is published, its held message dropped and counted, a
// resume gets Session Present 0 and nothing, and a Warn line names its
// user. The anonymous clients are one user; without a password file
// every client is (usernames are taken as given). Each session has one
// message held when the next leaves.
//
// Before the change the bound ended the session away longest of all:
// "flooder ends its own" ended b0 b1 a0 a1 (bob's two, older than
// alice's flood), "flooder, 40 ids" b0-b2 and a0-a29, "even shares"
// b0-b4, "anonymous flood" a0 a1 n0 n1, "equal counts" c0 (carol's only
// session); 5 of 7 cases failed in 3 of 3 runs ("one each" and "no
// password file" end the session away longest of all, as before).
func TestMaxSessionsPerUser(t *testing.T) {
	seq := func(user, prefix string, n int) []awayLeave {
		var out []awayLeave
		for i := range n {
			out = append(out, awayLeave{user, fmt.Sprint(prefix, i)})
		}
		return out
	}
	ids := func(prefix string, n int) []string {
		var out []string
		for _, l := range seq("", prefix, n) {
			out = append(out, l.id)
		}
		return out
	}
	for _, tc := range []struct {
		name      string
		passwords bool // a password file (alice, bob, carol); else usernames are taken as given
		max       int
		leave     []awayLeave
		ended     []string // in the order they end
	}{
		{
			name: "flooder ends its own", passwords: true, max: 4,
			leave: append(seq("bob", "b", 2), seq("alice", "a", 6)...),
			ended: []string{"a0", "a1", "a2", "a3"},
		},
		{
			name: "flooder, 40 ids", passwords: true, max: 10,
			leave: append(seq("bob", "b", 3), seq("alice", "a", 40)...),
			ended: ids("a", 33),
		},
		{
			// Bob held more than his share: his oldest go until alice
			// has more, then hers.
			name: "even shares", passwords: true, max: 6,
			leave: append(seq("bob", "b", 5), seq("alice", "a", 6)...),
			ended: []string{"b0", "b1", "a0", "a1", "a2"},
		},
		{
			name: "anonymous flood", passwords: true, max: 4,
			leave: append(seq("alice", "a", 2), seq("", "n", 6)...),
			ended: []string{"n0", "n1", "n2", "n3"},
		},
		{
			// alice and bob have two each, carol one: alice's oldest left
			// before bob's.
			name: "equal counts", passwords: true, max: 4,
			leave: []awayLeave{{"carol", "c0"}, {"alice", "a0"}, {"bob", "b0"}, {"alice", "a1"}, {"bob", "b1"}},
			ended: []string{"a0"},
		},
		{
			name: "one each: away longest", passwords: true, max: 2,
			leave: []awayLeave{{"carol", "c0"}, {"alice", "a0"}, {"bob", "b0"}, {"", "n0"}},
			ended: []string{"c0", "a0"},
		},
		{
			name: "no password file: one user", passwords: false, max: 4,
			leave: append(seq("bob", "b", 2), seq("alice", "a", 6)...),
			ended: []string{"b0", "b1", "a0", "a1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := Options{MaxSessions: tc.max}
			if tc.passwords {
				u := users(t)
				u.Set("carol", "carol-pw", 10)
				opts.Users, opts.AllowAnonymous = u, true
			}
			b, log := startLogged(t, opts)
			h := addLeftHook(t, b)
			watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "watcher", true, 0, nil, "alice"))
			watcher.subscribe(t, 5, "will/#", 0)
			pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "pub", true, 0, nil, "alice"))
			for _, l := range tc.leave {
				leaveAs(t, b, h, l)
				pub.publish1(t, 5, "f/"+l.id, "held "+l.id) // held in flight for the session away
				waitHeld(t, b, l.id, 1)
			}
			if got := b.away.len(); got != tc.max {
				t.Errorf("sessions away: %d, want %d", got, tc.max)
			}
			if got := b.stats.SessionsEnded.Load(); got != int64(len(tc.ended)) {
				t.Errorf("sessions ended: %d, want %d", got, len(tc.ended))
			}
			if got := b.meter.dropped[dropSessionEnded].Load(); got != int64(len(tc.ended)) {
				t.Errorf("dropped session_ended: %d, want %d (one held message each)", got, len(tc.ended))
			}
			// The ended sessions' delayed wills, in the order they ended.
			pub.publish1(t, 5, "will/marker", "m")
			var wills []string
			for _, topic := range watcher.topicsUntil(t, "will/marker") {
				wills = append(wills, strings.TrimPrefix(topic, "will/"))
			}
			if !slices.Equal(wills, tc.ended) {
				t.Errorf("sessions ended (their wills): %v, want %v", wills, tc.ended)
			}
			warned := endedInLog(t, log.String())
			for _, l := range tc.leave {
				ended := slices.Contains(tc.ended, l.id)
				if ended && warned[l.id] != l.user {
					t.Errorf("%s ended: the Warn line names user %q, want %q", l.id, warned[l.id], l.user)
				}
				var user []string
				if l.user != "" {
					user = []string{l.user}
				}
				p, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, l.id, false, 3600, nil, user...))
				if code != 0 || present == ended {
					t.Fatalf("%s of %q (ended %v) resumed: code %#x, Session Present %v", l.id, l.user, ended, code, present)
				}
				if ended {
					p.pingNone(t, l.id+" resumed after its session ended")
					continue
				}
				if m := p.readPublish(t, 5); m.topic != "f/"+l.id || m.payload != "held "+l.id {
					t.Fatalf("%s resumed: got %q %q, want its held message", l.id, m.topic, m.payload)
				}
			}
		})
	}
}

// endedInLog reads the broker's JSON log lines of sessions ended past
// MaxSessions: client id to the user they name.
func endedInLog(t *testing.T, log string) map[string]string {
	return warnedInLog(t, log, "session ended: more than max_sessions", false)
}

// warnedInLog reads the broker's JSON log: of its Warn lines whose
// message starts with prefix, the client id each names to its user; with
// once, a second line for one client is an error.
func warnedInLog(t *testing.T, log, prefix string, once bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	for line := range strings.Lines(log) {
		var l struct{ Level, Message, Client, User string }
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if l.Level == "warn" && strings.HasPrefix(l.Message, prefix) {
			if _, twice := out[l.Client]; twice && once {
				t.Errorf("two Warn lines for %s: %s", l.Client, prefix)
			}
			out[l.Client] = l.User
		}
	}
	return out
}

// TestAwaySessionsModel: random filings, resumes and removals of
// sessions of a few users, each followed by ending those past a bound;
// awaySessions ends the same session as a plain model that scans every
// session away (the oldest of the user with the most, ties to the user
// whose oldest is oldest) and keeps the same count. Before the change
// the session away longest of all was ended: it differed from the model
// at round 36, 41 and 233 of the three cases, in 3 of 3 runs.
func TestAwaySessionsModel(t *testing.T) {
	type session struct {
		user string
		seq  int
	}
	for _, tc := range []struct {
		name        string
		users, ids  int
		max, rounds int
	}{
		{"2 users", 2, 20, 8, 5000},
		{"5 users", 5, 60, 20, 5000},
		{"50 users", 50, 400, 100, 5000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(tc.users)))
			var a awaySessions
			model := map[string]session{} // by client id
			clients := map[string]*mqtt.Client{}
			seq := 0
			endModel := func() string { // the id it ends
				count := map[string]int{}
				oldest := map[string]string{} // by user: the id of its oldest session
				for id, s := range model {
					count[s.user]++
					if o, ok := oldest[s.user]; !ok || s.seq < model[o].seq {
						oldest[s.user] = id
					}
				}
				best := ""
				for u, n := range count {
					if best == "" || n > count[best] || n == count[best] && model[oldest[u]].seq < model[oldest[best]].seq {
						best = u
					}
				}
				id := oldest[best]
				delete(model, id)
				return id
			}
			for round := range tc.rounds {
				id := fmt.Sprint("c", rng.IntN(tc.ids))
				switch op := rng.IntN(10); {
				case op < 6: // leaves (again: a new client of the id)
					user := fmt.Sprint("u", rng.IntN(tc.users))
					if rng.IntN(4) == 0 {
						user = "u0" // one user leaves more than the others
					}
					cl := &mqtt.Client{ID: id}
					clients[id] = cl
					seq++
					model[id] = session{user: user, seq: seq}
					a.leftLocked(cl, user)
				case op < 8: // a CONNECT takes it
					delete(model, id)
					a.backLocked(id)
				default: // expired or removed
					if cl, ok := clients[id]; ok {
						delete(model, id)
						a.goneLocked(cl)
					}
				}
				for len(model) > tc.max {
					want := endModel()
					got := "none"
					if cl, _ := a.oldestOver(tc.max); cl != nil {
						got = cl.ID
					}
					if got != want {
						t.Fatalf("round %d: ended %s, want %s", round, got, want)
					}
				}
				if cl, _ := a.oldestOver(tc.max); cl != nil {
					t.Fatalf("round %d: ended %s with %d away, bound %d", round, cl.ID, len(model), tc.max)
				}
				if got := a.len(); got != len(model) {
					t.Fatalf("round %d: %d away, want %d", round, got, len(model))
				}
			}
			if len(a.users) != len(a.heap) || len(a.at) != a.n {
				t.Fatalf("users %d, in the heap %d; ids %d, away %d", len(a.users), len(a.heap), len(a.at), a.n)
			}
		})
	}
}

// BenchmarkAwaySessionsUsers: with 1 to 10,000 users of 2 sessions away
// each (1 user: 20,000), a disconnect past the bound (a session of a user
// filed away, one ended: that user's oldest) and a CONNECT taking a
// session back then its disconnect, the users taken in turn: the cost
// grows with log(users) at most. cpu-ns/op is the process's CPU time an
// operation (processCPU), steadier than the wall time on a shared machine.
// On the 2-core AMD EPYC (load 12 to 19), -cpu 1, 300,000 an operation,
// 3 to 5 runs: past the bound 0.5-0.9 µs with 1 user, 0.9-1.3 µs with 100,
// 2.1-3.8 µs with 10,000; a session back and left 1.0-1.6, 1.0-1.6 and
// 2.0-3.0 µs. The one list of before (this benchmark with the user
// ignored) took 0.3-0.5, 0.25-0.3, 0.8-1.5 and 0.9-1.4 µs: the maps by
// client id and by user and the heap's 14 levels, out of cache, cost a
// few µs at 10,000 users, against 50-230 µs for the disconnect itself
// (TestMaxSessionsUsersCost).
func BenchmarkAwaySessionsUsers(b *testing.B) {
	const n = 20_000
	for _, users := range []int{1, 100, 10_000} {
		// Client i is user i%users's; clients n and up are one spare per
		// user, filed past the bound.
		setup := func() (*awaySessions, []*mqtt.Client, []string) {
			a := &awaySessions{}
			cls := make([]*mqtt.Client, n+users)
			names := make([]string, users)
			for i := range names {
				names[i] = fmt.Sprint("u", i)
			}
			for i := range cls {
				cls[i] = &mqtt.Client{ID: fmt.Sprint("c", i)}
			}
			for i, cl := range cls[:n] {
				a.leftLocked(cl, names[i%users])
			}
			return a, cls, names
		}
		b.Run(fmt.Sprintf("users=%d/past-bound", users), func(b *testing.B) {
			a, cls, names := setup()
			spare := cls[n:] // by user: its client not away
			b.ReportAllocs()
			b.ResetTimer()
			cpu := processCPU()
			for i := range b.N {
				u := i * 7919 % users // spread over the users
				a.leftLocked(spare[u], names[u])
				cl, _ := a.oldestOver(n)
				if cl == nil {
					b.Fatal("none over the bound")
				}
				spare[u] = cl // the user's oldest: u had the most
			}
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
		})
		b.Run(fmt.Sprintf("users=%d/back-and-left", users), func(b *testing.B) {
			a, cls, names := setup()
			b.ReportAllocs()
			b.ResetTimer()
			cpu := processCPU()
			for i := range b.N {
				k := i * 7919 % n // spread over the users
				a.backLocked(cls[k].ID)
				a.leftLocked(cls[k], names[k%users])
			}
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

// TestMaxSessionsUsersCost (MOTE_SESSIONS_USERS=1; MOTE_SESSIONS_N
// sessions, default 20,000) measures, through real connections, what a
// disconnect costs until the broker's OnDisconnect is through (the
// session filed away, and past MaxSessions, n·9/10, one ended) with the
// sessions of 1 user and of n/2 users (2 each), and what a CONNECT
// resuming one of them costs until its CONNACK (the session taken back).
// Every client logs in with a password (one iteration) in both; the
// broker logs nothing. On the 2-core AMD EPYC (load 13 to 19), 20,000
// sessions, two runs each: a disconnect past the bound 49 and 230 µs
// with 1 user, 65 and 108 µs with 10,000; before the change (one list)
// 53 and 222, 58 and 125 µs; a resume 0.5 to 2.8 ms in both. The noise
// of the shared machine is far above what the users' heap adds.
func TestMaxSessionsUsersCost(t *testing.T) {
	if os.Getenv("MOTE_SESSIONS_USERS") == "" {
		t.Skip("MOTE_SESSIONS_USERS=1 to measure")
	}
	n := 20_000
	if s := os.Getenv("MOTE_SESSIONS_N"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	for _, users := range []int{1, n / 2} {
		t.Run(fmt.Sprint("users=", users), func(t *testing.T) {
			u := auth.NewUsers()
			for i := range users {
				if err := u.Set(fmt.Sprint("u", i), fmt.Sprint("u", i, "-pw"), 1); err != nil {
					t.Fatal(err)
				}
			}
			b, err := New(Options{TCP: "127.0.0.1:0", WS: "off", MaxSessions: n * 9 / 10, Users: u, Log: zerolog.Nop()})
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Start(); err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			h := addLeftHook(t, b)
			var early, late time.Duration // disconnects: the first tenth, the last tenth (past the bound)
			for i := range n {
				id, user := fmt.Sprint("cost", i), fmt.Sprint("u", i%users)
				p, _ := dialTimed(t, b, id, user)
				t0 := time.Now()
				p.c.Close()
				h.wait(t, id, 1)
				switch d := time.Since(t0); {
				case i < n/10:
					early += d
				case i >= n-n/10:
					late += d
				}
			}
			var resume time.Duration
			const resumes = 1000
			for k := range resumes {
				i := n - 1 - k*7%(n/10) // kept: among the last tenth
				p, d := dialTimed(t, b, fmt.Sprint("cost", i), fmt.Sprint("u", i%users))
				resume += d
				p.c.Close()
			}
			t.Logf("%d users, %d sessions left, %d ended, %d away: disconnect through OnDisconnect %v (first tenth), %v (last tenth, past the bound); a resume's CONNECT to CONNACK %v",
				users, n, b.stats.SessionsEnded.Load(), b.away.len(), early/time.Duration(n/10), late/time.Duration(n/10), resume/resumes)
		})
	}
}

// dialTimed connects id as user (MQTT 5, Clean Start 0, Session Expiry
// an hour) and returns the peer and the time from the dial to its
// CONNACK (code 0). The connection is closed when the test ends.
func dialTimed(t *testing.T, b *Broker, id, user string) (*ownerPeer, time.Duration) {
	t.Helper()
	connect := rawConnect(t, 5, id, false, 3600, nil, user)
	t0 := time.Now()
	c, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testTimeout))
	p := &ownerPeer{c: c, r: bufio.NewReader(c)}
	c.Write(connect)
	if _, body := p.next(t, 2); len(body) < 2 || body[1] != 0 {
		t.Fatalf("%s: CONNACK % x", id, body)
	}
	return p, time.Since(t0)
}
