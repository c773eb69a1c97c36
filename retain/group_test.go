package retain

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mote-mqtt/mote/wire"
)

// loadAll is every row of s, sorted by topic; it fails the test if Load
// hands out a topic twice.
func loadAll(t *testing.T, s *Store) []Row {
	t.Helper()
	var rows []Row
	if err := s.Load(func(r Row) error { rows = append(rows, r); return nil }); err != nil {
		t.Fatal(err)
	}
	slices.SortStableFunc(rows, func(a, b Row) int { return strings.Compare(a.Topic, b.Topic) })
	for i := 1; i < len(rows); i++ {
		if rows[i-1].Topic == rows[i].Topic {
			t.Fatalf("Load handed out %q twice", rows[i].Topic)
		}
	}
	return rows
}

// sameRows fails the test unless got (in topic order) is model's rows.
func sameRows(t *testing.T, what string, got []Row, model map[string]Row) {
	t.Helper()
	want := make([]Row, 0, len(model))
	for _, r := range model {
		want = append(want, r)
	}
	slices.SortFunc(want, func(a, b Row) int { return strings.Compare(a.Topic, b.Topic) })
	if len(got) != len(want) {
		t.Fatalf("%s: %d rows, want %d", what, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: row %d is %+v, want %+v", what, i, short(got[i]), short(want[i]))
		}
	}
}

// short is r with its payload cut, for messages.
func short(r Row) Row {
	if len(r.Value.Data) > 40 {
		r.Value.Data = r.Value.Data[:40] + fmt.Sprintf("…(%d bytes)", len(r.Value.Data))
	}
	if len(r.Topic) > 60 {
		r.Topic = r.Topic[:60] + fmt.Sprintf("…(%d bytes)", len(r.Topic))
	}
	return r
}

// layout is what the rows bucket holds, parent by parent: its group (the
// rows it holds and its value's bytes), its flag, its single rows.
type layout map[string]*parentKeys

type parentKeys struct {
	group          bool
	groupRows      int
	groupBytes     int
	flag           bool
	singles        int
	nestedBuckets  int
	unknownOwnKeys int
}

