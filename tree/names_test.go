package tree

import (
	"bytes"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/mote-mqtt/mote/wire"
)

// TestNamesMatchesMap drives the child index with random puts and deletes
// (so probe runs wrap and shift), the children kept in a slice as a node
// keeps them (a removal moves the last into the gap), and checks it
// against a map.
func TestNamesMatchesMap(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	seed := maphash.MakeSeed()
	var x names
	var kids []*node
	model := map[string]*node{}
	for step := range 20000 {
		name := fmt.Sprint(r.IntN(300))
		if c := model[name]; c != nil && r.IntN(2) == 0 {
			last := len(kids) - 1
			x.del(seed, kids, int(c.pos))
			if int(c.pos) != last {
				x.move(seed, kids, last, int(c.pos))
				kids[c.pos], kids[last].pos = kids[last], c.pos
			}
			kids = kids[:last]
			delete(model, name)
		} else if c == nil {
			c = &node{text: name, plen: uint16(len(name)), pos: int32(len(kids))}
			kids = append(kids, c)
			x.put(seed, kids, len(kids)-1)
			model[name] = c
		}
		if x.n != len(model) {
			t.Fatalf("step %d: %d entries, want %d", step, x.n, len(model))
		}
		if step%97 == 0 {
			for i := range 300 {
				k := fmt.Sprint(i)
				if got := x.get(seed, kids, k); got != model[k] {
					t.Fatalf("step %d: get(%s) = %v, want %v", step, k, got, model[k])
				}
			}
		}
	}
}

// TestStoreWideNode checks a node with many children through adds, lookups
// and removals that cross the index threshold both ways.
func TestStoreWideNode(t *testing.T) {
	var s Store
	for round := range 3 {
		for i := range 1000 {
			s.Set(fmt.Sprintf("w/%d", i), stringValue("x"), 0)
		}
		for i := range 1000 {
			if _, ok := s.Get(fmt.Sprintf("w/%d", i)); !ok {
				t.Fatalf("round %d: w/%d missing", round, i)
			}
		}
		for i := 999; i >= 0; i -= 2 {
			s.Delete(fmt.Sprintf("w/%d", i))
		}
		for i := range 1000 {
			if _, ok := s.Get(fmt.Sprintf("w/%d", i)); ok != (i%2 == 0) {
				t.Fatalf("round %d: w/%d present=%v", round, i, ok)
			}
		}
		for i := 0; i < 1000; i += 2 {
			s.Delete(fmt.Sprintf("w/%d", i))
		}
		if s.Len() != 0 || len(s.big) != 0 || s.root.sub != nil {
			t.Fatalf("round %d: store not empty", round)
		}
	}
}

// TestStoreGen: Gen moves when a row is added or deleted, not when a
// row's value or QoS changes or nothing changes, and Refs lists the same
// rows while it stands still.
func TestStoreGen(t *testing.T) {
	var s Store
	v := stringValue
	steps := []struct {
		name  string
		do    func()
		moves bool
	}{
		{"add a", func() { s.Set("dev/a/state", v("1"), 0) }, true},
		{"add b", func() { s.Set("dev/b/state", v("1"), 0) }, true},
		{"change a", func() { s.Set("dev/a/state", v("2"), 0) }, false},
		{"a's QoS", func() { s.Set("dev/a/state", v("2"), 1) }, false},
		{"same a", func() { s.Set("dev/a/state", v("2"), 1) }, false},
		{"delete a", func() { s.Delete("dev/a/state") }, true},
		{"delete a again", func() { s.Delete("dev/a/state") }, false},
		{"add a back", func() { s.Set("dev/a/state", v("3"), 0) }, true},
		{"delete by None", func() { s.Set("dev/b/state", wire.Value{}, 0) }, true},
	}
	for _, st := range steps {
		g, before := s.Gen(), len(s.Refs("dev/+/state", nil))
		st.do()
		if moved := s.Gen() != g; moved != st.moves {
			t.Errorf("%s: Gen moved %v, want %v", st.name, moved, st.moves)
		}
		if after := len(s.Refs("dev/+/state", nil)); !st.moves && after != before {
			t.Errorf("%s: Gen stood still but Refs went from %d to %d rows", st.name, before, after)
		}
	}
}

