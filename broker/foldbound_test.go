package broker

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// The fold's size bound (deltaBound) is read off each folded delta's own
// payload and row count, with no pass over the batch: these tests hold it
// to being an upper bound of the payload the fold is encoded to, and hold
// fold to refusing without listing a batch's rows.

// foldBoundSubs are subscriptions of every wildcard shape and codec,
// private ones (Allow) beside shared ones.
func foldBoundSubs() []*tree.Sub {
	hideZ := func(topic string) bool { return !strings.HasSuffix(topic, "/z") }
	return []*tree.Sub{
		{Owner: "a", Topic: "$sync/d/+", Filter: "d/+"},
		{Owner: "a", Topic: "$sync/d/#", Filter: "d/#"},
		{Owner: "b", Topic: "$sync.cbor/d/#", Filter: "d/#", Codec: wire.CodecCBOR},
		{Owner: "c", Topic: "$sync.msgpack/d/+/+", Filter: "d/+/+", Codec: wire.CodecMsgPack},
		{Owner: "c", Topic: "$sync.msgpack/#", Filter: "#", Codec: wire.CodecMsgPack},
		{Owner: "e", Topic: "$sync/d/#", Filter: "d/#", Allow: hideZ},
		{Owner: "e", Topic: "$sync/d/x", Filter: "d/x"},
		{Owner: "f", Topic: "$sync.cbor/#", Filter: "#", Codec: wire.CodecCBOR},
		{Owner: "g", Topic: "$sync/#", Filter: "#"},
	}
}

// foldBoundTopics nest under '#' filters (a row's node gaining children
// later takes the object form) and sit side by side under '+' ones, many
// to a level (a longer map header once folded).
func foldBoundTopics() []string {
	topics := []string{"d/x", "d/x/y", "d/x/z", "d/y", "d/y/z", "d/y/z/w", "d", "e/q", "d/x/y/z/w/v"}
	for i := range 20 {
		topics = append(topics, fmt.Sprintf("d/n%d", i), fmt.Sprintf("d/x/m%d", i))
	}
	return topics
}

var foldBoundValues = []string{"1", "22", `"s"`, `{"k":1}`, `{"k":{"m":[1,2]}}`, "", "true", "333333333333", "\x01\"\\", "é"}

// TestDeltaBoundCoversFold: deltas folded one into another, then encoded
// again (Tree.Fold) after later batches changed the store, are never
// longer than the sum of their deltaBounds.
func TestDeltaBoundCoversFold(t *testing.T) {
	topics := foldBoundTopics()
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 7))
		tr := tree.New()
		subs := foldBoundSubs()
		for _, s := range subs {
			if _, err := tr.Subscribe(s); err != nil {
				t.Fatal(err)
			}
		}
		bound := map[*tree.Sub]int{}
		folded := map[*tree.Sub][]tree.Change{}
		batches := 1 + r.IntN(3) // few: the savings of shared keys do not hide the object form's cost
		if seed%2 == 0 {
			batches = 1 + r.IntN(12)
		}
		for i := range batches + r.IntN(6) { // the last batches are not folded: the store moves on
			ops := make([]tree.Op, 1+r.IntN(3))
			for j := range ops {
				rows := make([]tree.Row, 1+r.IntN(8))
				for k := range rows {
					v, retain := foldBoundValues[r.IntN(len(foldBoundValues))], r.IntN(4) != 0
					val := wire.TypePlain([]byte(v))
					if retain && v == "" {
						val = wire.Value{}
					}
					rows[k] = tree.Row{Topic: topics[r.IntN(len(topics))], Value: val, Retain: retain}
				}
				ops[j] = tree.Op{Rows: rows, QoS: byte(r.IntN(2))}
			}
			res := tr.Apply(ops)
			if i >= batches {
				continue
			}
			for _, d := range res.Deltas {
				for _, s := range d.Subs {
					bound[s] += deltaBound(d.Payload, d.Rows)
				}
			}
			for j, a := range res.Applied {
				if a.Err != nil {
					continue
				}
				for _, row := range a.Rows {
					for _, s := range subs {
						if s.Matches(row.Topic) {
							folded[s] = foldIn(folded[s], tree.Change{Topic: row.Topic, Value: row.Value, QoS: ops[j].QoS, Retain: row.Retain})
						}
					}
				}
			}
		}
		for _, s := range subs {
			payload, _, ok := tr.Fold(s, folded[s])
			if ok && len(payload) > bound[s] {
				t.Fatalf("seed %d, %s: folded payload %d bytes, over its bound %d: %x", seed, s.Topic, len(payload), bound[s], payload)
			}
		}
	}
}

// foldIn adds ch to folded, the newest value of each topic (as
// deltaItem.add).
func foldIn(folded []tree.Change, ch tree.Change) []tree.Change {
	for i := range folded {
		if folded[i].Topic == ch.Topic {
			folded[i] = ch
			return folded
		}
	}
	return append(folded, ch)
}

// TestFoldListsTheDeltaRows: a fold lists the rows of its subscription's
// delta, from the tree, not the batch's (a pass over thousands of rows,
// for each subscription of each publish, on the loop: 300 subscribers of
// one row each, not reading, made 300 publishes of 2,001 rows cost 10.3 s
// of broker CPU); one the writer's take or the client's Maximum Packet
// Size refuses lists none (the size check had a pass of its own: 7.6 s
// with a Maximum Packet Size of 1000).
func TestFoldListsTheDeltaRows(t *testing.T) {
	tr := tree.New()
	sub := &tree.Sub{Owner: "a", Topic: "$sync/big/a", Filter: "big/a"}
	if _, err := tr.Subscribe(sub); err != nil {
		t.Fatal(err)
	}
	batch := func() *batchRows {
		rows := make([]tree.Row, 2001)
		for i := range rows {
			rows[i] = tree.Row{Topic: fmt.Sprintf("big/r%d", i), Value: wire.TypePlain([]byte("12345")), Retain: true}
		}
		rows[7].Topic = "big/a"
		ops := []tree.Op{{Rows: rows}}
		res := tr.Apply(ops)
		if len(res.Deltas) != 1 || res.Deltas[0].Rows != 1 {
			t.Fatalf("deltas %+v, want one of one row", res.Deltas)
		}
		b := resetBatchRows(&batchRows{}, tr, res.Applied, ops, res.Rev)
		b.deliver(&res.Deltas[0])
		return b
	}
	const limit = 1000 // the whole batch is far over it; sub's one row is not
	add := deltaBound([]byte("12345"), 1)
	for _, tc := range []struct {
		name   string
		taken  bool
		closed bool
		limit  int
		want   bool
	}{
		{"taken", true, false, limit, false},
		{"closed", false, true, limit, false},
		{"over the limit", false, false, 40, false},
		{"fits", false, false, limit, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newOutQueue(1<<20, 0)
			q.closed = tc.closed
			d := &deltaItem{treeItem: treeItem{topic: sub.Topic, payload: []byte("1")}, taken: tc.taken, bound: 1}
			b := batch()
			if got := q.fold(d, sub, b, tc.limit, add); got != tc.want {
				t.Fatalf("fold = %v, want %v", got, tc.want)
			}
			if b.listed != tc.want || len(b.list) > 1 {
				t.Fatalf("rows listed: %v (%d), want %v (at most 1)", b.listed, len(b.list), tc.want)
			}
			if tc.want && (len(d.folded) != 1 || d.folded[0].Topic != "big/a") {
				t.Fatalf("folded %d rows, want big/a alone", len(d.folded))
			}
		})
	}
}