func layoutOf(t *testing.T, s *Store) layout {
	t.Helper()
	l := layout{}
	get := func(p string) *parentKeys {
		if l[p] == nil {
			l[p] = &parentKeys{}
		}
		return l[p]
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRows).ForEach(func(k, v []byte) error {
			parent, group, own := ownKey(k)
			switch {
			case v == nil:
				get(string(k[:parentLen(string(k))])).nestedBuckets++
			case own && group:
				rows, err := decodeGroup(parent, v)
				if err != nil {
					return err
				}
				p := get(string(parent))
				p.group, p.groupRows, p.groupBytes = true, len(rows), len(v)
			case own && bytes.Equal(k, flagKey(nil, string(parent))):
				get(string(parent)).flag = true
			case own:
				get(string(parent)).unknownOwnKeys++
			default:
				get(string(k[:parentLen(string(k))])).singles++
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// checkLayout fails the test unless every parent keeps the invariant: a
// parent with rows has exactly one of its group and flag keys, a group is
// within the cap and not empty, single rows come with their flag; and a
// parent once single (in wasSingle) stays single while it has a key.
func checkLayout(t *testing.T, s *Store, wasSingle map[string]bool) {
	t.Helper()
	l := layoutOf(t, s)
	for p, k := range l {
		switch {
		case k.group && k.flag:
			t.Fatalf("parent %q has both a group and a flag", p)
		case k.group && (k.groupRows == 0 || k.groupRows > groupMaxRows || k.groupBytes > groupMaxBytes):
			t.Fatalf("parent %q: a group of %d rows, %d bytes", p, k.groupRows, k.groupBytes)
		case k.singles > 0 && !k.flag:
			t.Fatalf("parent %q: %d single rows without a flag", p, k.singles)
		case k.unknownOwnKeys > 0:
			t.Fatalf("parent %q: %d keys of the store's that are neither group nor flag", p, k.unknownOwnKeys)
		case wasSingle[p] && k.group:
			t.Fatalf("parent %q was single and is grouped again", p)
		}
		if k.flag {
			wasSingle[p] = true
		}
	}
	for p := range wasSingle {
		if l[p] == nil { // no key left: new again (review h-rv10 RV10-7)
			delete(wasSingle, p)
		}
	}
}

// modelTopics are the topics TestGroupsAgainstModel writes: parents
// that are prefixes of others ("a/" and "a/b/", "a//", ""), one-byte
// topics, topics of MaxTopic bytes (one under a parent almost as long),
// a parent of 100 rows (past the cap), the ones the store refuses (empty,
// too long, a 0 byte).
func modelTopics() []string {
	ts := []string{"x", "/x", "/", "a", "a/", "a//b", "a/b", "a/b/", "a/b/c", "a/b/c/d", "a/bc", "ab/c", "b",
		"é/ü", "日本/語",
		strings.Repeat("l", MaxTopic), strings.Repeat("m/", MaxTopic/2-1) + "zz", strings.Repeat("m/", MaxTopic/2-1) + "y",
		"", strings.Repeat("t", MaxTopic+1), "n/\x00g", "n/\x00s", "\x00"}
	for i := range 100 {
		ts = append(ts, fmt.Sprintf("g/%02d", i))
	}
	for i := range 8 {
		ts = append(ts, fmt.Sprintf("big/%d", i), fmt.Sprintf("dev/d%d/state", i))
	}
	return ts
}

// TestGroupsAgainstModel: random commits (sets, updates, deletions, a
// parent growing past the cap, payloads from empty to 70 KB, refused
// topics and values) then Load, and Load after reopening, give exactly
// the rows of a model, in topic order; the rows bucket keeps the
// invariant of groups and flags after every commit; Commit refuses
// exactly what it cannot store.
func TestGroupsAgainstModel(t *testing.T) {
	topics := modelTopics()
	kinds := []wire.Kind{wire.String, wire.Bytes, wire.JSON, wire.Object}
	for seed := uint64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 77))
			dir := t.TempDir()
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { s.Close() }()
			model, wasSingle := map[string]Row{}, map[string]bool{}
			rev := uint64(0)
			for commit := range 160 {
				rev++
				n := 1 + rnd.IntN(40)
				if commit%20 == 0 {
					n = len(topics) // every topic at once: "g/" past the cap in one commit
				}
				var cs []Change
				for _, i := range rnd.Perm(len(topics))[:n] {
					tp := topics[i]
					c := Change{Topic: tp, Rev: rev, MS: int64(rnd.IntN(1 << 40))}
					if rnd.IntN(10) < 3 && commit > 0 {
						cs = append(cs, c) // a deletion
						continue
					}
					size := rnd.IntN(20)
					switch r := rnd.IntN(40); {
					case strings.HasPrefix(tp, "big/") && r < 20, r == 0:
						size = 1000 + rnd.IntN(3000)
					case r == 1 && commit%16 == 0:
						size = 70_000
					}
					c.Value = wire.Value{Kind: kinds[rnd.IntN(len(kinds))], Data: strings.Repeat(string(rune('a'+rnd.IntN(26))), size)}
					c.QoS = byte(rnd.IntN(3))
					if rnd.IntN(50) == 0 {
						c.QoS = 3 // refused
					}
					cs = append(cs, c)
				}
				rej, err := s.Commit(Batch{Changes: cs, Rev: rev})
				if err != nil {
					t.Fatalf("commit %d: %v", commit, err)
				}
				refused := map[string]bool{}
				for _, r := range rej {
					refused[r.Topic] = true
					if !errors.Is(r.Err, ErrUnstorable) {
						t.Fatalf("commit %d: %q refused with %v", commit, r.Topic, r.Err)
					}
				}
				for _, c := range cs {
					want := c.Value.Kind != wire.None && (topicError(c.Topic) != nil || c.QoS > 2)
					if refused[c.Topic] != want {
						t.Fatalf("commit %d: %q refused %v, want %v", commit, short(Row{Topic: c.Topic}).Topic, refused[c.Topic], want)
					}
					if c.Value.Kind == wire.None || want {
						delete(model, c.Topic)
						continue
					}
					model[c.Topic] = Row{Topic: c.Topic, Value: c.Value, QoS: c.QoS, Rev: c.Rev, MS: c.MS}
				}
				sameRows(t, fmt.Sprintf("commit %d", commit), loadAll(t, s), model)
				checkLayout(t, s, wasSingle)
				if commit%25 == 24 {
					if err := s.Close(); err != nil {
						t.Fatal(err)
					}
					if s, err = Open(dir); err != nil {
						t.Fatal(err)
					}
					sameRows(t, fmt.Sprintf("reopened after commit %d", commit), loadAll(t, s), model)
				}
			}
			if !wasSingle["g/"] || !wasSingle["big/"] {
				t.Errorf("parents turned single: %v; want g/ and big/ among them", wasSingle)
			}
			st, err := s.Stats()
			if err != nil || st.Rows != len(model) {
				t.Errorf("Stats: %d rows, %v; want %d", st.Rows, err, len(model))
			}
		})
	}
}

