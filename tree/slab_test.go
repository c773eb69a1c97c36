package tree

import (
	"fmt"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// TestStoreSlabAllocations: a device's 50 new rows (short topics and
// values, as the boot storm's) take their text from slabs, a few
// allocations in all, where each took one of its own before h-storm3.
// Rows longer than slabText still get their own copy, and every row reads
// back as it was put.
func TestStoreSlabAllocations(t *testing.T) {
	for _, c := range []struct {
		name      string
		val       string
		maxAllocs float64
	}{
		{"short values", "21", 16},                                  // 3 node chunks, kids, index, ~3 slabs
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
