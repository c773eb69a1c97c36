package tree

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// Red team of the Tree's reused memory (h-treelat): a Result handed back
// (Release), the kept delta buffer (encoded), a '#' delta's open keys, the
// keys cut from one scratch list (addPath) and the topic map emptied key
// by key. Two trees get the same subscriptions and batches: one releases
// every Result, one never does (each Apply gets lists of its own, as on
// main); their deltas, Folds and snapshots must be the same bytes, every
// payload handed out must stay as it was when handed out, and a released
// Result's deltas must not be read again.

// rtlTopics are the topics the batches write: nested under '#' filters,
// siblings under '+' ones, and one no filter matches.
var rtlTopics = []string{"d/x", "d/x/y", "d/x/z", "d/y", "d/y/z", "d/y/z/w", "e/q", "e/r", "f/g"}

// rtlFilters are the subscriptions: every wildcard shape, each codec,
// private ones (Allow) beside shared ones.
func rtlSubs() []*Sub {
	hideZ := func(topic string) bool { return !strings.HasSuffix(topic, "/z") }
	return []*Sub{
		{Owner: "a", Topic: "$sync/d/+", Filter: "d/+"},
		{Owner: "b", Topic: "$sync/d/+", Filter: "d/+"},
		{Owner: "a", Topic: "$sync/d/#", Filter: "d/#"},
		{Owner: "c", Topic: "$sync.cbor/d/#", Filter: "d/#", Codec: wire.CodecCBOR},
		{Owner: "d", Topic: "$sync.msgpack/d/+/+", Filter: "d/+/+", Codec: wire.CodecMsgPack},
		{Owner: "e", Topic: "$sync/d/#", Filter: "d/#", Allow: hideZ},
		{Owner: "e", Topic: "$sync/d/x", Filter: "d/x"},
		{Owner: "f", Topic: "$tree/e/+", Filter: "e/+"},
		{Owner: "f", Topic: "$sync/d/x/#", Filter: "d/x/#", Allow: hideZ},
		{Owner: "g", Topic: "$sync/#", Filter: "#"},
	}
}

// rtlValues are the payloads rows take: numbers, strings, objects (the
// object form under '#'), and "" (a retained row deleted).
var rtlValues = []string{"1", "22", `"s"`, `{"k":1}`, `{"k":{"m":[1,2]}}`, "", "true", "333333333333"}

// rtlBatch is a random batch of up to 4 ops of up to 5 rows.
func rtlBatch(r *rand.Rand) []Op {
	ops := make([]Op, 1+r.IntN(4))
	for i := range ops {
		rows := make([]Row, 1+r.IntN(5))
		for j := range rows {
			rows[j] = row(rtlTopics[r.IntN(len(rtlTopics))], rtlValues[r.IntN(len(rtlValues))], r.IntN(4) != 0)
		}
		ops[i] = Op{Rows: rows, QoS: byte(r.IntN(2))}
	}
	return ops
}

// cloneOps copies ops so each tree gets rows of its own.
func cloneOps(ops []Op) []Op {
	out := slices.Clone(ops)
	for i := range out {
		out[i].Rows = slices.Clone(out[i].Rows)
	}
	return out
}

// deltaKey names a delta: its receivers and its bytes.
func deltaKey(d Delta) string {
	owners := make([]string, len(d.Subs))
	for i, s := range d.Subs {
		owners[i] = s.Owner + " " + s.Topic
	}
	return fmt.Sprintf("%v q%d %x", owners, d.QoS, d.Payload)
}

// handed is a payload handed out and what it was then.
type handed struct {
	p    []byte
	then string
}

// rtlTrees makes the two trees the RTL tests compare (one releases every
// Result, the other never does), each with its own copy of rtlSubs.
func rtlTrees(t testing.TB) (rel, fresh *Tree, relSubs, freshSubs []*Sub) {
	t.Helper()
	rel, fresh = New(), New()
	relSubs, freshSubs = rtlSubs(), rtlSubs()
	for i := range relSubs {
		if _, err := rel.Subscribe(relSubs[i]); err != nil {
			t.Fatal(err)
		}
		if _, err := fresh.Subscribe(freshSubs[i]); err != nil {
			t.Fatal(err)
		}
	}
	return rel, fresh, relSubs, freshSubs
}