// TestGroupLayout: how rows are stored, case by case: a new parent's
// rows fit and are grouped; past 64 rows or 2 KiB of value the parent
// turns single, in the commit that takes it there; deleting some of its
// rows leaves it single (never back); deleting all drops its flag (review
// h-rv10 RV10-7), unless 64 keys of deeper parents follow it, and it can
// be grouped again; a group emptied is gone.
func TestGroupLayout(t *testing.T) {
	set := func(topic, v string) Change { return Change{Topic: topic, Value: val(v), Rev: 1} }
	del := func(topic string) Change { return Change{Topic: topic, Rev: 1} }
	rows := func(parent string, n, size int) []Change {
		cs := make([]Change, n)
		for i := range cs {
			cs[i] = set(fmt.Sprintf("%s%03d", parent, i), strings.Repeat("v", size))
		}
		return cs
	}
	dels := func(cs []Change) []Change {
		var ds []Change
		for _, c := range cs {
			ds = append(ds, del(c.Topic))
		}
		return ds
	}
	deeper := func(n int) []Change { // n parents under p/ (after its rows), a row each: a group key each
		var cs []Change
		for i := range n {
			cs = append(cs, set(fmt.Sprintf("p/x%03d/r", i), "1"))
		}
		return cs
	}
	type want struct{ group, flag bool }
	for _, c := range []struct {
		name    string
		commits [][]Change
		parent  string
		want    want
	}{
		{"a new parent is grouped", [][]Change{rows("p/", 3, 1)}, "p/", want{group: true}},
		{"64 rows fit", [][]Change{rows("p/", 64, 1)}, "p/", want{group: true}},
		{"65 rows do not", [][]Change{rows("p/", 65, 1)}, "p/", want{flag: true}},
		{"the 65th row in a later commit", [][]Change{rows("p/", 64, 1), rows("p/", 65, 1)[64:]}, "p/", want{flag: true}},
		{"past 2 KiB", [][]Change{rows("p/", 2, 1000), rows("p/", 3, 1000)[2:]}, "p/", want{flag: true}},
		{"one row past 2 KiB", [][]Change{{set("p/big", strings.Repeat("v", 2100))}}, "p/", want{flag: true}},
		{"never back", [][]Change{rows("p/", 65, 1), {del("p/000"), del("p/001")}}, "p/", want{flag: true}},
		{"single, all deleted: the flag goes", [][]Change{rows("p/", 65, 1), dels(rows("p/", 65, 1))}, "p/", want{}},
		{"single, emptied in two commits", [][]Change{rows("p/", 65, 1), dels(rows("p/", 60, 1)), dels(rows("p/", 65, 1)[60:])}, "p/", want{}},
		{"single, emptied, then grouped again", [][]Change{rows("p/", 65, 1), dels(rows("p/", 65, 1)), rows("p/", 3, 1)}, "p/", want{group: true}},
		{"single, one row left: the flag stays", [][]Change{append(rows("p/", 65, 1), deeper(100)...), dels(rows("p/", 65, 1)[:64])}, "p/", want{flag: true}},
		{"single, emptied, 63 deeper keys after: the flag goes", [][]Change{append(rows("p/", 65, 1), deeper(63)...), dels(rows("p/", 65, 1))}, "p/", want{}},
		{"single, emptied, 64 deeper keys after: the flag stays", [][]Change{append(rows("p/", 65, 1), deeper(64)...), dels(rows("p/", 65, 1))}, "p/", want{flag: true}},
		{"the flag kept, decided by a later deletion", [][]Change{append(rows("p/", 65, 1), deeper(64)...), dels(rows("p/", 65, 1)), dels(deeper(64)[:1]), {set("p/new", "1")}, {del("p/new")}}, "p/", want{}},
		{"a group emptied is gone", [][]Change{rows("p/", 3, 1), {del("p/000"), del("p/001"), del("p/002")}}, "p/", want{}},
		{"the root parent", [][]Change{{set("x", "1"), set("y", "2")}}, "", want{group: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			model := map[string]Row{}
			for i, cs := range c.commits {
				rev := uint64(i + 1)
				for j := range cs {
					cs[j].Rev = rev
					if cs[j].Value.Kind == wire.None {
						delete(model, cs[j].Topic)
					} else {
						model[cs[j].Topic] = Row{Topic: cs[j].Topic, Value: cs[j].Value, Rev: rev}
					}
				}
				if rej, err := s.Commit(Batch{Changes: cs, Rev: rev}); err != nil || len(rej) > 0 {
					t.Fatalf("commit %d: %v %v", i, rej, err)
				}
			}
			k := layoutOf(t, s)[c.parent]
			if k == nil {
				k = &parentKeys{}
			}
			if got := (want{k.group, k.flag}); got != c.want {
				t.Errorf("parent %q: group %v, flag %v; want %+v", c.parent, got.group, got.flag, c.want)
			}
			own := 0
			for tp := range model {
				if tp[:parentLen(tp)] == c.parent {
					own++
				}
			}
			if k.flag && k.singles != own {
				t.Errorf("single parent: %d keys, want %d rows", k.singles, own)
			}
			sameRows(t, "load", loadAll(t, s), model)
		})
	}
}

