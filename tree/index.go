package tree

import (
	"strings"

	"github.com/mote-mqtt/mote/wire"
)

// Sub is one tree subscription ($sync/F or $tree/F).
type Sub struct {
	Owner  string     // client id
	Topic  string     // the filter exactly as subscribed; snapshots and deltas are published on it
	Filter string     // F, the MQTT filter the tree is built from
	Codec  wire.Codec // payload codec
	QoS    byte       // granted QoS
	// Allow, if not nil, is the read check: rows it denies never reach this
	// subscription, not even as keys. A subscription with Allow gets its own
	// encoding instead of sharing its group's.
	Allow func(topic string) bool
	// Local, if not empty, is an origin (Op.Origin) whose changes this
	// subscription is not sent (MQTT 5 No Local): a row whose newest
	// change in a batch, or among the changes Fold is given, came from it
	// is left out of its delta. Its group shares one encoding with it
	// unless its origin changed a row of the batch. Set before it is
	// registered; never changed after.
	Local string
	// Data is the owner's own state for this subscription; tree never reads it.
	Data any

	group *group
}

// group is the subscriptions sharing one (filter, codec): they share one
// encoded delta per batch.
type group struct {
	filter  string
	levels  []string // filter split into levels
	plus    int      // number of '+' levels
	hash    bool     // the last level is '#'
	codec   wire.Codec
	subs    []*Sub // Allow == nil: share one encoding
	private []*Sub // Allow != nil: encoded one by one
	local   int    // how many of subs and private have Local

	gen  uint64  // batch that last touched the group
	rows []int32 // this batch's changed rows that match, as indexes
}

func newGroup(filter string, codec wire.Codec) *group {
	g := &group{filter: filter, levels: strings.Split(filter, "/"), codec: codec}
	for _, l := range g.levels {
		if l == "+" {
			g.plus++
		}
	}
	g.hash = g.levels[len(g.levels)-1] == "#"
	return g
}

func (g *group) empty() bool { return len(g.subs) == 0 && len(g.private) == 0 }

// fnode is one level of the filter trie. Its kids are "+" (plus), "#"
// (hash) and the literal levels: in lits while there are at most litScan
// of them, found by a scan, else in kids (many).
type fnode struct {
	// kids are the literal kids while there are many (nil otherwise): a
	// node with a few holds no map, which doubled the trie's memory
	// (review h-rv9, RV9-4: a map and lits both, 100,000 filters kN/a/b
	// 96 -> 111 MB).
	kids   map[string]*fnode
	groups []*group // groups whose filter ends here
	// plus and hash are the "+" and "#" kids (nil when absent): a match
	// looks them up at every level, and two map lookups were a third of
	// matching a one-row publish (bench/README.md, branch h-tlat).
	plus, hash *fnode
	// lits are the literal kids while there are at most litScan of them,
	// found by a scan: a map lookup was ~135 instructions a level of a
	// `$tree` publish's match, which went from 681 to 417 (bench/README.md,
	// branch h-tlat5). many: there are more, and kids holds them until
	// they are litScan/2 again (rescan), so a node that once had many (the
	// root, never pruned) scans again once they went (review h-rv9, RV9-1).
	lits []fkid
	many bool
}

// fkid is one literal kid of an fnode, by name.
type fkid struct {
	name string
	node *fnode
}

// litScan is how many literal kids an fnode finds by a scan of lits.
const litScan = 8

// lit returns n's literal kid named level, or nil.
func (n *fnode) lit(level string) *fnode {
	if n.many {
		return n.kids[level]
	}
	for i := range n.lits {
		if n.lits[i].name == level {
			return n.lits[i].node
		}
	}
	return nil
}

// kid returns n's child named level ("+", "#" or a literal), or nil.
func (n *fnode) kid(level string) *fnode {
	switch level {
	case "+":
		return n.plus
	case "#":
		return n.hash
	}
	return n.lit(level)
}

// leaf reports whether n has no kids.
func (n *fnode) leaf() bool {
	return n.plus == nil && n.hash == nil && len(n.lits) == 0 && len(n.kids) == 0
}

