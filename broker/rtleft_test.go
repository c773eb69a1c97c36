package broker

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// checkPlistShape fails unless l is left-packed (every node full but
// those on its rightmost path, none empty), as shallow as its length
// allows, and its leaves' arrays hold no more than a leaf may.
func checkPlistShape(t *testing.T, op int, l *plist[int]) {
	t.Helper()
	if l == nil {
		return
	}
	if want := plistDepthFor(l.n); l.depth != want {
		t.Fatalf("op %d: %d elements at depth %d, want %d", op, l.n, l.depth, want)
	}
	var walk func(n *pnode[int], depth uint, rightmost bool) int
	walk = func(n *pnode[int], depth uint, rightmost bool) int {
		if depth == 0 {
			if len(n.kids) != 0 || len(n.items) == 0 || len(n.items) > plistWidth {
				t.Fatalf("op %d: leaf with %d kids, %d items", op, len(n.kids), len(n.items))
			}
			if !rightmost && len(n.items) != plistWidth {
				t.Fatalf("op %d: a leaf left of the last holds %d", op, len(n.items))
			}
			return len(n.items)
		}
		if len(n.items) != 0 || len(n.kids) == 0 || len(n.kids) > plistWidth {
			t.Fatalf("op %d: inner node with %d kids, %d items", op, len(n.kids), len(n.items))
		}
		if !rightmost && len(n.kids) != plistWidth {
			t.Fatalf("op %d: an inner node left of the last has %d kids", op, len(n.kids))
		}
		sum := 0
		for i, k := range n.kids {
			sum += walk(k, depth-1, rightmost && i == len(n.kids)-1)
		}
		return sum
	}
	if got := walk(l.root, l.depth, true); got != l.n {
		t.Fatalf("op %d: the leaves hold %d, len %d", op, got, l.n)
	}
}

// plistDepthFor is the fewest inner levels that hold n elements.
func plistDepthFor(n int) uint {
	d := uint(0)
	for n > 1<<(plistBits*(d+1)) {
		d++
	}
	return d
}

// TestPlistDeep: random appends, sets and removals (anywhere: first leaf,
// middle of full nodes, last) against a slice, up past 32,768 elements
// (three inner levels) and down to empty twice, checking the tree's shape
// as well as its contents; old versions keep what they held.
func TestPlistDeep(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 17))
	var l *plist[int]
	var want []int
	type version struct {
		l    *plist[int]
		want []int
	}
	var kept []version
	remove := func(i int) {
		l = l.without(i)
		want[i] = want[len(want)-1]
		want = want[:len(want)-1]
	}
	op := 0
	for round := range 2 {
		// Grow past 32,768, mostly appending, with removals everywhere.
		for len(want) < 1<<(3*plistBits)+plistWidth*3+round*5000 {
			switch k := r.IntN(10); {
			case k < 7 || len(want) == 0:
				v := r.IntN(50) // duplicates: plist does not care
				l = l.with(v)
				want = append(want, v)
			case k < 8:
				i := r.IntN(len(want))
				l = l.set(i, -op)
				want[i] = -op
			case k < 9:
				remove(r.IntN(min(len(want), plistWidth))) // the first leaf
			default:
				remove(r.IntN(len(want)))
			}
			op++
			if op%4001 == 0 {
				checkPlistShape(t, op, l)
				checkPlist(t, op, l, want)
				kept = append(kept, version{l, slices.Clone(want)})
			}
		}
		checkPlistShape(t, op, l)
		checkPlist(t, op, l, want)
		if l.depth != 3 {
			t.Fatalf("%d elements at depth %d, want 3", l.n, l.depth)
		}
		// Shrink to empty: removals in the middle, at the level
		// boundaries checked one by one.
		for len(want) > 0 {
			i := len(want) / 2
			if r.IntN(4) == 0 {
				i = len(want) - 1
			}
			remove(i)
			op++
			n := len(want)
			if n == plistWidth || n == plistWidth+1 || n == 1<<(2*plistBits) || n == 1<<(2*plistBits)+1 ||
				n == 1<<(3*plistBits) || n == 1<<(3*plistBits)+1 || n < 3 || op%3001 == 0 {
				checkPlistShape(t, op, l)
				checkPlist(t, op, l, want)
			}
		}
		if l != nil {
			t.Fatal("an emptied list is not nil")
		}
	}
	for _, v := range kept {
		checkPlist(t, -1, v.l, v.want)
	}
}