func TestRTLReleasedMatchesFresh(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 89))
			rel, fresh, relSubs, freshSubs := rtlTrees(t)
			var out []handed
			var lastRel []Delta // a released Result's deltas, as copied before
			for batch := range 300 {
				ops := rtlBatch(r)
				a := rel.Apply(cloneOps(ops))
				b := fresh.Apply(cloneOps(ops))
				if len(a.Deltas) != len(b.Deltas) || a.Rev != b.Rev || a.Changed != b.Changed {
					t.Fatalf("batch %d: %d deltas rev %d, fresh %d rev %d", batch, len(a.Deltas), a.Rev, len(b.Deltas), b.Rev)
				}
				for i := range a.Deltas {
					ka, kb := deltaKey(a.Deltas[i]), deltaKey(b.Deltas[i])
					// The fresh tree's Subs are other pointers with the
					// same names: compare by name and bytes.
					if ka != kb {
						t.Fatalf("batch %d delta %d: released tree %s, fresh %s", batch, i, ka, kb)
					}
					out = append(out, handed{a.Deltas[i].Payload, string(a.Deltas[i].Payload)})
				}
				for i := range a.Applied {
					if (a.Applied[i].Err == nil) != (b.Applied[i].Err == nil) || len(a.Applied[i].Rows) != len(b.Applied[i].Rows) {
						t.Fatalf("batch %d op %d: applied %+v, fresh %+v", batch, i, a.Applied[i], b.Applied[i])
					}
				}
				// The deltas of the Result released last time are still
				// what they were (their Subs are a copy the caller kept).
				for _, d := range lastRel {
					for _, s := range d.Subs {
						if s == nil {
							t.Fatalf("batch %d: a kept delta's Subs were cleared", batch)
						}
					}
				}
				lastRel = lastRel[:0]
				for _, d := range a.Deltas {
					lastRel = append(lastRel, Delta{Payload: d.Payload, QoS: d.QoS, Subs: slices.Clone(d.Subs)})
				}
				rel.Release(&a)
				if r.IntN(5) == 0 { // a Fold between batches (a queued delta taken)
					s := r.IntN(len(relSubs))
					var changes []Change
					seen := map[string]bool{}
					for range 1 + r.IntN(6) {
						topic := rtlTopics[r.IntN(len(rtlTopics))]
						if seen[topic] || !wire.Match(relSubs[s].Filter, topic) {
							continue
						}
						seen[topic] = true
						changes = append(changes, Change{Topic: topic, Value: row(topic, rtlValues[r.IntN(len(rtlValues))], true).Value, QoS: byte(r.IntN(2))})
					}
					pa, qa, oka := rel.Fold(relSubs[s], changes)
					pb, qb, okb := fresh.Fold(freshSubs[s], changes)
					if string(pa) != string(pb) || qa != qb || oka != okb {
						t.Fatalf("batch %d: Fold %s %q, fresh %q", batch, relSubs[s].Topic, pa, pb)
					}
					out = append(out, handed{pa, string(pa)})
				}
				if r.IntN(7) == 0 { // a snapshot between batches
					s := relSubs[r.IntN(len(relSubs))]
					sa := rel.Snapshot(s.Filter, s.Codec, s.Allow)
					sb := fresh.Snapshot(s.Filter, s.Codec, s.Allow)
					if string(sa) != string(sb) {
						t.Fatalf("batch %d: snapshot %s %x, fresh %x", batch, s.Filter, sa, sb)
					}
					out = append(out, handed{sa, string(sa)})
				}
			}
			for i, h := range out {
				if string(h.p) != h.then {
					t.Fatalf("payload %d changed after it was handed out: %x, was %x", i, h.p, h.then)
				}
			}
		})
	}
}

