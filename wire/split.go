package wire

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"unicode/utf8"
)

// ErrTooLarge is a tree that cannot be split into parts of the size asked.
var ErrTooLarge = errors.New("wire: tree too large")

// Split cuts an encoded tree into parts of at most max bytes each, by
// subtree: every part is a valid tree, and merging the parts key by key
// (deeply) gives the whole tree back (SPEC §2, mote-part). A tree that
// fits is returned as its only part. A single value larger than max
// cannot be split: that is ErrTooLarge, naming its path.
func Split(c Codec, tree []byte, max int) ([][]byte, error) {
	parts, _, err := split(c, tree, max, false, false)
	return parts, err
}

// SplitSkip is Split that leaves out, instead of failing on, each value
// that alone cannot fit a part: it returns the parts of the rest, which
// merge to the tree without those values, and the JSON Pointers of the
// values left out, in tree order. A tree of nothing but such values is
// one empty tree.
func SplitSkip(c Codec, tree []byte, max int) (parts [][]byte, left []string, err error) {
	return split(c, tree, max, true, false)
}

// SplitDrop is SplitSkip for a delta (a resume delta, SPEC §8): each
// value left out is written as null in its place, so a receiver that
// merges the parts drops its older copy of the value rather than keep it
// as current; only a null whose path alone fits no part is left out
// without one. The pointers of all the values left out are returned.
func SplitDrop(c Codec, tree []byte, max int) (parts [][]byte, left []string, err error) {
	return split(c, tree, max, true, true)
}

// split is Split, or with skip SplitSkip, or with drop as well SplitDrop.
func split(c Codec, tree []byte, max int, skip, drop bool) ([][]byte, []string, error) {
	if len(tree) <= max {
		return [][]byte{tree}, nil, nil
	}
	d, err := NewDecoder(Limits{MaxSize: math.MaxInt32, MaxDepth: 1 << 16})
	if err != nil {
		return nil, nil, err
	}
	root, err := d.Decode(c, tree)
	if err != nil {
		return nil, nil, fmt.Errorf("wire: split: %w", err)
	}
	if !root.Obj {
		return nil, nil, fmt.Errorf("%w: a bare value of %d bytes, limit %d", ErrTooLarge, len(tree), max)
	}
	s := splitter{codec: c, max: max, skip: skip, drop: drop}
	if err := s.collect(&root, nil, ""); err != nil {
		return nil, nil, err
	}
	if len(s.frags) == 0 {
		if !skip { // an empty tree: zero parts would carry nothing at all
			return nil, nil, fmt.Errorf("%w: an empty tree of %d bytes, limit %d", ErrTooLarge, len(tree), max)
		}
		return [][]byte{s.encode(nil)}, s.left, nil // the caller measures it against its limit
	}
	parts, err := s.pack()
	return parts, s.left, err
}

// frag is one member placed at a path: a piece of one part.
type frag struct {
	path []string // keys from the root down to and including the member's own
	node *Node
	size int // bytes it costs in a part, path keys included (an upper bound)
}

type splitter struct {
	codec Codec
	max   int
	frags []frag
	skip  bool     // leave out a value that alone fits no part (SplitSkip)
	drop  bool     // and write null in its place (SplitDrop)
	left  []string // the pointers of the values left out
}

func (s *splitter) size(n *Node) int {
	e := NewEncoder(s.codec, nil)
	e.node(n)
	return e.Len()
}

// keyCost bounds what writing the keys of path (and opening their objects) costs.
func keyCost(path []string) int {
	n := 0
	for _, k := range path {
		n += keyBound(k) + 16 // quotes, colon, comma, brace / CBOR or MessagePack heads
	}
	return n
}

// keyBound bounds the bytes of key k's text as written in any codec: 2 a
// byte, as JSON escapes a quote or backslash, but 6 for a control
// character (\u0001) and 3 for a byte that is not UTF-8 (written as
// U+FFFD); CBOR and MessagePack write k as it is.
func keyBound(k string) int {
	n := 0
	for i := 0; i < len(k); {
		r, size := utf8.DecodeRuneInString(k[i:])
		switch {
		case r < 0x20:
			n += 6
		case r == utf8.RuneError && size == 1:
			n += 3
		default:
			n += 2 * size
		}
		i += size
	}
	return n
}

// collect lists the members of n (at path) as fragments, going down into a
// member too large for one part.
func (s *splitter) collect(n *Node, path []string, ptr string) error {
	for i := range n.Kids {
		kid := &n.Kids[i]
		p := append(slices.Clip(path), kid.Key)
		size := s.size(kid)
		cost := size + keyCost(p)
		if cost+16 <= s.max {
			s.frags = append(s.frags, frag{path: p, node: kid, size: cost})
			continue
		}
		// The bound is loose: measured, a member whose value fits may
		// still fit a part of its own (one over the bound fills its part:
		// see pack).
		alone := cost
		if size < s.max {
			alone = len(s.encode([]frag{{path: p, node: kid}}))
		}
		if alone <= s.max {
			s.frags = append(s.frags, frag{path: p, node: kid, size: s.max})
			continue
		}
		if (!kid.Obj || len(kid.Kids) == 0) && s.skip {
			s.left = append(s.left, Pointer(ptr, kid.Key))
			if null := keyCost(p) + 16; s.drop && null+16 <= s.max {
				s.frags = append(s.frags, frag{path: p, node: &Node{Key: kid.Key, Null: true}, size: null})
			}
			continue
		}
		if !kid.Obj || len(kid.Kids) == 0 {
			return fmt.Errorf("%w: the value at %s alone takes %d bytes, limit %d", ErrTooLarge, Pointer(ptr, kid.Key), alone, s.max)
		}
		if err := s.collect(kid, p, Pointer(ptr, kid.Key)); err != nil {
			return err
		}
	}
	return nil
}

// pack fills parts with fragments in order, each part up to max bytes by
// the fragments' bounds; a part takes at least one (collect made sure
// each fits a part of its own).
func (s *splitter) pack() ([][]byte, error) {
	var parts [][]byte
	for start := 0; start < len(s.frags); {
		end, total := start, 16
		for end < len(s.frags) && (end == start || total+s.frags[end].size <= s.max) {
			total += s.frags[end].size
			end++
		}
		part := s.encode(s.frags[start:end])
		if len(part) > s.max {
			return nil, fmt.Errorf("%w: part of %d bytes over the limit %d", ErrTooLarge, len(part), s.max)
		}
		parts = append(parts, part)
		start = end
	}
	return parts, nil
}

// encode writes fragments, sorted in tree order, as one tree, reopening the
// objects on their paths.
func (s *splitter) encode(frags []frag) []byte {
	e := NewEncoder(s.codec, nil)
	e.BeginObject()
	var open []string
	for _, f := range frags {
		open = e.Descend(open, f.path[:len(f.path)-1])
		e.Key(f.path[len(f.path)-1])
		e.node(f.node)
	}
	for range open {
		e.EndObject()
	}
	e.EndObject()
	return e.Bytes()
}