// TestPlistReadersRaceWriter: readers walk the list a writer replaces
// (atomically, as subIndex does) and always see one whole version: the
// walk, at and len agree with the slice published with it. Run with -race:
// a write to a node a reader can reach is a data race.
func TestPlistReadersRaceWriter(t *testing.T) {
	type version struct {
		l    *plist[int]
		want []int
	}
	var cur atomic.Pointer[version]
	cur.Store(&version{})
	done := make(chan struct{})
	var wg sync.WaitGroup
	var reads atomic.Int64
	errs := make(chan string, 4)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []*int
			for {
				select {
				case <-done:
					return
				default:
				}
				v := cur.Load()
				if v.l.len() != len(v.want) {
					errs <- fmt.Sprintf("len %d, want %d", v.l.len(), len(v.want))
					return
				}
				buf = v.l.appendPtrs(buf[:0])
				for i, p := range buf {
					if *p != v.want[i] || *v.l.at(i) != v.want[i] {
						errs <- fmt.Sprintf("element %d of %d: %d, want %d", i, len(v.want), *p, v.want[i])
						return
					}
				}
				reads.Add(1)
			}
		}()
	}
	r := rand.New(rand.NewPCG(1, 2))
	var l *plist[int]
	var want []int
	for op := range 6000 {
		switch k := r.IntN(10); {
		case k < 6 || len(want) == 0:
			l = l.with(op)
			want = append(want, op)
		case k < 8:
			i := r.IntN(len(want))
			l = l.set(i, -op)
			want[i] = -op
		default:
			i := r.IntN(len(want))
			l = l.without(i)
			want[i] = want[len(want)-1]
			want = want[:len(want)-1]
		}
		cur.Store(&version{l, slices.Clone(want)})
		if op%500 == 0 { // let the readers in on a loaded machine
			runtime.Gosched()
		}
	}
	close(done)
	wg.Wait()
	select {
	case e := <-errs:
		t.Fatal(e)
	default:
	}
	t.Logf("%d reads", reads.Load())
}

// TestSubIndexChurnBounded: 300,000 subscribe/unsubscribe pairs by fresh
// client ids on one filter and one $share group, each beside 2,000
// standing subscribers, and a lone member joining and leaving a group of
// its own, leave the heap where it was (give or take 4 MiB) and the
// index's position maps exactly the standing subscribers: nothing a
// departed subscriber had is kept.
func TestSubIndexChurnBounded(t *testing.T) {
	var x subIndex
	const standing = 2000
	for i := range standing {
		c := fmt.Sprintf("s%d", i)
		x.subscribe(c, packets.Subscription{Filter: "churn/a"})
		x.subscribe(c, packets.Subscription{Filter: "$share/g/churn/a"})
	}
	churn := func(from, n int) {
		for i := from; i < from+n; i++ {
			c := fmt.Sprintf("c%d", i)
			x.subscribe(c, packets.Subscription{Filter: "churn/a", Qos: 1})
			x.subscribe(c, packets.Subscription{Filter: "$share/g/churn/a", Qos: 1})
			x.subscribe(c, packets.Subscription{Filter: "$share/lone/churn/a"})
			if !x.unsubscribe("churn/a", c) || !x.unsubscribe("$share/g/churn/a", c) || !x.unsubscribe("$share/lone/churn/a", c) {
				t.Fatalf("%s: an unsubscribe found nothing", c)
			}
		}
	}
	n := 300_000
	if raceEnabled || testing.Short() {
		n = 60_000
	}
	churn(0, 20_000) // maps and pools at their working size
	before := liveHeap()
	churn(20_000, n)
	after := liveHeap()
	t.Logf("heap %d KiB → %d KiB after %d churns", before>>10, after>>10, n)
	if after > before+4<<20 {
		t.Errorf("heap grew %d KiB over %d subscribe/unsubscribe rounds", (after-before)>>10, n)
	}
	v, _ := x.root.child("churn")
	sn, _ := v.child("a")
	if len(sn.pos) != standing || sn.subs.Load().len() != standing {
		t.Errorf("plain: %d positions, %d subscriptions, want %d", len(sn.pos), sn.subs.Load().len(), standing)
	}
	if len(sn.gpos) != 1 || sn.shared.Load().len() != 1 {
		t.Fatalf("groups: %d positions, %d groups, want 1 (the lone group gone)", len(sn.gpos), sn.shared.Load().len())
	}
	g := *sn.shared.Load().at(0)
	if len(g.pos) != standing || g.members.Load().len() != standing {
		t.Errorf("group: %d positions, %d members, want %d", len(g.pos), g.members.Load().len(), standing)
	}
	for c, i := range g.pos {
		if got := g.members.Load().at(i).client; got != c {
			t.Fatalf("group position of %s is %d, which holds %s", c, i, got)
		}
	}
	for c, i := range sn.pos {
		if got := sn.subs.Load().at(i).client; got != c {
			t.Fatalf("position of %s is %d, which holds %s", c, i, got)
		}
	}
}

// subscribePacket is a SUBSCRIBE (id 1) of filters at QoS 0 (no flow
// control: a reader that never acknowledges gets every row).
func subscribePacket(v byte, filters []string) []byte {
	var body []byte
	body = append(body, 0x00, 0x01)
	if v == 5 {
		body = append(body, 0x00) // no properties
	}
	for _, f := range filters {
		body = append(body, byte(len(f)>>8), byte(len(f)))
		body = append(body, f...)
		body = append(body, 0x00)
	}
	out := []byte{0x82}
	for n := len(body); ; {
		b := byte(n & 0x7f)
		n >>= 7
		if n > 0 {
			out = append(out, b|0x80)
			continue
		}
		out = append(out, b)
		break
	}
	return append(out, body...)
}

