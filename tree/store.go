package tree

import (
	"hash/maphash"
	"math"
	"slices"
	"strings"

	"github.com/mote-mqtt/mote/wire"
)

// Store is the row store: retained rows in a topic trie, one node per topic
// level. A filter finds its rows by walking only the branches it can match.
//
// Children keep insertion order (a removal moves the last child into the
// gap), so iteration is deterministic and cache-friendly; a node with many
// children is also indexed by name. A node is 56 bytes (with the revision
// and time of its row's last change, SPEC §8 and §9), allocated nodeChunk
// at a time; a row's topic and value are one string. With the index entry
// of a parent that has many children, a row such as dev/d42/state costs
// about 172 bytes beyond its topic and payload (BenchmarkStoreMemory).
//
// A Store is not safe for concurrent use, and must not be copied.
type Store struct {
	root node
	rows int
	gen  uint64 // rows added or deleted so far (Gen)
	// big indexes the children of nodes with more than indexAt of them.
	big  map[*node]*names
	seed maphash.Seed // hashes level names in big
	// last is the parent of the node the last put reached, until a node
	// is removed: the rows of one tree publish mostly share it, and a put
	// under it skips the walk from the root.
	last *node
	// idxNode and idx are the last node whose index was looked up, and
	// its index: a tree publish's rows look up the same parent's.
	idxNode *node
	idx     *names
	// free is where new nodes are taken from: nodeChunk nodes allocated
	// at once, so a tree publish's rows cost one allocation for every
	// nodeChunk of them instead of one each, and the GC marks one object
	// for them.
	free []node
	// slab is where new rows' short topics and values are copied
	// (copyText): one allocation for slabSize bytes of them instead of
	// one a row. A pointer, so that a copied Store shares it rather than
	// tripping strings.Builder's copy check; Reset for each new slab.
	slab *strings.Builder
}

// nodeChunk is how many nodes are allocated together: 27 56-byte nodes and
// the 8-byte header Go puts before an object of pointers that size fill
// 1,520 bytes of its 1,536-byte size class. A chunk stays in memory while any of its nodes is in
// the store (or held by a Ref), so rows deleted one by one can leave at
// most nodeChunk-1 dead nodes, their topics and values dropped, beside a
// live one.
const nodeChunk = 27

// newNode returns a zero node from the current chunk.
func (s *Store) newNode() *node {
	if len(s.free) == 0 {
		s.free = make([]node, nodeChunk)
	}
	n := &s.free[0]
	s.free = s.free[1:]
	return n
}

// node is one topic level. A row lives on a node whose kind is not None.
type node struct {
	// text is the node's topic (text[:plen]) and its row's value
	// (text[plen:]): one string, so a node holds one pointer to text,
	// not two. The topic is a prefix of the topic that created the node,
	// so free; a new value copies the topic again.
	text string
	// sub is the node's children, in insertion order (kids), behind a
	// pointer: most nodes are leaves, and 8 bytes instead of a slice's 24
	// make a node 56 bytes, not 72.
	sub  *[]*node
	pos  int32  // index in the parent's kids
	off  uint16 // where the node's own level starts in its topic
	plen uint16 // the topic's length (wire.MaxTopicLen fits)
	kind wire.Kind
	qos  byte // QoS the row was published with (retained delivery is capped by it)
	// tgrow is what the node's topic takes in a snapshot beyond its
	// bytes (topicGrowth), counted when the node is made, from its
	// parent's and its own level, whose bytes are at hand there: a
	// node's topic never changes. 0: not known (past 65,535: counted
	// from the topic when asked). In the node's padding.
	tgrow uint16
	// grow is 1 + what the row may take in a snapshot beyond its topic
	// and value (rowGrowth): counted when the value is put if it is at
	// most eagerLeaf bytes (its bytes are at hand there), else the first
	// time an estimate asks (Store.MatchSizes), and kept until the value
	// changes; 0: not counted. In the node's padding: it costs no memory.
	grow uint32
	rev  uint64 // revision of the row's last change (SPEC §8)
	ms   int64  // broker time of the row's last change, Unix ms (0: unknown)
}

