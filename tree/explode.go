package tree

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/mote-mqtt/mote/wire"
)

// ErrShape is a tree publish whose payload does not fit its topic (SPEC §4).
var ErrShape = errors.New("tree: payload does not fit topic")

// ErrLimit is a tree publish that breaks a limit (SPEC §5).
var ErrLimit = errors.New("tree: limit exceeded")

// Limits bound what a tree publish may carry (SPEC §5).
type Limits struct {
	MaxPayload int // bytes of one tree payload
	MaxRows    int // rows of one publish
	MaxDepth   int // nesting of objects and arrays in a payload
	// MaxNodes bounds the objects' members in a decoded payload (a node
	// costs ~72 bytes whatever the codec spends on it); 0 means 10 per row
	// of MaxRows.
	MaxNodes int
	// MaxTopicLen and MaxTopicLevels bound the topic of every row a tree
	// publish makes (and, in the broker, every topic and filter a client
	// sends); 0 means wire.MaxTopicLen bytes, and any number of levels.
	MaxTopicLen    int
	MaxTopicLevels int
}

// DefaultLimits are SPEC §5's: 100,000 rows, depth 32, and 16 MiB payloads.
func DefaultLimits() Limits {
	w := wire.DefaultLimits()
	return Limits{MaxPayload: w.MaxSize, MaxRows: 100_000, MaxDepth: w.MaxDepth}
}

// CheckTopic refuses a topic or filter longer than MaxTopicLen bytes or of
// more than MaxTopicLevels levels (ErrLimit and wire.ErrFilter).
func (l Limits) CheckTopic(t string) error {
	if maxLen := l.maxTopicLen(); len(t) > maxLen {
		return fmt.Errorf("%w: %w: topic of %d bytes, limit %d", ErrLimit, wire.ErrFilter, len(t), maxLen)
	}
	if l.MaxTopicLevels > 0 {
		if n := strings.Count(t, "/") + 1; n > l.MaxTopicLevels {
			return fmt.Errorf("%w: %w: topic of %d levels, limit %d", ErrLimit, wire.ErrFilter, n, l.MaxTopicLevels)
		}
	}
	return nil
}

// maxTopicLen is the longest topic CheckTopic takes: MaxTopicLen, or
// wire.MaxTopicLen when it is 0 or beyond it.
func (l Limits) maxTopicLen() int {
	if l.MaxTopicLen <= 0 || l.MaxTopicLen > wire.MaxTopicLen {
		return wire.MaxTopicLen
	}
	return l.MaxTopicLen
}

// Parser turns Mote publishes into Ops. It is safe for concurrent use, so
// publishes are decoded on their connections' goroutines, not on the loop
// that owns the Tree; its only mutable state is a pool of scratch memory
// that a tree publish's decoding and explosion reuse.
type Parser struct {
	dec     *wire.Decoder
	lim     Limits
	scratch sync.Pool // of *scratch
	rows    rowBufs   // tree publishes' row slices given back (Recycle)
}

// rowBufs holds row slices that nothing reads any more, for the next tree
// publishes' rows: a boot storm's publishes would otherwise each allocate
// (and the GC sweep) one of 50 rows, 2.7 KB. A batch the loop applies
// gives back hundreds at once while the publishers take them one by one,
// so what it keeps is bounded in rows, not slices: at most rowBufsKept
// rows in all (786 KB), in slices of at most rowBufRows, cleared.
type rowBufs struct {
	mu   sync.Mutex // guards free and rows: the publishers' goroutines take, the loop gives back
	free [][]Row
	rows int // the capacity of free's slices, in all
}

const (
	rowBufsKept = 16_384
	rowBufRows  = 256
)

