package tree

import (
	"strings"
	"testing"
)

// TestAppendChanges: a Delta's rows are its group's, the newest value of
// each topic with the highest QoS and the newest row's retain flag, those
// a private subscription's read check allows; a Delta of an earlier batch,
// or of one a Fold came after, lists nothing.
func TestAppendChanges(t *testing.T) {
	tr := New()
	shared := &Sub{Owner: "a", Topic: "$sync/l/+", Filter: "l/+"}
	private := &Sub{Owner: "b", Topic: "$sync/l/#", Filter: "l/#", Allow: func(topic string) bool { return !strings.HasSuffix(topic, "/hid") }}
	for _, s := range []*Sub{shared, private} {
		if _, err := tr.Subscribe(s); err != nil {
			t.Fatal(err)
		}
	}
	ops := []Op{
		{Rows: []Row{row("l/a", "1", true), row("l/hid", "2", true), row("m/x", "3", true), row("l/a/b", "4", true)}, QoS: 1},
		{Rows: []Row{row("l/a", "5", false)}, QoS: 0},
	}
	res := tr.Apply(ops)
	want := map[string]string{ // owner → the topics and values of its delta's rows
		"a": "l/a=5 q1 event,l/hid=2 q1 retained",
		"b": "l/a=5 q1 event,l/a/b=4 q1 retained",
	}
	for i := range res.Deltas {
		d := &res.Deltas[i]
		list, ok := tr.AppendChanges(nil, d)
		if !ok {
			t.Fatalf("%s: not listed", d.Subs[0].Owner)
		}
		var got []string
		for _, c := range list {
			kind := "event"
			if c.Retain {
				kind = "retained"
			}
			got = append(got, c.Topic+"="+string(c.Value.Data)+" q"+string('0'+c.QoS)+" "+kind)
		}
		if g := strings.Join(got, ","); g != want[d.Subs[0].Owner] {
			t.Errorf("%s: %s, want %s", d.Subs[0].Owner, g, want[d.Subs[0].Owner])
		}
	}
	if len(res.Deltas) != 2 {
		t.Fatalf("%d deltas, want 2", len(res.Deltas))
	}
	old := res.Deltas[0]
	tr.Fold(shared, []Change{{Topic: "l/a", Value: row("l/a", "1", true).Value}})
	if list, ok := tr.AppendChanges(nil, &old); ok || len(list) != 0 {
		t.Fatalf("after a Fold: %v %v, want nothing", list, ok)
	}
	res = tr.Apply([]Op{{Rows: []Row{row("l/c", "1", true)}}})
	if list, ok := tr.AppendChanges(nil, &old); ok || len(list) != 0 {
		t.Fatalf("after the next Apply: %v %v, want nothing", list, ok)
	}
	if list, ok := tr.AppendChanges(nil, &res.Deltas[0]); !ok || len(list) != 1 {
		t.Fatalf("the next batch's delta: %v %v, want l/c", list, ok)
	}
}
