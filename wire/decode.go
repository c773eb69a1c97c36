package wire

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"strconv"
	"strings"
)

// ErrPayload is a tree payload that cannot be decoded or breaks a limit.
var ErrPayload = errors.New("wire: invalid tree payload")

// PathError is a decoding or shape error at one place in a tree. Path is an
// RFC 6901 JSON pointer ("" is the root, "/a/b" the key b inside a).
type PathError struct {
	Path string
	Err  error
}

// Error says where and what.
func (e *PathError) Error() string {
	p := e.Path
	if p == "" {
		p = "(root)"
	}
	return "at " + p + ": " + e.Err.Error()
}

// Unwrap gives the cause.
func (e *PathError) Unwrap() error { return e.Err }

// Pointer appends one key to an RFC 6901 JSON pointer ("~" and "/" escaped).
func Pointer(path, key string) string {
	if strings.ContainsAny(key, "~/") {
		key = strings.NewReplacer("~", "~0", "/", "~1").Replace(key)
	}
	return path + "/" + key
}

// Limits bound what Decode accepts (SPEC §5).
type Limits struct {
	MaxSize  int // payload bytes
	MaxDepth int // nested objects and arrays; a scalar has depth 0
	// MaxNodes bounds the Nodes of a decoded tree: the root and every member
	// of its objects (arrays are leaves, so their elements do not count).
	// A Node takes about 72 bytes, so this bounds what a payload of many tiny
	// members costs beyond its own size. 0 means no limit.
	MaxNodes int
}

// DefaultLimits are SPEC §5's defaults: depth 32 and a payload of 16 MiB.
// They set no node limit, as SPEC §5 has none.
func DefaultLimits() Limits { return Limits{MaxSize: 16 << 20, MaxDepth: 32} }

// Node is one node of a decoded tree payload: null, an object with ordered
// members, or a leaf value (arrays are leaves).
type Node struct {
	Key   string // member key in the parent object; "" for the root
	Null  bool   // JSON null / CBOR null / MessagePack nil
	Obj   bool   // an object: Kids holds its members
	Kids  []Node // members of an object, in payload order (every codec)
	Value Value  // the leaf value; for a JSON object, also its JSON text
}

// AsValue returns the node as one row's value: a leaf as it is, an object as
// JSON text. It returns Kind None for null.
func (n *Node) AsValue() Value {
	if n.Null {
		return Value{}
	}
	if n.Obj && n.Value.Data == "" {
		var e Encoder
		e.Reset(CodecJSON, nil)
		e.node(n)
		return Value{Kind: Object, Data: string(e.Bytes())}
	}
	return n.Value
}

// Decoder decodes tree payloads within limits. It is immutable and safe for
// concurrent use.
type Decoder struct {
	lim Limits
}

// NewDecoder returns a Decoder enforcing lim.
func NewDecoder(lim Limits) (*Decoder, error) {
	if lim.MaxSize <= 0 || lim.MaxDepth <= 0 || lim.MaxNodes < 0 {
		return nil, fmt.Errorf("wire: limits must be positive (size %d, depth %d, nodes %d)", lim.MaxSize, lim.MaxDepth, lim.MaxNodes)
	}
	return &Decoder{lim: lim}, nil
}

// Decode reads a tree payload in the given codec, in a few linear passes:
// work and memory are in proportion to its size whatever its shape, and
// recursion is bounded by MaxDepth, checked before each level is entered.
//
// JSON must be one RFC 8259 text (see CheckJSON). Objects and arrays keep
// their JSON text; it and strings without escapes share one copy of the
// payload. Escapes in strings are decoded as the gjson library
// decoded them, which this package used before: a \u escape of a UTF-16
// surrogate followed by another \u escape takes both, giving U+FFFD if they
// do not pair, and a lone surrogate is U+FFFD.
//
// CBOR (RFC 8949) may use definite or indefinite lengths and any argument
// width; text strings must be valid UTF-8 (an indefinite one chunk by
// chunk). Map keys must be text strings (null is not a key). Tags (so
// big numbers), simple values other than false, true and null, NaN and
// infinities are refused, as are bytes after the item. A declared length
// longer than what is left of the payload fails at once, before anything
// is allocated for it. Maps keep their members in payload order; an array
// becomes JSON text (a byte string in it base64), as do the maps in it.
// Strings are copied out of the payload, so a decoded tree does not keep
// the payload alive.
//
// MessagePack is read as CBOR is: strings must be valid UTF-8, map keys
// strings, binary becomes a Bytes value (base64 in an array's JSON text);
// extension types (timestamps included), the unused format 0xc1, NaN and
// infinities are refused, as are bytes after the item, and a declared
// length longer than what is left fails before anything is allocated.
//
// Every error wraps ErrPayload (ErrDepth for nesting). An error in what the
// tree holds is a *PathError naming where; a syntax error names the byte.
func (d *Decoder) Decode(c Codec, payload []byte) (Node, error) {
	if len(payload) > d.lim.MaxSize {
		return Node{}, fmt.Errorf("%w: %d bytes, limit %d", ErrPayload, len(payload), d.lim.MaxSize)
	}
	switch c {
	case CodecCBOR:
		return d.decodeCBOR(payload)
	case CodecMsgPack:
		return d.decodeMsgPack(payload)
	}
	return d.decodeJSON(payload, nil)
}

