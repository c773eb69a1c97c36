package tree

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

func row(topic, payload string, retain bool) Row {
	v := wire.TypePlain([]byte(payload))
	if retain && payload == "" {
		v = wire.Value{}
	}
	return Row{Topic: topic, Value: v, Retain: retain}
}

// deltasFor returns the JSON deltas each subscription got, by Sub.Topic+Owner.
func deltasFor(t *testing.T, res Result) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, d := range res.Deltas {
		for _, s := range d.Subs {
			p := toJSON(t, s.Codec, d.Payload)
			out[s.Owner+" "+s.Topic] = append(out[s.Owner+" "+s.Topic], string(p))
		}
	}
	return out
}

func TestDeltas(t *testing.T) {
	tests := []struct {
		name   string
		before map[string]string
		filter string
		ops    []Op
		want   []string // deltas of one subscription; none if empty
	}{
		{"deletes as null", map[string]string{"light/a/is_on": "1", "light/b/is_on": "1"}, "light/+/is_on",
			[]Op{{Rows: []Row{row("light/a/is_on", "", true), row("light/b/is_on", "0", true)}}},
			[]string{`{"a":null,"b":0}`}},
		{"publishes folded, newest wins", nil, "light/+/is_on",
			[]Op{{Rows: []Row{row("light/a/is_on", "1", true)}}, {Rows: []Row{row("light/a/is_on", "0", true), row("light/c/is_on", "1", true)}}},
			[]string{`{"a":0,"c":1}`}},
		{"untouched gets nothing", nil, "door/+",
			[]Op{{Rows: []Row{row("light/a/is_on", "1", true)}}}, nil},
		{"event is delivered", nil, "light/+",
			[]Op{{Rows: []Row{row("light/a", "ON", false)}}}, []string{`{"a":"ON"}`}},
		{"bare value", map[string]string{"a/b": "1"}, "a/b",
			[]Op{{Rows: []Row{row("a/b", "", true)}}}, []string{`null`}},
		{"own value keeps children", map[string]string{"a/b": "1", "a/b/c": "2"}, "a/#",
			[]Op{{Rows: []Row{row("a/b", "", true)}}}, []string{`{"b":{"/":null}}`}},
		{"own value set with children in store", map[string]string{"a/b/c": "2"}, "a/#",
			[]Op{{Rows: []Row{row("a/b", "5", true)}}}, []string{`{"b":{"/":5}}`}},
		{"own value and child in one delta", nil, "a/#",
			[]Op{{Rows: []Row{row("a/b/c", "2", true), row("a/b", "1", true), row("a", "0", true)}}}, []string{`{"/":0,"b":{"/":1,"c":2}}`}},
		{"object under hash", nil, "z/#",
			[]Op{{Rows: []Row{row("z/lamp", `{"state":"ON"}`, true)}}}, []string{`{"lamp":{"/":{"state":"ON"}}}`}},
		{"plus then hash", nil, "dev/+/#",
			[]Op{{Rows: []Row{row("dev/a", "0", true), row("dev/b/t/u", "1", true)}}}, []string{`{"a":{"/":0},"b":{"t":{"u":1}}}`}},
		{"set expands", map[string]string{"l/a/on": "1", "l/b/on": "1", "l/b/x": "1"}, "l/+/+",
			[]Op{{SetFilter: "l/+/on", SetValue: wire.TypePlain([]byte("0"))}}, []string{`{"a":{"on":0},"b":{"on":0}}`}},
		{"replace deletes", map[string]string{"l/a/on": "1", "l/a/x": "1"}, "l/#",
			[]Op{{Rows: []Row{row("l/a/on", "0", true)}, Replace: "l/a/#"}}, []string{`{"a":{"on":0,"x":null}}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New()
			load(t, tr, tt.before)
			for _, c := range wire.Codecs {
				if _, err := tr.Subscribe(&Sub{Owner: c.String(), Topic: "$tree/" + tt.filter, Filter: tt.filter, Codec: c}); err != nil {
					t.Fatal(err)
				}
			}
			got := deltasFor(t, tr.Apply(tt.ops))
			for _, c := range wire.Codecs {
				g := got[c.String()+" $tree/"+tt.filter]
				if len(g) != len(tt.want) {
					t.Fatalf("%s: got deltas %q, want %q", c, g, tt.want)
				}
				for i := range g {
					if a, b := decodeJSON(t, []byte(g[i])), decodeJSON(t, []byte(tt.want[i])); !reflect.DeepEqual(a, b) {
						t.Errorf("%s: delta %s, want %s", c, g[i], tt.want[i])
					}
				}
			}
		})
	}
}

func TestEventNotInSnapshot(t *testing.T) {
	tr := New()
	tr.Apply([]Op{{Rows: []Row{row("a/b", "1", false)}}})
	if s := string(tr.Snapshot("a/+", wire.CodecJSON, nil)); s != "{}" {
		t.Errorf("snapshot %s after an event, want {}", s)
	}
}

func TestFoldOneMessagePerSubscription(t *testing.T) {
	tr := New()
	tr.Subscribe(&Sub{Owner: "c", Topic: "$tree/dev/#", Filter: "dev/#"})
	ps, _ := NewParser(DefaultLimits())
	var b strings.Builder
	b.WriteString("{")
	for i := range 1000 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"d%d":{"state":%d}`, i, i)
	}
	b.WriteString("}")
	op, err := ps.Op(wire.Publish{Op: wire.PubTree, Topic: "dev"}, []byte(b.String()), true, 1)
	if err != nil || len(op.Rows) != 1000 {
		t.Fatalf("%d rows, %v", len(op.Rows), err)
	}
	res := tr.Apply([]Op{op})
	if len(res.Deltas) != 1 || len(res.Deltas[0].Subs) != 1 {
		t.Fatalf("%d deltas, want 1", len(res.Deltas))
	}
	m := decodeJSON(t, res.Deltas[0].Payload).(map[string]any)
	if len(m) != 1000 || res.Deltas[0].QoS != 1 {
		t.Errorf("delta has %d devices at QoS %d", len(m), res.Deltas[0].QoS)
	}
}

func TestSharedEncoding(t *testing.T) {
	tr := New()
	a := &Sub{Owner: "a", Topic: "$sync/l/+", Filter: "l/+", QoS: 1}
	b := &Sub{Owner: "b", Topic: "$tree/l/+", Filter: "l/+", QoS: 0}
	c := &Sub{Owner: "c", Topic: "$tree.cbor/l/+", Filter: "l/+", Codec: wire.CodecCBOR}
	for _, s := range []*Sub{a, b, c} {
		tr.Subscribe(s)
	}
	res := tr.Apply([]Op{{Rows: []Row{row("l/x", "1", true)}, QoS: 2}})
	if len(res.Deltas) != 2 {
		t.Fatalf("%d deltas, want 2 (one per codec)", len(res.Deltas))
	}
	for _, d := range res.Deltas {
		want := []*Sub{c}
		if d.Subs[0].Codec == wire.CodecJSON {
			want = []*Sub{a, b}
		}
		slices.SortFunc(d.Subs, func(x, y *Sub) int { return strings.Compare(x.Owner, y.Owner) })
		if !reflect.DeepEqual(d.Subs, want) || d.QoS != 2 {
			t.Errorf("delta to %v at QoS %d", d.Subs, d.QoS)
		}
	}
}

func TestReadCheck(t *testing.T) {
	tr := New()
	load(t, tr, map[string]string{"h/pub/t": "1", "h/secret/t": "2", "h/secret": "3"})
	deny := func(topic string) bool { return !strings.HasPrefix(topic, "h/secret") }
	for _, f := range []string{"h/+/t", "h/#", "h/secret/t", "#"} {
		snap := string(tr.Snapshot(f, wire.CodecJSON, deny))
		if strings.Contains(snap, "secret") || strings.Contains(snap, "2") || strings.Contains(snap, "3") {
			t.Errorf("%s: snapshot %s shows a denied row", f, snap)
		}
	}
	s := &Sub{Owner: "r", Topic: "$tree/h/#", Filter: "h/#", Allow: deny}
	tr.Subscribe(s)
	tr.Subscribe(&Sub{Owner: "all", Topic: "$tree/h/#", Filter: "h/#"})
	res := tr.Apply([]Op{{Rows: []Row{row("h/secret/t", "9", true)}}})
	got := deltasFor(t, res)
	if len(got["r $tree/h/#"]) != 0 || len(got["all $tree/h/#"]) != 1 {
		t.Errorf("deltas %v", got)
	}
	res = tr.Apply([]Op{{Rows: []Row{row("h/secret/t", "8", true), row("h/pub/t", "7", true)}}})
	if got := deltasFor(t, res)["r $tree/h/#"]; len(got) != 1 || got[0] != `{"pub":{"t":7}}` {
		t.Errorf("reader got %q", got)
	}
}

func TestWriteCheckRefusesWhole(t *testing.T) {
	tr := New()
	load(t, tr, map[string]string{"l/a": "1", "l/secret": "1"})
	tr.Subscribe(&Sub{Owner: "c", Topic: "$tree/#", Filter: "#"})
	deny := func(topic string) bool { return topic != "l/secret" }
	res := tr.Apply([]Op{
		{SetFilter: "l/+", SetValue: wire.TypePlain([]byte("0")), Allow: deny},
		{Rows: []Row{row("l/a", "2", true), row("l/secret", "2", true)}, Allow: deny},
	})
	for i, a := range res.Applied {
		if a.Err == nil || a.Rows != nil {
			t.Errorf("op %d: %v, rows %v", i, a.Err, a.Rows)
		}
	}
	if len(res.Deltas) != 0 || rows(tr)["l/a"] != "1" {
		t.Errorf("refused ops changed something: %v %v", res.Deltas, rows(tr))
	}
}

func TestUnsubscribe(t *testing.T) {
	tr := New()
	for i, f := range []string{"a/+", "a/#", "a/b", "+/b"} {
		tr.Subscribe(&Sub{Owner: "x", Topic: fmt.Sprint("$tree/", f), Filter: f})
		tr.Subscribe(&Sub{Owner: fmt.Sprint("y", i), Topic: fmt.Sprint("$sync/", f), Filter: f})
	}
	// A second subscribe on the same topic replaces the first.
	tr.Subscribe(&Sub{Owner: "x", Topic: "$tree/a/+", Filter: "a/+", Codec: wire.CodecCBOR})
	if n := tr.Subscriptions(); n != 8 {
		t.Fatalf("%d subscriptions, want 8", n)
	}
	if !tr.Unsubscribe("y0", "$sync/a/+") || tr.Unsubscribe("y0", "$sync/a/+") {
		t.Error("unsubscribe reported wrongly")
	}
	if n := tr.RemoveOwner("x"); n != 4 {
		t.Errorf("removed %d of x's subscriptions, want 4", n)
	}
	got := deltasFor(t, tr.Apply([]Op{{Rows: []Row{row("a/b", "1", true)}}}))
	want := []string{"y1 $sync/a/#", "y2 $sync/a/b", "y3 $sync/+/b"}
	if keys := slices.Sorted(mapsKeys(got)); !reflect.DeepEqual(keys, want) {
		t.Errorf("deltas to %v, want %v", keys, want)
	}
	for i, f := range []string{"a/#", "a/b", "+/b"} {
		tr.Unsubscribe(fmt.Sprint("y", i+1), "$sync/"+f)
	}
	if tr.Subscriptions() != 0 || !tr.index.root.leaf() || len(tr.index.byOwner) != 0 {
		t.Errorf("index not empty: %d subs, %d root kids", tr.Subscriptions(), len(tr.index.root.lits)+len(tr.index.root.kids))
	}
}

func mapsKeys(m map[string][]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestIndexMatchesReference checks the filter trie against refMatch.
func TestIndexMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	x := newIndex()
	groups := map[*group]string{}
	filters := append(slices.Clone(propFilter), "a/b/c", "+/+/+", "$s/+", "/#", "a//+")
	for i, f := range filters {
		s := &Sub{Owner: fmt.Sprint(i), Topic: f, Filter: f}
		x.add(s)
		groups[s.group] = f
	}
	for range 2000 {
		topic := randTopic(r)
		if r.IntN(5) == 0 {
			topic = "$s/" + topic
		}
		var got []string
		for _, g := range x.match(topic, nil) {
			got = append(got, groups[g])
		}
		var want []string
		for _, f := range filters {
			if refMatch(f, topic) {
				want = append(want, f)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("%q matched %v, want %v", topic, got, want)
		}
	}
}

func TestStoreMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var s Store
	model := map[string]bool{}
	for range 500 {
		topic := randTopic(r)
		if r.IntN(6) == 0 {
			topic = "$s/" + topic
		}
		if r.IntN(3) == 0 {
			s.Delete(topic)
			delete(model, topic)
		} else {
			s.Set(topic, wire.Value{Kind: wire.String, Data: topic}, 0)
			model[topic] = true
		}
	}
	if s.Len() != len(model) {
		t.Fatalf("Len %d, want %d", s.Len(), len(model))
	}
	for _, f := range append(slices.Clone(propFilter), "$s/+/#", "/#") {
		var got, want []string
		s.Match(f, func(topic string, v wire.Value, _ byte) bool {
			if v.Data != topic {
				t.Errorf("row %q holds %q", topic, v.Data)
			}
			got = append(got, topic)
			return true
		})
		for topic := range model {
			if refMatch(f, topic) {
				want = append(want, topic)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s matched %v, want %v", f, got, want)
		}
	}
	for topic := range model {
		s.Delete(topic)
	}
	if s.Len() != 0 || s.root.sub != nil || len(s.big) != 0 {
		t.Errorf("store not empty after deleting every row")
	}
}

// TestShapeHidesChildren: a node whose children the reader may not read is
// a leaf to that reader, in snapshots and in deltas: the "/" form would
// tell it that hidden rows exist below.
func TestShapeHidesChildren(t *testing.T) {
	tr := New()
	load(t, tr, map[string]string{"h/a": "1", "h/a/secret": "2", "h/b": "3", "h/b/c": "4"})
	deny := func(topic string) bool { return !strings.Contains(topic, "secret") }
	if got := string(tr.Snapshot("h/#", wire.CodecJSON, deny)); !jsonEq(t, got, `{"a":1,"b":{"/":3,"c":4}}`) {
		t.Errorf("snapshot %s", got)
	}
	if got := string(tr.Snapshot("h/#", wire.CodecJSON, nil)); !jsonEq(t, got, `{"a":{"/":1,"secret":2},"b":{"/":3,"c":4}}`) {
		t.Errorf("snapshot without a read check %s", got)
	}
	tr.Subscribe(&Sub{Owner: "r", Topic: "$tree/h/#", Filter: "h/#", Allow: deny})
	res := tr.Apply([]Op{{Rows: []Row{row("h/a", "5", true), row("h/a/secret", "6", true)}}})
	if got := deltasFor(t, res)["r $tree/h/#"]; len(got) != 1 || !jsonEq(t, got[0], `{"a":5}`) {
		t.Errorf("reader got %q", got)
	}
}

// TestSetSkipsInvisibleRows: $set and .replace leave alone the rows their
// publisher may neither write nor read (refusing would reveal them), and
// refuse rows it may read but not write.
func TestSetSkipsInvisibleRows(t *testing.T) {
	tr := New()
	load(t, tr, map[string]string{"l/a": "1", "l/hidden": "1", "l/ro": "1"})
	write := func(topic string) bool { return topic == "l/a" || topic == "l/new" }
	read := func(topic string) bool { return topic != "l/hidden" }
	res := tr.Apply([]Op{
		{SetFilter: "l/a", SetValue: wire.TypePlain([]byte("2")), Allow: write, Visible: read},
		{SetFilter: "l/+", SetValue: wire.TypePlain([]byte("3")), Allow: write, Visible: read},
		{Rows: []Row{row("l/new", "4", true)}, Replace: "l/#", Allow: write, Visible: read},
	})
	if res.Applied[0].Err != nil || len(res.Applied[0].Rows) != 1 {
		t.Errorf("$set l/a: %v %v", res.Applied[0].Err, res.Applied[0].Rows)
	}
	for _, i := range []int{1, 2} { // l/ro is readable, not writable
		if !errors.Is(res.Applied[i].Err, ErrDenied) || !strings.Contains(res.Applied[i].Err.Error(), "l/ro") {
			t.Errorf("op %d: %v", i, res.Applied[i].Err)
		}
	}
	tr.Apply([]Op{{SetFilter: "l/ro", Allow: func(string) bool { return true }}}) // delete l/ro
	res = tr.Apply([]Op{{Rows: []Row{row("l/new", "4", true)}, Replace: "l/#", Allow: write, Visible: read}})
	if res.Applied[0].Err != nil || !reflect.DeepEqual(rows(tr), map[string]string{"l/hidden": "1", "l/new": "4"}) {
		t.Errorf("replace: %v, rows %v", res.Applied[0].Err, rows(tr))
	}
}

// TestRefs: a Ref reads its row as it is now, and not once it is deleted
// (even if the topic is set again: that is a new row).
func TestRefs(t *testing.T) {
	tr := New()
	load(t, tr, map[string]string{"a/x": "1", "a/y": "2", "a": "0", "b/x": "3", "$s/x": "4"})
	refs := tr.Store().Refs("+/x", nil)
	var got []string
	for _, r := range refs {
		topic, v, _, ok := r.Row()
		got = append(got, topic+"="+v.Data+fmt.Sprint(ok))
	}
	slices.Sort(got)
	if !reflect.DeepEqual(got, []string{"a/x=1true", "b/x=3true"}) {
		t.Fatalf("refs %v", got)
	}
	if n := len(tr.Store().Refs("a/#", nil)); n != 3 {
		t.Errorf("a/# has %d refs, want 3", n)
	}
	tr.Store().Set("a/x", wire.TypePlain([]byte("5")), 1)
	tr.Store().Delete("b/x")
	tr.Store().Set("b/x", wire.TypePlain([]byte("6")), 0)
	for _, r := range refs {
		topic, v, qos, ok := r.Row()
		switch {
		case ok && (topic != "a/x" || v.Data != "5" || qos != 1):
			t.Errorf("ref reads %s=%s qos %d", topic, v.Data, qos)
		case !ok && topic != "":
			t.Errorf("a deleted row reads %q", topic)
		}
	}
}

func jsonEq(t *testing.T, got, want string) bool {
	t.Helper()
	return reflect.DeepEqual(decodeJSON(t, []byte(got)), decodeJSON(t, []byte(want)))
}

// TestReservedRows: no publish may set the broker's rows — $SYS in any
// case, $mote, $hist, Mote's verbs — whether it names them or a tree
// spreads into them.
func TestReservedRows(t *testing.T) {
	ps, err := NewParser(DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ topic, payload string }{
		{"$tree/#", `{"$mote":{"x":1}}`},
		{"$tree/#", `{"$sys":{"x":1}}`},
		{"$tree/#", `{"$SYS":{"x":1}}`},
		{"$tree/#", `{"$hist":{"x":1}}`},
		{"$tree/#", `{"$sync":{"x":1}}`},
		{"$tree/$mote/x", `1`},
		{"$tree/+", `{"$sYs":1}`},
	} {
		p, err := wire.ParsePublish(tc.topic)
		if err == nil {
			_, err = ps.Op(p, []byte(tc.payload), true, 0)
		}
		if err == nil {
			t.Errorf("%s %s was accepted", tc.topic, tc.payload)
		}
	}
	for _, topic := range []string{"$SYS", "$sys/x", "$mote", "$mote/publish", "$hist/a", "$sync/a", "$tree.cbor/a", "$share/g/x", "$SHARE"} {
		if !Reserved(topic) {
			t.Errorf("%s is not reserved", topic)
		}
	}
	for _, topic := range []string{"$mot", "$motel/x", "$SYSTEM/x", "sys/$SYS", "$histogram", "", "SYS", "share/g/x", "sync/a", "/$SYS", " $SYS"} {
		if Reserved(topic) {
			t.Errorf("%s is reserved", topic)
		}
	}
}

// TestSetRowLimit: a $set or .replace touching more rows than the limit
// is refused whole (SPEC §5).
func TestSetRowLimit(t *testing.T) {
	tr := New()
	load(t, tr, map[string]string{"l/a": "1", "l/b": "1", "l/c": "1"})
	res := tr.Apply([]Op{
		{SetFilter: "l/+", SetValue: wire.TypePlain([]byte("2")), MaxRows: 2},
		{Replace: "l/#", MaxRows: 2},
		{SetFilter: "l/+", SetValue: wire.TypePlain([]byte("3")), MaxRows: 3},
	})
	for i, want := range []bool{true, true, false} {
		if refused := errors.Is(res.Applied[i].Err, ErrLimit); refused != want {
			t.Errorf("op %d: %v", i, res.Applied[i].Err)
		}
	}
	if rows(tr)["l/a"] != "3" {
		t.Errorf("rows %v", rows(tr))
	}
}

// TestSetLeavesReservedRows: a client's $set or .replace whose filter
// reaches the broker's rows ($SYS/#, #) leaves them alone (the red team
// rewrote $SYS/broker/version with $set).
func TestSetLeavesReservedRows(t *testing.T) {
	tr := New()
	load(t, tr, map[string]string{"$SYS/broker/version": "mote", "$sys/x": "1", "a": "1"})
	res := tr.Apply([]Op{
		{SetFilter: "+/broker/version", SetValue: wire.TypePlain([]byte("spoof")), Protect: true},
		{SetFilter: "$SYS/#", SetValue: wire.TypePlain([]byte("spoof")), Protect: true},
		{Replace: "$sys/#", Protect: true},
	})
	for i, a := range res.Applied {
		if a.Err != nil || len(a.Rows) != 0 {
			t.Errorf("op %d: %v, rows %v", i, a.Err, a.Rows)
		}
	}
	if got := rows(tr); got["$SYS/broker/version"] != "mote" || got["$sys/x"] != "1" {
		t.Errorf("rows %v", got)
	}
}

// TestSetAllow: a read check set on registered subscriptions applies to
// the next batch, and moves a subscription between its group's shared
// encoding and its own both ways; unsubscribing afterwards finds it.
func TestSetAllow(t *testing.T) {
	tr := New()
	r := &Sub{Owner: "r", Topic: "$tree/h/#", Filter: "h/#"}
	all := &Sub{Owner: "all", Topic: "$tree/h/#", Filter: "h/#"}
	tr.Subscribe(r)
	tr.Subscribe(all)
	deny := func(topic string) bool { return !strings.HasPrefix(topic, "h/secret") }
	batch := func() map[string][]string {
		return deltasFor(t, tr.Apply([]Op{{Rows: []Row{row("h/secret/t", "8", true), row("h/pub/t", "7", true)}}}))
	}
	for i, tc := range []struct {
		allow   func(*Sub) func(string) bool
		r, each string // r's delta, and all's
		shared  int    // deltas in the batch
	}{
		{func(*Sub) func(string) bool { return nil }, `{"pub":{"t":7},"secret":{"t":8}}`, `{"pub":{"t":7},"secret":{"t":8}}`, 1},
		{func(s *Sub) func(string) bool {
			if s.Owner == "r" {
				return deny
			}
			return nil
		}, `{"pub":{"t":7}}`, `{"pub":{"t":7},"secret":{"t":8}}`, 2},
		{func(*Sub) func(string) bool { return deny }, `{"pub":{"t":7}}`, `{"pub":{"t":7}}`, 2},
		{func(*Sub) func(string) bool { return nil }, `{"pub":{"t":7},"secret":{"t":8}}`, `{"pub":{"t":7},"secret":{"t":8}}`, 1},
	} {
		tr.SetAllow(tc.allow)
		got := batch()
		if fmt.Sprint(got["r $tree/h/#"]) != "["+tc.r+"]" || fmt.Sprint(got["all $tree/h/#"]) != "["+tc.each+"]" {
			t.Errorf("step %d: deltas %v", i, got)
		}
		if n := len(tr.Apply([]Op{{Rows: []Row{row("h/x", fmt.Sprint(i), true)}}}).Deltas); n != tc.shared {
			t.Errorf("step %d: %d deltas for one visible row, want %d", i, n, tc.shared)
		}
	}
	tr.SetAllow(func(s *Sub) func(string) bool {
		if s.Owner == "r" {
			return deny
		}
		return nil
	})
	if !tr.Unsubscribe("r", "$tree/h/#") || !tr.Unsubscribe("all", "$tree/h/#") || tr.Subscriptions() != 0 {
		t.Fatal("unsubscribe after SetAllow")
	}
	if d := tr.Apply([]Op{{Rows: []Row{row("h/x", "1", true)}}}).Deltas; len(d) != 0 {
		t.Errorf("deltas after unsubscribing: %v", d)
	}
}

// BenchmarkReserved: the question the door asks of every publish, for a
// plain topic (most are) and for one of the broker's.
func BenchmarkReserved(b *testing.B) {
	for _, topic := range []string{"sensors/room1/temp", "$SYS/broker/clients"} {
		b.Run(topic, func(b *testing.B) {
			for b.Loop() {
				if Reserved(topic) != (topic[0] == '$') {
					b.Fatal(topic)
				}
			}
		})
	}
}