// topic is the node's topic.
func (n *node) topic() string { return n.text[:n.plen] }

// name is the node's level name.
func (n *node) name() string { return n.text[n.off:n.plen] }

// val is the node's row's value (its data; "" without a row).
func (n *node) val() string { return n.text[n.plen:] }

// indexAt is the child count above which a name index is kept; below it a
// linear scan is faster and costs no memory.
const indexAt = 8

// index returns the index of n's children (n has more than indexAt).
func (s *Store) index(n *node) *names {
	if n != s.idxNode {
		s.idxNode, s.idx = n, s.big[n]
	}
	return s.idx
}

func (s *Store) child(n *node, name string) *node {
	kids := n.kids()
	if len(kids) > indexAt {
		return s.index(n).get(s.seed, kids, name)
	}
	for _, c := range kids {
		if c.name() == name {
			return c
		}
	}
	return nil
}

// kids is n's children, in insertion order (nil: none).
func (n *node) kids() []*node {
	if n.sub == nil {
		return nil
	}
	return *n.sub
}

// setKids makes kids n's children; nil lets go of the list.
func (n *node) setKids(kids []*node) {
	switch {
	case kids == nil:
		n.sub = nil
	case n.sub == nil:
		n.sub = new([]*node) // not &kids: that would move kids to the heap at every call
		*n.sub = kids
	default:
		*n.sub = kids
	}
}

func (s *Store) addChild(n, c *node) {
	kids := n.kids()
	c.pos = int32(len(kids))
	kids = append(kids, c)
	n.setKids(kids)
	switch {
	case len(kids) == indexAt+1:
		if s.big == nil {
			s.big = map[*node]*names{}
			s.seed = maphash.MakeSeed()
		}
		idx := &names{}
		idx.grow(cap(kids)) // as many as reserve expects
		for i := range kids {
			idx.put(s.seed, kids, i)
		}
		s.big[n] = idx
		s.idxNode, s.idx = n, idx
	case len(kids) > indexAt+1:
		s.index(n).put(s.seed, kids, int(c.pos))
	}
}

// reserve makes room in n for more children, so that the siblings of a
// tree publish do not grow n's list and index a few times each.
func (s *Store) reserve(n *node, more int) {
	kids := n.kids()
	want := len(kids) + more
	if more <= 0 || want <= cap(kids) {
		return
	}
	n.setKids(slices.Grow(kids, more))
	if len(kids) > indexAt {
		s.index(n).grow(want)
	}
}

func (s *Store) removeChild(n, c *node) {
	s.last = nil // it may be c, or above it
	kids := n.kids()
	last := len(kids) - 1
	switch {
	case last == indexAt:
		delete(s.big, n)
		s.idxNode, s.idx = nil, nil
	case last > indexAt: // the index reads positions in kids as they are
		idx := s.index(n)
		idx.del(s.seed, kids, int(c.pos))
		if int(c.pos) != last {
			idx.move(s.seed, kids, last, int(c.pos))
		}
	}
	moved := kids[last]
	kids[c.pos] = moved
	moved.pos = c.pos
	kids[last] = nil
	if last == 0 {
		n.setKids(nil)
		return
	}
	n.setKids(kids[:last])
}

func (n *node) hasKids() bool { return n.sub != nil && len(*n.sub) > 0 }

func (n *node) value() wire.Value { return wire.Value{Kind: n.kind, Data: n.val()} }

// nextLevel splits the level starting at i off topic. It returns the level
// and the index of the next level, len(topic)+1 after the last one.
//
// A level is looked for byte by byte for its first levelScan bytes, then by
// strings.IndexByte: its call was most of a short level's cost (nextLevel
// 228 → 174 instructions a `$tree` message; bench/README.md, branch h-tlat5).
func nextLevel(topic string, i int) (string, int) {
	end := min(len(topic), i+levelScan)
	for j := i; j < end; j++ {
		if topic[j] == '/' {
			return topic[i:j], j + 1
		}
	}
	if end < len(topic) {
		if j := strings.IndexByte(topic[end:], '/'); j >= 0 {
			return topic[i : end+j], end + j + 1
		}
	}
	return topic[i:], len(topic) + 1
}