// Scratch is memory that DecodeWith reuses from one payload to the next:
// the members of a JSON payload's objects are carved out of it instead of
// allocated object by object. A Scratch is not safe for concurrent use.
type Scratch struct {
	nodes  []Node
	counts []uint32
	tables [][]int32 // keyIndex tables
	trail  trail     // where the decoder is, emptied and cleared between payloads
}

// scratchMax bounds the Nodes a Scratch keeps between payloads (~4.5 MiB).
const scratchMax = 1 << 16

// DecodeWith is Decode with the members of a JSON payload's objects taken
// from sc (CBOR and MessagePack decode as Decode does). The tree returned
// is valid until the next DecodeWith or Release on sc: read it, or copy what
// is kept, before that. A nil sc is Decode.
func (d *Decoder) DecodeWith(c Codec, payload []byte, sc *Scratch) (Node, error) {
	if c != CodecJSON || sc == nil || len(payload) > d.lim.MaxSize {
		return d.Decode(c, payload)
	}
	return d.decodeJSON(payload, sc)
}

// Release clears what sc holds of the last tree decoded with it, so that
// it pins no payload while it waits for the next one.
func (sc *Scratch) Release() {
	clear(sc.nodes) // its length is what the last tree used
	sc.nodes = sc.nodes[:0]
}

func (d *Decoder) decodeJSON(payload []byte, sc *Scratch) (Node, error) {
	if len(payload) > math.MaxInt32 { // beyond what the member counts index
		return Node{}, fmt.Errorf("%w: %d bytes of JSON, limit %d", ErrPayload, len(payload), math.MaxInt32)
	}
	s := string(payload)
	// The member counts size each object's Kids exactly. Brackets in
	// strings count too, but every object or array takes two bytes.
	var counts []uint32
	if sc != nil {
		counts = sc.counts[:0]
	}
	// Counted only when the scratch's room might not do: a payload of n
	// bytes holds at most n/2 objects and arrays.
	if cap(counts) < len(s)/2 {
		if n := min(strings.Count(s, "{")+strings.Count(s, "["), len(s)/2); cap(counts) < n {
			counts = make([]uint32, 0, max(n, min(len(s)/2, 16)))
		}
	}
	counts, bad := scanJSON(s, d.lim.MaxDepth, counts, true)
	if sc != nil && cap(counts) <= 4*scratchMax {
		sc.counts = counts[:0]
	}
	if bad.what != "" {
		return Node{}, bad.err(d.lim.MaxDepth)
	}
	p := jsonDecoder{s: s, counts: counts, maxNodes: d.lim.MaxNodes}
	if sc != nil {
		sc.Release()
		p.arena, p.tables, p.at = sc.nodes, sc.tables, sc.trail[:0]
	}
	root, err := p.value()
	if sc == nil {
		return root, err
	}
	sc.nodes, sc.tables = p.arena, p.tables
	if cap(p.at) <= 64 { // the depth limit's order; a deeper one is let go
		clear(p.at[:cap(p.at)]) // pins no payload while it waits
		sc.trail = p.at[:0]
	}
	if p.nodes > cap(sc.nodes) && p.nodes <= scratchMax && err == nil {
		// Too small for this payload: the next one like it finds room.
		// The tree just decoded is not in it, so it needs no clearing.
		sc.nodes = make([]Node, 0, p.nodes)
	}
	return root, err
}

