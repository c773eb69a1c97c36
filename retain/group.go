package retain

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unsafe"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/mote-mqtt/mote/wire"
)

// Groups of rows (format 3; see the package doc's Format): the rows of
// one parent are stored either as one value under the parent's group key,
// or one key a row beside the parent's single flag key.

// groupMaxRows and groupMaxBytes cap a group: a change that would take a
// parent's group past either turns the parent single for good. 2 KiB is
// half a bbolt page, so a commit changing one row of a full group
// rewrites about the bytes bbolt's copy-on-write rewrites for one key a
// row anyway (the leaf page holding it); 64 rows holds a boot storm's
// 50 rows a device with room to spare. Measured (BenchmarkSteadyState,
// bench/README.md "one stored value per group of rows"): 50-row groups
// write 1.85× fewer bytes a changed row than one key a row; groups of
// 2.7 KiB (a 4 KiB cap) no fewer than keys, as each takes a page.
const (
	groupMaxRows  = 64
	groupMaxBytes = 2048
)

// Suffixes of the store's own keys in the rows bucket, after a parent
// and a 0 byte (which no topic holds).
const (
	suffixGroup = 'g'
	suffixFlag  = 's'
)

// parentLen is the length of topic's parent: the topic up to and
// including its last '/' ("a/b/c" → "a/b/", "x" → ""); the rest is its
// leaf.
func parentLen(topic string) int {
	return strings.LastIndexByte(topic, '/') + 1
}

// groupKey is the key of parent's group: parent, 0, 'g'.
func groupKey(dst []byte, parent string) []byte {
	return append(append(dst, parent...), 0, suffixGroup)
}

// flagKey is the key that marks parent single: parent, 0, 's'.
func flagKey(dst []byte, parent string) []byte {
	return append(append(dst, parent...), 0, suffixFlag)
}

// ownKey reports whether a key of the rows bucket is the store's own (a
// group or a flag key), and if so the parent it is of and whether it is a
// group key.
func ownKey(k []byte) (parent []byte, group, ok bool) {
	i := bytes.IndexByte(k, 0)
	if i < 0 {
		return nil, false, false
	}
	return k[:i], len(k) == i+2 && k[i+1] == suffixGroup, true
}

// groupEntry is one row of a group: its leaf and its row value (as
// appendRow encodes it).
type groupEntry struct {
	leaf, val []byte
}

// entrySize is the bytes entry e takes in a group value.
func entrySize(e groupEntry) int {
	return uvarintLen(len(e.leaf)) + len(e.leaf) + uvarintLen(len(e.val)) + len(e.val)
}

func uvarintLen(n int) int {
	l := 1
	for ; n >= 0x80; n >>= 7 {
		l++
	}
	return l
}

// appendGroup appends the group value of entries (sorted by leaf) to dst.
func appendGroup(dst []byte, entries []groupEntry) []byte {
	for _, e := range entries {
		dst = binary.AppendUvarint(dst, uint64(len(e.leaf)))
		dst = append(dst, e.leaf...)
		dst = binary.AppendUvarint(dst, uint64(len(e.val)))
		dst = append(dst, e.val...)
	}
	return dst
}

// groupReader reads a group value entry by entry. Its entries' bytes are
// the value's own.
type groupReader struct {
	parent []byte
	v      []byte
	prev   []byte // the last leaf read
	n      int    // entries read
}

// next returns the next entry; ok false at the end. A value that does
// not decode (a length past its end, leaves out of order or repeated, a
// leaf holding '/', a row value shorter than its head, more entries than
// a group holds) is an error naming the parent.
func (g *groupReader) next() (e groupEntry, ok bool, err error) {
	if len(g.v) == 0 {
		return groupEntry{}, false, nil
	}
	if g.n >= groupMaxRows {
		return g.fail(fmt.Sprintf("more than %d rows", groupMaxRows))
	}
	ll, n := binary.Uvarint(g.v)
	if n <= 0 || ll > uint64(len(g.v)-n) {
		return g.fail("leaf length past the end")
	}
	leaf := g.v[n : n+int(ll)]
	rest := g.v[n+int(ll):]
	vl, m := binary.Uvarint(rest)
	if m <= 0 || vl > uint64(len(rest)-m) {
		return g.fail("value length past the end")
	}
	val := rest[m : m+int(vl)]
	switch {
	case g.n > 0 && bytes.Compare(leaf, g.prev) <= 0:
		return g.fail(fmt.Sprintf("leaf %q not after %q", leaf, g.prev))
	case bytes.IndexByte(leaf, '/') >= 0 || bytes.IndexByte(leaf, 0) >= 0:
		return g.fail(fmt.Sprintf("leaf %q holds '/' or a 0 byte", leaf))
	case len(g.parent)+len(leaf) == 0 || len(g.parent)+len(leaf) > MaxTopic:
		return g.fail(fmt.Sprintf("topic of %d bytes", len(g.parent)+len(leaf)))
	case len(val) < rowHead:
		return g.fail(fmt.Sprintf("row value of %d bytes, less than its %d-byte head", len(val), rowHead))
	}
	g.v, g.prev = rest[m+int(vl):], leaf
	g.n++
	return groupEntry{leaf, val}, true, nil
}