// format2File writes a store file of format 2 into dir with bbolt
// directly, as main's code before format 3 wrote it: one key a row
// (flags, revision, time, payload), meta format 2, revision rev, clean.
func format2File(t *testing.T, dir string, rows []Row, rev uint64, format byte) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		buckets := map[string]*bolt.Bucket{}
		for _, name := range []string{"rows", "dead", "hist", "meta"} {
			b, err := tx.CreateBucket([]byte(name))
			if err != nil {
				return err
			}
			buckets[name] = b
		}
		for _, r := range rows {
			v, err := appendRow(nil, Change{Topic: r.Topic, Value: r.Value, QoS: r.QoS, Rev: r.Rev, MS: r.MS}, false)
			if err != nil {
				return err
			}
			if format == 1 {
				v = append([]byte{v[0]}, v[rowHead:]...)
			}
			if err := buckets["rows"].Put([]byte(r.Topic), v); err != nil {
				return err
			}
		}
		m := buckets["meta"]
		if err := m.Put([]byte("format"), []byte{format}); err != nil {
			return err
		}
		if format == 1 {
			return nil
		}
		if err := putUint(m, []byte("rev"), rev); err != nil {
			return err
		}
		return m.Put([]byte("clean"), []byte{1})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// fileFormat is the format byte of the (open) store's file.
func fileFormat(t *testing.T, s *Store) []byte {
	t.Helper()
	var f []byte
	if err := s.db.View(func(tx *bolt.Tx) error { f = slices.Clone(tx.Bucket(bucketMeta).Get(keyFormat)); return nil }); err != nil {
		t.Fatal(err)
	}
	return f
}