// jsonDecoder builds a Node from JSON text that CheckJSON accepted, so it
// checks only what a tree cannot hold: duplicate keys, numbers beyond
// float64 and the node limit.
type jsonDecoder struct {
	s        string
	i        int
	counts   []uint32 // members of each object and array, in the order they open
	next     int      // the count of the next object or array
	nodes    int
	maxNodes int
	at       trail     // where i is, for errors
	keys     []string  // keys read so far of the open objects, innermost last
	buf      []byte    // an unescaped string
	arena    []Node    // where objects' members are carved from while it has room (Scratch)
	tables   [][]int32 // keyIndex tables no object uses now, for the next ones (Scratch)
}

// index returns a keyIndex for an object, with a table to reuse if there
// is one.
func (p *jsonDecoder) index() keyIndex {
	var x keyIndex
	if k := len(p.tables) - 1; k >= 0 {
		x.spare, p.tables = p.tables[k], p.tables[:k]
	}
	return x
}

// done takes back x's table for the next object: at most 16 tables of up
// to 4,096 slots are kept.
func (p *jsonDecoder) done(x *keyIndex) {
	t := x.slots
	if t == nil {
		t = x.spare
	}
	if t != nil && cap(t) <= 1<<12 && len(p.tables) < 16 {
		p.tables = append(p.tables, t)
	}
}

func (p *jsonDecoder) value() (Node, error) {
	if p.nodes++; p.maxNodes > 0 && p.nodes > p.maxNodes {
		return Node{}, p.at.errorf("%w: more than %d nodes", ErrPayload, p.maxNodes)
	}
	s := p.s
	p.i = skipSpace(s, p.i)
	start := p.i
	switch c := s[p.i]; c {
	case '{':
		return p.object()
	case '[':
		if err := p.skim(); err != nil {
			return Node{}, err
		}
		return Node{Value: Value{Kind: JSON, Data: s[start:p.i]}}, nil
	case '"':
		return Node{Value: Value{Kind: String, Data: p.str()}}, nil
	case 'n':
		p.i += len("null")
		return Node{Null: true}, nil
	case 't', 'f':
		p.i += len(literal(c))
		return Node{Value: Value{Kind: JSON, Data: s[start:p.i]}}, nil
	}
	if err := p.number(); err != nil {
		return Node{}, err
	}
	return Node{Value: Value{Kind: JSON, Data: s[start:p.i]}}, nil
}

func (p *jsonDecoder) object() (Node, error) {
	s, start := p.s, p.i
	n := Node{Obj: true}
	if c := int(p.counts[p.next]); c > 0 {
		if k := len(p.arena); cap(p.arena)-k >= c {
			p.arena = p.arena[:k+c]
			n.Kids = p.arena[k : k : k+c]
		} else {
			n.Kids = make([]Node, 0, c)
		}
	}
	p.next++
	index := p.index()
	defer p.done(&index)
	keyAt := func(i int) string { return n.Kids[i].Key }
	for p.i = skipSpace(s, p.i+1); s[p.i] != '}'; {
		key := p.str()
		p.i = skipSpace(s, p.i) + 1 // ':'
		if index.dup(len(n.Kids), keyAt, key) {
			return Node{}, p.at.with(key).errorf("%w: duplicate key", ErrPayload)
		}
		p.at = p.at.with(key)
		kid, err := p.value()
		p.at = p.at[:len(p.at)-1]
		if err != nil {
			return Node{}, err
		}
		kid.Key = key
		n.Kids = append(n.Kids, kid)
		if p.i = skipSpace(s, p.i); s[p.i] == ',' {
			p.i = skipSpace(s, p.i+1)
		}
	}
	p.i++
	n.Value = Value{Kind: Object, Data: s[start:p.i]}
	return n, nil
}

// skim passes over the array or object at p.i, a leaf's JSON text, checking
// its numbers and keys as a tree's.
func (p *jsonDecoder) skim() error {
	s, open := p.s, p.s[p.i]
	p.next++
	base := len(p.keys)
	index := p.index()
	defer p.done(&index)
	keyAt := func(i int) string { return p.keys[base+i] }
	p.at = p.at.index(0) // its last step is set for each member
	last := len(p.at) - 1
	for k := 0; ; k++ {
		if p.i = skipSpace(s, p.i+1); s[p.i] == open+2 { // '}' or ']'
			break
		}
		p.at[last] = step{index: k}
		if open == '{' {
			key := p.str()
			p.i = skipSpace(s, p.i) + 1 // ':'
			p.at[last] = step{key: key, index: -1}
			if index.dup(len(p.keys)-base, keyAt, key) {
				return p.at.errorf("%w: duplicate key", ErrPayload)
			}
			p.keys = append(p.keys, key)
			p.i = skipSpace(s, p.i)
		}
		var err error
		switch c := s[p.i]; c {
		case '{', '[':
			err = p.skim()
		case '"':
			p.i, _ = stringEnd(s, p.i)
		case 't', 'f', 'n':
			p.i += len(literal(c))
		default:
			err = p.number()
		}
		if err != nil {
			return err
		}
		if p.i = skipSpace(s, p.i); s[p.i] != ',' {
			break
		}
	}
	p.i++
	p.keys, p.at = p.keys[:base], p.at[:last]
	return nil
}