// TestStoreSiblingPuts: rows put one after another under the same parent
// (a tree publish's), with the parent pruned between them, empty levels
// and top-level rows: each lands on its own node, found by Get and Match,
// and deleting them all leaves the store empty.
func TestStoreSiblingPuts(t *testing.T) {
	for _, c := range []struct {
		name string
		ops  []string // "+topic" sets, "-topic" deletes
		want []string // rows left, sorted
	}{
		{"siblings", []string{"+a/b/c", "+a/b/d", "+a/b/e"}, []string{"a/b/c", "a/b/d", "a/b/e"}},
		{"parent pruned between", []string{"+a/b/c", "-a/b/c", "+a/b/d"}, []string{"a/b/d"}},
		{"deeper, then a sibling of the parent", []string{"+a/b/c", "+a/b/c/d", "+a/b/x", "+a/y"}, []string{"a/b/c", "a/b/c/d", "a/b/x", "a/y"}},
		{"empty levels", []string{"+a//b", "+a//", "+a/", "+a"}, []string{"a", "a/", "a//", "a//b"}},
		{"prefix that is not a parent", []string{"+ab/c", "+a/b", "+abc"}, []string{"a/b", "ab/c", "abc"}},
		{"top level", []string{"+x", "+y", "+x/z"}, []string{"x", "x/z", "y"}},
		{"wide parent", []string{"+p/0", "+p/1", "+p/2", "+p/3", "+p/4", "+p/5", "+p/6", "+p/7", "+p/8", "+p/9", "-p/3", "+p/10"},
			[]string{"p/0", "p/1", "p/10", "p/2", "p/4", "p/5", "p/6", "p/7", "p/8", "p/9"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var s Store
			for _, op := range c.ops {
				if op[0] == '+' {
					s.Set(op[1:], wire.Value{Kind: wire.String, Data: op[1:]}, 0)
				} else {
					s.Delete(op[1:])
				}
			}
			var got []string
			s.Match("#", func(topic string, v wire.Value, _ byte) bool {
				if v.Data != topic {
					t.Errorf("row %q holds %q", topic, v.Data)
				}
				got = append(got, topic)
				return true
			})
			slices.Sort(got)
			if !slices.Equal(got, c.want) || s.Len() != len(c.want) {
				t.Errorf("rows %v (Len %d), want %v", got, s.Len(), c.want)
			}
			for _, topic := range c.want {
				if v, ok := s.Get(topic); !ok || v.Data != topic {
					t.Errorf("Get(%q) = %q, %v", topic, v.Data, ok)
				}
				s.Delete(topic)
			}
			if s.Len() != 0 || s.root.sub != nil || len(s.big) != 0 {
				t.Error("store not empty after deleting every row")
			}
		})
	}
}

// TestStoreCopiesTopicAndValue: Set keeps copies of the topic and value
// (one string for both when it makes the row's node), never the caller's
// bytes, which it may reuse; an empty value included, and a row made on
// an existing node, a sibling or a new branch.
func TestStoreCopiesTopicAndValue(t *testing.T) {
	var s Store
	buf := bytes.Repeat([]byte{0}, 64) // on the heap, as a connection's buffer is
	set := func(topic, val string) {
		n := copy(buf, topic)
		copy(buf[n:], val)
		tb, vb := buf[:n:n], buf[n:n+len(val)]
		s.Set(unsafe.String(unsafe.SliceData(tb), len(tb)), wire.Value{Kind: wire.String, Data: unsafe.String(unsafe.SliceData(vb), len(vb))}, 0)
		clear(buf)
	}
	want := map[string]string{}
	for _, r := range [][2]string{
		{"a/b/c", "1"}, {"a/b/d", ""}, {"a/b/e", "long value"}, {"a", ""}, {"a/b", "x"},
		{"z/y", ""}, {"z/y/x", "2"}, {"a/b/c", "3"}, {"a/b/d", "4"},
	} {
		set(r[0], r[1])
		want[r[0]] = r[1]
	}
	check := func() {
		t.Helper()
		got := map[string]string{}
		s.Range(func(topic string, v wire.Value, _ byte) bool {
			got[topic] = v.Data
			return true
		})
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("rows %q, want %q", got, want)
		}
		for tp, v := range want {
			if got, ok := s.Get(tp); !ok || got.Data != v {
				t.Fatalf("Get(%q) = %q %v, want %q", tp, got.Data, ok, v)
			}
		}
	}
	check()
	// Rows whose nodes stay for their children, deleted and set again.
	for _, tp := range []string{"a/b", "a", "z/y"} {
		s.Delete(tp)
		delete(want, tp)
		check()
	}
	set("a/b", "again")
	want["a/b"] = "again"
	check()
}

