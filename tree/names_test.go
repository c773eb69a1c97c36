package tree

import (
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// TestNamesMatchesMap drives the child index with random puts and deletes
// (so probe runs wrap and shift) and checks it against a map.
func TestNamesMatchesMap(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	seed := maphash.MakeSeed()
	var x names
	model := map[string]*node{}
	for step := range 20000 {
		name := fmt.Sprint(r.IntN(300))
		if c := model[name]; c != nil && r.IntN(2) == 0 {
			x.del(seed, name)
			delete(model, name)
		} else if c == nil {
			c = &node{path: name}
			x.put(seed, c)
			model[name] = c
		}
		if x.n != len(model) {
			t.Fatalf("step %d: %d entries, want %d", step, x.n, len(model))
		}
		if step%97 == 0 {
			for i := range 300 {
				k := fmt.Sprint(i)
				if got := x.get(seed, k); got != model[k] {
					t.Fatalf("step %d: get(%s) = %v, want %v", step, k, got, model[k])
				}
			}
		}
	}
}

// TestStoreWideNode checks a node with many children through adds, lookups
// and removals that cross the index threshold both ways.
func TestStoreWideNode(t *testing.T) {
	var s Store
	for round := range 3 {
		for i := range 1000 {
			s.Set(fmt.Sprintf("w/%d", i), stringValue("x"), 0)
		}
		for i := range 1000 {
			if _, ok := s.Get(fmt.Sprintf("w/%d", i)); !ok {
				t.Fatalf("round %d: w/%d missing", round, i)
			}
		}
		for i := 999; i >= 0; i -= 2 {
			s.Delete(fmt.Sprintf("w/%d", i))
		}
		for i := range 1000 {
			if _, ok := s.Get(fmt.Sprintf("w/%d", i)); ok != (i%2 == 0) {
				t.Fatalf("round %d: w/%d present=%v", round, i, ok)
			}
		}
		for i := 0; i < 1000; i += 2 {
			s.Delete(fmt.Sprintf("w/%d", i))
		}
		if s.Len() != 0 || len(s.big) != 0 || s.root.kids != nil {
			t.Fatalf("round %d: store not empty", round)
		}
	}
}

// TestStoreGen: Gen moves when a row is added or deleted, not when a
// row's value or QoS changes or nothing changes, and Refs lists the same
// rows while it stands still.
func TestStoreGen(t *testing.T) {
	var s Store
	v := stringValue
	steps := []struct {
		name  string
		do    func()
		moves bool
	}{
		{"add a", func() { s.Set("dev/a/state", v("1"), 0) }, true},
		{"add b", func() { s.Set("dev/b/state", v("1"), 0) }, true},
		{"change a", func() { s.Set("dev/a/state", v("2"), 0) }, false},
		{"a's QoS", func() { s.Set("dev/a/state", v("2"), 1) }, false},
		{"same a", func() { s.Set("dev/a/state", v("2"), 1) }, false},
		{"delete a", func() { s.Delete("dev/a/state") }, true},
		{"delete a again", func() { s.Delete("dev/a/state") }, false},
		{"add a back", func() { s.Set("dev/a/state", v("3"), 0) }, true},
		{"delete by None", func() { s.Set("dev/b/state", wire.Value{}, 0) }, true},
	}
	for _, st := range steps {
		g, before := s.Gen(), len(s.Refs("dev/+/state", nil))
		st.do()
		if moved := s.Gen() != g; moved != st.moves {
			t.Errorf("%s: Gen moved %v, want %v", st.name, moved, st.moves)
		}
		if after := len(s.Refs("dev/+/state", nil)); !st.moves && after != before {
			t.Errorf("%s: Gen stood still but Refs went from %d to %d rows", st.name, before, after)
		}
	}
}
