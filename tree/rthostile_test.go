package tree

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// hostileNames are level names chosen to stress the store: more siblings
// than indexAt, empty levels, '$' names, unicode and escapes, and names
// that are prefixes of one another.
var hostileNames = func() []string {
	n := []string{"", "$x", "$", "é", "日本", "a\\b", "\x00", "\"", "a", "ab", "abc", "a b", "%2F", "\u200b"}
	for i := range 20 {
		n = append(n, fmt.Sprintf("n%d", i))
	}
	return n
}()

func hostileTopic(r *rand.Rand) string {
	levels := 1 + r.IntN(4)
	parts := make([]string, levels)
	for i := range parts {
		parts[i] = hostileNames[r.IntN(len(hostileNames))]
	}
	return strings.Join(parts, "/")
}

func hostileFilter(r *rand.Rand) string {
	t := strings.Split(hostileTopic(r), "/")
	for i := range t {
		if r.IntN(3) == 0 {
			t[i] = "+"
		}
	}
	if r.IntN(3) == 0 {
		t = append(t[:r.IntN(len(t))], "#")
	}
	return strings.Join(t, "/")
}

// TestStoreAgainstModel drives a Tree with random retained row sets,
// deletes, $set and .replace ops over names that share prefixes, fill
// indexed parents past indexAt and back, make rows parents and parents
// rows, and checks the store against a map after every batch: Get, Range,
// Len and Match (against refMatch).
func TestStoreAgainstModel(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 99))
			tr := New()
			model := map[string]string{}
			for step := range 2000 {
				var ops []Op
				for range 1 + r.IntN(3) {
					ops = append(ops, hostileOp(r))
				}
				// The model applies each op as expand does: $set and
				// .replace read the rows as they were before the op.
				for _, op := range ops {
					rows := append([]Row(nil), op.Rows...)
					keys := sortedKeys(model)
					if op.SetFilter != "" {
						for _, k := range keys {
							if refMatch(op.SetFilter, k) {
								rows = append(rows, Row{Topic: k, Value: op.SetValue, Retain: true})
							}
						}
					}
					if op.Replace != "" {
						mentioned := map[string]bool{}
						for _, row := range op.Rows {
							mentioned[row.Topic] = true
						}
						for _, k := range keys {
							if refMatch(op.Replace, k) && !mentioned[k] {
								rows = append(rows, Row{Topic: k, Retain: true})
							}
						}
					}
					for _, row := range rows {
						if row.Value.Kind == wire.None {
							delete(model, row.Topic)
						} else {
							model[row.Topic] = row.Value.Data
						}
					}
				}
				res := tr.Apply(ops)
				for i, a := range res.Applied {
					if a.Err != nil {
						t.Fatalf("step %d op %d: %v", step, i, a.Err)
					}
				}
				checkStore(t, step, tr.Store(), model)
				if step%50 == 0 {
					f := hostileFilter(r)
					var got, want []string
					tr.Store().Match(f, func(topic string, _ wire.Value, _ byte) bool { got = append(got, topic); return true })
					for k := range model {
						if refMatch(f, k) {
							want = append(want, k)
						}
					}
					sort.Strings(got)
					sort.Strings(want)
					if strings.Join(got, "|") != strings.Join(want, "|") {
						t.Fatalf("step %d: Match(%q) = %q, want %q", step, f, got, want)
					}
				}
			}
		})
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func hostileOp(r *rand.Rand) Op {
	switch r.IntN(10) {
	case 0: // $set, or $set to nothing (delete them all)
		v := wire.Value{Kind: wire.String, Data: fmt.Sprint("set", r.IntN(5))}
		if r.IntN(3) == 0 {
			v = wire.Value{}
		}
		return Op{SetFilter: hostileFilter(r), SetValue: v}
	case 1: // .replace with a few rows under it
		f := hostileFilter(r)
		op := Op{Replace: f}
		prefix := strings.TrimSuffix(strings.TrimSuffix(f, "#"), "/")
		if !strings.Contains(prefix, "+") && prefix != "" {
			for range r.IntN(4) {
				op.Rows = append(op.Rows, Row{Topic: prefix + "/" + hostileNames[r.IntN(len(hostileNames))],
					Value: wire.Value{Kind: wire.String, Data: "r"}, Retain: true})
			}
		}
		return op
	}
	// A tree publish: siblings under one parent, some deleted, with a
	// value long enough (sometimes) to take parentPin's other path.
	parent := hostileTopic(r)
	var op Op
	for range 1 + r.IntN(12) {
		topic := parent + "/" + hostileNames[r.IntN(len(hostileNames))]
		if r.IntN(4) == 0 {
			topic = hostileTopic(r)
		}
		v := wire.Value{Kind: wire.String, Data: strings.Repeat("v", r.IntN(3)*40) + fmt.Sprint(r.IntN(3))}
		if r.IntN(4) == 0 {
			v = wire.Value{}
		}
		op.Rows = append(op.Rows, Row{Topic: topic, Value: v, Retain: true})
	}
	return op
}

func checkStore(t *testing.T, step int, s *Store, model map[string]string) {
	t.Helper()
	if s.Len() != len(model) {
		t.Fatalf("step %d: Len %d, model %d", step, s.Len(), len(model))
	}
	for k, v := range model {
		got, ok := s.Get(k)
		if !ok || got.Data != v {
			t.Fatalf("step %d: Get(%q) = %q %v, want %q", step, k, got.Data, ok, v)
		}
	}
	n := 0
	s.Range(func(topic string, v wire.Value, _ byte) bool {
		n++
		if want, ok := model[topic]; !ok || want != v.Data {
			t.Fatalf("step %d: Range has %q = %q, model %q %v", step, topic, v.Data, want, ok)
		}
		return true
	})
	if n != len(model) {
		t.Fatalf("step %d: Range saw %d rows, model %d", step, n, len(model))
	}
}

// TestStoreEmptiedFreesMemory fills a wide, deep store and deletes every
// row: what stays in the heap must be a small fraction of what the rows
// took (no index, node list or value kept for a deleted row).
func TestStoreEmptiedFreesMemory(t *testing.T) {
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	tr := New()
	var topics []string
	for i := range 200 {
		for j := range 100 {
			topics = append(topics, fmt.Sprintf("p%d/c%d/leaf", i, j))
		}
	}
	val := wire.Value{Kind: wire.String, Data: strings.Repeat("x", 200)}
	var op Op
	for _, tp := range topics {
		op.Rows = append(op.Rows, Row{Topic: tp, Value: val, Retain: true})
	}
	tr.Apply([]Op{op})
	topics, op = nil, Op{}
	full := heap() - before
	op = Op{SetFilter: "#", SetValue: wire.Value{}}
	tr.Apply([]Op{op})
	if tr.Store().Len() != 0 {
		t.Fatalf("%d rows left", tr.Store().Len())
	}
	left := int64(heap()) - int64(before)
	t.Logf("20,000 rows took %d KiB, %d KiB left after deleting them", full>>10, left>>10)
	if left > int64(full/10) {
		t.Errorf("%d KiB kept after deleting every row (full store: %d KiB)", left>>10, full>>10)
	}
	runtime.KeepAlive(tr)
}
