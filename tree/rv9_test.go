package tree

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// TestIndexMatchProperty (review h-rv9): random filters come and go, with
// levels from a set wide enough that a node passes litScan literal kids
// and shrinks again, '$' levels, empty levels, '+' and '#'; after every
// change, the groups a random topic matches are those wire.Match says.
// Several owners share a filter, and a filter comes in two codecs (two
// groups at one node).
func TestIndexMatchProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	lits := []string{"", "a", "b", "$x", "$SYS", "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", strings.Repeat("l", levelScan+3)}
	level := func(wild bool) string {
		if wild && rng.IntN(5) == 0 {
			return "+"
		}
		return lits[rng.IntN(len(lits))]
	}
	filter := func() string {
		var ls []string
		for n := 1 + rng.IntN(3); len(ls) < n; {
			ls = append(ls, level(true))
		}
		if rng.IntN(4) == 0 {
			ls = append(ls, "#")
		}
		return strings.Join(ls, "/")
	}
	topic := func() string {
		var ls []string
		for n := 1 + rng.IntN(4); len(ls) < n; {
			ls = append(ls, level(false))
		}
		return strings.Join(ls, "/")
	}
	tr := New()
	type key struct{ owner, topic string }
	on := map[key]string{} // subscription -> filter
	codecs := []wire.Codec{wire.CodecJSON, wire.CodecCBOR}
	for step := range 4000 {
		if len(on) > 0 && rng.IntN(5) < 2 {
			ks := make([]key, 0, len(on))
			for k := range on {
				ks = append(ks, k)
			}
			slices.SortFunc(ks, func(a, b key) int { return strings.Compare(a.owner+a.topic, b.owner+b.topic) })
			k := ks[rng.IntN(len(ks))]
			if !tr.Unsubscribe(k.owner, k.topic) {
				t.Fatalf("step %d: unsubscribe %v: none", step, k)
			}
			delete(on, k)
		} else {
			f := filter()
			if wire.ValidateFilter(f) != nil { // "" alone
				continue
			}
			c := codecs[rng.IntN(len(codecs))]
			k := key{fmt.Sprint("o", rng.IntN(3)), fmt.Sprintf("$tree/%s#%d", f, c)}
			if _, err := tr.Register(&Sub{Owner: k.owner, Topic: k.topic, Filter: f, Codec: c}); err != nil {
				t.Fatalf("step %d: %q: %v", step, f, err)
			}
			on[k] = f
		}
		if err := litsInStep(&tr.index.root, ""); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		for range 8 {
			tp := topic()
			var got []string
			for _, g := range tr.index.match(tp, nil) {
				got = append(got, fmt.Sprint(g.filter, " ", g.codec))
			}
			want := map[string]bool{}
			for k, f := range on {
				if wire.Match(f, tp) {
					want[fmt.Sprint(f, " ", tr.index.byKey[subKey{k.owner, k.topic}].Codec)] = true
				}
			}
			wl := make([]string, 0, len(want))
			for g := range want {
				wl = append(wl, g)
			}
			slices.Sort(got)
			slices.Sort(wl)
			if !slices.Equal(got, wl) {
				t.Fatalf("step %d: %q matched %q, want %q", step, tp, got, wl)
			}
		}
	}
}

// TestIndexLitsShrinkBack (RV9-1): a node that went past litScan literal
// kids to the map scans them again once they are few (litScan/2): the
// root, which is never pruned, went to the map for good as soon as nine
// filters with different first levels had once been subscribed, and every
// match after paid a map lookup there.
func TestIndexLitsShrinkBack(t *testing.T) {
	tr := New()
	n := 3 * litScan
	for k := range n {
		f := fmt.Sprintf("k%d/x", k)
		if _, err := tr.Register(&Sub{Owner: "o", Topic: "$tree/" + f, Filter: f}); err != nil {
			t.Fatal(err)
		}
	}
	tr.Register(&Sub{Owner: "o", Topic: "$tree/+", Filter: "+"}) //nolint:errcheck
	root := &tr.index.root
	if !root.many {
		t.Fatalf("root scans %d lits with %d literal kids", len(root.lits), n)
	}
	for k := n - 1; k >= 0; k-- {
		tr.Unsubscribe("o", fmt.Sprintf("$tree/k%d/x", k))
		if err := litsInStep(root, ""); err != nil {
			t.Fatalf("%d left: %v", k, err)
		}
		if k <= litScan/2 && root.many {
			t.Fatalf("%d literal kids left, root still looks them up in the map", k)
		}
		for j := range n {
			got := len(tr.index.match(fmt.Sprintf("k%d/x", j), nil))
			if want := map[bool]int{true: 1, false: 0}[j < k]; got != want {
				t.Fatalf("%d left: k%d/x matched %d groups, want %d", k, j, got, want)
			}
		}
	}
}

// TestIndexMemory (RV9-4): a trie node with a few literal kids holds them
// in lits only, not in a map too: 100,000 filters kN/a/b (two nodes of
// one kid each a filter) took 110.7 MB with both, 96.3 MB before lits
// (71bb191), 59.5 MB with lits alone. Heap after GC, per subscription,
// its Sub and filter string included.
func TestIndexMemory(t *testing.T) {
	const n = 20_000
	subs := make([]*Sub, n)
	for i := range subs {
		f := fmt.Sprintf("k%d/a/b", i)
		subs[i] = &Sub{Owner: "o", Topic: "$tree/" + f, Filter: f}
	}
	tr := New()
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	for _, s := range subs {
		if _, err := tr.Register(s); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	runtime.KeepAlive(tr)
	if per := (int64(m1.HeapAlloc) - int64(m0.HeapAlloc)) / n; per > 800 {
		t.Errorf("%d bytes a subscription kN/a/b, want at most 800 (a map at each node of one kid: ~1,100)", per)
	} else {
		t.Logf("%d bytes a subscription kN/a/b", per)
	}
}
