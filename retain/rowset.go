package retain

// rowSet is a set of row changes, the newest per topic: what waits for a
// commit. The changes sit in one slice, in the order their topics first
// came, and a map finds a topic's entry; the store commits the slice as
// it is (rows), with no copy. Slice and map are first made for hint rows:
// twice what the last commit took (Retainer.commit), as a boot storm
// hands in hundreds of thousands of new rows between two commits, and
// the commits of a storm are alike in size; past it the slice doubles. A
// set made for no more than spareRows is kept, emptied, for the next
// changes (Retainer.spare), and grows not at all.
//
// Against a map of whole changes it saves, per row, hashing and moving a
// Change each time the map grows; against fixed-size chunks (no growth,
// but listed into one slice for the store at every commit) that copy of
// every change and its write barriers while the GC marks: 4% of a
// 500k-row storm's CPU.
type rowSet struct {
	list []Change
	at   map[string]int32 // topic → its index in list
	hint int              // the rows slice and map are first made for
}

// newRowSet is an empty set made for hint topics (at most maxHint).
func newRowSet(hint int) *rowSet { return &rowSet{hint: min(hint, maxHint)} }

// maxHint bounds the topics a set is first made for: 256k topics, about
// 24 MiB of slice and map, made only after a commit that held half as
// many.
const maxHint = 1 << 18

// put adds c, replacing the change of its topic if there is one.
func (s *rowSet) put(c Change) {
	if i, ok := s.at[c.Topic]; ok {
		s.list[i] = c
		return
	}
	if s.at == nil {
		s.at = make(map[string]int32, s.hint)
	}
	if len(s.list) == cap(s.list) {
		// Made for hint rows, then doubled: Go's append grows a large
		// slice by a quarter, copying it over four times as often.
		grown := make([]Change, len(s.list), max(s.hint, 2*cap(s.list), 64))
		copy(grown, s.list)
		s.list = grown
	}
	s.list = append(s.list, c)
	s.at[c.Topic] = int32(len(s.list) - 1)
}

// has reports whether the set holds a change of topic.
func (s *rowSet) has(topic string) bool {
	_, ok := s.at[topic]
	return ok
}

// size is the rows the set has room for: its slice's capacity, or the
// rows its map was made for if more.
func (s *rowSet) size() int { return max(cap(s.list), s.hint) }

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

// reset empties the set, keeping its slice and map for the next changes.
func (s *rowSet) reset() {
	clear(s.list) // drop the rows' references for the GC
	s.list = s.list[:0]
	clear(s.at)
}
