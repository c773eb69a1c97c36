package retain

// rowSet is a set of row changes, the newest per topic: what waits for a
// commit. The changes sit in fixed-size chunks, in the order their topics
// first came, and a map finds a topic's entry. Against a map of whole
// changes it saves, per row, hashing and moving a Change each time the
// map grows, and against one slice the copies of its growth: a boot storm
// hands in hundreds of thousands of new rows between two commits. Chunks
// are kept, emptied, for the next changes.
type rowSet struct {
	chunks [][]Change       // each of cap chunkRows; all full but the last
	n      int              // changes held
	at     map[string]int32 // topic → its index (chunk×chunkRows + place)
	// hint is the topics the map is first made for: the rows the last
	// commit took, or Options.MaxBatch if more. Grown from empty,
	// rehashing was half of what a boot storm's rows cost here; grown
	// from MaxBatch to a storm's commits of 50k–125k rows, still a third.
	hint int
}

// newRowSet is an empty set whose map is made for hint topics (at most
// maxHint).
func newRowSet(hint int) *rowSet { return &rowSet{hint: min(hint, maxHint)} }

// maxHint bounds the topics a set's map is first made for: 256k topics,
// about 6 MiB, made only after a commit that held as many.
const maxHint = 1 << 18

// chunkRows is the changes of one chunk (36 KiB).
const chunkRows = 512

// put adds c, replacing the change of its topic if there is one.
func (s *rowSet) put(c Change) {
	if i, ok := s.at[c.Topic]; ok {
		s.chunks[i/chunkRows][i%chunkRows] = c
		return
	}
	if s.at == nil {
		s.at = make(map[string]int32, s.hint)
	}
	k := s.n / chunkRows
	if k == len(s.chunks) {
		s.chunks = append(s.chunks, make([]Change, 0, chunkRows))
	}
	s.chunks[k] = append(s.chunks[k], c)
	s.at[c.Topic] = int32(s.n)
	s.n++
}

// has reports whether the set holds a change of topic.
func (s *rowSet) has(topic string) bool {
	_, ok := s.at[topic]
	return ok
}

// len is the number of topics.
func (s *rowSet) len() int { return s.n }

// each calls fn with every change, in the order their topics first came.
func (s *rowSet) each(fn func(c *Change)) {
	for _, ch := range s.chunks {
		for i := range ch {
			fn(&ch[i])
		}
	}
}

// appendTo appends every change to out.
func (s *rowSet) appendTo(out []Change) []Change {
	for _, ch := range s.chunks {
		out = append(out, ch...)
	}
	return out
}

// reset empties the set, keeping its chunks for the next changes.
func (s *rowSet) reset() {
	for k, ch := range s.chunks {
		clear(ch) // drop the rows' references for the GC
		s.chunks[k] = ch[:0]
	}
	s.n = 0
	clear(s.at)
}
