package tree

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// TestStoreWideModel drives the store as tree publishes do — batches of
// rows mostly under one parent (siblingRun, reserve, the parent-index
// cache), parents with up to 60 children (the name index made, grown,
// dropped), deletions in any order, re-creation, empty levels, values
// empty, short and longer than parentPin — and checks every row against
// a map after each batch.
func TestStoreWideModel(t *testing.T) {
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 99))
		tr := New()
		model := map[string]string{}
		firsts := []string{"", "a", "$x", "bb"}
		for batch := range 150 {
			parent := firsts[r.IntN(len(firsts))] + "/" + fmt.Sprint(r.IntN(3))
			if r.IntN(4) == 0 {
				parent += "/" // an empty level below
			}
			var op Op
			for range 1 + r.IntN(40) {
				topic := parent + "/k" + fmt.Sprint(r.IntN(60))
				if r.IntN(8) == 0 {
					topic = firsts[r.IntN(len(firsts))] + "/" + fmt.Sprint(r.IntN(3)) // a parent's own row
				}
				v := wire.Value{}
				if r.IntN(3) > 0 {
					v = wire.Value{Kind: wire.String, Data: strings.Repeat(string(rune('a'+r.IntN(26))), r.IntN(3)*r.IntN(60))}
				}
				op.Rows = append(op.Rows, Row{Topic: topic, Value: v, Retain: true})
			}
			res := tr.Apply([]Op{op})
			for _, a := range res.Applied {
				if a.Err != nil {
					t.Fatalf("seed %d batch %d: %v", seed, batch, a.Err)
				}
				for _, row := range a.Rows {
					if row.Value.Kind == wire.None {
						delete(model, row.Topic)
					} else {
						model[row.Topic] = row.Value.Data
					}
				}
			}
			got := map[string]string{}
			tr.store.Range(func(topic string, v wire.Value, _ byte) bool {
				got[topic] = v.Data
				return true
			})
			if len(got) != len(model) || tr.store.Len() != len(model) {
				t.Fatalf("seed %d batch %d: %d rows (Len %d), want %d", seed, batch, len(got), tr.store.Len(), len(model))
			}
			for tp, v := range model {
				if g, ok := got[tp]; !ok || g != v {
					t.Fatalf("seed %d batch %d: Range %q = %q %v, want %q", seed, batch, tp, g, ok, v)
				}
				if g, ok := tr.store.Get(tp); !ok || g.Data != v {
					t.Fatalf("seed %d batch %d: Get %q = %q %v, want %q", seed, batch, tp, g.Data, ok, v)
				}
			}
		}
	}
}

// TestStoreManySiblings: 100,000 children of one node, put in publishes
// of a few thousand, then deleted in a random order with lookups of
// the rest along the way (the index grows, shrinks its count, moves
// positions on every removal).
func TestStoreManySiblings(t *testing.T) {
	tr := New()
	const n = 100_000
	for from := 0; from < n; from += 5000 {
		var op Op
		for i := from; i < from+5000; i++ {
			op.Rows = append(op.Rows, Row{Topic: fmt.Sprintf("w/%d", i), Value: wire.Value{Kind: wire.JSON, Data: fmt.Sprint(i)}, Retain: true})
		}
		tr.Apply([]Op{op})
	}
	if tr.store.Len() != n {
		t.Fatalf("%d rows, want %d", tr.store.Len(), n)
	}
	r := rand.New(rand.NewPCG(1, 2))
	order := r.Perm(n)
	for k, i := range order {
		if !tr.store.Delete(fmt.Sprintf("w/%d", i)) {
			t.Fatalf("w/%d not deleted", i)
		}
		if k%997 == 0 {
			for _, j := range order[k+1 : min(n, k+200)] {
				if v, ok := tr.store.Get(fmt.Sprintf("w/%d", j)); !ok || v.Data != fmt.Sprint(j) {
					t.Fatalf("after %d deletions: w/%d = %q %v", k+1, j, v.Data, ok)
				}
			}
			if v, ok := tr.store.Get(fmt.Sprintf("w/%d", i)); ok {
				t.Fatalf("w/%d deleted, still %q", i, v.Data)
			}
		}
	}
	if tr.store.Len() != 0 || len(tr.store.root.kids()) != 0 {
		t.Fatalf("%d rows, %d nodes at the root after deleting all", tr.store.Len(), len(tr.store.root.kids()))
	}
}
