package retain

import (
	"fmt"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/mote-mqtt/mote/wire"
)

// TestRowSet: the newest change per topic, listed in the order topics
// first came, across chunk boundaries and after a reset.
func TestRowSet(t *testing.T) {
	for _, c := range []struct {
		name  string
		puts  []string // topic=value
		want  []string // topic=value, in order
		reset bool     // reset, then put again
	}{
		{"empty", nil, nil, false},
		{"one", []string{"a=1"}, []string{"a=1"}, false},
		{"newest wins, first place kept", []string{"a=1", "b=1", "a=2", "c=1", "b=3"}, []string{"a=2", "b=3", "c=1"}, false},
		{"a deletion is a change", []string{"a=1", "a="}, []string{"a="}, false},
		{"after a reset", []string{"x=1", "a=1", "b=2"}, []string{"x=1", "a=1", "b=2"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			var s rowSet
			put := func() {
				for _, p := range c.puts {
					topic, v, _ := strings.Cut(p, "=")
					ch := Change{Topic: topic}
					if v != "" {
						ch.Value = val(v)
					}
					s.put(ch)
				}
			}
			put()
			if c.reset {
				s.reset()
				if s.len() != 0 || s.has("x") {
					t.Fatalf("after reset: %d rows", s.len())
				}
				put()
			}
			var got []string
			s.each(func(ch *Change) { got = append(got, ch.Topic+"="+ch.Value.Data) })
			if !slices.Equal(got, c.want) || s.len() != len(c.want) {
				t.Errorf("got %v (len %d), want %v", got, s.len(), c.want)
			}
			if listed := s.rows(); len(listed) != len(c.want) {
				t.Errorf("rows listed %d", len(listed))
			}
			for _, w := range c.want {
				if topic, _, _ := strings.Cut(w, "="); !s.has(topic) {
					t.Errorf("has(%q) = false", topic)
				}
			}
		})
	}
}

// TestRowSetGrows: thousands of topics, each changed twice, in a set made
// for fewer (it grows several times) and over two resets: every topic
// once, with its newest value.
func TestRowSetGrows(t *testing.T) {
	s := newRowSet(100)
	for round := range 3 {
		const n = 3*512 + 7
		for pass := range 2 {
			for i := range n {
				s.put(Change{Topic: fmt.Sprint("t", i), Value: val(fmt.Sprint(round, pass, i))})
			}
		}
		if s.len() != n {
			t.Fatalf("round %d: %d rows, want %d", round, s.len(), n)
		}
		i := 0
		s.each(func(c *Change) {
			if c.Topic != fmt.Sprint("t", i) || c.Value.Data != fmt.Sprint(round, 1, i) {
				t.Fatalf("round %d: row %d is %s=%s", round, i, c.Topic, c.Value.Data)
			}
			i++
		})
		s.reset()
	}
}

// TestCommitArena: the keys and values of one commit share one
// allocation; rows refused or deleted among them leave the others' bytes
// intact, whatever their sizes.
func TestCommitArena(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := map[string]string{}
	var cs []Change
	for i := range 500 {
		topic := fmt.Sprintf("dev/%d/%s", i, strings.Repeat("k", i%37))
		v := strings.Repeat(fmt.Sprint(i%10), i%300)
		switch i % 50 {
		case 7: // refused: a QoS no row has
			cs = append(cs, Change{Topic: topic, Value: val(v), QoS: 3})
			continue
		case 13: // an empty topic, refused
			cs = append(cs, Change{Value: val(v)})
			continue
		case 21: // a deletion of a row that is not there
			cs = append(cs, Change{Topic: topic})
			continue
		}
		cs = append(cs, Change{Topic: topic, Value: val(v), QoS: byte(i % 3), Rev: uint64(i)})
		want[topic] = v
	}
	rej, err := s.Commit(Batch{Changes: cs, Rev: 500})
	if err != nil {
		t.Fatal(err)
	}
	if len(rej) != 20 {
		t.Errorf("%d rows refused, want 20", len(rej))
	}
	got := rowsOf(t, s)
	if len(got) != len(want) {
		t.Errorf("%d rows stored, want %d", len(got), len(want))
	}
	for topic, v := range want {
		if r, ok := got[topic]; !ok || r.Value.Data != v || r.Value.Kind != wire.String {
			t.Errorf("%s = %q (%v), want %q", topic, r.Value.Data, ok, v)
		}
	}
}

