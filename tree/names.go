package tree

import "hash/maphash"

// names indexes the children of one node by name: an open-addressing hash
// table with linear probing whose slots hold a child's position in its
// parent's kids and 32 bits of its name's hash. Slots hold no pointers, so
// the garbage collector does not scan them; the hash bits spare most
// probes a look at a child's name, and growing the table a hash. A slot is
// 8 bytes, so a million children cost 16 MiB where a map[string]*node
// costs over 50. The table's size is any multiple of 8, not a power of
// two: a hash picks its home slot by multiplication (home), so 50
// children take 72 slots (576 bytes), not 128 (1 KB).
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

// home is the first slot a hash h probes in a table of size slots: h
// scaled to [0, size) (Lemire's multiply-shift, no power of two needed).
func home(h uint32, size int) uint32 { return uint32(uint64(h) * uint64(size) >> 32) }

// next is the slot after i, wrapping at size.
func next(i uint32, size int) uint32 {
	if i++; int(i) == size {
		return 0
	}
	return i
}

// get returns the child of kids named name, or nil.
func (x *names) get(seed maphash.Seed, kids []*node, name string) *node {
	if len(x.slots) == 0 {
		return nil
	}
	h := nameHash(seed, name)
	size := len(x.slots)
	for i := home(h, size); ; i = next(i, size) {
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
	if n*8 > size*namesLoad {
		size = (n*8 + namesLoad - 1) / namesLoad
		size = (size + 7) &^ 7 // a multiple of 8
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
	size := len(x.slots)
	i := home(uint32(e>>32), size)
	for x.slots[i] != 0 {
		i = next(i, size)
	}
	x.slots[i] = e
}

// find returns the slot of kids[pos].
func (x *names) find(seed maphash.Seed, kids []*node, pos int) uint32 {
	size := len(x.slots)
	want := uint32(pos + 1)
	for i := home(nameHash(seed, kids[pos].name()), size); ; i = next(i, size) {
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
	size := len(x.slots)
	i := x.find(seed, kids, pos)
	x.n--
	for j := next(i, size); ; j = next(j, size) {
		e := x.slots[j]
		if e == 0 {
			break
		}
		at := home(uint32(e>>32), size)
		// Move e into the hole at i unless its home lies cyclically in (i, j].
		if (j > i && (at <= i || at > j)) || (j < i && at <= i && at > j) {
			x.slots[i] = e
			i = j
		}
	}
	x.slots[i] = 0
}