// rowKeys is every key of the rows bucket.
func rowKeys(t *testing.T, s *Store) []string {
	t.Helper()
	var keys []string
	if err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRows).ForEach(func(k, _ []byte) error { keys = append(keys, string(k)); return nil })
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestFormat2Stays: a format 2 file (and a format 1 one, migrated to 2 as
// main did) opens as format 2 with the same rows, and stays so (review
// h-rv10 RV10-5, -3, -8: no migration to format 3): opening it writes no
// key; it takes commits (updates, inserts, deletions, a new parent, a
// parent of 100 rows) one key a row, with no group or flag key, and
// reopens format 2 with them. A format it does not know is refused at
// open, naming the file.
func TestFormat2Stays(t *testing.T) {
	old := []Row{
		{Topic: "x", Value: val("1"), QoS: 1, Rev: 3, MS: 30},
		{Topic: "/x", Value: val("2"), Rev: 4, MS: 40},
		{Topic: "a/", Value: val("3"), Rev: 5, MS: 50},
		{Topic: "a//b", Value: wire.Value{Kind: wire.Bytes, Data: "\x00\xff"}, Rev: 6, MS: 60},
		{Topic: "a/b", Value: wire.Value{Kind: wire.JSON, Data: "21.5"}, QoS: 2, Rev: 7, MS: 70},
		{Topic: "a/b/c", Value: wire.Value{Kind: wire.Object, Data: `{"k":1}`}, Rev: 8, MS: 80},
		{Topic: "a/c", Value: val("4"), Rev: 9, MS: 90},
	}
	for _, format := range []byte{2, 1} {
		t.Run(fmt.Sprint("format ", format), func(t *testing.T) {
			dir := t.TempDir()
			format2File(t, dir, old, 9, format)
			model := map[string]Row{}
			for _, r := range old {
				if format == 1 {
					r.Rev, r.MS = 0, 0
				}
				model[r.Topic] = r
			}
			// The keys as one a row: the model's topics, sorted.
			keysOf := func() []string {
				var ks []string
				for tp := range model {
					ks = append(ks, tp)
				}
				slices.Sort(ks)
				return ks
			}
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			if m := s.Meta(); !m.Clean || m.Format != 2 || (format == 2 && m.Rev != 9) {
				t.Errorf("meta %+v", m)
			}
			if f := fileFormat(t, s); !bytes.Equal(f, []byte{2}) {
				t.Errorf("opened: the file is format %v, want 2", f)
			}
			if ks := rowKeys(t, s); !slices.Equal(ks, keysOf()) {
				t.Errorf("opened: keys %q, want the rows' %q", ks, keysOf())
			}
			sameRows(t, "opened", loadAll(t, s), model)
			cs := []Change{
				{Topic: "a/b", Value: val("new"), Rev: 10, MS: 100},
				{Topic: "a/d", Value: val("added"), Rev: 10, MS: 100},
				{Topic: "a/c", Rev: 10},
				{Topic: "x", Rev: 10},
				{Topic: "new/1", Value: val("g1"), Rev: 10, MS: 100},
				{Topic: "new/2", Value: val("g2"), Rev: 10, MS: 100},
			}
			for i := range 100 { // past a group's cap
				cs = append(cs, Change{Topic: fmt.Sprintf("many/%03d", i), Value: val("m"), Rev: 10, MS: 100})
			}
			if rej, err := s.Commit(Batch{Changes: cs, Rev: 10}); err != nil || len(rej) > 0 {
				t.Fatalf("commit: %v %v", rej, err)
			}
			for _, c := range cs {
				if c.Value.Kind == wire.None {
					delete(model, c.Topic)
				} else {
					model[c.Topic] = Row{Topic: c.Topic, Value: c.Value, Rev: c.Rev, MS: c.MS}
				}
			}
			sameRows(t, "after a commit", loadAll(t, s), model)
			if ks := rowKeys(t, s); !slices.Equal(ks, keysOf()) {
				t.Errorf("after a commit: keys %q, want the rows' %q", ks, keysOf())
			}
			var marks []string
			if err := s.Deleted(9, 10, func(tp string, rev uint64) bool { marks = append(marks, tp); return true }); err != nil || fmt.Sprint(marks) != "[a/c x]" {
				t.Errorf("markers %v %v", marks, err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if s, err = Open(dir); err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			sameRows(t, "reopened", loadAll(t, s), model)
			if m := s.Meta(); m.Rev != 10 || m.Format != 2 {
				t.Errorf("reopened: meta %+v, want revision 10, format 2", m)
			}
			if f := fileFormat(t, s); !bytes.Equal(f, []byte{2}) {
				t.Errorf("reopened: the file is format %v, want 2", f)
			}
			if ks := rowKeys(t, s); !slices.Equal(ks, keysOf()) {
				t.Errorf("reopened: keys %q", ks)
			}
		})
	}
	t.Run("a fresh store", func(t *testing.T) {
		s, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if m := s.Meta(); m.Format != Format || !m.Fresh {
			t.Errorf("meta %+v", m)
		}
		if f := fileFormat(t, s); !bytes.Equal(f, []byte{Format}) {
			t.Errorf("the file is format %v", f)
		}
	})
	t.Run("an unknown format", func(t *testing.T) {
		dir := t.TempDir()
		format2File(t, dir, old, 1, 4)
		s, err := Open(dir)
		if err == nil {
			s.Close()
			t.Fatal("opened")
		}
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), FileName) || !strings.Contains(err.Error(), "format [4], this build reads 1, 2 and 3") {
			t.Errorf("open: %v", err)
		}
	})
}

// TestFailedCommitLeavesState: a commit that fails whole (an I/O error
// after its rows are written: groups merged, a parent turned single, a
// group emptied, new groups) leaves the rows of the commit before it,
// in the store and reopened; the same commit then succeeds. A group
// value that does not decode (a damaged file) costs only its parent's
// rows: refused with an error naming the parent, the rest committed,
// the value left as it was.
func TestFailedCommitLeavesState(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	var first []Change
	for i := range 60 {
		first = append(first, Change{Topic: fmt.Sprintf("p/%02d", i), Value: val("1"), Rev: 1})
	}
	first = append(first, Change{Topic: "q/1", Value: val("1"), Rev: 1}, Change{Topic: "r/1", Value: val("1"), Rev: 1})
	if _, err := s.Commit(Batch{Changes: first, Rev: 1}); err != nil {
		t.Fatal(err)
	}
	before := loadAll(t, s)
	layoutBefore := layoutOf(t, s)
	second := []Change{{Topic: "q/1", Rev: 2}, {Topic: "r/1", Value: val("2"), Rev: 2}, {Topic: "s/1", Value: val("2"), Rev: 2}}
	for i := 60; i < 70; i++ { // p/ past the cap: single
		second = append(second, Change{Topic: fmt.Sprintf("p/%02d", i), Value: val("2"), Rev: 2})
	}
	errIO := errors.New("injected I/O error")
	s.failRows = func() error { return errIO }
	if _, err := s.Commit(Batch{Changes: second, Rev: 2}); !errors.Is(err, errIO) {
		t.Fatalf("commit: %v, want the injected error", err)
	}
	s.failRows = nil
	if got := loadAll(t, s); !slices.Equal(got, before) {
		t.Fatalf("after the failed commit: %d rows, want the %d before", len(got), len(before))
	}
	if l := layoutOf(t, s); len(l) != len(layoutBefore) || *l["p/"] != *layoutBefore["p/"] {
		t.Fatalf("the layout changed: p/ %+v, want %+v", *l["p/"], *layoutBefore["p/"])
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	if got := loadAll(t, s); !slices.Equal(got, before) || s.Meta().Rev != 1 {
		t.Fatalf("reopened: %d rows (want %d), revision %d (want 1)", len(got), len(before), s.Meta().Rev)
	}
	if rej, err := s.Commit(Batch{Changes: second, Rev: 2}); err != nil || len(rej) > 0 {
		t.Fatalf("the commit again: %v %v", rej, err)
	}
	if n := len(loadAll(t, s)); n != 70+2 {
		t.Fatalf("%d rows, want 72", n)
	}

	// A damaged group value: its parent's rows are refused, the rest kept.
	damaged := []byte{5, 'a', 'b'} // a leaf length past the end
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketRows).Put(groupKey(nil, "d/"), damaged) }); err != nil {
		t.Fatal(err)
	}
	rej, err := s.Commit(Batch{Changes: []Change{{Topic: "d/1", Value: val("1"), Rev: 3}, {Topic: "d/2", Rev: 3}, {Topic: "e/1", Value: val("1"), Rev: 3}}, Rev: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(rej) != 2 || !errors.Is(rej[0].Err, ErrUnstorable) || !errors.Is(rej[0].Err, errGroupDamaged) || !strings.Contains(rej[0].Err.Error(), `"d/"`) {
		t.Fatalf("refused %+v; want d/1 and d/2, naming the group", rej)
	}
	if topics := storedTopics(t, s); !topics["e/1"] || topics["d/1"] {
		t.Errorf("stored %v", topics)
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketRows).Get(groupKey(nil, "d/")); !bytes.Equal(v, damaged) {
			return fmt.Errorf("the damaged value is now %q", v)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	if err := s.Load(func(Row) error { return nil }); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), `"d/"`) {
		t.Errorf("Load of the damaged file: %v", err)
	}
}

