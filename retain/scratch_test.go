package retain

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// scratchBytes is the memory Commit's scratch holds.
func (s *Store) scratchBytes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cap(s.arena) + cap(s.sort.es)*16 + cap(s.sort.order)*4
}

// stormRows is a storm's commit: past idleRows rows, and with values of
// stormValue bytes past idleArena bytes of arena.
const (
	stormRows  = 70_000
	stormValue = 60
)

// stormChanges is a commit of n rows of stormValue-byte values at rev.
func stormChanges(n int, rev uint64) []Change {
	cs := make([]Change, n)
	v := fmt.Sprintf("%0*d", stormValue, rev)
	for i := range cs {
		cs[i] = Change{Topic: fmt.Sprintf("storm/%06d", i), Value: val(v), Rev: rev}
	}
	return cs
}

// heapBytes is the heap in use after a collection.
func heapBytes() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestScratchShrinks: the arena and sort slices a storm's commits grew
// (5 MiB, 1.3 MiB) are reused while the storm lasts, and given back to
// the GC after a commit much smaller than them, or when the store is
// trimmed (the retainer, idle); a small commit's scratch is kept. They
// were kept for ever (up to keepArena and keepScratch rows).
func TestScratchShrinks(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stormBytes := stormRows * (rowHead + stormValue)
	rev, held := uint64(0), 0 // held: scratch bytes after the last step
	for _, c := range []struct {
		name string
		rows int    // 0: trimmed instead
		want string // what is kept: "storm", "small" or "none"
	}{
		{"a storm's commit", stormRows, "storm"},
		{"the next, as large", stormRows, "storm"},
		{"a commit much smaller", 100, "none"},
		{"a storm again", stormRows, "storm"},
		{"idle after it", 0, "none"},
		{"small commits", 1000, "small"},
		{"idle after them", 0, "small"},
	} {
		before := heapBytes()
		if c.rows == 0 {
			s.Trim()
		} else {
			rev++
			if _, err := s.Commit(Batch{Changes: stormChanges(c.rows, rev), Rev: rev}); err != nil {
				t.Fatal(err)
			}
		}
		n, after := s.scratchBytes(), heapBytes()
		t.Logf("%s: scratch %d → %d bytes; heap in use %d → %d bytes", c.name, held, n, before, after)
		if c.want == "none" && after+uint64(held)/2 > before {
			t.Errorf("%s: with %d bytes of scratch held before, the heap went from %d to %d bytes: not given back", c.name, held, before, after)
		}
		held = n
		switch {
		case c.want == "storm" && n < stormBytes,
			c.want == "small" && (n == 0 || n >= idleArena),
			c.want == "none" && n != 0:
			t.Errorf("%s: a scratch of %d bytes, want %s", c.name, n, c.want)
		}
	}
}

// trimStore is a Store that reports each Trim: the scratch bytes before
// and after it.
type trimStore struct {
	*Store
	trims chan [2]int
}

func (ts trimStore) Trim() {
	before := ts.scratchBytes()
	ts.Store.Trim()
	select {
	case ts.trims <- [2]int{before, ts.scratchBytes()}:
	default:
	}
}

// TestRetainerTrimsIdle: once the retainer has nothing to commit after a
// storm, the store's scratch is given back. The storm's arena stayed.
func TestRetainerTrimsIdle(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ts := trimStore{s, make(chan [2]int, 64)}
	r := must(New(ts, Options{Interval: time.Millisecond, MaxBatch: 1 << 30}, zerolog.Nop()))
	w := make(chan error, 1)
	r.Add(stormChanges(stormRows, 1), w)
	if err := recv(t, w, "the storm's waiter"); err != nil {
		t.Fatal(err)
	}
	for {
		tr := recv(t, ts.trims, "a trim after the storm")
		if tr[0] == 0 {
			continue // before the storm
		}
		if tr[1] != 0 {
			t.Errorf("trimmed %d bytes of scratch to %d, want 0", tr[0], tr[1])
		}
		break
	}
	if err := closeWithin(t, r); err != nil {
		t.Fatal(err)
	}
}
