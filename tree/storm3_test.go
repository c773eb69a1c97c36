package tree

import (
	"fmt"
	"strings"
	"testing"
	"unsafe"

	"github.com/mote-mqtt/mote/wire"
)

// TestStoreSlabAllocations: a device's 50 new rows (short topics and
// values, as the boot storm's) take their text from slabs, a few
// allocations in all, where each took one of its own before h-storm3.
// Rows longer than slabText still get their own copy, and every row reads
// back as it was put.
func TestStoreSlabAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates")
	}
	for _, c := range []struct {
		name      string
		val       string
		maxAllocs float64
	}{
		{"short values", "21", 14},                                  // 3 node chunks, kids, index, ~3 slabs
		{"values past slabText", strings.Repeat("v", slabText), 70}, // one copy each, as before
	} {
		t.Run(c.name, func(t *testing.T) {
			dev := 0
			var s Store
			put := func() {
				for i := range 50 {
					s.put(fmt.Sprintf("boot/d%05d/r%02d", dev, i), wire.Value{Kind: wire.JSON, Data: c.val}, 1, Stamp{}, 50-i)
				}
				dev++
			}
			got := testing.AllocsPerRun(20, put) - 50 // fmt.Sprintf's topic, one a row
			if got > c.maxAllocs {
				t.Errorf("%.1f allocations for 50 new rows, want at most %.0f", got, c.maxAllocs)
			}
			for d := range dev {
				for i := range 50 {
					tp := fmt.Sprintf("boot/d%05d/r%02d", d, i)
					if v, ok := s.Get(tp); !ok || v.Data != c.val {
						t.Fatalf("%s = %q %v, want %q", tp, v.Data, ok, c.val)
					}
				}
			}
		})
	}
}

// TestParserRecycle: rows given back with Recycle are the next tree
// publish's (one allocation fewer a publish: 2.7 KB for 50 rows), come
// back empty whatever they held, and a slice too big to keep is left to
// the GC.
func TestParserRecycle(t *testing.T) {
	ps, err := NewParser(DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	op := func(dev, n int) Op {
		o, err := ps.Op(wire.Publish{Op: wire.PubTree, Topic: fmt.Sprintf("boot/d%05d", dev)}, stormTree(dev, n), true, 1)
		if err != nil || len(o.Rows) != n {
			t.Fatalf("device %d: %d rows, %v", dev, len(o.Rows), err)
		}
		for i, r := range o.Rows {
			if want := fmt.Sprintf("boot/d%05d/r%02d", dev, i); r.Topic != want || r.Value.Data != fmt.Sprint(dev+i) {
				t.Fatalf("device %d row %d: %q = %q, want %q = %d", dev, i, r.Topic, r.Value.Data, want, dev+i)
			}
		}
		return o
	}
	first := op(1, 50)
	ps.Recycle(first.Rows)
	second := op(2, 30) // fewer rows, in the same array
	if &second.Rows[:1][0] != &first.Rows[:1][0] {
		t.Fatal("the recycled rows were not reused")
	}
	if rest := second.Rows[30:50]; rest[0] != (Row{}) || rest[19] != (Row{}) {
		t.Fatalf("the recycled rows kept what they held: %+v", rest[0])
	}
	ps.Recycle(second.Rows)
	if raceEnabled {
		return // the race detector's instrumentation allocates
	}
	fresh := testing.AllocsPerRun(50, func() { ps.Recycle(op(3, 50).Rows) })
	kept := testing.AllocsPerRun(50, func() { op(3, 50) })
	if fresh >= kept {
		t.Errorf("%.1f allocations a publish with Recycle, %.1f without: want fewer", fresh, kept)
	}
	big := op(4, rowBufRows+1)
	before := len(ps.rows.free)
	ps.Recycle(big.Rows)
	if n := len(ps.rows.free); n != before {
		t.Errorf("%d slices kept after a %d-row one was given back, want %d", n, rowBufRows+1, before)
	}
}

// TestNodeSize: a store node is 56 bytes, its children behind a pointer
// (most nodes are leaves), and nodeChunk of them with Go's 8-byte header
// fill a 1,536-byte size class. It was 72 bytes, 21 a chunk, before
// h-storm3.
func TestNodeSize(t *testing.T) {
	if got := unsafe.Sizeof(node{}); got != 56 {
		t.Errorf("a node is %d bytes, want 56", got)
	}
	if got := nodeChunk*unsafe.Sizeof(node{}) + 8; got > 1536 || got+unsafe.Sizeof(node{}) <= 1536 {
		t.Errorf("a chunk of %d nodes takes %d bytes: not the most that fit in 1,536", nodeChunk, got)
	}
}

// TestTreeOpAllocations: a 50-row tree publish decoded and exploded, its
// rows given back after, allocates its payload's string and its topics'
// string, nothing a row: the topic's levels, the row being walked to and
// the decoder's trail are the Parser's scratch (h-storm3): 6 before (the
// levels' slice, the walked topic grown twice, the trail).
func TestTreeOpAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates")
	}
	ps, err := NewParser(DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	pub, payload := wire.Publish{Op: wire.PubTree, Topic: "boot/d00042"}, stormTree(42, 50)
	got := testing.AllocsPerRun(100, func() {
		op, err := ps.Op(pub, payload, true, 1)
		if err != nil || len(op.Rows) != 50 {
			t.Fatalf("%d rows, %v", len(op.Rows), err)
		}
		ps.Recycle(op.Rows)
	})
	if got > 2 {
		t.Errorf("%.1f allocations a 50-row publish, want at most 2", got)
	}
}

// TestNamesSizedToFit: the name index of a device's 50 rows, reserved
// by its publish, has 72 slots (576 bytes, 69% full), not the 128 (1 KB)
// a power of two needed before h-storm3; every child is found.
func TestNamesSizedToFit(t *testing.T) {
	var s Store
	for i := range 50 {
		s.put(fmt.Sprintf("boot/d00001/r%02d", i), wire.Value{Kind: wire.JSON, Data: "1"}, 1, Stamp{}, 50-i)
	}
	x := s.big[s.find("boot/d00001")]
	if x == nil {
		t.Fatal("50 children and no index")
	}
	if len(x.slots) != 72 {
		t.Fatalf("the index of 50 children: %d slots, want 72", len(x.slots))
	}
	for i := range 50 {
		if _, ok := s.Get(fmt.Sprintf("boot/d00001/r%02d", i)); !ok {
			t.Fatalf("r%02d not found", i)
		}
	}
}
