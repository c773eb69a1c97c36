package tree

import (
	"fmt"
	"slices"
	"strings"

	"github.com/mote-mqtt/mote/wire"
)

// Apply applies a batch of ops (the publishes waiting together) in order:
// retained rows go into the store, then every tree subscription touched by
// any changed row gets ONE delta holding the newest value of each of its
// changed rows, deletions as null (SPEC §2). Subscriptions sharing a filter
// and codec share one encoded payload.
func (t *Tree) Apply(ops []Op) Result {
	return t.ApplyAt(ops, Stamp{Rev: t.rev + 1, MS: t.clock()})
}

// ApplyAt is Apply with the stamp given: every row the batch changes gets
// at (a cluster node applies the log's batch at its sequence and its
// origin's time), and the revision becomes at.Rev if that is higher. A
// stamp at the current revision changes rows without moving it (a
// cluster node's own $SYS rows, which are not in the cluster's log).
func (t *Tree) ApplyAt(ops []Op, at Stamp) Result {
	t.gen++
	t.resetChanged()
	// The lists of the Result last released, if any (Release).
	res := Result{Applied: t.spare.Applied, Deltas: t.spare.Deltas}
	t.subs = t.spareSubs
	t.spare, t.spareSubs = Result{}, nil
	if cap(res.Applied) < len(ops) {
		res.Applied = make([]Applied, len(ops))
	}
	res.Applied = res.Applied[:len(ops)]
	t.stamp, t.dirty = at, false
	// Without a tree subscription no delta is made: the changed rows need
	// not be listed (a boot storm before any dashboard is up).
	t.track = len(t.index.byKey) > 0
	for i := range ops {
		res.Applied[i] = t.applyOp(&ops[i])
	}
	// Emptied key by key: clear() swept every slot the map ever grew to
	// (a storm's batch, say), for a batch of one row too (115 ns once it
	// had held 1,000 rows). A batch of few changed rows never filled it.
	if len(t.changed) > changedScan {
		for i := range t.changed {
			delete(t.byTopic, t.changed[i].topic)
		}
	}
	if t.dirty {
		t.rev = max(t.rev, at.Rev)
	}
	res.Rev, res.Changed, res.MS = t.rev, t.dirty, t.stamp.MS
	t.touched = t.touched[:0]
	for ci := range t.changed {
		t.matched = t.index.match(t.changed[ci].topic, t.matched[:0])
		for _, g := range t.matched {
			if g.gen != t.gen {
				g.gen = t.gen
				g.rows = g.rows[:0]
				t.touched = append(t.touched, g)
			}
			g.rows = append(g.rows, int32(ci))
		}
	}
	for _, g := range t.touched {
		res.Deltas = t.fold(g, res.Deltas)
	}
	return res
}

// Release hands the lists of res, the Result the last Apply or ApplyAt
// returned, back to the Tree for the next one: its caller reads none of
// them after (the rows and payloads they held are still the caller's).
// A Result not released is left to the GC; one released lets a batch
// allocate none of its lists (issue 15: a tree publish's round trip).
func (t *Tree) Release(res *Result) {
	ClearSmall(res.Applied) // neither rows nor payloads pinned meanwhile
	ClearSmall(res.Deltas)
	ClearSmall(t.subs)
	if cap(res.Applied) <= keepMax && cap(res.Deltas) <= keepMax && cap(t.subs) <= keepMax {
		t.spare = Result{Applied: res.Applied[:0], Deltas: res.Deltas[:0]}
		t.spareSubs = t.subs[:0]
	}
	t.subs = nil
	*res = Result{}
}

// subsOf is subs as a Delta's Subs: a copy, so a later change of the
// group's subscriptions does not change it, cut from the Result's list
// of them (t.subs).
func (t *Tree) subsOf(subs ...*Sub) []*Sub {
	from := len(t.subs)
	t.subs = appendAll(t.subs, subs)
	return t.subs[from:len(t.subs):len(t.subs)]
}

