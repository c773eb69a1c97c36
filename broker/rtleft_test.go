package broker

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

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
	v, _ := x.root.kids.Load("churn")
	node, _ := v.(*snode).kids.Load("a")
	sn := node.(*snode)
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
