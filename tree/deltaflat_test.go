package tree

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// TestDeltaOnePlus: a delta to a filter of one '+' and no '#' (encodeDelta's
// flat loop) is the object of the shown rows' last levels, sorted, each
// with its value, in every codec, as wire.Encoder writes it member by
// member; rows Allow hides or Local's origin changed are left out, and none
// left is no delta. Random batches, the same oracle for every one.
func TestDeltaOnePlus(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 4))
	values := []string{"1", `"s"`, "text", "", "true", `{"x":1}`, "[1,2]", "-2.5e3", "\x00\xff"}
	for round := range 300 {
		for _, codec := range []wire.Codec{wire.CodecJSON, wire.CodecCBOR, wire.CodecMsgPack} {
			tr := New()
			hidden := fmt.Sprintf("fp/k%d", rng.IntN(6))
			subs := []*Sub{
				{Owner: "a", Topic: "$tree/fp/+", Filter: "fp/+", Codec: codec},
				{Owner: "b", Topic: "$tree/fp/+", Filter: "fp/+", Codec: codec, Allow: func(s string) bool { return s != hidden }},
				{Owner: "c", Topic: "$tree/fp/+", Filter: "fp/+", Codec: codec, Local: "me"},
			}
			for _, s := range subs {
				if _, err := tr.Subscribe(s); err != nil {
					t.Fatal(err)
				}
			}
			var ops []Op
			newest := map[string]Row{}
			origin := map[string]string{}
			for range 1 + rng.IntN(4) {
				op := Op{Origin: []string{"", "me", "you"}[rng.IntN(3)]}
				for range 1 + rng.IntN(4) {
					r := row(fmt.Sprintf("fp/k%d", rng.IntN(6)), values[rng.IntN(len(values))], rng.IntN(2) == 0)
					if slices.ContainsFunc(op.Rows, func(x Row) bool { return x.Topic == r.Topic }) {
						continue
					}
					op.Rows = append(op.Rows, r)
					newest[r.Topic], origin[r.Topic] = r, op.Origin
				}
				ops = append(ops, op)
			}
			want := func(s *Sub) []byte {
				var keys []string
				for k := range newest {
					if (s.Allow == nil || s.Allow(k)) && (s.Local == "" || origin[k] != s.Local) {
						keys = append(keys, k)
					}
				}
				if len(keys) == 0 {
					return nil
				}
				slices.Sort(keys)
				var e wire.Encoder
				e.Reset(codec, nil)
				e.BeginObject()
				for _, k := range keys {
					e.Key(strings.TrimPrefix(k, "fp/"))
					e.Value(newest[k].Value)
				}
				e.EndObject()
				return e.Bytes()
			}
			res := tr.Apply(ops)
			got := map[string][]byte{}
			for _, d := range res.Deltas {
				for _, s := range d.Subs {
					got[s.Owner] = d.Payload
				}
			}
			for _, s := range subs {
				if w := want(s); !bytes.Equal(got[s.Owner], w) {
					t.Fatalf("round %d, %v, %s: got %q, want %q (ops %+v)", round, codec, s.Owner, got[s.Owner], w, ops)
				}
			}
		}
	}
}

// TestDeltaOnePlusMixed (RV8): in one tree, subscriptions of one '+'
// (fp/+, +, a/+/b) in every codec at once, beside others on the same rows
// (fp/#, +/+), rows at one level, two and three, some matching no
// one-'+' filter; each one-'+' subscription's delta is its matching rows'
// '+' levels, sorted, with their newest values, as wire.Encoder writes
// them in its codec; and Fold of the same changes writes the same bytes.
func TestDeltaOnePlusMixed(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 15))
	values := []string{"1", `"s"`, "text", "", "true", `{"x":1}`, "[1,2]", "\x00\xff"}
	topics := []string{"fp/k0", "fp/k1", "fp/\xff", "fp/", "k0", "k1", "\xff", "fp/k1/x", "a/k0/b", "a/k1/b", "a/k1/c", "a//b"}
	codecs := []wire.Codec{wire.CodecJSON, wire.CodecCBOR, wire.CodecMsgPack}
	type want struct {
		filter string
		plus   int // the '+' level
	}
	onePlus := []want{{"fp/+", 1}, {"+", 0}, {"a/+/b", 1}}
	for round := range 200 {
		tr := New()
		var subs []*Sub
		for ci, codec := range codecs {
			for fi, w := range onePlus {
				subs = append(subs, &Sub{Owner: fmt.Sprintf("p%d-%d", fi, ci), Topic: "$tree/" + w.filter, Filter: w.filter, Codec: codec})
			}
			for _, f := range []string{"fp/#", "+/+"} {
				subs = append(subs, &Sub{Owner: "o" + f, Topic: "$tree/" + f, Filter: f, Codec: codec})
			}
		}
		for _, s := range subs {
			if _, err := tr.Subscribe(s); err != nil {
				t.Fatal(err)
			}
		}
		newest := map[string]Row{}
		var ops []Op
		for range 1 + rng.IntN(3) {
			var op Op
			for range 1 + rng.IntN(5) {
				r := row(topics[rng.IntN(len(topics))], values[rng.IntN(len(values))], rng.IntN(2) == 0)
				if slices.ContainsFunc(op.Rows, func(x Row) bool { return x.Topic == r.Topic }) {
					continue
				}
				op.Rows = append(op.Rows, r)
				newest[r.Topic] = r
			}
			ops = append(ops, op)
		}
		res := tr.Apply(ops)
		got := map[string][]byte{}
		for _, d := range res.Deltas {
			for _, s := range d.Subs {
				got[s.Owner] = d.Payload
			}
		}
		for ci, codec := range codecs {
			for fi, w := range onePlus {
				var keys []string
				for k := range newest {
					if wire.Match(w.filter, k) {
						keys = append(keys, k)
					}
				}
				var exp []byte
				var changes []Change
				if len(keys) > 0 {
					slices.Sort(keys)
					var e wire.Encoder
					e.Reset(codec, nil)
					e.BeginObject()
					for _, k := range keys {
						e.Key(strings.Split(k, "/")[w.plus])
						e.Value(newest[k].Value)
						changes = append(changes, Change{Topic: k, Value: newest[k].Value})
					}
					e.EndObject()
					exp = e.Bytes()
				}
				owner := fmt.Sprintf("p%d-%d", fi, ci)
				if !bytes.Equal(got[owner], exp) {
					t.Fatalf("round %d, %s %v: got %q, want %q (ops %+v)", round, w.filter, codec, got[owner], exp, ops)
				}
				if len(changes) == 0 {
					continue
				}
				var s *Sub
				for _, x := range subs {
					if x.Owner == owner {
						s = x
					}
				}
				folded, _, ok := tr.Fold(s, changes)
				if !ok || !bytes.Equal(folded, exp) {
					t.Fatalf("round %d, %s %v: Fold %q %v, want %q", round, w.filter, codec, folded, ok, exp)
				}
			}
		}
	}
}
