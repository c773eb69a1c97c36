package tree

import "testing"

// TestApplyReleasedAllocs: a batch applied after the last Result was
// released (Release) allocates only its delta's payload, once: not the
// Result's lists (Applied, Deltas, each Delta's Subs), a row's keys, the
// keys of the objects a '#' delta opens, nor the payload's growth by
// doubling (issue 15, the $tree round trip; main, with a Release that
// does nothing: 5, 7 and 9 allocations in the three rows). Unreleased,
// each Apply gets lists of its own, as before.
func TestApplyReleasedAllocs(t *testing.T) {
	for _, c := range []struct {
		name    string
		subs    []*Sub
		rows    []Row
		origin  string
		release bool
		want    float64 // allocations an Apply
	}{
		{"one $tree subscriber, one row", []*Sub{{Owner: "a", Topic: "$tree/lat/+", Filter: "lat/+"}},
			[]Row{row("lat/t", "1", false)}, "", true, 1},
		{"two subscribers share a payload", []*Sub{{Owner: "a", Topic: "$sync/lat/+", Filter: "lat/+"}, {Owner: "b", Topic: "$sync/lat/+", Filter: "lat/+"}},
			[]Row{row("lat/t", "1", true), row("lat/u", "2", true)}, "", true, 1},
		{"one with No Local shares it, another client published", []*Sub{{Owner: "a", Topic: "$sync/lat/+", Filter: "lat/+", Local: "a"}, {Owner: "b", Topic: "$sync/lat/+", Filter: "lat/+"}},
			[]Row{row("lat/t", "1", true), row("lat/u", "2", true)}, "w", true, 1},
		{"a private subscriber and '#'", []*Sub{{Owner: "a", Topic: "$sync/d/#", Filter: "d/#", Allow: func(string) bool { return true }}},
			[]Row{row("d/x/y", "1", true), row("d/x/z", "2", true)}, "", true, 1},
		{"not released", []*Sub{{Owner: "a", Topic: "$tree/lat/+", Filter: "lat/+"}},
			[]Row{row("lat/t", "1", false)}, "", false, 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := New()
			for _, s := range c.subs {
				if _, err := tr.Subscribe(s); err != nil {
					t.Fatal(err)
				}
			}
			ops := []Op{{Rows: c.rows, Origin: c.origin}}
			var res Result
			apply := func() {
				res = tr.Apply(ops)
				if len(res.Deltas) != 1 || len(res.Deltas[0].Subs) != len(c.subs) || res.Applied[0].Err != nil {
					t.Fatalf("result %+v", res)
				}
				if c.release {
					tr.Release(&res)
				}
			}
			apply() // warm: the scratch lists
			if got := testing.AllocsPerRun(100, apply); got != c.want {
				t.Errorf("%v allocations an Apply, want %v", got, c.want)
			}
		})
	}
	// What a released Result held is not read again: the next Apply's
	// deltas are its own.
	tr := New()
	a := &Sub{Owner: "a", Topic: "$tree/lat/+", Filter: "lat/+"}
	if _, err := tr.Subscribe(a); err != nil {
		t.Fatal(err)
	}
	first := tr.Apply([]Op{{Rows: []Row{row("lat/t", "1", false)}}})
	kept := first.Deltas[0]
	tr.Release(&first)
	second := tr.Apply([]Op{{Rows: []Row{row("lat/u", "2", false)}}})
	if string(kept.Payload) != `{"t":1}` || string(second.Deltas[0].Payload) != `{"u":2}` || second.Deltas[0].Subs[0] != a {
		t.Fatalf("first %s, second %s", kept.Payload, second.Deltas[0].Payload)
	}
}