// take returns an empty slice with room for n rows: a recycled one if the
// last few given back have room, else a new one.
func (rb *rowBufs) take(n int) []Row {
	if n <= rowBufRows {
		rb.mu.Lock()
		for k := len(rb.free) - 1; k >= max(0, len(rb.free)-4); k-- {
			if buf := rb.free[k]; cap(buf) >= n {
				last := len(rb.free) - 1
				rb.free[k], rb.free[last] = rb.free[last], nil
				rb.free = rb.free[:last]
				rb.rows -= cap(buf)
				rb.mu.Unlock()
				return buf
			}
		}
		rb.mu.Unlock()
	}
	return make([]Row, 0, n)
}

// Recycle gives back the rows of an Op that Op made (or that Apply made of
// it), to be reused by the next tree publishes: the caller promises that
// nothing reads them or their backing array any more (the strings they
// hold stay valid: only the slice is reused). Slices of more than
// rowBufRows rows, or beyond what the Parser keeps, are left to the GC.
func (ps *Parser) Recycle(rows []Row) {
	if cap(rows) == 0 || cap(rows) > rowBufRows {
		return
	}
	rows = rows[:cap(rows)]
	ClearSmall(rows) // pins no payload or topic while it waits
	rb := &ps.rows
	rb.mu.Lock()
	if rb.rows+cap(rows) <= rowBufsKept {
		rb.free = append(rb.free, rows[:0])
		rb.rows += cap(rows)
	}
	rb.mu.Unlock()
}

// scratch is the memory a tree publish needs only until its rows are
// made: the decoded tree, and the topics before they are cut out of one
// string.
type scratch struct {
	dec    wire.Scratch
	topics []byte
	ends   []int
	keys   []string
	rows   *rowBufs // where the rows' slice is taken from (nil: a new one)
	levels []string // the levels of the publish's topic
	prefix []byte   // room for a row's topic while it is walked to (256 bytes)
}

// NewParser returns a Parser enforcing lim.
func NewParser(lim Limits) (*Parser, error) {
	if lim.MaxRows <= 0 {
		return nil, fmt.Errorf("tree: max rows must be positive, got %d", lim.MaxRows)
	}
	if lim.MaxNodes == 0 {
		lim.MaxNodes = 10 * lim.MaxRows
	}
	dec, err := wire.NewDecoder(wire.Limits{MaxSize: lim.MaxPayload, MaxDepth: lim.MaxDepth, MaxNodes: lim.MaxNodes})
	if err != nil {
		return nil, fmt.Errorf("tree: %w", err)
	}
	return &Parser{dec: dec, lim: lim}, nil
}

// TypePlain types a plain payload (SPEC §1) within the Parser's depth
// limit: JSON nested deeper is a string.
func (ps *Parser) TypePlain(payload []byte) wire.Value { return ps.dec.TypePlain(payload) }

// Op builds the Op of one PUBLISH whose topic parsed as p: a tree publish is
// decoded and exploded, a $set becomes a SetFilter, a plain publish one row
// typed by SPEC §1 (a retained empty payload deletes). Whole or nothing: an
// error means no rows.
func (ps *Parser) Op(p wire.Publish, payload []byte, retain bool, qos byte) (Op, error) {
	switch p.Op {
	case wire.PubTree:
		if op, ok := ps.flatOp(p, payload, retain, qos); ok {
			return op, nil
		}
		return ps.decodeOp(p, payload, retain, qos)
	case wire.PubSet:
		op := Op{SetFilter: p.Topic, QoS: qos, MaxRows: ps.lim.MaxRows, MaxBytes: ps.lim.MaxPayload, Protect: true}
		if len(payload) > 0 {
			op.SetValue = ps.dec.TypePlain(payload)
		}
		return op, nil
	}
	v := ps.dec.TypePlain(payload)
	if retain && len(payload) == 0 {
		v = wire.Value{}
	}
	return Op{Rows: []Row{{Topic: p.Topic, Value: v, Retain: retain}}, QoS: qos}, nil
}