// str reads the string at p.i.
func (p *jsonDecoder) str() string {
	start := p.i
	end, esc := stringEnd(p.s, start)
	p.i = end
	body := p.s[start+1 : end-1]
	if !esc {
		return body
	}
	p.buf = appendUnescaped(p.buf[:0], body)
	return string(p.buf)
}

// number reads the number at p.i, refusing one beyond float64's range.
func (p *jsonDecoder) number() error {
	start := p.i
	p.i = numberEnd(p.s, p.i)
	if num := p.s[start:p.i]; floatOverflows(num) {
		if len(num) > 40 {
			num = num[:40] + "..."
		}
		return p.at.errorf("%w: number %s out of range", ErrPayload, num)
	}
	return nil
}

// trail is where a decoder is in a tree: keys and array indexes from the
// root. It becomes a JSON pointer only for an error.
type trail []step

type step struct {
	key   string
	index int // an array index, or -1 for key
}

func (t trail) with(key string) trail { return append(t, step{key: key, index: -1}) }

func (t trail) index(i int) trail { return append(t, step{index: i}) }

// errorf is a *PathError at t.
func (t trail) errorf(format string, args ...any) error {
	var b strings.Builder
	for _, s := range t {
		if s.index >= 0 {
			b.WriteString("/" + strconv.Itoa(s.index))
		} else {
			b.WriteString(Pointer("", s.key))
		}
	}
	return &PathError{Path: b.String(), Err: fmt.Errorf(format, args...)}
}

// keyIndex finds a duplicate key among an object's members: none while
// the keys come in ascending order (as encoding/json writes a map's), then
// by a scan while they are few, then in an open-addressing hash table of
// their positions, 4 bytes a slot and at most half full. The zero value is
// ready.
type keyIndex struct {
	slots []int32 // a member's position + 1; 0 is free
	seed  maphash.Seed
	spare []int32 // a table to use, if big enough, instead of a new one
	// unsorted says a key came that was not above the one before it:
	// until then each key is only compared with the one before (keys in
	// strictly ascending order are all different), and nothing is indexed.
	unsorted bool
}

// dup reports whether key is among the n keys that keyAt gives; if not, it
// indexes key as key number n.
func (x *keyIndex) dup(n int, keyAt func(int) string, key string) bool {
	const scan = 16
	if !x.unsorted {
		if n == 0 || keyAt(n-1) < key {
			return false
		}
		// The table, if one is needed, is made below from all n keys.
		x.unsorted = true
	}
	if n < scan {
		for i := range n {
			if keyAt(i) == key {
				return true
			}
		}
		return false
	}
	if 2*(n+1) > len(x.slots) {
		x.grow(n, keyAt)
	}
	return x.put(n, keyAt, key)
}

// put indexes key as key number n unless it finds it.
func (x *keyIndex) put(n int, keyAt func(int) string, key string) bool {
	mask := len(x.slots) - 1
	for i := int(maphash.String(x.seed, key)) & mask; ; i = (i + 1) & mask {
		switch at := x.slots[i]; {
		case at == 0:
			x.slots[i] = int32(n + 1)
			return false
		case keyAt(int(at-1)) == key:
			return true
		}
	}
}

// grow makes the table a quarter full with the n keys it indexes.
func (x *keyIndex) grow(n int, keyAt func(int) string) {
	if x.slots == nil {
		x.seed = maphash.MakeSeed()
	}
	size := 64
	for size < 4*(n+1) {
		size *= 2
	}
	if t := x.spare; cap(t) >= size { // a power of two, as every table
		x.slots, x.spare = t[:cap(t)], nil
		clear(x.slots)
	} else {
		x.slots = make([]int32, size)
	}
	for i := range n {
		x.put(i, keyAt, keyAt(i))
	}
}