// eachKid calls fn with each of n's kids and its name.
func (n *fnode) eachKid(fn func(name string, c *fnode)) {
	if n.plus != nil {
		fn("+", n.plus)
	}
	if n.hash != nil {
		fn("#", n.hash)
	}
	for _, k := range n.lits {
		fn(k.name, k.node)
	}
	for name, c := range n.kids {
		fn(name, c)
	}
}

// setKid sets n's child named level to c (nil: none).
func (n *fnode) setKid(level string, c *fnode) {
	switch level {
	case "+":
		n.plus = c
		return
	case "#":
		n.hash = c
		return
	}
	if n.many {
		if c != nil {
			n.kids[level] = c
			return
		}
		delete(n.kids, level)
		if len(n.kids) <= litScan/2 {
			n.rescan()
		}
		return
	}
	for i := range n.lits {
		if n.lits[i].name != level {
			continue
		}
		if c != nil {
			n.lits[i].node = c
			return
		}
		last := len(n.lits) - 1
		n.lits[i] = n.lits[last]
		n.lits[last] = fkid{}
		n.lits = n.lits[:last]
		return
	}
	if c == nil {
		return
	}
	if len(n.lits) < litScan {
		n.lits = append(n.lits, fkid{name: level, node: c})
		return
	}
	n.kids = make(map[string]*fnode, litScan+1)
	for _, k := range n.lits {
		n.kids[k.name] = k.node
	}
	n.kids[level] = c
	n.lits, n.many = nil, true
}

// rescan moves the literal kids of a node that had many from kids to
// lits: from then on they are found by a scan again. At litScan/2, not
// litScan, so a node whose kids come and go around litScan does not copy
// them at every change.
func (n *fnode) rescan() {
	n.lits = make([]fkid, 0, len(n.kids))
	for name, c := range n.kids {
		n.lits = append(n.lits, fkid{name: name, node: c})
	}
	n.kids, n.many = nil, false
}

// index is the subscription index: every tree subscription, in a filter
// trie, so a changed topic finds its subscriptions by walking its levels.
type index struct {
	root    fnode
	byKey   map[subKey]*Sub
	byOwner map[string][]*Sub
}

type subKey struct{ owner, topic string }

func newIndex() index {
	return index{byKey: map[subKey]*Sub{}, byOwner: map[string][]*Sub{}}
}

// add registers s, replacing the owner's subscription on the same topic
// [MQTT-3.8.4-3], which it returns (nil if there was none).
func (x *index) add(s *Sub) (replaced *Sub) {
	replaced = x.byKey[subKey{s.Owner, s.Topic}]
	x.remove(s.Owner, s.Topic)
	n := &x.root
	for i := 0; i <= len(s.Filter); {
		var level string
		level, i = nextLevel(s.Filter, i)
		c := n.kid(level)
		if c == nil {
			c = &fnode{}
			n.setKid(level, c)
		}
		n = c
	}
	var g *group
	for _, x := range n.groups {
		if x.codec == s.Codec {
			g = x
			break
		}
	}
	if g == nil {
		g = newGroup(s.Filter, s.Codec)
		n.groups = append(n.groups, g)
	}
	if s.Allow == nil {
		g.subs = append(g.subs, s)
	} else {
		g.private = append(g.private, s)
	}
	if s.Local != "" {
		g.local++
	}
	s.group = g
	x.byKey[subKey{s.Owner, s.Topic}] = s
	x.byOwner[s.Owner] = append(x.byOwner[s.Owner], s)
	return replaced
}

// remove drops the owner's subscription on topic; it reports whether there was one.
func (x *index) remove(owner, topic string) bool {
	s := x.byKey[subKey{owner, topic}]
	if s == nil {
		return false
	}
	delete(x.byKey, subKey{owner, topic})
	own := deleteSub(x.byOwner[owner], s)
	if len(own) == 0 {
		delete(x.byOwner, owner)
	} else {
		x.byOwner[owner] = own
	}
	g := s.group
	s.group = nil
	if s.Local != "" {
		g.local--
	}
	if s.Allow == nil {
		g.subs = deleteSub(g.subs, s)
	} else {
		g.private = deleteSub(g.private, s)
	}
	if g.empty() {
		x.dropGroup(g)
	}
	return true
}

