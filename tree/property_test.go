package tree

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// refMatch is a tiny reference matcher for MQTT filters.
func refMatch(filter, topic string) bool {
	f, t := strings.Split(filter, "/"), strings.Split(topic, "/")
	if strings.HasPrefix(topic, "$") && (f[0] == "+" || f[0] == "#") {
		return false
	}
	for i, l := range f {
		if l == "#" {
			return true
		}
		if i >= len(t) || (l != "+" && l != t[i]) {
			return false
		}
	}
	return len(f) == len(t)
}

// refValue decodes a row value as it appears in a JSON tree.
func refValue(v wire.Value) any {
	switch v.Kind {
	case wire.String:
		return v.Data
	case wire.Bytes:
		return base64.StdEncoding.EncodeToString([]byte(v.Data))
	}
	var x any
	if err := json.Unmarshal([]byte(v.Data), &x); err != nil {
		panic(err)
	}
	return x
}

// refNode is a node of the reference tree below a '#'.
type refNode struct {
	own  *wire.Value
	kids map[string]*refNode
}

func (n *refNode) render(root bool) any {
	if !root && len(n.kids) == 0 {
		if n.own.Kind == wire.Object {
			return map[string]any{"/": refValue(*n.own)}
		}
		return refValue(*n.own)
	}
	m := map[string]any{}
	if n.own != nil {
		m["/"] = refValue(*n.own)
	}
	for k, c := range n.kids {
		m[k] = c.render(false)
	}
	return m
}

// refSnapshot builds the tree of SPEC §3 from a plain map of rows, without
// the store: the model the Tree is checked against.
func refSnapshot(rows map[string]wire.Value, filter string) any {
	levels := strings.Split(filter, "/")
	if !wire.HasWildcard(filter) {
		if v, ok := rows[filter]; ok {
			return refValue(v)
		}
		return nil
	}
	hash := levels[len(levels)-1] == "#"
	root := map[string]any{}
	subtrees := map[string]*refNode{} // '#' roots by their '+' keys
	for topic, v := range rows {
		if !refMatch(filter, topic) {
			continue
		}
		tl := strings.Split(topic, "/")
		var keys []string
		for i, l := range levels {
			if l == "+" {
				keys = append(keys, tl[i])
			}
		}
		if !hash {
			m := root
			for _, k := range keys[:len(keys)-1] {
				if m[k] == nil {
					m[k] = map[string]any{}
				}
				m = m[k].(map[string]any)
			}
			m[keys[len(keys)-1]] = refValue(v)
			continue
		}
		id := strings.Join(keys, "\x00")
		n := subtrees[id]
		if n == nil {
			n = &refNode{kids: map[string]*refNode{}}
			subtrees[id] = n
			m := root
			for i, k := range keys {
				if i == len(keys)-1 {
					defer func(m map[string]any, k string, n *refNode) { m[k] = n.render(true) }(m, k, n)
					break
				}
				if m[k] == nil {
					m[k] = map[string]any{}
				}
				m = m[k].(map[string]any)
			}
		}
		for _, l := range tl[len(levels)-1:] {
			c := n.kids[l]
			if c == nil {
				c = &refNode{kids: map[string]*refNode{}}
				n.kids[l] = c
			}
			n = c
		}
		v := v
		n.own = &v
	}
	if n := subtrees[""]; hash && n != nil && !strings.Contains(filter, "+") {
		return n.render(true) // the '#' node is the root
	}
	return root
}

var (
	propLevels = []string{"a", "b", "c", "", "$s"}
	propValues = []string{"1", "ON", `{"x":1}`, "[1,{\"y\":2}]", "\xff\x01", "2.5", `"q"`, "true"}
	propFilter = []string{"#", "+", "a/#", "a/+", "+/+", "a/+/#", "+/b/#", "a/b", "a/+/c", "$s/#", "+/#", "a/+/+/+", "/+"}
)

func randTopic(r *rand.Rand) string {
	n := 1 + r.IntN(4)
	l := make([]string, n)
	for i := range l {
		l[i] = propLevels[r.IntN(len(propLevels))]
		if i > 0 && l[i] == "$s" {
			l[i] = "s"
		}
	}
	t := strings.Join(l, "/")
	if t == "" {
		return "a"
	}
	return t
}