// applyOp expands, checks and applies one op; it changes nothing if refused.
func (t *Tree) applyOp(op *Op) Applied {
	rows, err := t.expand(op)
	if err != nil {
		return Applied{Err: err}
	}
	// rows[:run] are put or passed. Looked for at a retained row only: a
	// row not retained is not put, and a run from a row not retained is
	// the run from the retained row after it (siblingRun extends over
	// retained siblings only). A one-row `$tree` publish not retained
	// paid ~50 instructions for it (bench/README.md, branch h-tlat5).
	run := 0
	for i := range rows {
		r := &rows[i]
		if r.Retain {
			if i >= run {
				run = siblingRun(rows, i)
			}
			changed, value := t.store.put(r.Topic, r.Value, op.QoS, t.stamp, run-i)
			r.Same, r.QoSOnly = !changed, changed && !value
			t.dirty = t.dirty || changed
		}
		if !t.track {
			continue
		}
		if i, ok := t.changedAt(r.Topic); ok {
			c := &t.changed[i]
			c.val, c.origin, c.qos, c.retain = r.Value, op.Origin, max(c.qos, op.QoS), r.Retain
			continue
		}
		t.changed = append(t.changed, change{topic: r.Topic, val: r.Value, origin: op.Origin, qos: op.QoS, retain: r.Retain})
		switch n := len(t.changed); {
		case n == changedScan+1: // past the scan: every row into the map
			for i := range t.changed {
				t.byTopic[t.changed[i].topic] = int32(i)
			}
		case n > changedScan+1:
			t.byTopic[r.Topic] = int32(n - 1)
		}
	}
	return Applied{Rows: rows}
}

// changedScan is how many changed rows of a batch are found by a scan of
// t.changed; past it, t.byTopic holds them all. A publish of a row or a
// few (most are) then neither fills the map nor empties it: that was 600
// instructions of a one-row `$tree` publish's 4,400 in ApplyAt
// (bench/README.md, branch h-tlat).
const changedScan = 8

// changedAt returns the index in t.changed of topic's change, if this
// batch has one.
func (t *Tree) changedAt(topic string) (int32, bool) {
	if len(t.changed) <= changedScan {
		for i := range t.changed {
			if t.changed[i].topic == topic {
				return int32(i), true
			}
		}
		return 0, false
	}
	i, ok := t.byTopic[topic]
	return i, ok
}

// appendAll is append(dst, src...), which copies through the runtime
// (typedslicecopy, ~39 instructions with its write barrier check) for a
// list of pointers of one, as a group's subscriptions and a level's groups
// mostly are: one is appended as an element (bench/README.md, branch
// h-tlat5).
func appendAll[T any](dst, src []T) []T {
	if len(src) == 1 {
		return append(dst, src[0])
	}
	return append(dst, src...)
}

// siblingRun returns the end of the run of rows from i that set retained
// rows under the same parent (a tree publish's rows mostly come so), at
// least i+1.
func siblingRun(rows []Row, i int) int {
	parent := func(t string) string {
		if k := strings.LastIndexByte(t, '/'); k >= 0 {
			return t[:k+1]
		}
		return ""
	}
	p := parent(rows[i].Topic)
	j := i + 1
	for j < len(rows) && rows[j].Retain && rows[j].Value.Kind != wire.None && parent(rows[j].Topic) == p {
		j++
	}
	return j
}

// Plan expands and checks op as Apply would, against the rows the store
// holds now, without applying it: the rows it would write ($set and
// .replace expanded), or why it is refused. A cluster node plans a write,
// appends the rows to the cluster's log, and applies them (with ApplyAt)
// when the log hands them back.
func (t *Tree) Plan(op *Op) Applied {
	rows, err := t.expand(op)
	if err != nil {
		return Applied{Err: err}
	}
	return Applied{Rows: rows}
}

