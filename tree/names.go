package tree

import "hash/maphash"

// names indexes the children of one node by name: an open-addressing hash
// table with linear probing whose slots hold a child's position in its
// parent's kids and 32 bits of its name's hash. Slots hold no pointers, so
// the garbage collector does not scan them; the hash bits spare most
// probes a look at a child's name, and growing the table a hash. A slot is
// 8 bytes, so a million children cost 16 MiB where a map[string]*node
// costs over 50.
type names struct {
	slots []uint64 // hash<<32 | position in kids + 1; 0 is empty
	n     int
}

// namesLoad is the fill, in eighths, past which the table doubles.
const namesLoad = 6

func nameHash(seed maphash.Seed, name string) uint32 {
	return uint32(maphash.String(seed, name))
}

func namesEntry(h uint32, pos int) uint64 { return uint64(h)<<32 | uint64(pos+1) }

// get returns the child of kids named name, or nil.
func (x *names) get(seed maphash.Seed, kids []*node, name string) *node {
	if len(x.slots) == 0 {
		return nil
	}
	h := nameHash(seed, name)
	mask := uint32(len(x.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		e := x.slots[i]
		if e == 0 {
			return nil
		}
		if uint32(e>>32) == h {
			if c := kids[uint32(e)-1]; c.name() == name {
				return c
			}
		}
	}
}

// grow makes room for n entries without growing again.
func (x *names) grow(n int) {
	size := max(16, len(x.slots))
	for n*8 > size*namesLoad {
		size *= 2
	}
	if size == len(x.slots) {
		return
	}
	old := x.slots
	x.slots = make([]uint64, size)
	for _, e := range old {
		if e != 0 {
			x.insert(e)
		}
	}
}

// put indexes kids[pos], whose name must not be indexed yet.
func (x *names) put(seed maphash.Seed, kids []*node, pos int) {
	if (x.n+1)*8 > len(x.slots)*namesLoad {
		x.grow(2 * (x.n + 1))
	}
	x.insert(namesEntry(nameHash(seed, kids[pos].name()), pos))
	x.n++
}

func (x *names) insert(e uint64) {
	mask := uint32(len(x.slots) - 1)
	i := uint32(e>>32) & mask
	for x.slots[i] != 0 {
		i = (i + 1) & mask
	}
	x.slots[i] = e
}

// find returns the slot of kids[pos].
func (x *names) find(seed maphash.Seed, kids []*node, pos int) uint32 {
	mask := uint32(len(x.slots) - 1)
	want := uint32(pos + 1)
	for i := nameHash(seed, kids[pos].name()) & mask; ; i = (i + 1) & mask {
		if uint32(x.slots[i]) == want {
			return i
		}
	}
}

// move says that the child at position from is now at position to; kids
// is as it was before the move.
func (x *names) move(seed maphash.Seed, kids []*node, from, to int) {
	i := x.find(seed, kids, from)
	x.slots[i] = x.slots[i]&^0xffffffff | uint64(to+1)
}

// del removes kids[pos] from the index, shifting later entries of its
// probe run back so no tombstones are needed (Knuth, TAOCP 6.4, Algorithm
// R).
func (x *names) del(seed maphash.Seed, kids []*node, pos int) {
	mask := uint32(len(x.slots) - 1)
	i := x.find(seed, kids, pos)
	x.n--
	for j := (i + 1) & mask; ; j = (j + 1) & mask {
		e := x.slots[j]
		if e == 0 {
			break
		}
		home := uint32(e>>32) & mask
		// Move e into the hole at i unless its home lies cyclically in (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			x.slots[i] = e
			i = j
		}
	}
	x.slots[i] = 0
}
