package client

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"
)

// History is the answer to a $hist/F request (SPEC §9): a tree shaped as
// a snapshot of F (SPEC §3) whose leaves are arrays of [t, value] pairs, t
// in Unix milliseconds, oldest first, ending with the row's current value
// (a deleted row ends with [t, null]).
type History struct {
	Filter string // F
	Tree   any    // as decoded: leaves are []any of []any{t, value}
	Rev    uint64 // mote-rev of the answer, 0 if the broker sent none
}

// History asks the broker once for the past values of the rows matching
// filter ($hist/F): it subscribes, collects the answer (all its parts),
// unsubscribes and returns it. opts: [HistoryFrom], [HistoryTo] (both
// inclusive) and [HistoryLimit] (the newest n pairs per row). Rows outside
// every history filter of the broker answer with one pair, their current
// value. To keep a history up to date as rows change, use [Client.Mirror]
// with [WithHistory]; do not call History for a filter and codec that such
// a Mirror of the same Client holds (they share the topic $hist/F, and
// History unsubscribes it when done).
func (c *Client) History(ctx context.Context, filter string, codec Codec, opts ...SubscribeOption) (*History, error) {
	opts = append(opts[:len(opts):len(opts)], WithHistory())
	m, err := c.Mirror(ctx, filter, codec, 1, nil, opts...)
	if err != nil {
		return nil, err
	}
	h := &History{Filter: filter}
	m.Get(func(doc any) { h.Tree = doc })
	h.Rev, _ = m.Rev()
	if err := m.Close(ctx); err != nil {
		return h, err
	}
	return h, nil
}

// Rows is the history by row topic.
func (h *History) Rows() (map[string][]Point, error) {
	out := map[string][]Point{}
	for topic, leaf := range Rows(h.Tree, h.Filter) {
		ps, err := Points(leaf)
		if err != nil {
			return nil, fmt.Errorf("client: history of %s: %w", topic, err)
		}
		out[topic] = ps
	}
	return out, nil
}

// Point is one [t, value] pair of a history.
type Point struct {
	T     int64 // Unix milliseconds (the broker's time of the change; for pairs a Mirror appends, the time it received the delta)
	Value any   // nil: the row was deleted
}

// Time is T as a time.Time.
func (p Point) Time() time.Time { return time.UnixMilli(p.T) }

// Points reads one leaf of a history tree: an array of [t, value] pairs.
func Points(leaf any) ([]Point, error) {
	arr, ok := leaf.([]any)
	if !ok {
		return nil, fmt.Errorf("not an array of [t, value] pairs: %T", leaf)
	}
	ps := make([]Point, 0, len(arr))
	for i, e := range arr {
		pair, ok := e.([]any)
		if !ok || len(pair) != 2 {
			return nil, fmt.Errorf("pair %d: not [t, value]", i)
		}
		t, err := millis(pair[0])
		if err != nil {
			return nil, fmt.Errorf("pair %d: %w", i, err)
		}
		ps = append(ps, Point{T: t, Value: pair[1]})
	}
	return ps, nil
}

// millis reads a decoded t: a json.Number, or a CBOR or MessagePack
// integer or float.
func millis(v any) (int64, error) {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i, nil
		}
		f, err := x.Float64()
		if err != nil {
			return 0, fmt.Errorf("t %q is not a number", x)
		}
		return millis(f)
	case uint64:
		if x > math.MaxInt64 {
			return 0, fmt.Errorf("t %d out of range", x)
		}
		return int64(x), nil
	case int64:
		return x, nil
	case int:
		return int64(x), nil
	case float64:
		if x != math.Trunc(x) || math.Abs(x) > 1<<62 {
			return 0, fmt.Errorf("t %v is not whole milliseconds", x)
		}
		return int64(x), nil
	}
	return 0, fmt.Errorf("t is %T, not a number", v)
}