// expand lists the rows op writes, with $set and .replace expanded, or
// refuses it whole.
func (t *Tree) expand(op *Op) ([]Row, error) {
	rows := op.Rows
	if op.SetFilter != "" || op.Replace != "" {
		rows = slices.Clip(rows)
	}
	hidden := func(topic string) bool {
		// The broker's own rows, and rows the publisher may neither write
		// nor read, are not a $set's or .replace's to touch.
		return (op.Allow != nil && op.Visible != nil && !op.Allow(topic) && !op.Visible(topic)) || (op.Protect && Reserved(topic))
	}
	if op.SetFilter != "" {
		t.store.Match(op.SetFilter, func(topic string, _ wire.Value, _ byte) bool {
			if !hidden(topic) {
				rows = append(rows, Row{Topic: topic, Value: op.SetValue, Retain: true})
			}
			return true
		})
	}
	if op.Replace != "" {
		mentioned := make(map[string]struct{}, len(op.Rows))
		for _, r := range op.Rows {
			mentioned[r.Topic] = struct{}{}
		}
		t.store.Match(op.Replace, func(topic string, _ wire.Value, _ byte) bool {
			if _, ok := mentioned[topic]; !ok && !hidden(topic) {
				rows = append(rows, Row{Topic: topic, Retain: true})
			}
			return true
		})
	}
	if op.MaxRows > 0 && len(rows) > op.MaxRows {
		return nil, fmt.Errorf("%w: the publish would touch %d rows, more than %d", ErrLimit, len(rows), op.MaxRows)
	}
	if set, size := len(rows)-len(op.Rows), len(op.SetValue.Data); op.SetFilter != "" && op.MaxBytes > 0 && set*size > op.MaxBytes {
		return nil, fmt.Errorf("%w: the $set would write %d rows of %d bytes, %d bytes in all, more than %d", ErrLimit, set, size, set*size, op.MaxBytes)
	}
	if op.Allow != nil {
		for _, r := range rows {
			if !op.Allow(r.Topic) {
				return nil, fmt.Errorf("%w: write to %q", ErrDenied, r.Topic)
			}
		}
	}
	return rows, nil
}

// rowPath is one changed row placed in a group's tree: its keys (the levels
// the filter's wildcards matched; t.keys[from:to]) and its index in
// t.changed.
type rowPath struct {
	keys     []string
	row      int32
	from, to int32
}

// resetChanged empties t.changed: the last batch's values are not pinned
// (a huge batch's past the length of the next one), nor its room.
func (t *Tree) resetChanged() {
	ClearSmall(t.changed)
	t.changed = t.changed[:0]
	if cap(t.changed) > keepMax {
		t.changed = nil
	}
}

// startPaths empties t.paths and the keys they are cut from.
func (t *Tree) startPaths() {
	ClearSmall(t.keys) // the last paths' levels: not pinned
	ClearSmall(t.paths)
	t.paths, t.keys = t.paths[:0], t.keys[:0]
	if cap(t.keys) > keepMax {
		t.keys = nil
	}
	if cap(t.paths) > keepMax {
		t.paths = nil
	}
}

// addPath places the changed row row, of topic, in g's tree (t.paths);
// sortPaths then cuts its keys and sorts.
func (t *Tree) addPath(g *group, topic string, row int32) {
	from := len(t.keys)
	t.keys = g.appendKeys(t.keys, topic)
	t.paths = append(t.paths, rowPath{row: row, from: int32(from), to: int32(len(t.keys))})
}

// sortPaths cuts each path's keys out of t.keys (which no longer grows)
// and sorts the paths by them.
func (t *Tree) sortPaths() {
	for i := range t.paths {
		p := &t.paths[i]
		p.keys = t.keys[p.from:p.to:p.to]
	}
	if len(t.paths) < 2 {
		return
	}
	slices.SortFunc(t.paths, func(a, b rowPath) int { return slices.Compare(a.keys, b.keys) })
}

