package tree

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestNoLocal: a subscription with Local (MQTT 5 No Local) gets no row
// whose newest change in the batch came from its origin. Its group's
// shared encoding serves it while its origin changed none of the group's
// rows; otherwise it gets its own Delta, Payload nil when nothing is left
// (AppendChanges still lists every row, with its origin). Fold leaves out
// the changes whose Origin is the subscription's Local.
func TestNoLocal(t *testing.T) {
	cases := []struct {
		name   string
		ops    []Op
		deltas []string // each Delta as "receivers=payload", in order; payload "nil" for none
		listed string   // what AppendChanges lists for the last Delta: topic:origin, by ','
	}{
		{"another's rows: one shared encoding",
			[]Op{{Origin: "w", Rows: []Row{row("nl/a", "1", true)}}},
			[]string{"c,d=" + `{"a":1}`, "p=" + `{"a":1}`}, "nl/a:w"},
		{"only its own: an empty Delta of its own",
			[]Op{{Origin: "c", Rows: []Row{row("nl/a", "1", true)}}},
			[]string{"d=" + `{"a":1}`, "c=nil", "p=nil"}, "nl/a:c"},
		{"newest change wins, per row",
			[]Op{
				{Origin: "c", Rows: []Row{row("nl/a", "1", true), row("nl/b", "2", true)}},
				{Origin: "w", Rows: []Row{row("nl/a", "3", true), row("nl/c", "4", true)}},
				{Origin: "c", Rows: []Row{row("nl/c", "5", true)}},
			},
			[]string{"d=" + `{"a":3,"b":2,"c":5}`, "c=" + `{"a":3}`, "p=" + `{"a":3}`}, "nl/a:w,nl/b:c,nl/c:c"},
		{"no origin (the broker's): shared",
			[]Op{{Rows: []Row{row("nl/a", "1", true)}}},
			[]string{"c,d=" + `{"a":1}`, "p=" + `{"a":1}`}, "nl/a:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := New()
			for _, s := range []*Sub{
				{Owner: "c", Topic: "$sync/nl/+", Filter: "nl/+", Local: "c"},
				{Owner: "d", Topic: "$sync/nl/+", Filter: "nl/+"},
				{Owner: "p", Topic: "$sync/nl/+", Filter: "nl/+", Local: "c", Allow: func(string) bool { return true }},
			} {
				if _, err := tr.Subscribe(s); err != nil {
					t.Fatal(err)
				}
			}
			res := tr.Apply(tc.ops)
			var got []string
			for _, d := range res.Deltas {
				var who []string
				for _, s := range d.Subs {
					who = append(who, s.Owner)
				}
				p := string(d.Payload)
				if d.Payload == nil {
					p = "nil"
				}
				got = append(got, strings.Join(who, ",")+"="+p)
			}
			if strings.Join(got, " ") != strings.Join(tc.deltas, " ") {
				t.Fatalf("deltas %v, want %v", got, tc.deltas)
			}
			list, ok := tr.AppendChanges(nil, &res.Deltas[len(res.Deltas)-1])
			var listed []string
			for _, c := range list {
				listed = append(listed, c.Topic+":"+c.Origin)
			}
			if !ok || strings.Join(listed, ",") != tc.listed {
				t.Fatalf("listed %v %v, want %s", listed, ok, tc.listed)
			}
			// Fold of those changes for c: what its Delta holds (nothing: false).
			payload, _, ok := tr.Fold(tr.Owned("c")[0], list)
			want := ""
			for _, d := range tc.deltas {
				if w, found := strings.CutPrefix(d, "p="); found && w != "nil" {
					want = w
				}
			}
			if string(payload) != want || ok != (want != "") {
				t.Fatalf("Fold %q %v, want %q", payload, ok, want)
			}
		})
	}
}

// TestNoLocalManyOrigins: a batch whose rows for one group came from more
// publishers than changedBy's list holds (originsMax), with few
// subscriptions with Local (changedBy looks at the rows) and more than
// scanLocal (it looks at the origins listed, then at their set): each
// loses its own row, and only it; the others share the group's delta.
func TestNoLocalManyOrigins(t *testing.T) {
	const n = scanRows + originsMax // rows, each from its own publisher
	// except is the delta of every row r0… but r<k> (-1: all).
	except := func(k int) string {
		var keys []string
		for i := range n {
			if i != k {
				keys = append(keys, fmt.Sprintf(`"r%d":%d`, i, i))
			}
		}
		slices.Sort(keys) // the delta's order: its paths', sorted
		return "{" + strings.Join(keys, ",") + "}"
	}
	cases := []struct {
		local string
		want  string // its delta; "shared" when it shares the group's
	}{
		{"o1", except(1)},                     // in the list
		{fmt.Sprint("o", n-1), except(n - 1)}, // in the set
		{"other", "shared"},
	}
	ops := func(prefix string) []Op {
		var ops []Op
		for i := range n {
			ops = append(ops, Op{Origin: fmt.Sprint(prefix, i), Rows: []Row{row(fmt.Sprint("m/r", i), fmt.Sprint(i), true)}})
		}
		return ops
	}
	few := []Op{{Origin: "o1", Rows: []Row{row("m/r1", "1", true)}}, {Origin: "o2", Rows: []Row{row("m/r2", "2", true)}}}
	for _, extra := range []int{0, scanLocal} { // more subscriptions with Local, that published nothing
		t.Run(fmt.Sprint("extra=", extra), func(t *testing.T) {
			tr := New()
			for i, tc := range cases {
				if _, err := tr.Subscribe(&Sub{Owner: fmt.Sprint("c", i), Topic: "$sync/m/+", Filter: "m/+", Local: tc.local}); err != nil {
					t.Fatal(err)
				}
			}
			for i := range extra {
				if _, err := tr.Subscribe(&Sub{Owner: fmt.Sprint("x", i), Topic: "$sync/m/+", Filter: "m/+", Local: fmt.Sprint("x", i)}); err != nil {
					t.Fatal(err)
				}
			}
			// Many origins, few (the set emptied for the list), many
			// again, many others (nothing left of the first).
			for round, batch := range [][]Op{ops("o"), few, ops("o"), ops("p")} {
				res := tr.Apply(batch)
				got := map[string]string{}
				for _, d := range res.Deltas {
					for _, s := range d.Subs {
						if len(d.Subs) > 1 || s.Local == "other" {
							got[s.Local] = "shared"
						} else {
							got[s.Local] = string(d.Payload)
						}
					}
				}
				for _, tc := range cases {
					want := tc.want
					switch round {
					case 1:
						want = map[string]string{"o1": `{"r2":2}`}[tc.local]
						if want == "" {
							want = "shared"
						}
					case 3:
						want = "shared"
					}
					if got[tc.local] != want {
						t.Errorf("round %d, Local %s: %s, want %s", round, tc.local, got[tc.local], want)
					}
				}
				for i := range extra {
					if got[fmt.Sprint("x", i)] != "shared" {
						t.Errorf("round %d, Local x%d: %s, want the shared delta", round, i, got[fmt.Sprint("x", i)])
					}
				}
				tr.Release(&res)
			}
		})
	}
}
