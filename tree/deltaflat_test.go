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
