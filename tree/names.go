package tree

import "hash/maphash"

// names indexes the children of one node by name: an open-addressing hash
// set of child pointers with linear probing. A slot is one pointer, so a
// million children cost 16 MiB where a map[string]*node costs over 50.
type names struct {
	slots []*node // len is a power of two; nil is empty
	n     int
}

// namesLoad is the fill, in eighths, past which the table doubles.
const namesLoad = 6

func (x *names) slot(seed maphash.Seed, name string) uint64 {
	return maphash.String(seed, name) & uint64(len(x.slots)-1)
}

func (x *names) get(seed maphash.Seed, name string) *node {
	if len(x.slots) == 0 {
		return nil
	}
	mask := uint64(len(x.slots) - 1)
	for i := x.slot(seed, name); ; i = (i + 1) & mask {
		c := x.slots[i]
		if c == nil || c.name() == name {
			return c
		}
	}
}

// put adds c, whose name must not be present yet.
func (x *names) put(seed maphash.Seed, c *node) {
	if (x.n+1)*8 > len(x.slots)*namesLoad {
		old := x.slots
		x.slots = make([]*node, max(16, 2*len(old)))
		for _, o := range old {
			if o != nil {
				x.insert(seed, o)
			}
		}
	}
	x.insert(seed, c)
	x.n++
}

func (x *names) insert(seed maphash.Seed, c *node) {
	mask := uint64(len(x.slots) - 1)
	i := x.slot(seed, c.name())
	for x.slots[i] != nil {
		i = (i + 1) & mask
	}
	x.slots[i] = c
}

// del removes the child named name, shifting later entries of its probe
// run back so no tombstones are needed (Knuth, TAOCP 6.4, Algorithm R).
func (x *names) del(seed maphash.Seed, name string) {
	if len(x.slots) == 0 {
		return
	}
	mask := uint64(len(x.slots) - 1)
	i := x.slot(seed, name)
	for {
		c := x.slots[i]
		if c == nil {
			return
		}
		if c.name() == name {
			break
		}
		i = (i + 1) & mask
	}
	x.n--
	for j := (i + 1) & mask; ; j = (j + 1) & mask {
		c := x.slots[j]
		if c == nil {
			break
		}
		home := x.slot(seed, c.name())
		// Move c into the hole at i unless its home lies cyclically in (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			x.slots[i] = c
			i = j
		}
	}
	x.slots[i] = nil
}