// Rows flattens a tree built from filter F (a snapshot, a delta, a resume
// delta or a history) into its rows: topic → value, by the shape rules of
// SPEC §3. A null leaf (a deleted row in a delta; a filter without
// wildcards and no row) gives a nil value.
func Rows(tree any, filter string) map[string]any {
	out := map[string]any{}
	levels := strings.Split(filter, "/")
	var walk func(node any, i int, topic []string)
	walk = func(node any, i int, topic []string) {
		for i < len(levels) && levels[i] != "+" && levels[i] != "#" {
			topic = append(topic, levels[i])
			i++
		}
		if i == len(levels) {
			out[strings.Join(topic, "/")] = node
			return
		}
		if levels[i] == "#" {
			subtreeRows(out, node, topic, true)
			return
		}
		m, _ := node.(map[string]any)
		for k, v := range m {
			walk(v, i+1, append(topic[:len(topic):len(topic)], k))
		}
	}
	walk(tree, 0, nil)
	return out
}

// subtreeRows flattens the part of a tree below a '#': objects are nodes,
// "/" is a node's own value, anything else a row.
func subtreeRows(out map[string]any, node any, topic []string, root bool) {
	m, ok := node.(map[string]any)
	if !ok {
		if !root || node != nil {
			out[strings.Join(topic, "/")] = node
		}
		return
	}
	for k, v := range m {
		if k == "/" {
			out[strings.Join(topic, "/")] = v
			continue
		}
		subtreeRows(out, v, append(topic[:len(topic):len(topic)], k), false)
	}
}

// AppendHistory appends a delta of plain values (as $hist sends after its
// first message) to a history tree built from filter: each row the delta
// names gets the pair [t, value] at the end of its array (value nil for a
// deleted row), the array then trimmed to its newest limit pairs if limit
// > 0. It changes doc's maps in place and returns the new tree. A
// [Mirror] with [WithHistory] calls it with t = the receive time.
func AppendHistory(doc, delta any, filter string, t any, limit int) any {
	h := appender{levels: strings.Split(filter, "/"), t: t, limit: limit}
	return h.at(doc, delta, 0)
}

type appender struct {
	levels []string
	t      any
	limit  int
}

func (h appender) at(doc, delta any, i int) any {
	for i < len(h.levels) && h.levels[i] != "+" && h.levels[i] != "#" {
		i++
	}
	if i == len(h.levels) {
		return h.pair(doc, delta)
	}
	if h.levels[i] == "#" {
		return h.subtree(doc, delta, i == 0 || !strings.Contains(strings.Join(h.levels[:i], "/"), "+"))
	}
	d, _ := delta.(map[string]any)
	m, _ := doc.(map[string]any)
	if m == nil {
		m = map[string]any{}
	}
	for k, dv := range d {
		m[k] = h.at(m[k], dv, i+1)
	}
	return m
}

// subtree appends below a '#'. root: this node is the tree's root, which
// stays an object even when it holds only its own value under "/".
func (h appender) subtree(node, delta any, root bool) any {
	d, ok := delta.(map[string]any)
	if !ok { // a new value of the row at this node
		if m, ok := node.(map[string]any); ok {
			m["/"] = h.pair(m["/"], delta)
			return m
		}
		if root {
			return map[string]any{"/": h.pair(nil, delta)}
		}
		return h.pair(node, delta)
	}
	m, ok := node.(map[string]any)
	if !ok {
		m = map[string]any{}
		if node != nil { // a row's pairs, now with children too
			m["/"] = node
		}
	}
	for k, dv := range d {
		if k == "/" {
			m["/"] = h.pair(m["/"], dv)
			continue
		}
		m[k] = h.subtree(m[k], dv, false)
	}
	if v, ok := m["/"]; ok && len(m) == 1 && !root {
		if _, isMap := v.(map[string]any); !isMap {
			return v // no children: the bare array, as the broker writes it
		}
	}
	return m
}

func (h appender) pair(arr, v any) any {
	a, _ := arr.([]any)
	a = append(a, []any{h.t, v})
	if h.limit > 0 && len(a) > h.limit {
		a = append([]any(nil), a[len(a)-h.limit:]...)
	}
	return a
}