// removeOwner drops every subscription of owner and returns how many.
func (x *index) removeOwner(owner string) int {
	subs := append([]*Sub(nil), x.byOwner[owner]...)
	for _, s := range subs {
		x.remove(owner, s.Topic)
	}
	return len(subs)
}

// dropGroup unlinks an empty group and prunes the trie nodes left empty.
func (x *index) dropGroup(g *group) {
	path := []*fnode{&x.root}
	n := &x.root
	for _, l := range g.levels {
		n = n.kid(l)
		path = append(path, n)
	}
	for i, y := range n.groups {
		if y == g {
			n.groups = append(n.groups[:i], n.groups[i+1:]...)
			break
		}
	}
	for j := len(path) - 1; j > 0; j-- {
		c := path[j]
		if len(c.groups) > 0 || !c.leaf() {
			break
		}
		path[j-1].setKid(g.levels[j-1], nil)
	}
}

func deleteSub(list []*Sub, s *Sub) []*Sub {
	for i, y := range list {
		if y == s {
			last := len(list) - 1
			list[i] = list[last]
			list[last] = nil
			return list[:last]
		}
	}
	return list
}

// match appends to out every group whose filter matches topic. '+' and '#'
// at the first level do not match topics starting with '$' [MQTT-4.7.2-1].
func (x *index) match(topic string, out []*group) []*group {
	return x.matchFrom(&x.root, topic, 0, out)
}

// matchFrom matches topic from offset i (len(topic)+1 once used up) at n.
func (x *index) matchFrom(n *fnode, topic string, i int, out []*group) []*group {
	if i > len(topic) {
		out = appendAll(out, n.groups)
		if h := n.hash; h != nil { // "a/#" matches "a" itself
			out = appendAll(out, h.groups)
		}
		return out
	}
	if n.leaf() {
		return out
	}
	dollar := i == 0 && strings.HasPrefix(topic, "$")
	if h := n.hash; h != nil && !dollar {
		out = appendAll(out, h.groups)
	}
	level, next := nextLevel(topic, i)
	if p := n.plus; p != nil && !dollar {
		out = x.matchFrom(p, topic, next, out)
	}
	if c := n.lit(level); c != nil {
		out = x.matchFrom(c, topic, next, out)
	}
	return out
}

// setAllow gives every subscription of g the read check allow returns for
// it, and sorts them again into those sharing one encoding (no check) and
// those encoded one by one when that changed: one pass, however many
// share the group.
func (g *group) setAllow(allow func(s *Sub) func(topic string) bool) {
	shared := 0
	for _, list := range [2][]*Sub{g.subs, g.private} {
		for _, s := range list {
			if s.Allow = allow(s); s.Allow == nil {
				shared++
			}
		}
	}
	total := len(g.subs) + len(g.private)
	switch {
	case shared == len(g.subs) && allNil(g.subs):
		return // nobody moved
	case shared == 0: // all get a check (an ACL came): the lists keep their arrays
		g.private = append(g.private, g.subs...)
		clear(g.subs)
		g.subs = g.subs[:0]
		return
	case shared == total: // none has one any more
		g.subs = append(g.subs, g.private...)
		clear(g.private)
		g.private = g.private[:0]
		return
	}
	subs, private := make([]*Sub, 0, shared), make([]*Sub, 0, total-shared)
	for _, list := range [2][]*Sub{g.subs, g.private} {
		for _, s := range list {
			if s.Allow == nil {
				subs = append(subs, s)
			} else {
				private = append(private, s)
			}
		}
	}
	g.subs, g.private = subs, private
}

func allNil(subs []*Sub) bool {
	for _, s := range subs {
		if s.Allow != nil {
			return false
		}
	}
	return true
}

// eachGroup calls fn with every group of the trie from n down.
func (n *fnode) eachGroup(fn func(*group)) {
	for _, g := range n.groups {
		fn(g)
	}
	n.eachKid(func(_ string, c *fnode) { c.eachGroup(fn) })
}
