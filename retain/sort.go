package retain

import (
	"cmp"
	"encoding/binary"
	"slices"
	"strings"
)

// sortedOrder is the indexes of changes in the order Commit writes them:
// by parent, then by leaf (see parentLen), which is the order of the
// strings parent + "\x00" + leaf (a change's "sort key"; topics hold no
// 0 byte, so the parents' rows are contiguous, and the parents come in
// the order of their group keys). It sorts 16-byte entries without
// pointers (a sort of the 64-byte changes while the GC marks pays a
// write barrier per move): each entry holds the 12 bytes of its sort key
// after the prefix every sort key of the batch shares (a boot storm's
// "boot/d0"), so almost every comparison is one or two of integers, not
// of two strings read from all over the heap; the keys are compared only
// where those 12 bytes are equal. Sorting a storm's commits this way took
// a third of the time of sorting indexes by topic (TestSortedOrder,
// BenchmarkSortedOrder).
func sortedOrder(changes []Change) []int32 {
	var b sortBufs
	return b.sorted(changes)
}

// sortBufs are the slices sortedOrder works in, kept by a Store from one
// commit to the next.
type sortBufs struct {
	es    []sortEntry
	order []int32
}

// sortEntry is a change's index and the 12 bytes of its sort key after
// the prefix every sort key of the batch shares, big-endian, zero-padded
// (head the first 8, tail the next 4). 12, not 8: the 0 byte between a
// parent and its leaf takes one, and a boot storm's keys past their
// common prefix ("0001/", 0, "r01") would tie at 8 bytes, 50 a device.
type sortEntry struct {
	head uint64
	tail uint32
	i    int32
}

// sorted is sortedOrder(changes), in b's slices: valid until the next
// call.
func (b *sortBufs) sorted(changes []Change) []int32 {
	if len(changes) == 0 {
		return nil
	}
	es := slices.Grow(b.es[:0], len(changes))[:len(changes)]
	// A prefix every sort key shares: the topics' common prefix, cut at
	// the shortest parent (before it, a sort key's bytes are its topic's).
	first := changes[0].Topic
	lcp := parentLen(first)
	for i := 1; i < len(changes) && lcp > 0; i++ {
		t := changes[i].Topic
		n := min(lcp, parentLen(t))
		j := 0
		for j < n && t[j] == first[j] {
			j++
		}
		lcp = j
	}
	for i := range es {
		t := changes[i].Topic
		h, tl := keyHead12(t, parentLen(t), lcp)
		es[i] = sortEntry{h, tl, int32(i)}
	}
	// A key's head is a monotone map of it (a shorter one pads with
	// zeros, and is a prefix or compares lower at a byte before): equal
	// heads leave the order to the whole keys.
	slices.SortFunc(es, func(a, b sortEntry) int {
		if a.head != b.head {
			return cmp.Compare(a.head, b.head)
		}
		if a.tail != b.tail {
			return cmp.Compare(a.tail, b.tail)
		}
		ta, tb := changes[a.i].Topic, changes[b.i].Topic
		return compareKeys(ta, parentLen(ta), tb, parentLen(tb))
	})
	order := slices.Grow(b.order[:0], len(es))[:len(es)]
	for i, e := range es {
		order[i] = e.i
	}
	b.es, b.order = es, order
	return order
}

// keyByte is byte i of the sort key of topic (parent of pl bytes):
// topic[:pl] + "\x00" + topic[pl:].
func keyByte(topic string, pl, i int) byte {
	switch {
	case i < pl:
		return topic[i]
	case i == pl:
		return 0
	}
	return topic[i-1]
}

// keyHead12 is the 12 bytes of topic's sort key from byte from on, as
// big-endian integers of 8 and 4 bytes, zero-padded.
func keyHead12(topic string, pl, from int) (uint64, uint32) {
	var b [12]byte
	switch {
	case from > pl:
		copy(b[:], topic[from-1:])
	case from+12 <= pl:
		copy(b[:], topic[from:])
	default: // the parent's end, its 0 byte, the leaf
		n := copy(b[:], topic[from:pl])
		if n < len(b) {
			copy(b[n+1:], topic[pl:]) // b[n] is the 0 byte
		}
	}
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint32(b[8:])
}

// compareKeys compares the sort keys of topics a and b (parents of pa
// and pb bytes).
func compareKeys(a string, pa int, b string, pb int) int {
	n := min(pa, pb)
	if c := strings.Compare(a[:n], b[:n]); c != 0 {
		return c
	}
	if pa == pb {
		return strings.Compare(a[pa:], b[pb:])
	}
	// One parent is a prefix of the other; byte n is the shorter one's
	// 0. Only a topic holding a 0 byte (which Commit refuses) gets past
	// the next byte.
	if pa < pb && b[n] != 0 {
		return -1
	}
	if pb < pa && a[n] != 0 {
		return 1
	}
	la, lb := len(a)+1, len(b)+1
	for i := n; i < la && i < lb; i++ {
		if x, y := keyByte(a, pa, i), keyByte(b, pb, i); x != y {
			return cmp.Compare(x, y)
		}
	}
	return cmp.Compare(la, lb)
}

// compareKeyBytes compares the sort key of topic (parent of pl bytes)
// with k, byte by byte.
func compareKeyBytes(topic string, pl int, k []byte) int {
	n := len(topic) + 1
	for i := 0; i < n && i < len(k); i++ {
		if x, y := keyByte(topic, pl, i), k[i]; x != y {
			return cmp.Compare(x, y)
		}
	}
	return cmp.Compare(n, len(k))
}
