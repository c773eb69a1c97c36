package retain

// Hostile review h-rv10 of format 3 (branch h-group): each finding is a
// test named TestRV10_N, with the exact input (docs/redteam-rt.md).

import (
	"runtime"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// heapAfterGC is the live heap after two collections.
func heapAfterGC() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestRV10_1: RV10-1. After a commit of one 24 MiB payload under a new
// parent ("p/big"), and Trim, the store keeps no reference to the
// commit's values: its arena (past keepArena) is left to the GC, as the
// package doc promises. commitParent kept its merged entries
// (s.entries = out[:0]) with their val slices pointing into the arena,
// which pinned all 24 MiB until a later commit happened to overwrite
// that slot of the entries (an idle broker: never).
func TestRV10_1(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const size = 24 << 20
	before := heapAfterGC()
	func() {
		big := strings.Repeat("x", size)
		rej, err := s.Commit(Batch{Changes: []Change{{Topic: "p/big", Value: wire.Value{Kind: wire.String, Data: big}, Rev: 1}}, Rev: 1})
		if err != nil || len(rej) > 0 {
			t.Fatal(rej, err)
		}
	}()
	s.Trim()
	after := heapAfterGC()
	if after > before+size/2 {
		t.Errorf("live heap grew by %d MiB after the commit and Trim; want the 24 MiB payload's arena freed", (after-before)>>20)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range s.entries[:cap(s.entries)] {
		if e.val != nil || e.leaf != nil {
			t.Fatalf("s.entries[%d] still holds a value of %d bytes (leaf %q) after the commit", i, len(e.val), e.leaf)
		}
	}
}
