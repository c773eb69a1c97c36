package retain

// rowSet is a set of row changes, the newest per topic: what waits for a
// commit. The changes sit in a slice, in the order their topics first
// came; a map finds a topic's entry. Against a map of changes it saves,
// per row, hashing and moving a whole Change when the map grows (a boot
// storm hands in hundreds of thousands of new rows), and it lists them
// without a map walk.
type rowSet struct {
	list []Change
	at   map[string]int32 // topic → its index in list
}

// put adds c, replacing the change of its topic if there is one.
func (s *rowSet) put(c Change) {
	if i, ok := s.at[c.Topic]; ok {
		s.list[i] = c
		return
	}
	if s.at == nil {
		s.at = map[string]int32{}
	}
	s.at[c.Topic] = int32(len(s.list))
	s.list = append(s.list, c)
}

// has reports whether the set holds a change of topic.
func (s *rowSet) has(topic string) bool {
	_, ok := s.at[topic]
	return ok
}

// len is the number of topics.
func (s *rowSet) len() int { return len(s.list) }

// reset empties the set, keeping its room for the next changes.
func (s *rowSet) reset() {
	clear(s.list) // drop the rows' references for the GC
	s.list = s.list[:0]
	clear(s.at)
}
