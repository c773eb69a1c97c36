package broker

import "testing"

// TestHostileConnTableChurn: connTable (maps under a mutex, change from
// sync.Map) remakes its map once under an eighth of its peak. A client
// churning ids cannot make that cost more than O(1) a deletion: a
// sawtooth between the threshold's two sides copies at most what it
// deleted; a steady churn never copies; and a mass disconnect leaves a
// map sized for what is left, not its peak.
func TestHostileConnTableChurn(t *testing.T) {
	var tb connTable[int]
	c := &conn{}
	// Mass connect, mass disconnect: remade small.
	for i := 0; i < 100000; i++ {
		tb.store(i, c)
	}
	for i := 0; i < 100000-10; i++ {
		tb.loadAndDelete(i)
	}
	if tb.peak > 100000/8 || len(tb.m) != 10 {
		t.Errorf("after mass disconnect: peak %d, len %d", tb.peak, len(tb.m))
	}
	// Sawtooth around the threshold: count the entries copied by remakes
	// (a remake sets peak to len) against the deletions.
	copied, deletions, next := 0, 0, 1<<20
	for round := 0; round < 200; round++ {
		for len(tb.m) < 1024 {
			tb.store(next, c)
			next++
		}
		for _, k := range tb.keys() {
			before := tb.peak
			tb.loadAndDelete(k)
			deletions++
			if tb.peak != before {
				copied += len(tb.m)
			}
			if len(tb.m) < 100 {
				break
			}
		}
	}
	if copied > deletions {
		t.Errorf("sawtooth: %d entries copied for %d deletions", copied, deletions)
	}
	// Steady churn at 5,000 ids: connect one, disconnect one, no remake.
	for i := 0; i < 5000; i++ {
		tb.store(-1-i, c)
	}
	p := tb.peak
	remakes := 0
	for i := 0; i < 100000; i++ {
		tb.store(-10000-i, c)
		before := tb.peak
		tb.loadAndDelete(-10000 - i)
		if tb.peak < before {
			remakes++
		}
	}
	if remakes != 0 || tb.peak > p+1 {
		t.Errorf("steady churn: %d remakes, peak %d (was %d)", remakes, tb.peak, p)
	}
}
