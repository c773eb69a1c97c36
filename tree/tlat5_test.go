package tree

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// TestNextLevel: walking a topic with nextLevel gives its levels as
// strings.Split does, for levels shorter than, as long as and longer
// than levelScan (the loop's part, IndexByte's part, and the edge).
func TestNextLevel(t *testing.T) {
	long := func(n int) string { return strings.Repeat("x", n) }
	topics := []string{"", "/", "//", "a", "a/", "/a", "a/b/c", "lat/t", "$tree/lat",
		long(levelScan - 1), long(levelScan), long(levelScan + 1), long(3 * levelScan),
		long(levelScan-1) + "/b", long(levelScan) + "/b", long(levelScan+1) + "/b",
		"a/" + long(levelScan) + "/" + long(levelScan+1) + "/c", long(40) + "/" + long(2) + "/",
		"a/" + long(levelScan-2) + "/" + long(levelScan+5)}
	for _, topic := range topics {
		var got []string
		for i := 0; i <= len(topic); {
			var name string
			name, i = nextLevel(topic, i)
			got = append(got, name)
		}
		if want := strings.Split(topic, "/"); !slices.Equal(got, want) {
			t.Errorf("%q: levels %q, want %q", topic, got, want)
		}
	}
}

// TestIndexLitsAcrossScan: an fnode finds its literal kids by a scan of
// lits up to litScan of them and by the map past it. Subscriptions come
// and go under one parent across the edge, in random order; after each
// change every topic's match is the groups whose filters wire.Match says
// match it, no more and no fewer.
func TestIndexLitsAcrossScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 15))
	for _, n := range []int{1, litScan - 1, litScan, litScan + 1, 3 * litScan} {
		t.Run(fmt.Sprint(n, " kids"), func(t *testing.T) {
			var filters []string
			for k := range n {
				filters = append(filters, fmt.Sprintf("p/k%d/+", k), fmt.Sprintf("k%d", k))
			}
			filters = append(filters, "p/+/x", "+/k1/+", "#")
			var topics []string
			for k := range n + 2 {
				topics = append(topics, fmt.Sprintf("p/k%d/x", k), fmt.Sprintf("k%d", k), fmt.Sprintf("p/k%d", k))
			}
			tr := New()
			on := map[string]bool{}
			check := func(step string) {
				t.Helper()
				if err := litsInStep(&tr.index.root, ""); err != nil {
					t.Fatalf("%s: %v", step, err)
				}
				for _, topic := range topics {
					var got []string
					for _, g := range tr.index.match(topic, nil) {
						got = append(got, g.filter)
					}
					var want []string
					for f := range on {
						if wire.Match(f, topic) {
							want = append(want, f)
						}
					}
					slices.Sort(got)
					slices.Sort(want)
					if !slices.Equal(got, want) {
						t.Fatalf("%s: %q matched %q, want %q", step, topic, got, want)
					}
				}
			}
			for round := range 3 {
				for _, i := range rng.Perm(len(filters)) {
					f := filters[i]
					if _, err := tr.Register(&Sub{Owner: "o", Topic: "$tree/" + f, Filter: f}); err != nil {
						t.Fatal(err)
					}
					on[f] = true
					check(fmt.Sprint("round ", round, " add ", f))
				}
				for _, i := range rng.Perm(len(filters)) {
					f := filters[i]
					if !tr.Unsubscribe("o", "$tree/"+f) {
						t.Fatalf("unsubscribe %q: none", f)
					}
					delete(on, f)
					check(fmt.Sprint("round ", round, " remove ", f))
				}
			}
		})
	}
}