// TestRTLApplyAfterLargeBatch: the topic map emptied key by key leaves no
// topic of one batch to the next: a batch after a large one (and after one
// whose row was repeated) sees only its own rows.
func TestRTLApplyAfterLargeBatch(t *testing.T) {
	tr := New()
	s := &Sub{Owner: "a", Topic: "$sync/d/+", Filter: "d/+"}
	if _, err := tr.Subscribe(s); err != nil {
		t.Fatal(err)
	}
	var big []Row
	for i := range 1000 {
		big = append(big, row(fmt.Sprintf("d/t%d", i), fmt.Sprint(i), true))
	}
	res := tr.Apply([]Op{{Rows: big}})
	tr.Release(&res)
	// The same topic twice in one batch: one row in the delta, the newer.
	res = tr.Apply([]Op{{Rows: []Row{row("d/t5", "50", true)}}, {Rows: []Row{row("d/t5", "51", true), row("d/u", "1", true)}}})
	if len(res.Deltas) != 1 || string(res.Deltas[0].Payload) != `{"t5":51,"u":1}` {
		t.Fatalf("deltas %+v", res.Deltas)
	}
	tr.Release(&res)
	res = tr.Apply([]Op{{Rows: []Row{row("d/t7", "7", true)}}}) // the same value again
	if len(res.Deltas) > 1 || len(res.Deltas) == 1 && string(res.Deltas[0].Payload) != `{"t7":7}` {
		t.Fatalf("deltas %+v", res.Deltas)
	}
	tr.Release(&res)
	res = tr.Apply([]Op{{Rows: []Row{row("d/t5", "52", true)}}})
	if len(res.Deltas) != 1 || string(res.Deltas[0].Payload) != `{"t5":52}` {
		t.Fatalf("deltas %+v", res.Deltas)
	}
}

// FuzzRTLReleased: batches the fuzzer spells (a row a 2 bytes: topic and
// value, the top bit retain; 0xff ends an op, 0xfe a batch) give the same
// deltas on a tree that releases its Results as on one that never does,
// and no payload handed out changes after.
func FuzzRTLReleased(f *testing.F) {
	f.Add([]byte{0, 0, 1, 1, 0xff, 2, 3, 0xfe, 5, 0x84, 0xfe, 3, 5, 4, 6, 0xff, 8, 1})
	f.Add([]byte{1, 2, 2, 3, 0xfe, 1, 5, 0xfe, 2, 0x83, 5, 0x81})
	f.Fuzz(func(t *testing.T, data []byte) {
		rel, fresh, _, _ := rtlTrees(t)
		var out []handed
		var ops []Op
		var rows []Row
		flush := func() {
			if len(rows) > 0 {
				ops = append(ops, Op{Rows: rows})
				rows = nil
			}
		}
		apply := func() {
			flush()
			if len(ops) == 0 {
				return
			}
			a, b := rel.Apply(cloneOps(ops)), fresh.Apply(cloneOps(ops))
			ops = nil
			if len(a.Deltas) != len(b.Deltas) {
				t.Fatalf("%d deltas, fresh %d", len(a.Deltas), len(b.Deltas))
			}
			for i := range a.Deltas {
				if ka, kb := deltaKey(a.Deltas[i]), deltaKey(b.Deltas[i]); ka != kb {
					t.Fatalf("delta %d: released tree %s, fresh %s", i, ka, kb)
				}
				out = append(out, handed{a.Deltas[i].Payload, string(a.Deltas[i].Payload)})
			}
			rel.Release(&a)
		}
		for i := 0; i < len(data); i++ {
			switch c := data[i]; {
			case c == 0xff:
				flush()
			case c == 0xfe:
				apply()
			case i+1 < len(data):
				v := data[i+1]
				rows = append(rows, row(rtlTopics[int(c&0x7f)%len(rtlTopics)], rtlValues[int(v&0x7f)%len(rtlValues)], c&0x80 != 0 || v&0x80 != 0))
				i++
			}
		}
		apply()
		for i, h := range out {
			if string(h.p) != h.then {
				t.Fatalf("payload %d changed after it was handed out: %x, was %x", i, h.p, h.then)
			}
		}
	})
}