// levelScan is how many bytes of a level nextLevel looks at one by one.
const levelScan = 16

// find returns the node of a topic, or nil.
func (s *Store) find(topic string) *node {
	n := &s.root
	for i := 0; i <= len(topic); {
		var name string
		name, i = nextLevel(topic, i)
		if n = s.child(n, name); n == nil {
			return nil
		}
	}
	return n
}

// Len is the number of rows.
func (s *Store) Len() int { return s.rows }

// Gen counts the rows added and deleted so far: while it stays the same,
// every filter matches the same rows (Refs lists the same), whatever
// values they changed to.
func (s *Store) Gen() uint64 { return s.gen }

// Get returns the row of a topic.
func (s *Store) Get(topic string) (wire.Value, bool) {
	n := s.find(topic)
	if n == nil || n.kind == wire.None {
		return wire.Value{}, false
	}
	return n.value(), true
}

// Stamp is when a row last changed: the store revision of that change
// (SPEC §8) and the broker's time in Unix milliseconds (0: unknown).
type Stamp struct {
	Rev uint64
	MS  int64
}

// Set stores a row published at QoS qos, copying the topic and value so the
// caller's buffers may be reused. A value of kind None deletes the row. It
// reports whether the store changed; a topic longer than wire.MaxTopicLen
// is never stored. The row's stamp is zero: Put sets it.
func (s *Store) Set(topic string, v wire.Value, qos byte) bool {
	return s.Put(topic, v, qos, Stamp{})
}

// Put is Set with the stamp of the change, kept with the row when the
// store changes.
func (s *Store) Put(topic string, v wire.Value, qos byte, at Stamp) bool {
	changed, _ := s.put(topic, v, qos, at, 0)
	return changed
}

// put is Put, also reporting whether the value changed (not only the
// QoS). siblings is how many of the rows put next (this one first) are
// under the same parent: when this one is a new child, room is made for
// them all at once.
func (s *Store) put(topic string, v wire.Value, qos byte, at Stamp, siblings int) (changed, value bool) {
	if v.Kind == wire.None {
		ok := s.Delete(topic)
		return ok, ok
	}
	if len(topic) > wire.MaxTopicLen {
		return false, false
	}
	n, fresh := s.node(topic, v.Data, siblings)
	if fresh { // its value is already in place, beside its topic
		s.rows++
		s.gen++
		n.kind, n.qos, n.rev, n.ms = v.Kind, qos, at.Rev, at.MS
		n.grow = leafGrow(n.tgrow, v)
		return true, true
	}
	if n.kind == wire.None {
		s.rows++
		s.gen++
	} else if n.kind == v.Kind && n.val() == v.Data {
		if n.qos == qos {
			return false, false
		}
		n.qos, n.rev, n.ms = qos, at.Rev, at.MS
		return true, false
	}
	n.kind, n.text, n.qos, n.grow = v.Kind, joined(n.topic(), v.Data), qos, leafGrow(n.tgrow, v)
	n.rev, n.ms = at.Rev, at.MS
	return true, true
}

