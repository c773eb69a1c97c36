package retain

import "hash/maphash"

// rowSet is a set of row changes, the newest per topic: what waits for a
// commit. The changes sit in one slice, in the order their topics first
// came, and an index finds a topic's entry; the store commits the slice
// as it is (rows), with no copy. Slice and index are first made for hint
// rows: twice what the last commit took (Retainer.commit), as a boot
// storm hands in hundreds of thousands of new rows between two commits,
// and the commits of a storm are alike in size; past it the slice
// doubles. A set made for no more than spareRows, or a storm's while
// commits fill a quarter of it, is kept, emptied, for the next changes
// (Retainer.spare, spareFits), and grows not at all.
//
// Against a map of whole changes it saves, per row, hashing and moving a
// Change each time the map grows; against fixed-size chunks (no growth,
// but listed into one slice for the store at every commit) that copy of
// every change and its write barriers while the GC marks: 4% of a
// 500k-row storm's CPU.
//
// The index is its own open-addressing table, not a Go map from topic to
// position: one hash and one probe a put where a map took a lookup and
// an insert (each hashing the topic), 8 pointer-free bytes a slot that
// the GC never scans, and no string compared unless the 32 bits of two
// topics' hashes are equal. Its seed is the set's own, random, so topics
// cannot be chosen to collide.
type rowSet struct {
	list  []Change
	slots []slot // a power of two of them, at most half used; nil until the first put
	seed  maphash.Seed
	hint  int // the rows slice and index are first made for
}

// slot is one place of a rowSet's index: the hash of a topic (its low
// bits are the place it is looked for first) and 1 + the index of its
// change in list; at 0 is an empty place.
type slot struct {
	hash uint32
	at   int32
}

// newRowSet is an empty set made for hint topics (at most maxHint).
func newRowSet(hint int) *rowSet { return &rowSet{hint: min(hint, maxHint)} }

// maxHint bounds the topics a set is first made for: 256k topics, about
// 20 MiB of slice and index, made only after a commit that held half as
// many.
const maxHint = 1 << 18

// put adds c, replacing the change of its topic if there is one.
func (s *rowSet) put(c Change) {
	if s.slots == nil {
		s.seed = maphash.MakeSeed()
		s.index(max(s.hint, 16))
	}
	h := uint32(maphash.String(s.seed, c.Topic))
	i := s.find(h, c.Topic)
	if at := s.slots[i].at; at != 0 {
		s.list[at-1] = c
		return
	}
	if len(s.list) == cap(s.list) {
		// Made for hint rows, then doubled: Go's append grows a large
		// slice by a quarter, copying it over four times as often.
		grown := make([]Change, len(s.list), max(s.hint, 2*cap(s.list), 64))
		copy(grown, s.list)
		s.list = grown
	}
	s.list = append(s.list, c)
	s.slots[i] = slot{hash: h, at: int32(len(s.list))}
	if 2*len(s.list) > len(s.slots) {
		s.index(len(s.list))
	}
}

// find is the place of topic (hash h) in the index, or the empty place
// where it goes. The index is at most half full: there is one.
func (s *rowSet) find(h uint32, topic string) int {
	mask := len(s.slots) - 1
	for i := int(h) & mask; ; i = (i + 1) & mask {
		sl := s.slots[i]
		if sl.at == 0 || sl.hash == h && s.list[sl.at-1].Topic == topic {
			return i
		}
	}
}

// index makes the index anew with room for twice rows topics (a power
// of two of slots), its used places moved over by their hashes.
func (s *rowSet) index(rows int) {
	n := 32
	for n < 2*rows {
		n *= 2
	}
	old := s.slots
	s.slots = make([]slot, n)
	mask := n - 1
	for _, sl := range old {
		if sl.at == 0 {
			continue
		}
		i := int(sl.hash) & mask
		for s.slots[i].at != 0 {
			i = (i + 1) & mask
		}
		s.slots[i] = sl
	}
}

// has reports whether the set holds a change of topic.
func (s *rowSet) has(topic string) bool {
	if s.slots == nil {
		return false
	}
	return s.slots[s.find(uint32(maphash.String(s.seed, topic)), topic)].at != 0
}

// size is the rows the set has room for: its slice's capacity, or the
// rows its index was made for if more.
func (s *rowSet) size() int { return max(cap(s.list), s.hint, len(s.slots)/2) }

// len is the number of topics.
func (s *rowSet) len() int { return len(s.list) }

// each calls fn with every change, in the order their topics first came.
func (s *rowSet) each(fn func(c *Change)) {
	for i := range s.list {
		fn(&s.list[i])
	}
}

// rows is every change, in the order their topics first came: the set's
// own slice, valid until the next put or reset.
func (s *rowSet) rows() []Change { return s.list }

// reset empties the set, keeping its slice and index for the next changes.
func (s *rowSet) reset() {
	clear(s.list) // drop the rows' references for the GC
	s.list = s.list[:0]
	clear(s.slots)
}
