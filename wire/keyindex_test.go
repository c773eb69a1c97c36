package wire

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestKeyIndexSortedRuns checks keyIndex.dup against a map on key
// sequences that start in ascending order (the path that indexes nothing)
// and then break it: a duplicate of any earlier key, a key below the last,
// or ascending again, on both sides of the 16-key scan. h-storm3 added the
// ascending path; every case here where a duplicate follows an ascending
// run exercises the table built late from all earlier keys.
func TestKeyIndexSortedRuns(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 15))
	for c := range 3000 {
		run := r.IntN(60)  // keys in ascending order first
		rest := r.IntN(40) // then in any order, duplicates included
		var keys []string
		for i := range run {
			keys = append(keys, fmt.Sprintf("k%03d", 2*i+r.IntN(2)))
		}
		keys = slices.Compact(keys) // strictly ascending
		for range rest {
			switch r.IntN(3) {
			case 0: // a duplicate of an earlier key, if any
				if len(keys) > 0 {
					keys = append(keys, keys[r.IntN(len(keys))])
					continue
				}
				keys = append(keys, "z")
			case 1: // a new key somewhere in the order
				keys = append(keys, fmt.Sprintf("k%03d", r.IntN(150)))
			default: // above all so far
				keys = append(keys, fmt.Sprintf("z%03d", len(keys)))
			}
		}
		var x keyIndex
		var added []string
		seen := map[string]bool{}
		keyAt := func(i int) string { return added[i] }
		for i, k := range keys {
			got := x.dup(len(added), keyAt, k)
			if got != seen[k] {
				t.Fatalf("case %d: key %d %q of %q: dup %v, want %v", c, i, k, keys, got, seen[k])
			}
			if got {
				break // a decoder stops at the first duplicate
			}
			seen[k] = true
			added = append(added, k)
		}
	}
}

// TestKeyIndexAscendingIndexesNothing: 50 keys in ascending order (a
// device's tree as encoding/json writes it) are checked without a hash
// table; the first key out of order builds one from all of them. Without
// h-storm3's ascending path the table is made at the 17th key.
func TestKeyIndexAscendingIndexesNothing(t *testing.T) {
	var x keyIndex
	var keys []string
	keyAt := func(i int) string { return keys[i] }
	for i := range 50 {
		k := fmt.Sprintf("r%02d", i)
		if x.dup(len(keys), keyAt, k) {
			t.Fatalf("%q: a duplicate", k)
		}
		keys = append(keys, k)
	}
	if x.slots != nil {
		t.Fatalf("50 ascending keys made a table of %d slots", len(x.slots))
	}
	if !x.dup(len(keys), keyAt, "r07") {
		t.Fatal(`"r07" again: not a duplicate`)
	}
	if x.slots == nil {
		t.Fatal("a key out of order made no table")
	}
}