// litsInStep checks every fnode from n down: one that scans lits holds
// its literal kids there, each once, no more than litScan, and no map;
// one with many holds them in the map only, more than litScan/2 of them
// (RV9-1, RV9-4); "+" and "#" are in neither.
func litsInStep(n *fnode, path string) error {
	if !n.many {
		names := map[string]bool{}
		for _, k := range n.lits {
			if names[k.name] || k.name == "+" || k.name == "#" || k.node == nil {
				return fmt.Errorf("node %q: lit %q twice, a wildcard or nil", path, k.name)
			}
			names[k.name] = true
		}
		if len(n.lits) > litScan || n.kids != nil {
			return fmt.Errorf("node %q: %d lits, a map of %d", path, len(n.lits), len(n.kids))
		}
	} else if n.lits != nil || len(n.kids) <= litScan/2 || n.kids["+"] != nil || n.kids["#"] != nil {
		return fmt.Errorf("node %q: many, with %d lits and %d in the map", path, len(n.lits), len(n.kids))
	}
	var err error
	n.eachKid(func(name string, c *fnode) {
		if err == nil {
			err = litsInStep(c, path+"/"+name)
		}
	})
	return err
}

// TestSiblingRunAfterUnretained: a run of retained siblings is reserved
// for at once (one growth of the parent's children, TestStoreReserve)
// when rows not retained come before it or between runs in the same op:
// applyOp looks for a run at retained rows only.
func TestSiblingRunAfterUnretained(t *testing.T) {
	row := func(topic string, retain bool) Row {
		return Row{Topic: topic, Value: wire.Value{Kind: wire.JSON, Data: "1"}, Retain: retain}
	}
	run := func(parent string, n int) []Row {
		var rows []Row
		for i := range n {
			rows = append(rows, row(fmt.Sprintf("%s/r%02d", parent, i), true))
		}
		return rows
	}
	for _, tc := range []struct {
		name string
		rows []Row
	}{
		{"unretained first", append([]Row{row("x/y", false)}, run("a/b", 41)...)},
		{"unretained sibling first", append([]Row{row("a/b/zz", false)}, run("a/b", 41)...)},
		{"unretained between", append(append(run("c/d", 3), row("q", false), row("q/w", false)), run("a/b", 41)...)},
		{"retained only", run("a/b", 41)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := New()
			if _, err := tr.Subscribe(&Sub{Owner: "s", Topic: "$tree/#", Filter: "#"}); err != nil {
				t.Fatal(err)
			}
			res := tr.Apply([]Op{{Rows: tc.rows}})
			if err := res.Applied[0].Err; err != nil {
				t.Fatal(err)
			}
			n := tr.Store().find("a/b")
			if n == nil {
				t.Fatal("no node a/b")
			}
			if l, c := len(n.kids()), cap(n.kids()); l != 41 || c > 48 { // 48: the size class of 41 pointers
				t.Errorf("a/b has %d children in room for %d, want 41 in at most 48", l, c)
			}
			for _, r := range tc.rows {
				if _, ok := tr.Store().Get(r.Topic); ok != r.Retain {
					t.Errorf("%q stored %v, retained %v", r.Topic, ok, r.Retain)
				}
			}
			if len(res.Deltas) != 1 || res.Deltas[0].Rows != len(tc.rows) {
				t.Errorf("deltas %+v, want one of %d rows", res.Deltas, len(tc.rows))
			}
		})
	}
}

// TestAppendAll: appendAll is append(dst, src...) for lists of every
// length, the one-element one included, and leaves src as it was.
func TestAppendAll(t *testing.T) {
	a, b, c := &Sub{Owner: "a"}, &Sub{Owner: "b"}, &Sub{Owner: "c"}
	for _, src := range [][]*Sub{nil, {}, {a}, {a, b}, {a, b, c}} {
		for _, dst := range [][]*Sub{nil, {c}, make([]*Sub, 1, 4)} {
			want := append(slices.Clone(dst), src...)
			before := slices.Clone(src)
			if got := appendAll(slices.Clone(dst), src); !slices.Equal(got, want) {
				t.Errorf("appendAll(%v, %v) = %v, want %v", dst, src, got, want)
			}
			if !slices.Equal(src, before) {
				t.Errorf("appendAll changed src %v to %v", before, src)
			}
		}
	}
}