// TestRowSetIndex: puts, overwrites, has and resets against a map, over
// enough topics (120k, in a set made for few) that the index grows many
// times, its probe runs are long, and topics whose 32-bit hashes are
// equal (one or two expected) are told apart by their names.
func TestRowSetIndex(t *testing.T) {
	s := newRowSet(10)
	for round := range 2 {
		want := map[string]uint64{}
		const n = 120_000
		for i := range n {
			topic := fmt.Sprintf("boot/d%05d/r%02d", i/50, i%50)
			s.put(Change{Topic: topic, Rev: uint64(i)})
			want[topic] = uint64(i)
			if i%7 == 0 { // overwrite an older topic
				old := fmt.Sprintf("boot/d%05d/r%02d", i/100, i%50)
				s.put(Change{Topic: old, Rev: uint64(n + i)})
				want[old] = uint64(n + i)
			}
		}
		if s.len() != len(want) {
			t.Fatalf("round %d: %d topics, want %d", round, s.len(), len(want))
		}
		seen := map[string]bool{}
		s.each(func(c *Change) {
			if seen[c.Topic] || want[c.Topic] != c.Rev {
				t.Fatalf("round %d: %s at %d (seen %v), want once at %d", round, c.Topic, c.Rev, seen[c.Topic], want[c.Topic])
			}
			seen[c.Topic] = true
		})
		for _, topic := range []string{"boot/d99999/r00", "", "boot/d00001/r0", "boot/d00001/r000"} {
			if s.has(topic) {
				t.Errorf("round %d: has(%q) true", round, topic)
			}
		}
		for topic := range want {
			if !s.has(topic) {
				t.Fatalf("round %d: has(%q) false", round, topic)
			}
		}
		s.reset()
		if s.len() != 0 || s.has("boot/d00000/r00") {
			t.Fatalf("round %d: after reset %d topics", round, s.len())
		}
	}
}

// TestRowSetIndexBytes: a set made for 100k topics holds them in its
// slice of changes (64 bytes each) and an index of at most 24 bytes a
// topic (a Go map from topic to position took 35).
func TestRowSetIndexBytes(t *testing.T) {
	const n = 100_000
	topics := make([]string, n)
	for i := range topics {
		topics[i] = fmt.Sprintf("boot/d%05d/r%02d", i/50, i%50)
	}
	// TotalAlloc counts the whole process: another test's goroutines
	// still ending (a retainer closing) only add to it, so the fewest of
	// three runs is the set's own (a full run read over 24 once).
	perTopic := math.Inf(1)
	for range 3 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc
		s := newRowSet(n)
		for _, topic := range topics {
			s.put(Change{Topic: topic})
		}
		runtime.ReadMemStats(&ms)
		perTopic = min(perTopic, float64(ms.TotalAlloc-before)/n-float64(unsafe.Sizeof(Change{})))
		runtime.KeepAlive(s)
	}
	if perTopic > 24 {
		t.Errorf("index takes %.1f bytes a topic, want at most 24", perTopic)
	}
}

