package broker

import "slices"

// plistBits is log2 of a plist node's fan-out.
const plistBits = 5

// plistWidth is how many elements a plist leaf, or children an inner
// node, holds.
const plistWidth = 1 << plistBits

// plist is an immutable list: a tree of fan-out plistWidth whose leaves
// hold the elements, left-packed (every leaf full but the last, and so
// every subtree). A change copies one path from the root to a leaf, at
// most plistWidth pointers or elements a level: O(log N) for a list of N,
// so N subscriptions filed one by one on one filter, or N members joining
// one $share group, cost O(N log N), not O(N²). Readers walk a list
// without locks while a writer makes the next. A nil list is empty.
type plist[T any] struct {
	root  *pnode[T]
	depth uint // inner levels above the leaves
	n     int
}

// pnode is a plist node: a leaf (items) or an inner node (kids). Never
// changed once in a list; a change copies the slice it writes.
type pnode[T any] struct {
	kids  []*pnode[T]
	items []T
}

func (l *plist[T]) len() int {
	if l == nil {
		return 0
	}
	return l.n
}

// at is the element at i, which must be below len.
func (l *plist[T]) at(i int) *T {
	n := l.root
	for d := l.depth; d > 0; d-- {
		n = n.kids[(i>>(plistBits*d))&(plistWidth-1)]
	}
	return &n.items[i&(plistWidth-1)]
}

// appendPtrs appends a pointer to each element of l, in order, to dst.
func (l *plist[T]) appendPtrs(dst []*T) []*T {
	if l == nil {
		return dst
	}
	return l.root.appendPtrs(dst, l.depth)
}

func (n *pnode[T]) appendPtrs(dst []*T, depth uint) []*T {
	if depth == 0 {
		for i := range n.items {
			dst = append(dst, &n.items[i])
		}
		return dst
	}
	for _, k := range n.kids {
		dst = k.appendPtrs(dst, depth-1)
	}
	return dst
}

// with is l and e after it.
func (l *plist[T]) with(e T) *plist[T] {
	if l == nil {
		return &plist[T]{root: &pnode[T]{items: []T{e}}, n: 1}
	}
	root, depth := l.root, l.depth
	if l.n == 1<<(plistBits*(depth+1)) { // full: one level more
		root = &pnode[T]{kids: []*pnode[T]{root}}
		depth++
	}
	return &plist[T]{root: root.with(depth, l.n, e), depth: depth, n: l.n + 1}
}

// with is n (nil for a new node) with e at i, its next free place.
func (n *pnode[T]) with(depth uint, i int, e T) *pnode[T] {
	if depth == 0 {
		var items []T
		if n != nil {
			items = n.items
		}
		return &pnode[T]{items: appendCopy(items, e)}
	}
	var kids []*pnode[T]
	if n != nil {
		kids = n.kids
	}
	k := (i >> (plistBits * depth)) & (plistWidth - 1)
	if k == len(kids) {
		return &pnode[T]{kids: appendCopy(kids, (*pnode[T])(nil).with(depth-1, i, e))}
	}
	kids = slices.Clone(kids)
	kids[k] = kids[k].with(depth-1, i, e)
	return &pnode[T]{kids: kids}
}

// set is l with e at i, which must be below len.
func (l *plist[T]) set(i int, e T) *plist[T] {
	return &plist[T]{root: l.root.set(l.depth, i, e), depth: l.depth, n: l.n}
}

func (n *pnode[T]) set(depth uint, i int, e T) *pnode[T] {
	if depth == 0 {
		items := slices.Clone(n.items)
		items[i&(plistWidth-1)] = e
		return &pnode[T]{items: items}
	}
	kids := slices.Clone(n.kids)
	k := (i >> (plistBits * depth)) & (plistWidth - 1)
	kids[k] = kids[k].set(depth-1, i, e)
	return &pnode[T]{kids: kids}
}

// without is l without its element at i, its last element moved there;
// nil if nothing is left.
func (l *plist[T]) without(i int) *plist[T] {
	if l.n == 1 {
		return nil
	}
	moved := *l.at(l.n - 1)
	root, depth := l.root.pop(l.depth), l.depth
	for depth > 0 && len(root.kids) == 1 { // one level less
		root = root.kids[0]
		depth--
	}
	out := &plist[T]{root: root, depth: depth, n: l.n - 1}
	if i != l.n-1 {
		out = out.set(i, moved)
	}
	return out
}

// pop is n without its last element; nil if nothing is left.
func (n *pnode[T]) pop(depth uint) *pnode[T] {
	if depth == 0 {
		if len(n.items) == 1 {
			return nil
		}
		// The shorter leaf shares n's array: nothing writes an array a
		// list has seen (with and set copy before they write).
		return &pnode[T]{items: slices.Clip(n.items[:len(n.items)-1])}
	}
	last := len(n.kids) - 1
	k := n.kids[last].pop(depth - 1)
	if k == nil {
		if last == 0 {
			return nil
		}
		return &pnode[T]{kids: slices.Clip(n.kids[:last])}
	}
	kids := slices.Clone(n.kids)
	kids[last] = k
	return &pnode[T]{kids: kids}
}

// appendCopy is a new slice holding s and then e.
func appendCopy[T any](s []T, e T) []T {
	return append(append(make([]T, 0, len(s)+1), s...), e)
}
