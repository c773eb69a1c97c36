package tree

import (
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"testing"
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