// TestCommitReuse: commits one after another reuse the last one's arena
// and sort slices when they fit (the values of a commit are bbolt's only
// until its transaction ends), and every row reads back as its newest
// change: rows overwritten with shorter and longer values, deleted,
// refused, after a commit too large to keep its scratch.
func TestCommitReuse(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.keep = 2500 // keepScratch, lowered for the test
	want := map[string]string{}
	rev := uint64(0)
	for _, c := range []struct {
		name        string
		rows, from  int // topics r<from> to r<from+rows-1>
		payload     int // bytes
		deleteEvery int // every n-th row deleted instead (0: none)
		reused      bool
	}{
		{"first", 2000, 0, 100, 0, false},
		{"shorter values over half", 2000, 1000, 40, 0, true},
		{"deletions among them", 1500, 500, 60, 3, true},
		{"longer values: a larger arena", 2400, 0, 200, 0, false},
		{"smaller again", 100, 2300, 10, 0, true},
		{"too large to keep", 3000, 0, 1, 0, false},
		{"after it", 50, 0, 30, 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := unsafe.SliceData(s.arena)
			var cs []Change
			for i := c.from; i < c.from+c.rows; i++ {
				rev++
				topic := fmt.Sprintf("r%07d", i)
				if c.deleteEvery > 0 && i%c.deleteEvery == 0 {
					cs = append(cs, Change{Topic: topic, Rev: rev})
					delete(want, topic)
					continue
				}
				v := strings.Repeat(string(rune('a'+i%26)), c.payload) + fmt.Sprint(rev)
				cs = append(cs, Change{Topic: topic, Value: val(v), Rev: rev})
				want[topic] = v
			}
			// A refused row (QoS 3) among them leaves the others whole.
			cs = append(cs, Change{Topic: "refused", Value: val("x"), QoS: 3, Rev: rev})
			if rej, err := s.Commit(Batch{Changes: cs, Rev: rev}); err != nil || len(rej) != 1 {
				t.Fatalf("commit: %v, %d refused", err, len(rej))
			}
			if got := before != nil && unsafe.SliceData(s.arena) == before; got != c.reused {
				t.Errorf("arena reused %v, want %v", got, c.reused)
			}
			got := rowsOf(t, s)
			if len(got) != len(want) {
				t.Fatalf("%d rows stored, want %d", len(got), len(want))
			}
			for topic, v := range want {
				if r := got[topic]; r.Value.Data != v {
					t.Fatalf("%s = %q, want %q", topic, r.Value.Data, v)
				}
			}
		})
	}
}

// TestCommitArenaBytes: a commit of values larger than keepArena leaves
// its arena to the GC (one 16 MiB retained payload was held for ever in
// the store's scratch, long after the row was deleted); the commits
// around it read back whole.
func TestCommitArenaBytes(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	big := strings.Repeat("x", keepArena)
	for _, c := range []struct {
		name    string
		changes []Change
		want    map[string]string
	}{
		{"small", []Change{{Topic: "small", Value: val("1"), Rev: 1}}, map[string]string{"small": "1"}},
		{"one large value", []Change{{Topic: "big", Value: val(big), Rev: 2}}, map[string]string{"small": "1", "big": big}},
		{"it deleted", []Change{{Topic: "big", Rev: 3}, {Topic: "small", Value: val("2"), Rev: 3}}, map[string]string{"small": "2"}},
	} {
		if _, err := s.Commit(Batch{Changes: c.changes, Rev: c.changes[0].Rev}); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if n := cap(s.arena); n > keepArena {
			t.Errorf("%s: an arena of %d bytes kept, at most %d", c.name, n, keepArena)
		}
		got := rowsOf(t, s)
		if len(got) != len(c.want) {
			t.Errorf("%s: %d rows, want %d", c.name, len(got), len(c.want))
		}
		for topic, v := range c.want {
			if got[topic].Value.Data != v {
				t.Errorf("%s: %s is %d bytes, want %d", c.name, topic, len(got[topic].Value.Data), len(v))
			}
		}
	}
}

// TestStormSpareFits: in a storm whose commits are alike, the set made
// for the changes after a commit of n rows, once it held the next n, is
// a spare that fits the commit after (a set made anew would be made for
// no more than maxHint rows): past maxHint/2 rows a commit, spareFits
// wanted room for 2n, which no set made for maxHint had, and every storm
// commit made a set of 256k rows anew and grew it.
func TestStormSpareFits(t *testing.T) {
	for _, n := range []int{1000, 40_000, maxHint / 2, maxHint/2 + 1, 200_000, 300_000} {
		s := newRowSet(max(10_000, 2*n)) // as Retainer.commit makes it
		for i := range n {
			s.put(Change{Topic: "boot/d" + strconv.Itoa(i)})
		}
		if !spareFits(s.size(), n) {
			t.Errorf("commits of %d rows: a set made for them (size %d) never reused", n, s.size())
		}
	}
}