// node returns the node of topic, making it and its parents as needed.
// When it makes the topic's own node (fresh), it gives it val as its
// value: the topic and the value are copied into one string, one
// allocation, that new nodes' paths and the value point into (new parents
// point into a copy of the topic alone when the value is longer than
// parentPin).
func (s *Store) node(topic, val string, siblings int) (n *node, fresh bool) {
	if p := s.last; p != nil && len(topic) > int(p.plen) && topic[p.plen] == '/' &&
		strings.HasPrefix(topic, p.topic()) && strings.IndexByte(topic[p.plen+1:], '/') < 0 {
		// A sibling of the last row: one level below the same parent.
		name := topic[p.plen+1:]
		if c := s.child(p, name); c != nil {
			return c, false
		}
		s.reserve(p, siblings)
		owned := s.copyText(topic, val)
		c := s.newNode()
		c.text, c.plen, c.off = owned, uint16(len(topic)), p.plen+1
		c.tgrow = s.childGrowth(p, name)
		s.addChild(p, c)
		return c, true
	}
	n = &s.root
	parent := n
	owned := ""   // the topic and value copy that the row's new node points into
	parents := "" // the topic copy that new parents point into: owned, unless val is long
	for i := 0; i <= len(topic); {
		if i > 0 {
			s.last = n
		}
		parent = n
		start := i
		var name string
		name, i = nextLevel(topic, i)
		c := s.child(n, name)
		if c == nil {
			if owned == "" {
				owned = s.copyText(topic, val)
				parents = owned
				if i <= len(topic) && len(val) > parentPin { // c is a parent
					parents = strings.Clone(topic)
				}
			}
			c = s.newNode()
			c.text, c.plen, c.off = parents[:start+len(name)], uint16(start+len(name)), uint16(start)
			c.tgrow = s.childGrowth(n, name)
			s.addChild(n, c)
		}
		n = c
	}
	if owned == "" {
		return n, false
	}
	n.text = owned // its value after its topic
	s.reserve(parent, siblings-1)
	return n, true
}

// parentPin is the longest value whose copy new parents share: a parent
// outlives its first row's value, and keeps at most this many of its bytes
// alive after the row changes or goes (a longer value is copied apart from
// the parents' topic).
const parentPin = 64

// slabSize is the size of a slab of new rows' texts (a size class), and
// slabText the longest topic and value copied into one: a slab stays in
// memory while any row or parent made from it keeps its first value, so a
// live row pins at most slabSize bytes (the storm's rows, ~20 bytes, fill
// a slab 25 at a time: 0.04 allocations a row instead of 1).
const (
	slabSize = 512
	slabText = 64
)

// copyText is a copy of topic followed by val, as one string: a piece of
// the current slab when it is at most slabText bytes, else its own
// allocation (joined). The slab is a strings.Builder that is only ever
// appended to, so the pieces it handed out never change.
func (s *Store) copyText(topic, val string) string {
	n := len(topic) + len(val)
	if n > slabText {
		return joined(topic, val)
	}
	if s.slab == nil {
		s.slab = new(strings.Builder)
	}
	if s.slab.Cap()-s.slab.Len() < n {
		// A new buffer: the strings cut from the last one keep it.
		s.slab.Reset()
		s.slab.Grow(slabSize)
	}
	from := s.slab.Len()
	s.slab.WriteString(topic)
	s.slab.WriteString(val)
	return s.slab.String()[from:]
}

// joined is a copy of topic followed by val, in one allocation.
func joined(topic, val string) string {
	if val == "" {
		return strings.Clone(topic) // topic + "" would be topic itself, not a copy
	}
	return topic + val
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
		if n = s.child(n, name); n == nil {
			return false
		}
		path = append(path, n)
	}
	if n.kind == wire.None {
		return false
	}
	n.kind, n.rev, n.ms = wire.None, 0, 0
	if n.hasKids() && len(n.val()) > 0 {
		n.text = strings.Clone(n.topic()) // it stays: let go of the value
	}
	n.text = n.text[:n.plen]
	s.rows--
	s.gen++
	for j := len(path) - 1; j > 0; j-- {
		c := path[j]
		if c.kind != wire.None || c.hasKids() {
			break
		}
		s.removeChild(path[j-1], c)
		// Its chunk may outlive it: let go of its topic (a Ref reads
		// kind None and stops there).
		c.text, c.plen, c.off = "", 0, 0
	}
	return true
}

// Match calls fn for every row matching an MQTT filter, with the row's
// topic, until fn returns false. '+' and '#' at the first level do not match
// topics starting with '$' [MQTT-4.7.2-1]. The filter must be valid.
func (s *Store) Match(filter string, fn func(topic string, v wire.Value, qos byte) bool) {
	m := matcher{s: s, filter: filter, fn: func(n *node) bool { return fn(n.topic(), n.value(), n.qos) }}
	m.walk(&s.root, 0)
}