func randOp(r *rand.Rand, retainedOnly bool) Op {
	op := Op{QoS: byte(r.IntN(3))}
	switch k := r.IntN(10); {
	case k == 0:
		op.SetFilter = propFilter[r.IntN(len(propFilter))]
		if r.IntN(3) > 0 {
			op.SetValue = wire.TypePlain([]byte(propValues[r.IntN(len(propValues))]))
		}
		return op
	case k == 1:
		op.Replace = propFilter[r.IntN(len(propFilter))]
	}
	for range 1 + r.IntN(4) {
		row := Row{Topic: randTopic(r), Retain: retainedOnly || r.IntN(5) > 0}
		if r.IntN(4) > 0 {
			row.Value = wire.TypePlain([]byte(propValues[r.IntN(len(propValues))]))
		}
		if op.Replace != "" && (!refMatch(op.Replace, row.Topic) || !row.Retain) {
			continue // a .replace publish only carries rows under its topic
		}
		op.Rows = append(op.Rows, row)
	}
	return op
}

func decodeTree(t testing.TB, c wire.Codec, b []byte) any {
	t.Helper()
	return decodeJSON(t, toJSON(t, c, b))
}

// TestSnapshotMatchesRows: after any sequence of batches, every snapshot
// equals the tree rebuilt from the final rows, and every subscriber's copy,
// its snapshot merged with each delta it got, equals it too.
func TestSnapshotMatchesRows(t *testing.T) {
	for seed := range uint64(200) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 7))
			tr := New()
			type client struct {
				sub  *Sub
				copy any
				// folded: a second copy that merges each delta until batch
				// split, then takes every later change in one Fold at the end.
				folded  any
				pending []Change
				at      map[string]int
			}
			split := r.IntN(30)
			clients := map[*Sub]*client{}
			for i, f := range propFilter {
				s := &Sub{Owner: fmt.Sprint("c", i), Topic: "$sync/" + f, Filter: f, Codec: wire.Codecs[i%len(wire.Codecs)]}
				snap, err := tr.Subscribe(s)
				if err != nil {
					t.Fatal(err)
				}
				clients[s] = &client{sub: s, copy: decodeTree(t, s.Codec, snap), folded: decodeTree(t, s.Codec, snap), at: map[string]int{}}
			}
			model := map[string]wire.Value{}
			for batch := range 30 {
				ops := make([]Op, 1+r.IntN(4))
				for i := range ops {
					ops[i] = randOp(r, true)
				}
				res := tr.Apply(ops)
				for _, a := range res.Applied {
					for _, row := range a.Rows {
						if row.Value.Kind == wire.None {
							delete(model, row.Topic)
						} else {
							model[row.Topic] = row.Value
						}
					}
				}
				for _, d := range res.Deltas {
					for _, s := range d.Subs {
						c := clients[s]
						c.copy = Merge(c.copy, decodeTree(t, s.Codec, d.Payload), s.Filter)
						if batch < split {
							c.folded = Merge(c.folded, decodeTree(t, s.Codec, d.Payload), s.Filter)
						}
					}
				}
				if batch >= split {
					for _, c := range clients {
						for i, a := range res.Applied {
							for _, row := range a.Rows {
								if !c.sub.Matches(row.Topic) {
									continue
								}
								if j, ok := c.at[row.Topic]; ok {
									c.pending[j].Value, c.pending[j].QoS = row.Value, max(c.pending[j].QoS, ops[i].QoS)
									continue
								}
								c.at[row.Topic] = len(c.pending)
								c.pending = append(c.pending, Change{Topic: row.Topic, Value: row.Value, QoS: ops[i].QoS})
							}
						}
					}
				}
			}
			for _, c := range clients {
				if payload, _, ok := tr.Fold(c.sub, c.pending); ok {
					c.folded = Merge(c.folded, decodeTree(t, c.sub.Codec, payload), c.sub.Filter)
				}
			}
			if got := rowsOf(tr); !reflect.DeepEqual(got, model) {
				t.Fatalf("store %v\nmodel %v", got, model)
			}
			for _, c := range clients {
				want := refSnapshot(model, c.sub.Filter)
				snap := decodeTree(t, c.sub.Codec, tr.Snapshot(c.sub.Filter, c.sub.Codec, nil))
				if !reflect.DeepEqual(snap, want) {
					t.Errorf("%s: snapshot %v\nwant %v", c.sub.Filter, snap, want)
				}
				if !reflect.DeepEqual(c.copy, want) {
					t.Errorf("%s: merged copy %v\nwant %v", c.sub.Filter, c.copy, want)
				}
				if !reflect.DeepEqual(c.folded, want) {
					t.Errorf("%s: copy with batches %d.. folded %v\nwant %v", c.sub.Filter, split, c.folded, want)
				}
			}
		})
	}
}

func rowsOf(tr *Tree) map[string]wire.Value {
	out := map[string]wire.Value{}
	tr.Store().Range(func(topic string, v wire.Value, _ byte) bool {
		out[topic] = v
		return true
	})
	return out
}
