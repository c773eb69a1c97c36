package tree

import (
	"strings"

	"github.com/mote-mqtt/mote/wire"
)

// Snapshot encodes every retained row matching filter as one tree (SPEC §3)
// in codec c. A filter without wildcards gives the bare value, or null. A
// tree with no rows is {}. allow, if not nil, hides rows it denies. The
// filter must be valid.
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
	topic  []byte // the current node's topic, kept only when allow is set
}

// emit writes the value for node n, matched at filter offset i
// (len(filter)+1 once the filter is used up). It writes nothing and returns
// false when no row under n matches.
func (w *walker) emit(n *node, i int) bool {
	if i > len(w.filter) {
		if n.kind == wire.None || !w.allowed() {
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
		for _, c := range n.kids {
			if i == 0 && strings.HasPrefix(c.name, "$") {
				continue
			}
			m := w.e.Mark()
			t := w.push(c.name, i == 0)
			w.e.Key(c.name)
			if w.emit(c, next) {
				wrote = true
			} else {
				w.e.Rewind(m)
			}
			w.topic = t
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
		t := w.push(c.name, i == 0)
		ok := w.emit(c, next)
		w.topic = t
		return ok
	}
}

// subtree writes node n below a '#' (SPEC §3): its own value under "/" when
// it has children or is an object, else bare. At the '#' itself (root) n is
// always an object. skipDollar applies the '$' rule at the filter's root.
func (w *walker) subtree(n *node, skipDollar, root bool) bool {
	own := n.kind != wire.None && w.allowed()
	if !root && !n.hasKids() {
		if !own {
			return false
		}
		if n.kind == wire.Object {
			w.e.BeginObject()
			w.e.Key("/")
			w.e.Value(n.value())
			w.e.EndObject()
		} else {
			w.e.Value(n.value())
		}
		return true
	}
	start := w.e.Mark()
	w.e.BeginObject()
	wrote := false
	if own {
		w.e.Key("/")
		w.e.Value(n.value())
		wrote = true
	}
	for _, c := range n.kids {
		if skipDollar && strings.HasPrefix(c.name, "$") {
			continue
		}
		m := w.e.Mark()
		t := w.push(c.name, skipDollar)
		w.e.Key(c.name)
		if w.subtree(c, false, false) {
			wrote = true
		} else {
			w.e.Rewind(m)
		}
		w.topic = t
	}
	if !wrote {
		w.e.Rewind(start)
		return false
	}
	w.e.EndObject()
	return true
}

// push appends a level to the current topic when a read check needs it and
// returns the topic to restore afterwards.
func (w *walker) push(name string, first bool) []byte {
	old := w.topic
	if w.allow != nil {
		w.topic = appendLevel(w.topic, first, name)
	}
	return old
}

func (w *walker) allowed() bool { return w.allow == nil || w.allow(string(w.topic)) }