// fold encodes the delta of one touched group and appends it to out: once
// for the shared subscriptions, once per private one that can read a row,
// and once per subscription with Local whose origin changed one of the
// group's rows (No Local: its own rows left out). Those get a Delta even
// when nothing is left (Payload nil): the broker folds and holds their
// rows. A group none of whose subscriptions has Local takes the shared
// path alone, as before.
func (t *Tree) fold(g *group, out []Delta) []Delta {
	t.startPaths()
	for _, ci := range g.rows {
		t.addPath(g, t.changed[ci].topic, ci)
	}
	t.sortPaths()
	t.listOrigins(g) // for changedBy
	if len(g.subs) > 0 {
		from := len(t.subs)
		if g.local == 0 {
			t.subs = appendAll(t.subs, g.subs)
		} else {
			for _, s := range g.subs {
				if !t.changedBy(g, s.Local) {
					t.subs = append(t.subs, s)
				}
			}
		}
		if shared := t.subs[from:len(t.subs):len(t.subs)]; len(shared) > 0 {
			payload, qos, _ := t.encodeDelta(g, nil, "")
			out = append(out, Delta{Payload: payload, QoS: qos, Subs: shared, Rows: len(g.rows), g: g, gen: t.gen})
		}
		if len(t.subs)-from < len(g.subs) {
			for _, s := range g.subs {
				if t.changedBy(g, s.Local) {
					out = t.foldOwn(g, s, out)
				}
			}
		}
	}
	for _, s := range g.private {
		if t.changedBy(g, s.Local) {
			out = t.foldOwn(g, s, out)
		} else if payload, qos, ok := t.encodeDelta(g, s.Allow, ""); ok {
			out = append(out, Delta{Payload: payload, QoS: qos, Subs: t.subsOf(s), Rows: len(g.rows), g: g, allow: s.Allow, gen: t.gen})
		}
	}
	return out
}

// foldOwn appends the delta of s, a subscription with Local whose origin
// changed some of g's rows: its own encoding without them (Payload nil
// when none is left), listed by AppendChanges with them.
func (t *Tree) foldOwn(g *group, s *Sub, out []Delta) []Delta {
	payload, qos, _ := t.encodeDelta(g, s.Allow, s.Local)
	return append(out, Delta{Payload: payload, QoS: qos, Subs: t.subsOf(s), Rows: len(g.rows), g: g, allow: s.Allow, gen: t.gen})
}

// changedBy reports whether origin (not empty) made the newest change of
// one of g's rows of this batch. A group with few subscriptions with
// Local or few rows (scanLocal, scanRows) has its rows looked at; else the distinct
// origins listOrigins listed once for it (fold), so that each of its
// subscriptions looks at a short list or a set, not at the batch's rows.
func (t *Tree) changedBy(g *group, origin string) bool {
	switch {
	case origin == "":
		return false
	case t.originSet != nil && len(t.origins) > originsMax:
		_, ok := t.originSet[origin]
		return ok
	case !t.scanRows:
		return slices.Contains(t.origins, origin)
	}
	for _, ci := range g.rows {
		if t.changed[ci].origin == origin {
			return true
		}
	}
	return false
}

const (
	// scanLocal and scanRows: a group with at most scanLocal
	// subscriptions with Local, or scanRows rows in the batch, has
	// changedBy look at its rows for each (no fewer to look at in a list).
	scanLocal = 4
	scanRows  = 16
	// originsMax is how many distinct origins changedBy looks for in the
	// list; past it, in a set (t.originSet, kept from one fold to the next).
	originsMax = 8
)

// listOrigins lists the distinct non-empty origins of g's rows of this
// batch for changedBy, when g has more than scanLocal subscriptions with
// Local and more than scanRows rows (else changedBy looks at the rows;
// with no Local, it is never asked).
func (t *Tree) listOrigins(g *group) {
	if t.originSet != nil {
		for _, o := range t.origins { // key by key: clear would sweep every slot it ever grew to
			delete(t.originSet, o)
		}
		if len(t.origins) > keepMax {
			t.originSet = nil // a storm's set is not kept for good
		}
	}
	clear(t.origins)
	if cap(t.origins) > keepMax {
		t.origins = nil // nor its list
	}
	t.origins, t.scanRows = t.origins[:0], g.local <= scanLocal || len(g.rows) <= scanRows
	if g.local == 0 || t.scanRows {
		return
	}
	for _, ci := range g.rows {
		if o := t.changed[ci].origin; o != "" && !t.changedBy(g, o) {
			t.origins = append(t.origins, o)
			if len(t.origins) <= originsMax {
				continue
			}
			if t.originSet == nil {
				t.originSet = map[string]struct{}{}
			}
			if len(t.originSet) == 0 { // the list's, now past originsMax
				for _, o := range t.origins {
					t.originSet[o] = struct{}{}
				}
			}
			t.originSet[o] = struct{}{}
		}
	}
}

