package tree

import (
	"reflect"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// TestPlanIsApply: Plan lists exactly the rows Apply would write, refuses
// what Apply would refuse, and changes nothing; applying its rows with
// ApplyAt gives the same store as applying the op (a cluster node plans,
// appends the rows to its log, and applies them when they come back).
func TestPlanIsApply(t *testing.T) {
	base := []Op{{Rows: []Row{row("a/1/x", "1", true), row("a/2/x", "2", true), row("a/2/y", "3", true), row("$SYS/n", "4", true)}}}
	deny := func(topic string) bool { return topic != "a/2/x" }
	cases := []struct {
		name string
		op   Op
		err  bool
	}{
		{"tree publish", Op{Rows: []Row{row("a/3/x", "5", true)}}, false},
		{"$set", Op{SetFilter: "a/+/x", SetValue: wire.TypePlain([]byte("9")), Protect: true}, false},
		{"$set to delete", Op{SetFilter: "a/#", Protect: true}, false},
		{".replace", Op{Rows: []Row{row("a/2/x", "7", true)}, Replace: "a/2/#"}, false},
		{"$set over max rows", Op{SetFilter: "a/#", SetValue: wire.TypePlain([]byte("0")), MaxRows: 2}, true},
		{"$set denied", Op{SetFilter: "a/+/x", SetValue: wire.TypePlain([]byte("0")), Allow: deny}, true},
		{"event", Op{Rows: []Row{row("e/1", "1", false)}}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			planned, applied := New(), New()
			planned.Apply(base)
			applied.Apply(base)
			before := dump(planned)
			p := planned.Plan(&c.op)
			if (p.Err != nil) != c.err {
				t.Fatalf("Plan: %v, want error %v", p.Err, c.err)
			}
			if got := dump(planned); !reflect.DeepEqual(got, before) {
				t.Fatalf("Plan changed the store: %v, was %v", got, before)
			}
			res := applied.Apply([]Op{c.op})
			if (res.Applied[0].Err != nil) != c.err {
				t.Fatalf("Apply: %v, want error %v", res.Applied[0].Err, c.err)
			}
			if c.err {
				return
			}
			at := Stamp{Rev: 100, MS: 12345}
			res2 := planned.ApplyAt([]Op{{Rows: p.Rows, QoS: c.op.QoS}}, at)
			if got, want := dump(planned), dump(applied); !reflect.DeepEqual(got, want) {
				t.Fatalf("planned rows applied: %v, the op applied: %v", got, want)
			}
			if res.Changed != res2.Changed {
				t.Fatalf("Changed %v, planned %v", res.Changed, res2.Changed)
			}
			if res2.Changed && (planned.Rev() != 100 || res2.Rev != 100 || res2.MS != 12345) {
				t.Fatalf("ApplyAt: rev %d (result %d, ms %d), want 100 and 12345", planned.Rev(), res2.Rev, res2.MS)
			}
			planned.Store().Rows("#", 99, func(e Entry) bool {
				if e.Stamp != at {
					t.Errorf("row %s stamped %+v, want %+v", e.Topic, e.Stamp, at)
				}
				return true
			})
		})
	}
}

// TestApplyAtCurrentRev: a stamp at the current revision changes rows
// without moving the revision (a cluster node's own $SYS rows).
func TestApplyAtCurrentRev(t *testing.T) {
	tr := New()
	tr.SetRev(7)
	res := tr.ApplyAt([]Op{{Rows: []Row{row("$SYS/x", "1", true)}}}, Stamp{Rev: tr.Rev(), MS: 1})
	if !res.Changed || res.Rev != 7 || tr.Rev() != 7 {
		t.Fatalf("changed %v, rev %d (tree %d), want a change at 7", res.Changed, res.Rev, tr.Rev())
	}
	if v, ok := tr.Store().Get("$SYS/x"); !ok || v.Data != "1" {
		t.Fatalf("row %v %v", v, ok)
	}
}

// dump is every row of a tree with its value.
func dump(tr *Tree) map[string]string {
	out := map[string]string{}
	tr.Store().Rows("#", 0, func(e Entry) bool {
		out[e.Topic] = e.Value.Data
		return true
	})
	return out
}
