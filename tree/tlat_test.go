package tree

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// TestApplyChangedScan: a batch's changed rows are found by a scan of
// t.changed up to changedScan of them and by t.byTopic past it (filled
// with them all at the edge, emptied after the batch). Across the edge,
// a row written twice in one batch is one row of the delta, its newest
// value and highest QoS; a batch after one past the edge finds none of
// its rows (a map left full would send the next batch's row to the last
// batch's place).
func TestApplyChangedScan(t *testing.T) {
	for _, n := range []int{1, 2, changedScan - 1, changedScan, changedScan + 1, changedScan + 2, 3 * changedScan} {
		t.Run(fmt.Sprint(n, " rows"), func(t *testing.T) {
			tr := New()
			for _, f := range []string{"c/+", "x/+"} {
				if _, err := tr.Subscribe(&Sub{Owner: "s", Topic: "$tree/" + f, Filter: f}); err != nil {
					t.Fatal(err)
				}
			}
			// want is the delta of rows prefix/0 … prefix/k-1 holding v,
			// its keys sorted as encodeDelta sorts them.
			want := func(k int, v string) string {
				keys := make([]string, k)
				for i := range keys {
					keys[i] = fmt.Sprint(i)
				}
				slices.Sort(keys)
				var b strings.Builder
				b.WriteString("{")
				for i, key := range keys {
					if i > 0 {
						b.WriteString(",")
					}
					fmt.Fprintf(&b, "%q:%s", key, v)
				}
				return b.String() + "}"
			}
			rowsOf := func(prefix string, k int, v string, reverse bool) []Row {
				var rs []Row
				for i := range k {
					rs = append(rs, row(fmt.Sprint(prefix, "/", i), v, false))
				}
				if reverse {
					slices.Reverse(rs)
				}
				return rs
			}
			check := func(res Result, want map[string]string, qos map[string]byte) {
				t.Helper()
				got := map[string]string{}
				for _, d := range res.Deltas {
					for _, s := range d.Subs {
						got[s.Filter] = string(d.Payload)
						if d.QoS != qos[s.Filter] {
							t.Errorf("%s: QoS %d, want %d", s.Filter, d.QoS, qos[s.Filter])
						}
					}
				}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("deltas\n got %v\nwant %v", got, want)
				}
				tr.Release(&res)
			}
			// One batch: every row twice, the second time newer, at QoS 1.
			res := tr.Apply([]Op{{Rows: rowsOf("c", n, "1", false)}, {Rows: rowsOf("c", n, "2", true), QoS: 1}})
			check(res, map[string]string{"c/+": want(n, "2")}, map[string]byte{"c/+": 1})
			// The next: other rows first (past the edge when n is), then
			// one of the last batch's again.
			ops := []Op{{Rows: rowsOf("x", n, "3", false)}, {Rows: []Row{row("c/0", "4", false)}}}
			res = tr.Apply(ops)
			check(res, map[string]string{"c/+": want(1, "4"), "x/+": want(n, "3")}, map[string]byte{"c/+": 0, "x/+": 0})
			if len(tr.byTopic) != 0 {
				t.Errorf("%d topics left in byTopic after the batch", len(tr.byTopic))
			}
		})
	}
}

// TestIndexWildcardKids: a filter node's '+' and '#' children are kept
// in plus and hash as well as in kids (matchFrom reads the fields):
// subscriptions added and removed at random, the fields stay what kids
// says, and every topic matches what the reference says.
func TestIndexWildcardKids(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	x := newIndex()
	filters := append(slices.Clone(propFilter), "a/b/c", "+/+/+", "$s/+", "/#", "a//+", "#", "+", "a/+/#", "+/#")
	live := map[string]*Sub{}
	var check func(n *fnode, path string)
	check = func(n *fnode, path string) {
		if n.kids["+"] != nil || n.kids["#"] != nil {
			t.Fatalf("node %q: + or # in the literal kids' map", path)
		}
		for _, k := range n.lits {
			if k.name == "+" || k.name == "#" {
				t.Fatalf("node %q: %q among the literal kids", path, k.name)
			}
		}
		n.eachKid(func(l string, c *fnode) { check(c, path+"/"+l) })
	}
	for step := range 3000 {
		f := filters[r.IntN(len(filters))]
		owner := fmt.Sprint(r.IntN(3))
		key := owner + " " + f
		if s := live[key]; s != nil && r.IntN(2) == 0 {
			x.remove(owner, f)
			delete(live, key)
		} else if s == nil {
			s := &Sub{Owner: owner, Topic: f, Filter: f}
			x.add(s)
			live[key] = s
		}
		check(&x.root, "")
		if step%10 != 0 {
			continue
		}
		topic := randTopic(r)
		if r.IntN(5) == 0 {
			topic = "$s/" + topic
		}
		var got, want []string
		for _, g := range x.match(topic, nil) {
			got = append(got, g.filter)
		}
		seen := map[string]bool{}
		for _, s := range live {
			if refMatch(s.Filter, topic) && !seen[s.Filter] {
				seen[s.Filter] = true
				want = append(want, s.Filter)
			}
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: %q matched %v, want %v", step, topic, got, want)
		}
	}
	for key, s := range live {
		x.remove(s.Owner, s.Filter)
		delete(live, key)
	}
	check(&x.root, "")
	if !x.root.leaf() {
		t.Errorf("index not empty: %d root lits, %d in the map, plus %p, hash %p", len(x.root.lits), len(x.root.kids), x.root.plus, x.root.hash)
	}
}

// reservedRef is Reserved as it was before its ASCII path: the reference.
func reservedRef(topic string) bool {
	if !strings.HasPrefix(topic, "$") {
		return false
	}
	first, _, _ := strings.Cut(topic, "/")
	return strings.EqualFold(first, "$SYS") || strings.EqualFold(first, "$mote") || strings.EqualFold(first, "$hist") ||
		strings.EqualFold(first, "$share") || wire.IsMote(topic)
}

// TestReservedASCII: Reserved, which compares an ASCII first level byte
// for byte, answers as the reference does: every case of every name,
// names a letter short or long, runes that fold to ASCII letters
// (ſ to s, K to k), the verbs with options and levels after.
func TestReservedASCII(t *testing.T) {
	var topics []string
	for _, name := range []string{"$sys", "$mote", "$hist", "$share", "$sync", "$tree", "$set", "$sy", "$motes", "$shar", "$hista"} {
		letters := name[1:]
		for mask := range 1 << len(letters) {
			b := []byte(letters)
			for i := range b {
				if mask&(1<<i) != 0 {
					b[i] -= 'a' - 'A'
				}
			}
			v := "$" + string(b)
			topics = append(topics, v, v+"/x", v+".cbor/x", v+"x", v+"/")
		}
	}
	topics = append(topics, "$ſys", "$ſYS/x", "$ſhare/g/x", "$mote\u212a", "$hiſt/a", "$ſync/a", "$tree.ſ/a",
		"$", "$/x", "", "sys", "a/$SYS", "$SYSTEM/x", "$sysfoo", "$é", "$SYS\x00")
	for _, topic := range topics {
		if got, want := Reserved(topic), reservedRef(topic); got != want {
			t.Errorf("Reserved(%q) = %v, want %v", topic, got, want)
		}
	}
}
