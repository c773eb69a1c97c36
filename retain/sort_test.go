package retain

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// byTopic is sortedOrder's answer the plain way: indexes sorted by
// their sort keys, parent + "\x00" + leaf, built whole.
func byTopic(changes []Change) []int32 {
	order := make([]int32, len(changes))
	keys := make([]string, len(changes))
	for i := range order {
		order[i] = int32(i)
		t := changes[i].Topic
		p := strings.LastIndexByte(t, '/') + 1
		keys[i] = t[:p] + "\x00" + t[p:]
	}
	slices.SortFunc(order, func(a, b int32) int { return strings.Compare(keys[a], keys[b]) })
	return order
}

func TestSortedOrder(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	// random topics from a small alphabet (with 0 and 0xff bytes), of
	// lengths around the 8 bytes sortedOrder compares as an integer
	random := func(n, maxLen int, prefix string) []string {
		const alphabet = "\x00\x01/ab\xff"
		var ts []string
		seen := map[string]bool{}
		for len(ts) < n {
			b := []byte(prefix)
			for range rnd.IntN(maxLen) + 1 {
				b = append(b, alphabet[rnd.IntN(len(alphabet))])
			}
			if !seen[string(b)] {
				seen[string(b)] = true
				ts = append(ts, string(b))
			}
		}
		return ts
	}
	cases := []struct {
		name   string
		topics []string
	}{
		{"empty", nil},
		{"one", []string{"a"}},
		{"prefixes", []string{"a/b/c/d/e/f/g/h/i", "a", "a/b", "a/b/c/d/e/f/g/h", "a/b/c/d/e/f/g/h/", "a/b/c/d/e/f/g"}},
		{"zero bytes", []string{"a\x00", "a", "a\x00\x00", "a\x00\x01", "a\x01", "\x00"}},
		{"same prefix, differ past 8 bytes", []string{"boot/d00001/r01/xxxxxxxxB", "boot/d00001/r01/xxxxxxxxA", "boot/d00001/r01/xxxxxxxx", "boot/d00001/r01/xxxxxxxxA0"}},
		{"storm", func() []string {
			var ts []string
			for _, d := range rnd.Perm(300) {
				for r := range 50 {
					ts = append(ts, fmt.Sprintf("boot/d%05d/r%02d", d, r))
				}
			}
			return ts
		}()},
		{"random short", random(500, 10, "")},
		{"random long", random(500, 20, "")},
		{"random, shared prefix", random(500, 12, "plant/line/")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			changes := make([]Change, len(tc.topics))
			for i, topic := range tc.topics {
				changes[i].Topic = topic
			}
			got, want := sortedOrder(changes), byTopic(changes)
			if len(got) != len(want) {
				t.Fatalf("%d indexes, want %d", len(got), len(want))
			}
			for i := range got {
				if changes[got[i]].Topic != changes[want[i]].Topic {
					t.Fatalf("at %d: %q, want %q", i, changes[got[i]].Topic, changes[want[i]].Topic)
				}
			}
		})
	}
}

// BenchmarkSortedOrder: sorting a storm commit's 100,000 changes (2,000
// devices of 50 rows, in nearly the order they came), sortedOrder against
// indexes sorted by topic, side by side.
func BenchmarkSortedOrder(b *testing.B) {
	var changes []Change
	for k := 0; k < 40; k++ {
		for i := range 50 {
			d := k*50 + (i*7+k*13)%50
			for r := range 50 {
				changes = append(changes, Change{Topic: fmt.Sprintf("boot/d%05d/r%02d", d, r)})
			}
		}
	}
	for _, f := range []struct {
		name string
		sort func([]Change) []int32
	}{{"sortedOrder", sortedOrder}, {"byTopic", byTopic}} {
		b.Run(f.name, func(b *testing.B) {
			for b.Loop() {
				f.sort(changes)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(changes)), "ns/row")
		})
	}
}

// TestChangeSize: a Change fills one 64-byte cache line (its field order).
func TestChangeSize(t *testing.T) {
	if n := unsafe.Sizeof(Change{}); n != 64 {
		t.Errorf("a Change is %d bytes, want 64", n)
	}
}