// TestSubscribeTakeoverStorm: clean connections on four shared client ids
// take each other over while they SUBSCRIBE to up to 31 filters (plain,
// overlapping, $share, some twice) with a retained replay of 30 rows or
// more, reading a little of it or none, then leave at random (reset, FIN,
// DISCONNECT, or left open for the next takeover). Nothing deadlocks, a
// connection reading its replay gets it (or is taken over: closed), the
// broker still serves, and once all are gone nothing is left filed or
// held. Before mochi serialised the takeovers of an id (README change 14)
// two CONNECTs racing left one of them connected under an id no longer
// its own: it had its SUBACK and then nothing, ever (2-3 connections a
// run); and mochi's subscription count ended at -7..-77 (change 13).
func TestSubscribeTakeoverStorm(t *testing.T) {
	b := start(t, Options{})
	pub := dial3(t, b, "retainer", true)
	for i := range 300 {
		pub.pub(t, "st/"+strconv.Itoa(i%10)+"/"+strconv.Itoa(i), 0, true, "r")
	}
	pub.Disconnect(0)
	var filters []string
	for i := range 10 {
		filters = append(filters, "st/"+strconv.Itoa(i)+"/#", "$share/g"+strconv.Itoa(i%3)+"/st/#", "st/+/"+strconv.Itoa(i))
	}
	const conns, workers = 160, 6
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn // left open for a takeover; closed at the end
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 23))
			for i := w; i < conns; i += workers {
				v := byte(4 + r.IntN(2))
				c, err := net.Dial("tcp", b.TCPAddr())
				if err != nil {
					t.Error(err)
					return
				}
				c.SetDeadline(time.Now().Add(testTimeout / 2)) // a stuck read is reported before the storm's deadline
				id := "sst" + strconv.Itoa(r.IntN(4))
				c.Write(connectPacket(v, id))
				fs := slices.Clone(filters)
				r.Shuffle(len(fs), func(i, j int) { fs[i], fs[j] = fs[j], fs[i] })
				// st/0/# first: 30 retained rows at least, so reading up to
				// 22 packets (CONNACK, SUBACK, rows) ends by the connection's
				// end, not its deadline.
				c.Write(subscribePacket(v, append([]string{"st/0/#"}, fs[:r.IntN(len(fs))]...)))
				if r.IntN(2) == 0 {
					br := bufio.NewReader(c)
					want := r.IntN(22)
					var got []byte
					for range want {
						h, _, err := readPacketBody(br)
						if err != nil {
							if ne, ok := err.(net.Error); ok && ne.Timeout() {
								t.Errorf("conn %d (%s, v%d, %s): %d packets of %d, then nothing: % x\n%s", i, id, v, c.LocalAddr(), len(got), want, got, dumpConns(b))
							}
							break
						}
						got = append(got, h)
					}
				}
				switch r.IntN(4) {
				case 0:
					resetConn(c)
				case 1:
					c.Close()
				case 2:
					c.Write([]byte{0xe0, 0x00})
					c.Close()
				default:
					mu.Lock()
					open = append(open, c)
					mu.Unlock()
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(testTimeout):
		buf := make([]byte, 1<<20)
		t.Fatalf("the storm did not end: a connection is stuck\n%s", buf[:runtime.Stack(buf, true)])
	}
	for _, c := range open {
		c.Close()
	}
	waitLeftovers(t, b)
	alive(t, b)
	waitLeftovers(t, b)
}

// dumpConns describes the broker's MQTT connections and arriving
// sessions, for a failure's message.
func dumpConns(b *Broker) string {
	var sb strings.Builder
	b.conns.Range(func(k, v any) bool {
		cl := k.(*mqtt.Client)
		c := v.(*conn)
		c.endMu.Lock()
		c.q.mu.Lock()
		cur, _ := b.server.Clients.Get(cl.ID)
		by, _ := b.byID.Load(cl.ID)
		fmt.Fprintf(&sb, "%s %s closed=%v cur=%v byID=%v prev=%v over=%v next=%v expecting=%v writerDone=%v held=%d items=%d qclosed=%v\n",
			cl.ID, cl.Net.Remote, cl.Closed(), cur == cl, by == c, c.prev, c.over, c.hand.Load().successor() != nil, c.hand.Load().expected() != nil, c.writerDone, c.q.held, len(c.q.items), c.q.closed)
		c.q.mu.Unlock()
		c.endMu.Unlock()
		return true
	})
	b.arriving.lock()
	for id, s := range b.arriving.by {
		fmt.Fprintf(&sb, "arriving %s cl=%s closed=%v msgs=%d\n", id, s.cl.Net.Remote, s.cl.Closed(), len(s.msgs))
	}
	b.arriving.unlock()
	return sb.String()
}