// MatchSizes is Match, giving each row's size instead of its QoS: an
// upper bound of the bytes the row takes in any snapshot (Tree.Snapshot)
// of any filter, in any codec, its keys included (SizeBound). A row's
// count is kept in its node until its value changes: its topic's part
// counted when the node was made, its value's when the value was put
// (a value of at most eagerLeaf bytes) or else by the first walk that
// asks, which reads the value once; so a walk reads no row's text but
// long values' after they changed.
func (s *Store) MatchSizes(filter string, fn func(topic string, v wire.Value, size int64) bool) {
	m := matcher{s: s, filter: filter, fn: func(n *node) bool { return fn(n.topic(), n.value(), n.size()) }}
	m.walk(&s.root, 0)
}

// SizeBound is what MatchSizes gives for a row: an upper bound of its
// bytes in a snapshot.
func SizeBound(topic string, v wire.Value) int64 {
	return int64(len(topic)) + int64(len(v.Data)) + rowGrowth(topic, v)
}

// SnapshotFraming is what a snapshot may take beyond its rows' SizeBound:
// its root object's head and end.
const SnapshotFraming = 16

// size is SizeBound of n's row, counted once per value (n.grow).
func (n *node) size() int64 {
	if n.grow == 0 {
		var g int64
		if n.tgrow != 0 {
			g = int64(n.tgrow) + 8 + int64(wire.LeafGrowth(n.value()))
		} else {
			g = rowGrowth(n.topic(), n.value())
		}
		if g >= math.MaxUint32 { // no payload is that large: not kept
			return int64(n.plen) + int64(len(n.val())) + g
		}
		n.grow = uint32(g + 1)
	}
	return int64(n.plen) + int64(len(n.val())) + int64(n.grow) - 1
}

// rowGrowth is an upper bound of the bytes a row takes in a snapshot
// beyond its topic and value. Each level of its topic is a key (escaped
// in JSON: wire.EscapeGrowth) of an object that the row may open alone:
// in JSON `"name":{` and `}` and a comma, 5 more than the name and its
// slash, and the last level `"name":` and a comma; a row with rows below
// it is `{"/":value}` (6 more). CBOR and MessagePack take less: a key's
// head (3 bytes at most) and a map's (1 byte, and a few more only for a
// map of 16 members or more, a fraction of a byte each). The value takes
// wire.LeafGrowth more than its bytes.
func rowGrowth(topic string, v wire.Value) int64 {
	return topicGrowth(topic) + 8 + int64(wire.LeafGrowth(v))
}

// childGrowth is topicGrowth of a new child of p named name: p's, and
// its own level's (0: not known, or past what tgrow holds).
func (s *Store) childGrowth(p *node, name string) uint16 {
	if p.tgrow == 0 && p != &s.root {
		return 0
	}
	esc, ok := wire.EscapeGrowthASCII(name) // most names: inlined
	if !ok {
		esc = wire.EscapeGrowth(name)
	}
	g := int(p.tgrow) + esc + 5
	if g > math.MaxUint16 {
		return 0
	}
	return uint16(g)
}

// topicGrowth is what a topic takes in a snapshot beyond its bytes, the
// part of rowGrowth that depends on the topic alone but its 8: each
// level's escapes and 5.
func topicGrowth(topic string) int64 {
	return int64(wire.EscapeGrowth(topic)) + 5*int64(strings.Count(topic, "/")+1)
}

// eagerLeaf is the longest value whose growth put counts while its bytes
// are at hand (a few ns for the short values of most rows), so that the
// first estimate after a storm of changes reads no row's text. A longer
// one is counted by the first estimate that asks: counting it at put
// would add about a ns a byte to every change of it, beside a copy
// ten times faster.
const eagerLeaf = 64

