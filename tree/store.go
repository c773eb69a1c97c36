package tree

import (
	"strings"

	"mote/wire"
)

// Store is the row store: retained rows in a topic trie, one node per topic
// level. A filter finds its rows by walking only the branches it can match.
//
// Children keep insertion order (a removal moves the last child into the
// gap), so iteration is deterministic and cache-friendly; a node with many
// children also indexes them by name.
//
// A Store is not safe for concurrent use.
type Store struct {
	root node
	rows int
}

// node is one topic level. A row lives on a node whose kind is not None.
type node struct {
	name string // level name: a substring of the topic that created the node
	val  string // row payload, when kind != wire.None
	kind wire.Kind
	pos  int32 // index in the parent's kids.list
	kids *kids // nil for a leaf
}

// kids are a node's children.
type kids struct {
	list  []*node
	index map[string]*node // built once list grows past indexAt
}

// indexAt is the child count above which a name index is kept; below it a
// linear scan is faster and costs no memory.
const indexAt = 8

func (n *node) child(name string) *node {
	k := n.kids
	if k == nil {
		return nil
	}
	if k.index != nil {
		return k.index[name]
	}
	for _, c := range k.list {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (n *node) addChild(c *node) {
	if n.kids == nil {
		n.kids = &kids{}
	}
	k := n.kids
	c.pos = int32(len(k.list))
	k.list = append(k.list, c)
	switch {
	case k.index != nil:
		k.index[c.name] = c
	case len(k.list) > indexAt:
		k.index = make(map[string]*node, 2*len(k.list))
		for _, x := range k.list {
			k.index[x.name] = x
		}
	}
}

func (n *node) removeChild(c *node) {
	k := n.kids
	last := len(k.list) - 1
	moved := k.list[last]
	k.list[c.pos] = moved
	moved.pos = c.pos
	k.list[last] = nil
	k.list = k.list[:last]
	if k.index != nil {
		delete(k.index, c.name)
	}
	if len(k.list) == 0 {
		n.kids = nil
	}
}

func (n *node) hasKids() bool { return n.kids != nil && len(n.kids.list) > 0 }

func (n *node) value() wire.Value { return wire.Value{Kind: n.kind, Data: n.val} }

// nextLevel splits the level starting at i off topic. It returns the level
// and the index of the next level, len(topic)+1 after the last one.
func nextLevel(topic string, i int) (string, int) {
	if j := strings.IndexByte(topic[i:], '/'); j >= 0 {
		return topic[i : i+j], i + j + 1
	}
	return topic[i:], len(topic) + 1
}

// find returns the node of a topic, or nil.
func (s *Store) find(topic string) *node {
	n := &s.root
	for i := 0; i <= len(topic); {
		var name string
		name, i = nextLevel(topic, i)
		if n = n.child(name); n == nil {
			return nil
		}
	}
	return n
}

// Len is the number of rows.
func (s *Store) Len() int { return s.rows }

// Get returns the row of a topic.
func (s *Store) Get(topic string) (wire.Value, bool) {
	n := s.find(topic)
	if n == nil || n.kind == wire.None {
		return wire.Value{}, false
	}
	return n.value(), true
}

// Set stores a row, copying the topic and value so the caller's buffers may
// be reused. A value of kind None deletes the row. It reports whether the
// store changed.
func (s *Store) Set(topic string, v wire.Value) bool {
	if v.Kind == wire.None {
		return s.Delete(topic)
	}
	n := &s.root
	owned := "" // the topic copy that new nodes' names point into
	for i := 0; i <= len(topic); {
		start := i
		var name string
		name, i = nextLevel(topic, i)
		c := n.child(name)
		if c == nil {
			if owned == "" {
				owned = strings.Clone(topic)
			}
			c = &node{name: owned[start : start+len(name)]}
			n.addChild(c)
		}
		n = c
	}
	if n.kind == wire.None {
		s.rows++
	} else if n.kind == v.Kind && n.val == v.Data {
		return false
	}
	n.kind, n.val = v.Kind, strings.Clone(v.Data)
	return true
}

// Delete removes a row and prunes the nodes left empty. It reports whether
// a row was there.
func (s *Store) Delete(topic string) bool {
	var stack [16]*node
	path := append(stack[:0], &s.root)
	n := &s.root
	for i := 0; i <= len(topic); {
		var name string
		name, i = nextLevel(topic, i)
		if n = n.child(name); n == nil {
			return false
		}
		path = append(path, n)
	}
	if n.kind == wire.None {
		return false
	}
	n.kind, n.val = wire.None, ""
	s.rows--
	for j := len(path) - 1; j > 0; j-- {
		c := path[j]
		if c.kind != wire.None || c.hasKids() {
			break
		}
		path[j-1].removeChild(c)
	}
	return true
}

// Match calls fn for every row matching an MQTT filter, with the row's
// topic, until fn returns false. '+' and '#' at the first level do not match
// topics starting with '$' [MQTT-4.7.2-1]. The filter must be valid.
func (s *Store) Match(filter string, fn func(topic string, v wire.Value) bool) {
	m := matcher{filter: filter, fn: fn}
	m.walk(&s.root, 0, nil)
}

type matcher struct {
	filter string
	fn     func(string, wire.Value) bool
	stop   bool
}

// walk visits node n, whose topic so far is topic, at filter offset i
// (len(filter)+1 once the filter is used up).
func (m *matcher) walk(n *node, i int, topic []byte) {
	if m.stop {
		return
	}
	if i > len(m.filter) {
		if n.kind != wire.None {
			m.stop = !m.fn(string(topic), n.value())
		}
		return
	}
	level, next := nextLevel(m.filter, i)
	switch level {
	case "#":
		if n.kind != wire.None && i > 0 { // "a/#" matches "a" itself
			if m.stop = !m.fn(string(topic), n.value()); m.stop {
				return
			}
		}
		m.all(n, i == 0, i == 0, topic)
	case "+":
		if n.kids == nil {
			return
		}
		for _, c := range n.kids.list {
			if i == 0 && strings.HasPrefix(c.name, "$") {
				continue
			}
			m.walk(c, next, appendLevel(topic, i == 0, c.name))
			if m.stop {
				return
			}
		}
	default:
		if c := n.child(level); c != nil {
			m.walk(c, next, appendLevel(topic, i == 0, c.name))
		}
	}
}

// all visits every row below n; skipDollar applies the '$' rule at the root,
// first says n is the root (its children start the topic).
func (m *matcher) all(n *node, skipDollar, first bool, topic []byte) {
	if n.kids == nil {
		return
	}
	for _, c := range n.kids.list {
		if skipDollar && strings.HasPrefix(c.name, "$") {
			continue
		}
		t := appendLevel(topic, first, c.name)
		if c.kind != wire.None {
			if m.stop = !m.fn(string(t), c.value()); m.stop {
				return
			}
		}
		m.all(c, false, false, t)
		if m.stop {
			return
		}
	}
}

func appendLevel(topic []byte, first bool, name string) []byte {
	if !first {
		topic = append(topic, '/')
	}
	return append(topic, name...)
}

// Range calls fn for every row, '$' topics included, until fn returns false.
func (s *Store) Range(fn func(topic string, v wire.Value) bool) {
	m := matcher{fn: fn}
	m.all(&s.root, false, true, nil)
}
