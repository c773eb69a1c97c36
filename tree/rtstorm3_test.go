package tree

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// TestStoreManyChildrenModel is a property test of the store against a
// map: parents with 1 to 100,000 children (the name index sized to fit,
// not to a power of two), rows deleted and put again many times (the
// index has no tombstones: Algorithm R moves entries back), rows below
// children, and '+' and '#' matches checked whole after each round.
func TestStoreManyChildrenModel(t *testing.T) {
	cases := []struct {
		kids, ops int
	}{
		{1, 200}, {7, 500}, {9, 500}, {50, 2000}, {73, 3000}, {1000, 20000}, {100_000, 300_000},
	}
	if testing.Short() || raceEnabled {
		cases = cases[:len(cases)-1]
	}
	for _, tc := range cases {
		t.Run(strconv.Itoa(tc.kids), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.kids), 42))
			var s Store
			model := map[string]string{}
			topic := func() string {
				k := rng.IntN(tc.kids)
				if rng.IntN(8) == 0 {
					return fmt.Sprintf("p/k%d/s%d", k, rng.IntN(3))
				}
				return fmt.Sprintf("p/k%d", k)
			}
			check := func(round int) {
				t.Helper()
				if s.Len() != len(model) {
					t.Fatalf("round %d: Len %d, model %d", round, s.Len(), len(model))
				}
				for _, f := range []string{"p/+", "p/#", "p/+/+", "+/+"} {
					got := map[string]string{}
					s.Match(f, func(tp string, v wire.Value, _ byte) bool {
						if _, dup := got[tp]; dup {
							t.Fatalf("round %d: %s matched %q twice", round, f, tp)
						}
						got[tp] = v.Data
						return true
					})
					want := map[string]string{}
					for tp, v := range model {
						if refMatch(f, tp) {
							want[tp] = v
						}
					}
					if !maps.Equal(got, want) {
						t.Fatalf("round %d: %s matched %d rows, model %d", round, f, len(got), len(want))
					}
				}
			}
			for i := range tc.ops {
				tp := topic()
				switch rng.IntN(3) {
				case 0:
					s.Delete(tp)
					delete(model, tp)
				default:
					v := "v" + strconv.Itoa(rng.IntN(1000))
					if rng.IntN(16) == 0 {
						v = fmt.Sprintf("%070d", i) // longer than a slab's text
					}
					s.Set(tp, wire.Value{Kind: wire.String, Data: v}, 0)
					model[tp] = v
				}
				if got, ok := s.Get(tp); ok != (model[tp] != "") || got.Data != model[tp] {
					t.Fatalf("op %d: Get(%q) = %q %v, model %q", i, tp, got.Data, ok, model[tp])
				}
				if i%(tc.ops/10+1) == 0 {
					check(i)
				}
			}
			check(tc.ops)
			// Every row, present or absent, is found as the model says.
			for k := range tc.kids {
				tp := fmt.Sprintf("p/k%d", k)
				if got, ok := s.Get(tp); ok != (model[tp] != "") || got.Data != model[tp] {
					t.Fatalf("Get(%q) = %q %v, model %q", tp, got.Data, ok, model[tp])
				}
			}
			// Deleted all, in random order: nothing is left.
			keys := slices.Collect(maps.Keys(model))
			rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
			for _, k := range keys {
				if !s.Delete(k) {
					t.Fatalf("Delete(%q) found nothing", k)
				}
				delete(model, k)
			}
			check(-1)
		})
	}
}