// TestLoadKeyOrder: rows of a group and of the parents under it, some
// grouped and some single, come out of Load each once, in the rows
// bucket's key order: a group's rows together at its group key (review
// h-rv10 RV10-6: Load no longer merges them into topic order).
func TestLoadKeyOrder(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	topics := []string{"a", "a/", "a/b", "a/b/", "a/b/c", "a/b/c/d", "a/b/d", "a/c", "a/c/x", "a/d", "a0", "b", "/", "//", "/a"}
	var cs []Change
	for i := range 70 { // s/ single, with parents under it grouped
		cs = append(cs, Change{Topic: fmt.Sprintf("s/%02d", i), Value: val("1")}, Change{Topic: fmt.Sprintf("s/%02d/x", i), Value: val("1")})
	}
	for _, tp := range topics {
		cs = append(cs, Change{Topic: tp, Value: val(tp)})
	}
	if _, err := s.Commit(Batch{Changes: cs}); err != nil {
		t.Fatal(err)
	}
	var got []string
	if err := s.Load(func(r Row) error { got = append(got, r.Topic); return nil }); err != nil {
		t.Fatal(err)
	}
	// The key order, from the bucket itself.
	var want []string
	err = s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRows).ForEach(func(k, v []byte) error {
			parent, group, own := ownKey(k)
			switch {
			case !own:
				want = append(want, string(k))
			case group:
				rows, err := decodeGroup(parent, v)
				for _, r := range rows {
					want = append(want, r.Topic)
				}
				return err
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Load: %q\nwant the key order %q", got, want)
	}
	if n := len(loadAll(t, s)); n != len(cs) { // each once
		t.Fatalf("%d rows, want %d", n, len(cs))
	}
	if i, j := slices.Index(got, "a/b/c"), slices.Index(got, "a/c"); i < 0 || j < 0 || i < j {
		t.Errorf("a/b/c at %d, a/c at %d: want the group of a/ (a/c) first, at its key", i, j)
	}
}

// FuzzGroupValue: the group value decoder never panics; it refuses what
// is not a group value with an error naming the parent, and what it
// takes encodes back to a value that decodes to the same rows.
func FuzzGroupValue(f *testing.F) {
	good := func(leaves ...string) []byte {
		var es []groupEntry
		for _, l := range leaves {
			v, _ := appendRow(nil, Change{Topic: "p/" + l, Value: val("v" + l), Rev: 1}, false)
			es = append(es, groupEntry{[]byte(l), v})
		}
		return appendGroup(nil, es)
	}
	f.Add([]byte("p/"), good("a", "b", "c"))
	f.Add([]byte(""), good("", "x"))
	f.Add([]byte("p/"), []byte{})
	f.Add([]byte("p/"), []byte{0x80})
	f.Add([]byte("p/"), []byte{5, 'a', 'b'})
	f.Add([]byte("p/"), []byte{1, 'a', 40, 1, 2})
	f.Add([]byte("p/"), []byte{1, 'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte("p/"), append(good("b"), good("a")...))
	f.Fuzz(func(t *testing.T, parent, v []byte) {
		rows, err := decodeGroup(parent, v)
		if err != nil {
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", parent)) {
				t.Fatalf("error does not name the parent %q: %v", parent, err)
			}
			return
		}
		if len(rows) > groupMaxRows {
			t.Fatalf("%d rows", len(rows))
		}
		var es []groupEntry
		for _, r := range rows {
			if !strings.HasPrefix(r.Topic, string(parent)) {
				t.Fatalf("row %q not under %q", r.Topic, parent)
			}
			rv, err := appendRow(nil, Change{Topic: r.Topic, Value: r.Value, QoS: r.QoS, Rev: r.Rev, MS: r.MS}, false)
			if err != nil {
				t.Fatal(err)
			}
			es = append(es, groupEntry{[]byte(r.Topic[len(parent):]), rv})
		}
		again, err := decodeGroup(parent, appendGroup(nil, es))
		if err != nil || !slices.Equal(again, rows) {
			t.Fatalf("re-encoded: %v, %d rows (want %d)", err, len(again), len(rows))
		}
	})
}

// BenchmarkOpenFormat2: opening a format 2 store of 1M rows, each its own
// parent, which stays format 2 (no migration: review h-rv10 RV10-5);
// once per store.
func BenchmarkOpenFormat2(b *testing.B) {
	const n = 1_000_000
	for b.Loop() {
		b.StopTimer()
		dir := b.TempDir()
		db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, &bolt.Options{Timeout: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			rows, err := tx.CreateBucket(bucketRows)
			if err != nil {
				return err
			}
			rows.FillPercent = 1
			for i := range n {
				v, _ := appendRow(nil, Change{Topic: "x", Value: wire.Value{Kind: wire.JSON, Data: "21.5"}, Rev: uint64(i + 1)}, false)
				if err := rows.Put([]byte(fmt.Sprintf("dev/d%07d/state", i)), v); err != nil {
					return err
				}
			}
			meta, err := tx.CreateBucket(bucketMeta)
			if err != nil {
				return err
			}
			return meta.Put(keyFormat, []byte{2})
		})
		if err != nil {
			b.Fatal(err)
		}
		db.Close()
		b.StartTimer()
		s, err := Open(dir)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		s.Close()
		b.StartTimer()
	}
}