// decodeOp is Op for a tree publish, by the general path: the payload
// decoded into a tree of nodes, then exploded into rows. flatOp answers
// the common shape without it, and only when this would give the same Op.
func (ps *Parser) decodeOp(p wire.Publish, payload []byte, retain bool, qos byte) (Op, error) {
	sc, _ := ps.scratch.Get().(*scratch)
	if sc == nil {
		sc = &scratch{}
	}
	defer ps.scratch.Put(sc)
	defer sc.dec.Release()
	root, err := ps.dec.DecodeWith(p.Codec, payload, &sc.dec)
	if err != nil {
		return Op{}, err
	}
	sc.rows = &ps.rows
	return ps.treeOp(p, &root, retain, qos, sc)
}

// Decode decodes a tree payload in codec c within the Parser's limits.
func (ps *Parser) Decode(c wire.Codec, payload []byte) (wire.Node, error) {
	return ps.dec.Decode(c, payload)
}

// TreeOp builds the Op of a tree publish p (p.Op is wire.PubTree) whose
// payload decoded as root: exploded into rows, each row's topic within the
// limits. Op calls it; a front end that rewrites a tree before it is
// exploded (the original dialect's "/" flag) calls Decode and TreeOp.
func (ps *Parser) TreeOp(p wire.Publish, root *wire.Node, retain bool, qos byte) (Op, error) {
	return ps.treeOp(p, root, retain, qos, nil)
}

func (ps *Parser) treeOp(p wire.Publish, root *wire.Node, retain bool, qos byte, sc *scratch) (Op, error) {
	rows, err := explode(p.Topic, root, retain, ps.lim.MaxRows, sc)
	if err != nil {
		return Op{}, err
	}
	if ps.lim.MaxTopicLen > 0 || ps.lim.MaxTopicLevels > 0 {
		for _, r := range rows {
			if err := ps.lim.CheckTopic(r.Topic); err != nil {
				// A limit of the tree (SPEC §5: 0x99), not a bad topic name.
				return Op{}, fmt.Errorf("%w: row %.200q: %v", ErrLimit, r.Topic, err)
			}
		}
	}
	op := Op{Rows: rows, QoS: qos, MaxRows: ps.lim.MaxRows, Protect: true}
	// A .replace deletes retained rows only when it is retained itself: its
	// rows are handled "as if each had been published alone with the
	// packet's … retain flag" (SPEC §4), and a publish without it stores
	// nothing, deletes nothing (MQTT §3.3.1.3); it is events only.
	if p.Replace && retain {
		op.Replace = p.Topic
		if !wire.HasWildcard(p.Topic) {
			op.Replace += "/#"
		}
	}
	return op, nil
}

// Explode spreads a tree published to $tree/T into rows (SPEC §4): each '+'
// of T consumes one level of the tree, fixed levels are kept; a trailing '#'
// or a T without wildcards takes every remaining level, the key "/" holding
// a node's own value; null deletes. When T's '+' levels are used up (and no
// '#' follows) the value reached is the row's value whatever its type.
// At most maxRows rows; an error names the path where the tree did not fit,
// and then there are no rows.
func Explode(t string, root *wire.Node, retain bool, maxRows int) ([]Row, error) {
	return explode(t, root, retain, maxRows, nil)
}