// TestStoreReservesForSiblings: a tree publish's new siblings make room
// in their parent once, for the run of them, and only in their parent.
func TestStoreReservesForSiblings(t *testing.T) {
	ps, err := NewParser(DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	tr := New()
	apply := func(topic, payload string) {
		t.Helper()
		p, err := wire.ParsePublish(topic)
		if err != nil {
			t.Fatal(err)
		}
		op, err := ps.Op(p, []byte(payload), true, 0)
		if err != nil {
			t.Fatal(err)
		}
		if res := tr.Apply([]Op{op}); res.Applied[0].Err != nil {
			t.Fatal(res.Applied[0].Err)
		}
	}
	s := tr.Store()
	kids := func(topic string) (int, int) {
		n := s.find(topic)
		if n == nil {
			t.Fatalf("no node %q", topic)
		}
		return len(n.kids()), cap(n.kids())
	}
	var b strings.Builder
	b.WriteString(`{"old":1`)
	for i := range 40 {
		fmt.Fprintf(&b, `,"r%02d":%d`, i, i)
	}
	b.WriteString("}")
	apply("$tree/a/b", `{"old":0}`)
	apply("$tree/a/b", b.String())              // 40 new siblings beside one row
	if l, c := kids("a/b"); l != 41 || c > 48 { // 48: the size class of 41 pointers
		t.Errorf("a/b has %d children in room for %d, want 41 in at most 48", l, c)
	}
	if x := s.big[s.find("a/b")]; x == nil || len(x.slots) != 64 {
		t.Errorf("a/b's index %+v, want 64 slots", x)
	}
	apply("$tree/c/d", b.String()) // a new parent
	if l, c := kids("c/d"); l != 41 || c > 48 {
		t.Errorf("c/d has %d children in room for %d, want 41 in at most 48", l, c)
	}
	_, before := kids("c/d")
	apply("$tree/#", `{"x":1,"y":2,"z":3}`) // top level: c/d, the last parent, is not theirs
	if l, c := kids("c/d"); l != 41 || c != before {
		t.Errorf("after top-level rows, c/d has %d children in room for %d, was %d", l, c, before)
	}
	if l, c := len(s.root.kids()), cap(s.root.kids()); l != 5 || c > 8 {
		t.Errorf("the root has %d children in room for %d, want 5 in at most 8", l, c)
	}
	for i := range 40 {
		if v, ok := s.Get(fmt.Sprintf("c/d/r%02d", i)); !ok || v.Data != strconv.Itoa(i) {
			t.Fatalf("c/d/r%02d = %v %v", i, v, ok)
		}
	}
}

// TestStoreParentPinsNoValue: a parent node made by a row's put must not
// keep that row's value alive once the row changes or goes (the parent's
// topic shares the row's one string). 32 parents, each made by a 256 KiB
// row that is then overwritten or deleted beside a small sibling: the
// live heap grows by their small rows, not by 8 MiB of dead values.
func TestStoreParentPinsNoValue(t *testing.T) {
	var s Store
	big := strings.Repeat("v", 256<<10)
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	for i := range 32 {
		p := fmt.Sprintf("p%d/q", i)
		s.Set(p+"/big", wire.Value{Kind: wire.String, Data: big + p}, 0) // a copy of its own
		s.Set(p+"/small", wire.Value{Kind: wire.String, Data: "1"}, 0)
		if i%2 == 0 {
			s.Delete(p + "/big")
		} else {
			s.Set(p+"/big", wire.Value{Kind: wire.String, Data: "2"}, 0)
		}
	}
	after := heap()
	if grew := int64(after) - int64(before); grew > 1<<20 {
		t.Fatalf("the store holds %d rows of a few bytes and %d KiB more heap", s.Len(), grew>>10)
	}
	runtime.KeepAlive(&s)
}