// appendKeys appends the tree keys of a matching topic to keys: one per
// '+' level, and every level from the '#' on.
func (g *group) appendKeys(keys []string, topic string) []string {
	i := 0
	for _, l := range g.levels {
		if l == "#" {
			for i <= len(topic) {
				var name string
				name, i = nextLevel(topic, i)
				keys = append(keys, name)
			}
			break
		}
		if l != "+" && len(topic)-i >= len(l) && topic[i:i+len(l)] == l && (i+len(l) == len(topic) || topic[i+len(l)] == '/') {
			i += len(l) + 1 // a fixed level, as the topic has it: no search for its end
			continue
		}
		var name string
		name, i = nextLevel(topic, i)
		if l == "+" {
			keys = append(keys, name)
		}
	}
	return keys
}

// encodeDelta writes the sorted t.paths of group g as one tree. Below a '#'
// a node takes the object form ({"/": own value, children…}) when the delta
// or the store holds children under it or its value is an object, so a
// client merges a delta into its copy with the same rules as a snapshot.
// A row whose newest change came from skip (not empty: a subscription's
// Local) is left out as if allow hid it. It reports false when allow and
// skip leave no row.
func (t *Tree) encodeDelta(g *group, allow func(string) bool, skip string) ([]byte, byte, bool) {
	e := &t.enc
	e.Reset(g.codec, t.encBuf[:0])
	var qos byte
	wrote := false
	if g.plus == 0 && !g.hash { // no wildcard: a bare value
		c := &t.changed[t.paths[0].row]
		if !t.shown(c, allow, skip) {
			return nil, 0, false
		}
		e.Value(c.val) // kind None writes null
		return t.encoded(), c.qos, true
	}
	e.BeginObject()
	if g.plus == 1 && !g.hash { // every path one key: no object opens below the root
		for _, p := range t.paths {
			c := &t.changed[p.row]
			if !t.shown(c, allow, skip) {
				continue
			}
			wrote = true
			qos = max(qos, c.qos)
			e.Key(p.keys[0])
			e.Value(c.val)
		}
		e.EndObject()
		if !wrote {
			return nil, 0, false
		}
		return t.encoded(), qos, true
	}
	open := t.open[:0] // keys of the objects open below the root
	for pi, p := range t.paths {
		c := &t.changed[p.row]
		if !t.shown(c, allow, skip) {
			continue
		}
		wrote = true
		qos = max(qos, c.qos)
		if len(p.keys) == 0 { // the own value of a top-level '#' node ("a" under "a/#"); sorts first
			e.Key("/")
			e.Value(c.val)
			continue
		}
		open = e.Descend(open, p.keys[:len(p.keys)-1])
		e.Key(p.keys[len(p.keys)-1])
		if !t.objectForm(g, pi, c, allow, skip) {
			e.Value(c.val)
			continue
		}
		// Open this node so the rows below it, which sort right after, land inside.
		e.BeginObject()
		open = append(open, p.keys[len(p.keys)-1])
		e.Key("/")
		e.Value(c.val)
	}
	for range open {
		e.EndObject()
	}
	e.EndObject()
	clear(open)
	t.open = open[:0]
	if !wrote {
		return nil, 0, false // the buffer stays t.encBuf's (the next Reset)
	}
	return t.encoded(), qos, true
}

// shown reports whether changed row c goes in a delta encoded with allow
// and skip (encodeDelta).
func (t *Tree) shown(c *change, allow func(string) bool, skip string) bool {
	return (skip == "" || c.origin != skip) && (allow == nil || allow(c.topic))
}