// leafGrow is the grow of a node of topic growth tgrow for its new value
// v: counted if v is at most eagerLeaf bytes, else 0 (counted when
// asked). Small enough to be inlined in put.
func leafGrow(tgrow uint16, v wire.Value) uint32 {
	if tgrow == 0 || len(v.Data) > eagerLeaf {
		return 0
	}
	return uint32(tgrow) + 9 + uint32(wire.LeafGrowth(v))
}

type matcher struct {
	s      *Store
	filter string
	fn     func(*node) bool
	stop   bool
}

// walk visits node n at filter offset i (len(filter)+1 once the filter is
// used up).
func (m *matcher) walk(n *node, i int) {
	if m.stop {
		return
	}
	if i > len(m.filter) {
		if n.kind != wire.None {
			m.stop = !m.fn(n)
		}
		return
	}
	level, next := nextLevel(m.filter, i)
	switch level {
	case "#":
		if n.kind != wire.None && i > 0 { // "a/#" matches "a" itself
			if m.stop = !m.fn(n); m.stop {
				return
			}
		}
		m.all(n, i == 0)
	case "+":
		for _, c := range n.kids() {
			if i == 0 && strings.HasPrefix(c.name(), "$") {
				continue
			}
			m.walk(c, next)
			if m.stop {
				return
			}
		}
	default:
		if c := m.s.child(n, level); c != nil {
			m.walk(c, next)
		}
	}
}

// all visits every row below n; skipDollar applies the '$' rule at the root.
func (m *matcher) all(n *node, skipDollar bool) {
	for _, c := range n.kids() {
		if skipDollar && strings.HasPrefix(c.name(), "$") {
			continue
		}
		if c.kind != wire.None {
			if m.stop = !m.fn(c); m.stop {
				return
			}
		}
		m.all(c, false)
		if m.stop {
			return
		}
	}
}

// Entry is one row as Rows reads it.
type Entry struct {
	Topic string
	Value wire.Value
	QoS   byte
	Stamp
}

// Rows calls fn for every row matching filter (valid) changed after
// revision since (0: every row), until fn returns false.
func (s *Store) Rows(filter string, since uint64, fn func(Entry) bool) {
	m := matcher{s: s, filter: filter, fn: func(n *node) bool {
		if n.rev <= since && since > 0 {
			return true
		}
		return fn(Entry{Topic: n.topic(), Value: n.value(), QoS: n.qos, Stamp: Stamp{Rev: n.rev, MS: n.ms}})
	}}
	m.walk(&s.root, 0)
}

// Range calls fn for every row, '$' topics included, until fn returns false.
func (s *Store) Range(fn func(topic string, v wire.Value, qos byte) bool) {
	m := matcher{s: s, fn: func(n *node) bool { return fn(n.topic(), n.value(), n.qos) }}
	m.all(&s.root, false)
}

// Ref is a handle on one row of a Store, to read it again later: a retained
// replay lists the rows of a filter once and reads them as its client
// drains them. Like the Store, a Ref is read only by the Store's owner.
type Ref struct{ n *node }

// Refs appends to out a Ref to every row matching filter now (the filter
// must be valid). 8 bytes a row.
func (s *Store) Refs(filter string, out []Ref) []Ref {
	m := matcher{s: s, filter: filter, fn: func(n *node) bool { out = append(out, Ref{n}); return true }}
	m.walk(&s.root, 0)
	return out
}

// Row reads the row behind r: its topic, value and QoS as they are now; ok
// is false once the row has been deleted (a row set again after that is a
// new row, which r does not see).
func (r Ref) Row() (topic string, v wire.Value, qos byte, ok bool) {
	if r.n == nil || r.n.kind == wire.None {
		return "", wire.Value{}, 0, false
	}
	return r.n.topic(), r.n.value(), r.n.qos, true
}

// Rev is the revision of the last change of the row behind r (SPEC §8;
// 0 when unknown, or once the row is deleted).
func (r Ref) Rev() uint64 {
	if r.n == nil || r.n.kind == wire.None {
		return 0
	}
	return r.n.rev
}

func appendLevel(topic []byte, first bool, name string) []byte {
	if !first {
		topic = append(topic, '/')
	}
	return append(topic, name...)
}