// explode is Explode, its temporary buffers taken from sc when not nil
// (and left there, grown, for the next publish).
func explode(t string, root *wire.Node, retain bool, maxRows int, sc *scratch) ([]Row, error) {
	x := exploder{deep: !wire.HasWildcard(t), retain: retain, max: maxRows}
	var prefix []byte // the topic levels of the node being walked
	if sc != nil {
		for l := range strings.SplitSeq(t, "/") {
			sc.levels = append(sc.levels, l)
		}
		x.levels = sc.levels
		if cap(sc.prefix) == 0 {
			sc.prefix = make([]byte, 0, 256)
		}
		prefix = sc.prefix[:0]
		defer func() {
			clear(sc.levels) // pins no topic while pooled
			sc.levels = sc.levels[:0]
			if cap(sc.levels) > 256 { // a topic of thousands of levels: not kept
				sc.levels = nil
			}
		}()
	} else {
		x.levels = strings.Split(t, "/")
	}
	n := min(leaves(root, maxRows+1), maxRows+1)
	if sc != nil && sc.rows != nil {
		x.rows = sc.rows.take(n)
	} else {
		x.rows = make([]Row, 0, n)
	}
	if sc != nil {
		x.topics, x.ends, x.keys = sc.topics[:0], sc.ends[:0], sc.keys[:0]
		defer func() {
			if cap(x.topics) <= scratchMax*64 && cap(x.ends) <= scratchMax {
				sc.topics, sc.ends = x.topics[:0], x.ends[:0]
			}
			clear(x.keys[:cap(x.keys)]) // pins no payload while pooled
			sc.keys = x.keys[:0]
		}()
	}
	if cap(x.ends) < n {
		x.ends = make([]int, 0, n)
	}
	if err := x.walk(0, root, prefix); err != nil {
		return nil, err
	}
	// Every row's topic is a piece of one string: one allocation a publish,
	// not one a row (the store and the retainer copy what they keep).
	all := string(x.topics)
	from := 0
	for i, end := range x.ends {
		x.rows[i].Topic, from = all[from:end], end
	}
	return x.rows, nil
}

// scratchMax bounds the rows' buffers a Parser's scratch keeps between
// publishes.
const scratchMax = 1 << 16

// leaves counts the values a tree holds, up to max: the rows it makes at
// most (fewer when T's '+' levels end above a leaf).
func leaves(n *wire.Node, max int) int {
	if !n.Obj {
		return 1
	}
	c := 0
	for k := range n.Kids {
		if c += leaves(&n.Kids[k], max-c); c >= max {
			break
		}
	}
	return c
}

type exploder struct {
	levels []string
	deep   bool // no wildcard at all: spread every level
	retain bool
	max    int
	rows   []Row
	// topics holds every row's topic, one after the other, row i's ending
	// at ends[i]; Explode cuts them out of one string once the walk is
	// done.
	topics []byte
	ends   []int
	keys   []string // the keys from the root to the node being walked
}

// pointer is the JSON pointer of the node being walked ("" for the root),
// made from x.keys only when an error names it: a walk of a good tree
// makes no path strings.
func (x *exploder) pointer() string {
	p := ""
	for _, k := range x.keys {
		p = wire.Pointer(p, k)
	}
	return p
}

// walk places node n at topic level i; topic holds the levels so far.
func (x *exploder) walk(i int, n *wire.Node, topic []byte) error {
	for ; i < len(x.levels) && x.levels[i] != "+" && x.levels[i] != "#"; i++ {
		topic = appendLevel(topic, len(topic) == 0 && i == 0, x.levels[i])
	}
	switch {
	case i == len(x.levels) && x.deep:
		return x.spread(n, topic, i == 0)
	case i == len(x.levels):
		return x.row(topic, n)
	case x.levels[i] == "#":
		return x.spread(n, topic, i == 0)
	}
	if !n.Obj {
		return &wire.PathError{Path: x.pointer(), Err: fmt.Errorf("%w: want an object for '+' level %d", ErrShape, i+1)}
	}
	for k := range n.Kids {
		kid := &n.Kids[k]
		x.keys = append(x.keys, kid.Key)
		if err := x.checkKey(kid.Key); err != nil {
			return err
		}
		if err := x.walk(i+1, kid, appendLevel(topic, i == 0, kid.Key)); err != nil {
			return err
		}
		x.keys = x.keys[:len(x.keys)-1]
	}
	return nil
}