// encoded returns a copy of what t.enc encoded into t.encBuf, the one
// allocation of a delta's payload (its buffer grew by doubling: 3 of a
// 20-byte delta's 4), and keeps the buffer for the next one, up to
// encBufMax bytes.
func (t *Tree) encoded() []byte {
	buf := t.enc.Bytes()
	out := make([]byte, len(buf)) // not slices.Clone: growslice's way costs more
	copy(out, buf)
	t.enc.Reset(wire.CodecJSON, nil)
	t.encBuf = nil
	if cap(buf) <= encBufMax {
		t.encBuf = buf[:0]
	}
	return out
}

// encBufMax bounds the delta buffer a Tree keeps (encoded).
const encBufMax = 64 << 10

// objectForm reports whether the node of t.paths[pi] is written as an
// object with its own value under "/" (SPEC §3): it is the '#' node, or an
// object value, or has children in the delta or in the store — children
// that allow lets through, so the shape never reveals hidden rows.
func (t *Tree) objectForm(g *group, pi int, c *change, allow func(string) bool, skip string) bool {
	p := t.paths[pi]
	if !g.hash {
		return false // every row sits at the same depth, as is
	}
	if len(p.keys) == g.plus {
		return true // the '#' node itself is always a subtree
	}
	if c.val.Kind == wire.Object {
		return true
	}
	for _, next := range t.paths[pi+1:] {
		if len(next.keys) <= len(p.keys) || !slices.Equal(next.keys[:len(p.keys)], p.keys) {
			break // sorted: no later path is below this one
		}
		if t.shown(&t.changed[next.row], allow, skip) {
			return true
		}
	}
	n := t.store.find(c.topic)
	return n != nil && t.store.visibleKids(n, allow)
}

// Change is one changed row as Fold takes it: the newest value of a topic
// (kind None: deleted) and the highest QoS it came with.
type Change struct {
	Topic  string
	Value  wire.Value
	QoS    byte
	Retain bool // a retained row changed (else an event); Fold does not read it
	// Origin is the Op.Origin of the newest change: Fold leaves the row
	// out for a subscription whose Local it is.
	Origin string
}

// Matches reports whether a changed topic belongs in s's deltas: its filter
// matches it and its read check, if any, allows it.
func (s *Sub) Matches(topic string) bool {
	return wire.Match(s.Filter, topic) && (s.Allow == nil || s.Allow(topic))
}

// AppendChanges appends to dst the changed rows d's payload holds, the
// newest value of each topic with the highest QoS its batch gave it: the
// rows of the group d was made for, those its read check allows. It
// costs what they are, not the batch (issue 15: a subscription that
// matched one row of a batch of thousands). It reads the batch's lists,
// so it lists only a Delta of the last Apply or ApplyAt, before a Fold;
// for any other it appends nothing and reports false.
func (t *Tree) AppendChanges(dst []Change, d *Delta) ([]Change, bool) {
	if d.g == nil || d.gen != t.gen || d.g.gen != t.gen {
		return dst, false
	}
	for _, ci := range d.g.rows {
		c := &t.changed[ci]
		if d.allow == nil || d.allow(c.topic) {
			dst = append(dst, Change{Topic: c.topic, Value: c.val, QoS: c.qos, Retain: c.retain, Origin: c.origin})
		}
	}
	return dst, true
}

// Fold encodes one delta for s holding changes, as Apply would have if they
// had all come in one batch: it is how a delta still waiting to be written
// takes in the next ones for the same subscription. Each topic must appear
// once, and s must match it (Sub.Matches); a change whose Origin is s's
// Local is left out. It reports false when there is nothing to write, and must not run while an Apply result is being built
// (it shares Apply's scratch space; Apply's results are independent of it).
func (t *Tree) Fold(s *Sub, changes []Change) ([]byte, byte, bool) {
	g := s.group
	if g == nil || len(changes) == 0 {
		return nil, 0, false
	}
	t.gen++ // the batch's lists are gone: AppendChanges lists no Delta of it
	t.resetChanged()
	t.startPaths()
	for i, c := range changes {
		t.changed = append(t.changed, change{topic: c.Topic, val: c.Value, origin: c.Origin, qos: c.QoS})
		t.addPath(g, c.Topic, int32(i))
	}
	t.sortPaths()
	return t.encodeDelta(g, s.Allow, s.Local)
}
