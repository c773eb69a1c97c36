package broker

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// TestDeltaBoundAdversarial (h-rtf) holds deltaBound to being an upper
// bound where a fold could grow most over its parts: deltas of one row
// each, folded by the hundred, so a node's map header crosses CBOR's 23
// and 255 entries and MessagePack's 15; rows met deepest first, so each
// shallower one turns its node into the object form ({"/": value, …})
// once folded; empty levels ("d//x", "d/"), values that are objects,
// deletions of nodes that have children; each codec, under '#' and '+'.
func TestDeltaBoundAdversarial(t *testing.T) {
	codecs := []wire.Codec{wire.CodecJSON, wire.CodecCBOR, wire.CodecMsgPack}
	shapes := []struct {
		name   string
		filter string
		topics func(i int) string
	}{
		{"siblings", "d/+", func(i int) string { return fmt.Sprintf("d/%d", i) }},
		{"siblings under #", "d/#", func(i int) string { return fmt.Sprintf("d/%d", i) }},
		{"deepest first", "d/#", func(i int) string { return "d" + strings.Repeat("/a", max(0, 40-i)) }},
		{"shallowest first", "d/#", func(i int) string { return "d" + strings.Repeat("/a", i%41) }},
		{"empty levels", "d/#", func(i int) string { return "d" + strings.Repeat("/", i%7) + strings.Repeat("x", i%2) }},
		{"nodes and kids", "#", func(i int) string {
			return fmt.Sprintf("d/%d", i/2) + strings.Repeat("/k", i%2)
		}},
	}
	values := []string{"1", `{"k":{"m":[1,2]}}`, "", `"\u0001"`, "null", "[]", "{}"}
	for _, c := range codecs {
		for _, sh := range shapes {
			for _, n := range []int{15, 16, 23, 24, 255, 256, 300} {
				for _, order := range []string{"one a batch", "random"} {
					tr := tree.New()
					s := &tree.Sub{Owner: "a", Topic: "$sync/" + sh.filter, Filter: sh.filter, Codec: c}
					if _, err := tr.Subscribe(s); err != nil {
						t.Fatal(err)
					}
					r := rand.New(rand.NewPCG(uint64(n), 3))
					bound := 0
					var folded []tree.Change
					for i := range n {
						topic := sh.topics(i)
						if order == "random" {
							topic = sh.topics(r.IntN(n))
						}
						v := values[r.IntN(len(values))]
						val := wire.TypePlain([]byte(v))
						if v == "" {
							val = wire.Value{}
						}
						res := tr.Apply([]tree.Op{{Rows: []tree.Row{{Topic: topic, Value: val, Retain: true}}}})
						for _, d := range res.Deltas {
							bound += deltaBound(d.Payload, d.Rows)
						}
						folded = foldIn(folded, tree.Change{Topic: topic, Value: val})
					}
					payload, _, ok := tr.Fold(s, folded)
					if ok && len(payload) > bound {
						t.Errorf("%v %s %d %s: folded %d bytes, over the bound %d", c, sh.name, n, order, len(payload), bound)
					}
				}
			}
		}
	}
}