// spread turns every leaf under n into a row; the key "/" is n's own value.
// atRoot says topic is still empty (T was "#").
func (x *exploder) spread(n *wire.Node, topic []byte, atRoot bool) error {
	if !n.Obj {
		return x.row(topic, n)
	}
	for k := range n.Kids {
		kid := &n.Kids[k]
		x.keys = append(x.keys, kid.Key)
		if kid.Key == "/" {
			if err := x.row(topic, kid); err != nil {
				return err
			}
			x.keys = x.keys[:len(x.keys)-1]
			continue
		}
		if err := x.checkKey(kid.Key); err != nil {
			return err
		}
		if err := x.spread(kid, appendLevel(topic, atRoot, kid.Key), false); err != nil {
			return err
		}
		x.keys = x.keys[:len(x.keys)-1]
	}
	return nil
}

// row adds the row of node n at topic.
func (x *exploder) row(topic []byte, n *wire.Node) error {
	if len(topic) == 0 { // "$tree/#" with "/", or "$tree/+" with the key ""
		return &wire.PathError{Path: x.pointer(), Err: fmt.Errorf("%w: this value would have an empty topic", ErrShape)}
	}
	if len(topic) > wire.MaxTopicLen {
		return &wire.PathError{Path: x.pointer(), Err: fmt.Errorf("%w: topic of %d bytes", ErrLimit, len(topic))}
	}
	if topic[0] == '$' && Reserved(string(topic)) { // every reserved topic starts with '$'
		return &wire.PathError{Path: x.pointer(), Err: fmt.Errorf("%w: %q is a reserved topic", ErrShape, topic)}
	}
	if len(x.rows) == x.max {
		return &wire.PathError{Path: x.pointer(), Err: fmt.Errorf("%w: more than %d rows", ErrLimit, x.max)}
	}
	x.topics = append(x.topics, topic...)
	x.ends = append(x.ends, len(x.topics))
	x.rows = append(x.rows, Row{Value: n.AsValue(), Retain: x.retain})
	return nil
}

// checkKey refuses a tree key that cannot be a topic level.
func (x *exploder) checkKey(k string) error {
	if i := strings.IndexAny(k, "/+#\x00"); i >= 0 {
		return &wire.PathError{Path: x.pointer(), Err: fmt.Errorf("%w: key %q holds %q, which a topic level cannot", ErrShape, k, k[i])}
	}
	return nil
}

// Reserved reports whether a topic (or a filter) is the broker's own:
// $SYS, $mote and $hist (SPEC §9) in any case, $share (MQTT 5 §4.8.2: a
// filter beginning so is a shared subscription, so such a row could never
// be subscribed to), or one of Mote's verbs. No
// client publish, plain, tree, $set or .replace, may set or delete such a
// row. Every such name starts with '$', which no other rune folds to, so
// a topic that does not is answered without looking further (most are:
// this is asked of every publish).
func Reserved(topic string) bool {
	if !strings.HasPrefix(topic, "$") {
		return false
	}
	// The verbs first: most '$' topics a client publishes to are tree
	// publishes, and the case folds below are for the other names (a
	// tree publish's check was 248 instructions, bench/README.md, branch
	// h-tlat4).
	if wire.IsMote(topic) {
		return true
	}
	first, _, _ := strings.Cut(topic, "/")
	if !asciiOnly(first) { // a rune of more than a byte may fold to an ASCII one (ſ to s)
		return strings.EqualFold(first, "$SYS") || strings.EqualFold(first, "$mote") || strings.EqualFold(first, "$hist") ||
			strings.EqualFold(first, "$share")
	}
	// ASCII folds byte for byte: only a name of the same length can match
	// (four EqualFold calls were a third of a tree publish's Reserved,
	// bench/README.md, branch h-tlat; TestReservedASCII).
	switch len(first) {
	case len("$SYS"):
		return asciiFold(first, "$sys")
	case len("$mote"):
		return asciiFold(first, "$mote") || asciiFold(first, "$hist")
	case len("$share"):
		return asciiFold(first, "$share")
	}
	return false
}

// asciiOnly reports whether s holds no byte past ASCII.
func asciiOnly(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// asciiFold reports whether the ASCII s equals lower, in lower case, but
// for case.
func asciiFold(s, lower string) bool {
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