// fail is next's error: why entry g.n does not decode.
func (g *groupReader) fail(why string) (groupEntry, bool, error) {
	return groupEntry{}, false, fmt.Errorf("the group of rows under %q: entry %d: %s", g.parent, g.n, why)
}

// topicOf is parent + leaf, in one allocation.
func topicOf(parent, leaf []byte) string {
	n := len(parent) + len(leaf)
	if n == 0 {
		return ""
	}
	b := make([]byte, n)
	copy(b[copy(b, parent):], leaf)
	return unsafe.String(&b[0], n)
}

// decodeGroup decodes a whole group value of parent into rows; the rows
// own their bytes.
func decodeGroup(parent, v []byte) ([]Row, error) {
	g := groupReader{parent: parent, v: v}
	var rows []Row
	for {
		e, ok, err := g.next()
		if err != nil {
			return nil, err
		}
		if !ok {
			return rows, nil
		}
		r, err := rowOf(topicOf(parent, e.leaf), e.val)
		if err != nil {
			return nil, fmt.Errorf("the group of rows under %q: %w", parent, err)
		}
		rows = append(rows, r)
	}
}

// topicError is why the store cannot keep a row of topic, or nil: a key
// bbolt cannot hold, or a 0 byte (no MQTT topic holds one; the store's
// own keys do).
func topicError(topic string) error {
	if err := keyError(len(topic)); err != nil {
		return err
	}
	if strings.IndexByte(topic, 0) >= 0 {
		return fmt.Errorf("%w: topic %q holds a 0 byte", ErrUnstorable, topic)
	}
	return nil
}

// errGroupDamaged marks a group value that does not decode, met by a
// commit: the rows of its parent are refused, the rest committed.
var errGroupDamaged = errors.New("damaged group of rows")

// commitParent writes run (indexes into changes, one parent's, in leaf
// order) to rows: into the parent's group, or one key a row if the parent
// is single (or turns single now). cur is a cursor of rows, a the
// commit's arena for the values; refuse records a change the store
// cannot keep. The caller holds s.mu (s.keyBuf and s.entries are the
// commit's scratch).
func (s *Store) commitParent(rows, dead *bolt.Bucket, cur *bolt.Cursor, changes []Change, run []int32, parent string, a *arena, refuse func(*Change, error)) error {
	gk := groupKey(s.keyBuf[:0], parent)
	s.keyBuf = gk
	k, v := cur.Seek(gk)
	grouped, single := false, false
	switch {
	case bytes.Equal(k, gk):
		grouped = true
	case len(k) == len(gk) && bytes.HasPrefix(k, gk[:len(gk)-1]) && k[len(k)-1] == suffixFlag:
		single = true
	}
	if (grouped || single) && v == nil { // a nested bucket (a foreign file)
		for _, i := range run {
			c := &changes[i]
			if err := topicError(c.Topic); err != nil {
				if c.Value.Kind != wire.None {
					refuse(c, err)
				}
				continue
			}
			refuse(c, nestedError("group or flag", berrors.ErrIncompatibleValue))
		}
		return nil
	}
	if single {
		deleted := false
		for _, i := range run {
			c := &changes[i]
			if err := s.commitSingle(rows, dead, c, a, refuse, false); err != nil {
				return err
			}
			deleted = deleted || c.Value.Kind == wire.None
		}
		if deleted {
			return dropFlag(rows, cur, parent)
		}
		return nil
	}
	// Grouped, or a new parent: merge the run into the stored entries.
	g := groupReader{parent: []byte(parent), v: v}
	if !grouped {
		g.v = nil
	}
	out := s.entries[:0]
	old, more, err := g.next()
	damaged := func(err error) {
		for _, i := range run {
			if c := &changes[i]; !(c.Value.Kind == wire.None && topicError(c.Topic) != nil) {
				refuse(c, fmt.Errorf("%w: %w: %w", ErrUnstorable, errGroupDamaged, err))
			}
		}
	}
	if err != nil {
		damaged(err)
		return nil
	}
	for _, i := range run {
		c := &changes[i]
		if err := topicError(c.Topic); err != nil {
			if c.Value.Kind != wire.None {
				refuse(c, err)
			}
			continue
		}
		leaf := keyOf(c.Topic)[len(parent):]
		for more && bytes.Compare(old.leaf, leaf) < 0 {
			out = append(out, old)
			if old, more, err = g.next(); err != nil {
				damaged(err)
				return nil
			}
		}
		if more && bytes.Equal(old.leaf, leaf) {
			if old, more, err = g.next(); err != nil {
				damaged(err)
				return nil
			}
		}
		if n := len(out); n > 0 && bytes.Equal(out[n-1].leaf, leaf) { // the same row twice in one batch
			out = out[:n-1]
		}
		if c.Value.Kind == wire.None {
			if err := dead.Put(deadKey(c.Rev, c.Topic), nil); err != nil {
				if !nested(err) {
					return err
				}
				refuse(c, nestedError("deletion marker", err)) // the row is deleted all the same
			}
			continue
		}
		val, err := encodeRow(c, a)
		if err != nil {
			refuse(c, err) // and not kept: no older value comes back
			continue
		}
		out = append(out, groupEntry{leaf, val})
	}
	for more {
		out = append(out, old)
		if old, more, err = g.next(); err != nil {
			damaged(err)
			return nil
		}
	}
	s.entries = out[:0]
	if cap(out) > 4*groupMaxRows { // a large parent's, turning single: not kept
		s.entries = nil
	}
	size := 0
	for _, e := range out {
		size += entrySize(e)
	}
	switch {
	case len(out) == 0:
		if grouped {
			return rows.Delete(gk)
		}
		return nil
	case len(out) <= groupMaxRows && size <= groupMaxBytes:
		return rows.Put(gk, appendGroup(a.take(size)[:0], out))
	}
	// Past the cap: the parent turns single, for good.
	if grouped {
		if err := rows.Delete(gk); err != nil {
			return err
		}
	}
	if err := rows.Put(flagKey(nil, parent), []byte{}); err != nil {
		return err
	}
	for _, e := range out {
		key := append(append(make([]byte, 0, len(parent)+len(e.leaf)), parent...), e.leaf...)
		if err := rows.Put(key, e.val); err != nil {
			if !nested(err) {
				return err
			}
			if c := changeOf(changes, run, parent, e.leaf); c != nil {
				refuse(c, nestedError("row", err))
			}
		}
	}
	return nil
}

