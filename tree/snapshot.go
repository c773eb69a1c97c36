package tree

import (
	"strings"

	"github.com/mote-mqtt/mote/wire"
)

// Snapshot encodes every retained row matching filter as one tree (SPEC §3)
// in codec c. A filter without wildcards gives the bare value, or null. A
// tree with no rows is {}. allow, if not nil, hides rows it denies: not even
// their keys, nor the "/" form a node takes for children the reader cannot
// see. The filter must be valid.
func (t *Tree) Snapshot(filter string, c wire.Codec, allow func(string) bool) []byte {
	e := &t.enc
	e.Reset(c, nil)
	if !wire.HasWildcard(filter) {
		n := t.store.find(filter)
		if n != nil && n.kind != wire.None && (allow == nil || allow(filter)) {
			e.Value(n.value())
		} else {
			e.Null()
		}
		return e.Bytes()
	}
	w := walker{s: &t.store, e: e, filter: filter, allow: allow}
	if !w.emit(&t.store.root, 0) {
		e.Reset(c, e.Bytes()[:0])
		e.BeginObject()
		e.EndObject()
	}
	out := e.Bytes()
	e.Reset(c, nil) // the caller owns out
	return out
}

// walker writes the snapshot of one filter.
type walker struct {
	s      *Store
	e      *wire.Encoder
	filter string
	allow  func(string) bool
}

// emit writes the value for node n, matched at filter offset i
// (len(filter)+1 once the filter is used up). It writes nothing and returns
// false when no row under n matches.
func (w *walker) emit(n *node, i int) bool {
	if i > len(w.filter) {
		if n.kind == wire.None || !w.allowed(n) {
			return false
		}
		w.e.Value(n.value())
		return true
	}
	level, next := nextLevel(w.filter, i)
	switch level {
	case "#":
		return w.subtree(n, i == 0, true)
	case "+":
		start := w.e.Mark()
		w.e.BeginObject()
		wrote := false
		for _, c := range n.kids() {
			if i == 0 && strings.HasPrefix(c.name(), "$") {
				continue
			}
			m := w.e.Mark()
			w.e.Key(c.name())
			if w.emit(c, next) {
				wrote = true
			} else {
				w.e.Rewind(m)
			}
		}
		if !wrote {
			w.e.Rewind(start)
			return false
		}
		w.e.EndObject()
		return true
	default:
		c := w.s.child(n, level)
		if c == nil {
			return false
		}
		return w.emit(c, next)
	}
}

// subtree writes node n below a '#' (SPEC §3): its own value under "/" when
// it has children the reader sees or is an object, else bare. At the '#'
// itself (root) n is always an object. skipDollar applies the '$' rule at
// the filter's root.
func (w *walker) subtree(n *node, skipDollar, root bool) bool {
	own := n.kind != wire.None && w.allowed(n)
	if !root && !n.hasKids() {
		if !own {
			return false
		}
		w.leaf(n)
		return true
	}
	start := w.e.Mark()
	w.e.BeginObject()
	if own {
		w.e.Key("/")
		w.e.Value(n.value())
	}
	kids := false
	for _, c := range n.kids() {
		if skipDollar && strings.HasPrefix(c.name(), "$") {
			continue
		}
		m := w.e.Mark()
		w.e.Key(c.name())
		if w.subtree(c, false, false) {
			kids = true
		} else {
			w.e.Rewind(m)
		}
	}
	switch {
	case kids || (root && own):
		w.e.EndObject()
		return true
	case own: // every child is hidden from this reader: n is a leaf to it
		w.e.Rewind(start)
		w.leaf(n)
		return true
	}
	w.e.Rewind(start)
	return false
}

// leaf writes the value of a node without visible children below a '#': an
// object value sits under "/" (SPEC §3).
func (w *walker) leaf(n *node) {
	if n.kind != wire.Object {
		w.e.Value(n.value())
		return
	}
	w.e.BeginObject()
	w.e.Key("/")
	w.e.Value(n.value())
	w.e.EndObject()
}

func (w *walker) allowed(n *node) bool { return w.allow == nil || w.allow(n.topic()) }

// visibleKids reports whether a row below n passes allow (any row, when
// allow is nil).
func (s *Store) visibleKids(n *node, allow func(string) bool) bool {
	if allow == nil {
		return n.hasKids()
	}
	for _, c := range n.kids() {
		if (c.kind != wire.None && allow(c.topic())) || s.visibleKids(c, allow) {
			return true
		}
	}
	return false
}
