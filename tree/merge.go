package tree

import "strings"

// Merge applies a decoded delta to a decoded copy of a subscription's tree
// and returns the new copy; it is how a client keeps a local copy equal to
// the broker's rows from one snapshot and the deltas that follow.
//
// Trees are decoded as encoding/json decodes JSON into an any (objects as
// map[string]any; CBOR decoders produce the same with string keys). filter
// is F, the filter the tree was built from: its '+' levels are nested keys,
// where null deletes a key; below a '#' the key "/" is a node's own value
// (SPEC §3). Merge modifies doc's maps in place.
func Merge(doc, delta any, filter string) any {
	levels := strings.Split(filter, "/")
	plus, hash := 0, levels[len(levels)-1] == "#"
	for _, l := range levels {
		if l == "+" {
			plus++
		}
	}
	if plus == 0 && !hash {
		return delta // a bare value, or null
	}
	m, _ := doc.(map[string]any)
	if m == nil {
		m = map[string]any{}
	}
	d, _ := delta.(map[string]any)
	if plus == 0 {
		mergeSubtree(m, d)
	} else {
		mergeLevels(m, d, plus, hash)
	}
	return m
}

// mergeLevels merges at a '+' level; left is the number of '+' levels from
// here on.
func mergeLevels(m, d map[string]any, left int, hash bool) {
	for k, dv := range d {
		if left == 1 && !hash { // the row values themselves
			if dv == nil {
				delete(m, k)
			} else {
				m[k] = dv
			}
			continue
		}
		dm, ok := dv.(map[string]any)
		if !ok {
			delete(m, k) // not a shape the broker sends; the row set is gone
			continue
		}
		child, _ := m[k].(map[string]any)
		if child == nil {
			child = map[string]any{}
		}
		if left == 1 {
			mergeSubtree(child, dm)
		} else {
			mergeLevels(child, dm, left-1, hash)
		}
		if len(child) == 0 {
			delete(m, k)
		} else {
			m[k] = child
		}
	}
}

// mergeSubtree merges below a '#': "/" is the node's own value, other keys
// are child nodes.
func mergeSubtree(m, d map[string]any) {
	for k, dv := range d {
		if k == "/" {
			if dv == nil {
				delete(m, k)
			} else {
				m[k] = dv
			}
			continue
		}
		mergeNode(m, k, dv)
	}
}

func mergeNode(parent map[string]any, k string, dv any) {
	dm, isObj := dv.(map[string]any)
	switch {
	case dv == nil:
		delete(parent, k)
		return
	case !isObj:
		parent[k] = dv
		return
	}
	node, _ := parent[k].(map[string]any)
	if node == nil {
		node = map[string]any{}
		if cur, ok := parent[k]; ok { // a bare value becomes the node's own value
			node["/"] = cur
		}
	}
	mergeSubtree(node, dm)
	own, hasOwn := node["/"]
	_, ownIsObj := own.(map[string]any)
	switch {
	case len(node) == 0:
		delete(parent, k)
	case len(node) == 1 && hasOwn && !ownIsObj:
		parent[k] = own // no children left: the bare value
	default:
		parent[k] = node
	}
}