// flagScan is the most keys under a single parent dropFlag reads looking
// for a row of the parent's own.
const flagScan = 64

// dropFlag deletes the flag key of parent (single, some of its rows just
// deleted) if it has no row left (review h-rv10 RV10-7): it reads the
// keys from the parent on, at most flagScan of them under the parent's
// prefix, skipping its own flag and the keys of deeper parents (their
// rows, groups and flags). Past the prefix with no row of the parent's,
// the flag goes: the parent is new again, and a later commit groups it.
// After flagScan keys undecided (a parent with many deeper rows), the
// flag stays, until a later deletion under it decides.
func dropFlag(rows *bolt.Bucket, cur *bolt.Cursor, parent string) error {
	p := keyOf(parent)
	n := 0
	for k, _ := cur.Seek(p); ; k, _ = cur.Next() {
		if k == nil || !bytes.HasPrefix(k, p) {
			return rows.Delete(flagKey(nil, parent))
		}
		if n++; n > flagScan {
			return nil
		}
		if _, _, own := ownKey(k); own {
			continue // its own flag, or a deeper parent's key
		}
		if bytes.IndexByte(k[len(p):], '/') < 0 {
			return nil // a row of the parent's
		}
	}
}

// changeOf is the change of run whose leaf is leaf, or nil.
func changeOf(changes []Change, run []int32, parent string, leaf []byte) *Change {
	for _, i := range run {
		if c := &changes[i]; c.Topic[len(parent):] == string(leaf) {
			return c
		}
	}
	return nil
}

// commitSingle writes one change of a single parent, or of a format 2
// store (format2): its row's own key. A topic with a 0 byte is refused
// (a set) or not written (a deletion) in format 3, where such a key would
// be the store's own; a format 2 store has none, and may hold such a row
// from main (review h-rv11 RV11-1): its deletion deletes the key, and a
// refused set of it the old value, as for any key bbolt holds.
func (s *Store) commitSingle(rows, dead *bolt.Bucket, c *Change, a *arena, refuse func(*Change, error), format2 bool) error {
	key := keyOf(c.Topic)
	keyErr := topicError(c.Topic)
	if format2 {
		keyErr = keyError(len(c.Topic))
	}
	if c.Value.Kind == wire.None {
		if keyErr != nil {
			return nil
		}
		if err := rows.Delete(key); err != nil {
			if !nested(err) {
				return err
			}
			refuse(c, nestedError("row", err))
			return nil
		}
		if err := dead.Put(deadKey(c.Rev, c.Topic), nil); err != nil {
			if !nested(err) {
				return err
			}
			refuse(c, nestedError("deletion marker", err)) // the row is deleted all the same
		}
		return nil
	}
	v, err := encodeRow(c, a)
	if err != nil {
		refuse(c, err)
		// A nested bucket under the key holds no older value.
		if keyErr == nil {
			if err := rows.Delete(key); err != nil && !nested(err) {
				return err
			}
		}
		return nil
	}
	if err := rows.Put(key, v); err != nil {
		if !nested(err) {
			return err
		}
		refuse(c, nestedError("row", err))
	}
	return nil
}

// loadRows calls fn for every row of the rows bucket, in the bucket's key
// order: a group's rows at once, at its group key (so "a/b/c" of a
// grouped "a/b/" may come before "a/b" of a grouped "a/"), a single row
// at its key; no topic twice. Nothing is held from one key to the next
// but the stack of the parents whose group or flag key is a prefix of the
// key (review h-rv10 RV10-6: the topic-order merge of pending groups was
// cubic in the nesting's depth); each key costs its length and a binary
// search of the stack. grouped false: a format 2 bucket, every key a row.
//
// A damaged or foreign file is an error: a nested bucket, an own key that
// is neither a group nor a flag or whose parent has no trailing '/', a
// parent with both, a group value that does not decode or is empty, and
// a row key whose parent is grouped or has no flag (review h-rv10
// RV10-2b: a stray key beside a group would hand a topic out twice, and
// come back after a deletion that only the group saw).
func loadRows(rows *bolt.Bucket, grouped bool, fn func(Row) error) error {
	type known struct {
		parent []byte
		group  bool
	}
	var stack []known // each parent a prefix of the next and of the key
	c := rows.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil { // bbolt's value of a nested bucket
			return fmt.Errorf("row %q is a nested bucket: a foreign or damaged file", k)
		}
		if !grouped {
			r, err := decodeRow(k, v)
			if err != nil {
				return err
			}
			if err := fn(r); err != nil {
				return err
			}
			continue
		}
		for len(stack) > 0 && !bytes.HasPrefix(k, stack[len(stack)-1].parent) {
			stack = stack[:len(stack)-1]
		}
		parent, group, own := ownKey(k)
		if own && len(parent) > 0 && parent[len(parent)-1] != '/' { // its rows would be another parent's (review h-rv10 RV10-2)
			return fmt.Errorf("key %q of the rows bucket is of %q, not a parent (no trailing '/')", k, parent)
		}
		if !own {
			pl := parentLen(string(k))
			var isGroup, found bool
			if pl == len(k) { // leaf "": the parent's own key comes after it
				isGroup, found = parentKey(rows, k)
			} else {
				// The parent's key is one of the stack (a prefix of k):
				// the one as long as k's parent.
				var i int
				i, found = slices.BinarySearchFunc(stack, pl, func(e known, n int) int { return len(e.parent) - n })
				isGroup = found && stack[i].group
			}
			switch {
			case isGroup:
				return fmt.Errorf("row %q beside the group of its parent %q: a damaged file", k, k[:pl])
			case !found:
				return fmt.Errorf("row %q without the flag key of its parent %q: a damaged file", k, k[:pl])
			}
			r, err := decodeRow(k, v)
			if err != nil {
				return err
			}
			if err := fn(r); err != nil {
				return err
			}
			continue
		}
		if n := len(stack); n > 0 && len(stack[n-1].parent) == len(parent) {
			return fmt.Errorf("parent %q has both a group and a flag key: a damaged file", parent)
		}
		stack = append(stack, known{slices.Clone(parent), group})
		if !group {
			if len(k) != len(parent)+2 || k[len(k)-1] != suffixFlag || len(v) != 0 {
				return fmt.Errorf("key %q of the rows bucket is neither a topic, a group nor a flag", k)
			}
			continue
		}
		g := groupReader{parent: parent, v: v}
		n := 0
		for {
			e, ok, err := g.next()
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			r, err := rowOf(topicOf(parent, e.leaf), e.val)
			if err != nil {
				return fmt.Errorf("the group of rows under %q: %w", parent, err)
			}
			if err := fn(r); err != nil {
				return err
			}
			n++
		}
		if n == 0 {
			return fmt.Errorf("the group of rows under %q is empty", parent)
		}
	}
	return nil
}

// parentKey looks up the group or flag key of parent (with its own
// cursor): found, and whether it is the group.
func parentKey(rows *bolt.Bucket, parent []byte) (group, found bool) {
	k, _ := rows.Cursor().Seek(groupKey(nil, string(parent)))
	if bytes.Equal(k, groupKey(nil, string(parent))) {
		return true, true
	}
	return false, bytes.Equal(k, flagKey(nil, string(parent)))
}
