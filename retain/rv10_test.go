package retain

// Hostile review h-rv10 of format 3 (branch h-group): each finding is a
// test named TestRV10_N, with the exact input (docs/redteam-rt.md).

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/mote-mqtt/mote/wire"
)

// heapAfterGC is the live heap after two collections.
func heapAfterGC() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestRV10_1: RV10-1. After a commit of one 24 MiB payload under a new
// parent ("p/big"), and Trim, the store keeps no reference to the
// commit's values: its arena (past keepArena) is left to the GC, as the
// package doc promises. commitParent kept its merged entries
// (s.entries = out[:0]) with their val slices pointing into the arena,
// which pinned all 24 MiB until a later commit happened to overwrite
// that slot of the entries (an idle broker: never).
func TestRV10_1(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const size = 24 << 20
	before := heapAfterGC()
	func() {
		big := strings.Repeat("x", size)
		rej, err := s.Commit(Batch{Changes: []Change{{Topic: "p/big", Value: wire.Value{Kind: wire.String, Data: big}, Rev: 1}}, Rev: 1})
		if err != nil || len(rej) > 0 {
			t.Fatal(rej, err)
		}
	}()
	s.Trim()
	after := heapAfterGC()
	if after > before+size/2 {
		t.Errorf("live heap grew by %d MiB after the commit and Trim; want the 24 MiB payload's arena freed", (after-before)>>20)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range s.entries[:cap(s.entries)] {
		if e.val != nil || e.leaf != nil {
			t.Fatalf("s.entries[%d] still holds a value of %d bytes (leaf %q) after the commit", i, len(e.val), e.leaf)
		}
	}
}

// forge writes key = value into the rows bucket of the (closed) store in
// dir with bbolt directly: a damaged or foreign file.
func forge(t *testing.T, dir string, kv ...[]byte) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		for i := 0; i < len(kv); i += 2 {
			if err := tx.Bucket(bucketRows).Put(kv[i], kv[i+1]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// groupOf is the group value of rows (leaf → payload).
func groupOf(leaves ...string) []byte {
	var es []groupEntry
	for _, l := range leaves {
		v, _ := appendRow(nil, Change{Value: val("forged " + l), Rev: 9}, false)
		es = append(es, groupEntry{[]byte(l), v})
	}
	return appendGroup(nil, es)
}

// TestRV10_2: RV10-2. Load of a damaged file whose rows bucket breaks
// format 3's layout must fail naming the file, not hand out rows out of
// topic order, twice, or under another parent. Inputs: a group key whose
// parent is not a parent (no trailing '/': "a/b\x00g" holding leaf "c",
// which reads as topic "a/bc", a row of parent "a/"), beside the group
// "a/\x00g" that holds "bc" itself.
func TestRV10_2(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(Batch{Changes: []Change{{Topic: "a/bc", Value: val("1"), Rev: 1}, {Topic: "a/d", Value: val("2"), Rev: 1}}, Rev: 1}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	forge(t, dir, []byte("a/b\x00g"), groupOf("c"))
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got []string
	err = s.Load(func(r Row) error { got = append(got, r.Topic); return nil })
	if err == nil || !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), dir) {
		t.Errorf("Load: rows %q, error %v; want an error naming the file", got, err)
	}
}

// TestRV10_2b: RV10-2, the part not fixed. A row key with no flag key of
// its parent, beside the parent's group holding the same topic (a
// foreign or damaged file: "a/\x00g" holds leaf "b", and plain key "a/b"
// holds an older value): Load hands out "a/b" twice, and a deletion of
// "a/b" deletes it from the group only, so the stray key brings the old
// value back at the next Load. Load should refuse a row key whose parent
// has no flag. Fixed (h-group2): it does, and one whose parent is grouped.
func TestRV10_2b(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit(Batch{Changes: []Change{{Topic: "a/b", Value: val("new"), Rev: 2}}, Rev: 2}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	old, _ := appendRow(nil, Change{Topic: "a/b", Value: val("old"), Rev: 1}, false)
	forge(t, dir, []byte("a/b"), old)
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Commit(Batch{Changes: []Change{{Topic: "a/b", Rev: 3}}, Rev: 3}); err != nil {
		t.Fatal(err)
	}
	var got []string
	err = s.Load(func(r Row) error { got = append(got, r.Topic+"="+r.Value.Data); return nil })
	if err == nil {
		t.Errorf("Load after deleting a/b: %q, no error; want an error naming the file (a row key without its parent's flag)", got)
	}
}

// TestRV10_4: RV10-4. A format 2 file (foreign or old) holding a nested
// bucket under the key "n/x", with no row under "n/": migrate2 gave
// flags only to parents of keys holding values, so "n/" came out with
// neither flag nor group, and a commit of "n/x" went into a new group
// "n/\x00g" without meeting the bucket: accepted (its waiter told it is
// stored) though the key is still a bucket and Load refuses the file. On
// main, and as the package doc says ("a key of the file that holds a
// nested bucket takes no value"), it is Rejected (ErrUnstorable wrapping
// ErrIncompatibleValue). h-group's nestBucket test helper adds the
// parent's flag key beside the bucket, which hid this.
func TestRV10_4(t *testing.T) {
	dir := t.TempDir()
	format2File(t, dir, []Row{{Topic: "ok", Value: val("1"), Rev: 1}}, 1, 2)
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.Bucket(bucketRows).CreateBucket([]byte("n/x"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rej, err := s.Commit(Batch{Changes: []Change{{Topic: "n/x", Value: val("v"), Rev: 2}, {Topic: "n/y", Value: val("w"), Rev: 2}}, Rev: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(rej) != 1 || rej[0].Topic != "n/x" || !errors.Is(rej[0].Err, ErrUnstorable) || !errors.Is(rej[0].Err, berrors.ErrIncompatibleValue) {
		t.Errorf("rejected %+v; want n/x alone, ErrUnstorable and ErrIncompatibleValue", rej)
	}
}

// TestRV10_5: RV10-5. Opening a format 2 store migrates it in one
// transaction that puts a flag key beside every parent's rows, so it
// dirties every leaf page of "rows": bbolt holds all of them as nodes,
// and when the commit grows the file past its mapping it copies every
// key and value of them to the heap (node.dereference). Measured
// (TotalAlloc of Open; dev/dNNNNNNN/state rows, one a parent, format 2
// written with bbolt): 1M rows of 10 B, a 129 MB file: 675 MB allocated,
// heap 359 MB, 4.4 s; 100k rows of 8 KB, 800 MB: 1,427 MB allocated, heap
// 1,383 MB, 9.4 s, and the file stays 1,586 MB (bbolt never gives the
// freed pages back). main opens the same file with no allocation to
// speak of. A broker whose store is near its memory cannot start after
// the upgrade (every start retries the migration from the beginning).
// Input here (first): 150,000 rows of 600 B (a 201 MB file: 444 MB
// allocated, heap 59 → 319 MB, the file 413 MB after). Fixed (h-group2):
// a format 2 store is not migrated, it stays format 2; the test wants
// Open to allocate less than the file's size, to write no key into "rows"
// and to leave the format 2.
func TestRV10_5(t *testing.T) {
	const n, size = 150_000, 600
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	payload := strings.Repeat("p", size)
	for start := 0; start < n; start += 10_000 {
		err = db.Update(func(tx *bolt.Tx) error {
			rows, err := tx.CreateBucketIfNotExists(bucketRows)
			if err != nil {
				return err
			}
			for i := start; i < min(n, start+10_000); i++ {
				v, _ := appendRow(nil, Change{Value: wire.Value{Kind: wire.String, Data: payload}, Rev: uint64(i + 1)}, false)
				if err := rows.Put([]byte(fmt.Sprintf("dev/d%07d/state", i)), v); err != nil {
					return err
				}
			}
			meta, err := tx.CreateBucketIfNotExists(bucketMeta)
			if err != nil {
				return err
			}
			return meta.Put(keyFormat, []byte{2})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	fi, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&m1)
	keys, format := len(rowKeys(t, s)), fileFormat(t, s)
	s.Close()
	fi2, _ := os.Stat(filepath.Join(dir, FileName))
	if alloc := int64(m1.TotalAlloc - m0.TotalAlloc); alloc > fi.Size() {
		t.Errorf("opening a format 2 file of %d MB allocated %d MB (heap %d → %d MB), and left a file of %d MB", fi.Size()>>20, alloc>>20, m0.HeapSys>>20, m1.HeapSys>>20, fi2.Size()>>20)
	}
	t.Logf("opening a format 2 file of %d MB allocated %d KB", fi.Size()>>20, (m1.TotalAlloc-m0.TotalAlloc)>>10)
	if keys != n || string(format) != "\x02" {
		t.Errorf("after the open: %d keys in rows (want the %d rows'), format %v (want 2)", keys, n, format)
	}
}

// loadTime is how long Load of s takes (the best of three).
func loadTime(t *testing.T, s *Store) time.Duration {
	t.Helper()
	best := time.Duration(1 << 62)
	for range 3 {
		start := time.Now()
		if err := s.Load(func(Row) error { return nil }); err != nil {
			t.Fatal(err)
		}
		best = min(best, time.Since(start))
	}
	return best
}

// TestRV10_6: RV10-6. Load merges a group's rows with the keys under its
// parent by keeping the group pending, and picks the next row by
// comparing the pending rows' whole topics, at every key. Topics k
// slashes then "z", k = 1…n (each its own parent, every group pending
// until the end, as "/"×k < "/"×j+"z" for all j): n groups pending, and
// each pick compares topics of up to n bytes: n³ bytes compared. Measured
// (one run each, the machine shared): n = 4,000 (8 MB of topics) 0.5–3.7 s,
// 8,000 (32 MB) 18 s; main's Load of the 4,000 rows, 9 ms. Whoever may
// publish retained messages can make the store's Load at a restart take
// as long as they like (n³: 16,000 such rows, 128 MB, ~2.5 min). The test
// wants Load of 3,000 such rows within 20× of 3,000 rows of one level.
// Fixed (h-group2): Load hands rows in key order, with no merge.
func TestRV10_6(t *testing.T) {
	const n = 3000
	var deep, flat []Change
	for k := 1; k <= n; k++ {
		deep = append(deep, Change{Topic: strings.Repeat("/", k) + "z", Value: val("1"), Rev: 1})
		flat = append(flat, Change{Topic: fmt.Sprintf("d%05d/%s", k, strings.Repeat("z", k)), Value: val("1"), Rev: 1})
	}
	var took [2]time.Duration
	for i, cs := range [][]Change{deep, flat} {
		s, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Commit(Batch{Changes: cs, Rev: 1}); err != nil {
			t.Fatal(err)
		}
		took[i] = loadTime(t, s)
		s.Close()
	}
	if took[0] > 20*took[1] {
		t.Errorf("Load of %d rows \"/\"×k+\"z\": %v; of %d rows with as many bytes in one level each: %v", n, took[0], n, took[1])
	}
}

// rv10Topic is a random topic over a small alphabet that makes parents
// prefixes of one another and puts bytes below and above '/' and the
// store's 0 separator next to it: 0x01, '!', '.', '0', 0xff, a lone
// UTF-8 lead byte (invalid UTF-8: the store sees bytes, not runes).
func rv10Topic(rnd *rand.Rand) string {
	alpha := []string{"a", "/", "/", "\x01", "!", ".", "0", "\xff", "\xc3", "b"}
	var b strings.Builder
	for range 1 + rnd.IntN(6) {
		b.WriteString(alpha[rnd.IntN(len(alpha))])
	}
	return b.String()
}

// TestRV10Held: attacks of review h-rv10 that found the store sound,
// kept as tests. Random commits of adversarial topics (rv10Topic: "/",
// "a//", leaves "", parents that are prefixes of others, 0x01 and 0xff
// bytes, invalid UTF-8), sets and deletions, payloads up to 120 bytes
// (groups crossing the cap): Load after every commit and after reopens
// is the model, in topic order, and the layout keeps its invariant. And
// the byte cap's edge: one row of exactly 2,048 bytes of group value is
// grouped, 2,049 is not.
func TestRV10Held(t *testing.T) {
	for seed := uint64(1); seed <= 10; seed++ {
		rnd := rand.New(rand.NewPCG(seed, 10))
		dir := t.TempDir()
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		model, wasSingle := map[string]Row{}, map[string]bool{}
		for commit := range 120 {
			rev := uint64(commit + 1)
			seen := map[string]bool{}
			var cs []Change
			for range 1 + rnd.IntN(60) {
				tp := rv10Topic(rnd)
				if seen[tp] {
					continue
				}
				seen[tp] = true
				c := Change{Topic: tp, Rev: rev, MS: int64(rev)}
				if rnd.IntN(4) > 0 {
					c.Value = wire.Value{Kind: wire.String, Data: strings.Repeat("v", rnd.IntN(120))}
				}
				cs = append(cs, c)
			}
			rej, err := s.Commit(Batch{Changes: cs, Rev: rev})
			if err != nil || len(rej) > 0 {
				t.Fatalf("seed %d commit %d: %v %v", seed, commit, rej, err)
			}
			for _, c := range cs {
				if c.Value.Kind == wire.None {
					delete(model, c.Topic)
				} else {
					model[c.Topic] = Row{Topic: c.Topic, Value: c.Value, Rev: c.Rev, MS: c.MS}
				}
			}
			sameRows(t, fmt.Sprintf("seed %d commit %d", seed, commit), loadAll(t, s), model)
			checkLayout(t, s, wasSingle)
			if commit%30 == 29 {
				s.Close()
				if s, err = Open(dir); err != nil {
					t.Fatal(err)
				}
			}
		}
		s.Close()
	}
	for _, c := range []struct {
		payload int
		grouped bool
	}{{2027, true}, {2028, false}} { // leaf "x": 1+1 + 2 + 17+payload bytes
		s, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Commit(Batch{Changes: []Change{{Topic: "p/x", Value: val(strings.Repeat("v", c.payload)), Rev: 1}}, Rev: 1}); err != nil {
			t.Fatal(err)
		}
		if k := layoutOf(t, s)["p/"]; k.group != c.grouped || (k.group && k.groupBytes != 2048) {
			t.Errorf("payload %d: %+v, want grouped %v", c.payload, *k, c.grouped)
		}
		s.Close()
	}
}

// TestRV10_7: RV10-7. A parent that once held more than a group's worth
// keeps its flag key for ever, rows or none (the package doc says so):
// a workload of unique parents each with one row past 2 KiB, later
// cleared ("jobs/<id>/result" of 3 KB, retained then deleted), leaves one
// key per parent the store never drops: the file and every boot's Load
// walk grow without bound while the store holds no row. On main the
// deletion removed the row's only key. Input: 5,000 parents "jobs/N/",
// each one row "jobs/N/result" of 3,000 bytes, then all deleted; the
// test wants no key left in "rows". Fixed (h-group2): a commit deleting
// rows of a single parent drops its flag when no row is left (dropFlag).
func TestRV10_7(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 5000
	var sets, dels []Change
	for i := range n {
		tp := fmt.Sprintf("jobs/%d/result", i)
		sets = append(sets, Change{Topic: tp, Value: val(strings.Repeat("r", 3000)), Rev: 1})
		dels = append(dels, Change{Topic: tp, Rev: 2})
	}
	for i, b := range []Batch{{Changes: sets, Rev: 1}, {Changes: dels, Rev: 2}} {
		if rej, err := s.Commit(b); err != nil || len(rej) > 0 {
			t.Fatalf("commit %d: %v %v", i, rej, err)
		}
	}
	if rows := loadAll(t, s); len(rows) != 0 {
		t.Fatalf("%d rows left", len(rows))
	}
	keys := 0
	s.db.View(func(tx *bolt.Tx) error { keys = tx.Bucket(bucketRows).Stats().KeyN; return nil })
	if keys != 0 {
		t.Errorf("no row stored, and the rows bucket holds %d keys (one flag a parent once single)", keys)
	}
}

// TestRV10_8: RV10-8. Format 1 stores were written when MaxTopic was
// bbolt's whole key limit (32,768 bytes, dfc4d03); format 2's is 21 bytes
// less. migrate2 puts a flag key of parent+2 bytes: a format 1 row whose
// parent is 32,767 bytes or more ("a"×32,766 + "/x", 32,768 bytes) makes
// that Put fail with ErrKeyTooLarge, the migration fails and the whole
// store is refused at open (main migrated it to format 2 and loaded the
// row). Format 1 lived a few hours of 2026-12-02, so this is a
// development store's only; the test wants it opened, the row loaded.
// Fixed (h-group2): no migration past format 2, so no flag key.
func TestRV10_8(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("a", bolt.MaxKeySize-2) + "/x"
	format2File(t, dir, []Row{{Topic: long, Value: val("1")}, {Topic: "ok", Value: val("2")}}, 0, 1)
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("open of a format 1 store with a %d-byte topic: %v", len(long), err)
	}
	defer s.Close()
	if n := len(loadAll(t, s)); n != 2 {
		t.Errorf("%d rows, want 2", n)
	}
}

// TestRV10HeldMarkers: deletion markers and history of grouped rows
// (review h-rv10, held): deleting a row of a group, and a delete of a row
// of a group that turns single in the same commit, leave markers at
// their revisions; history values of grouped rows are kept and read
// back; a revision goes with every row.
func TestRV10HeldMarkers(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b1 := Batch{Changes: []Change{{Topic: "a/x", Value: val("1"), Rev: 1}, {Topic: "a/y", Value: val("2"), Rev: 1}}, Rev: 1, Epoch: 1}
	b1.History = []Change{{Topic: "a/x", Value: val("1"), Rev: 1, MS: 10}}
	b2 := Batch{Changes: []Change{{Topic: "a/x", Rev: 2}, {Topic: "a/z", Value: val(strings.Repeat("z", 3000)), Rev: 2}}, Rev: 2, Epoch: 1}
	b2.History = []Change{{Topic: "a/x", Rev: 2, MS: 20}}
	b3 := Batch{Changes: []Change{{Topic: "a/y", Rev: 3}}, Rev: 3, Epoch: 1}
	for _, b := range []Batch{b1, b2, b3} {
		if rej, err := s.Commit(b); err != nil || len(rej) > 0 {
			t.Fatal(rej, err)
		}
	}
	var marks []string
	if err := s.Deleted(0, 10, func(tp string, rev uint64) bool { marks = append(marks, fmt.Sprint(tp, rev)); return true }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(marks) != "[a/x2 a/y3]" {
		t.Errorf("markers %v", marks)
	}
	var hist []string
	if err := s.History("a/#", 0, func(tp string, ps []Pair) bool {
		for _, p := range ps {
			hist = append(hist, fmt.Sprint(tp, p.Rev, p.Value.Kind))
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(hist) != "[a/x1 string a/x2 none]" {
		t.Errorf("history %v", hist)
	}
	if rows := loadAll(t, s); len(rows) != 1 || rows[0].Topic != "a/z" || rows[0].Rev != 2 {
		t.Errorf("rows %+v", rows)
	}
}

// TestRV10_9: RV10-9 (h-group 991eb9a). Commit sizes its arena for every
// row twice (its value, then its group's copy), but a row of more than
// groupMaxBytes can never be in a group: a commit of large payloads
// allocated three times their size (main, and h-group before 991eb9a:
// twice, the arena and bbolt's page buffer). Input: one row "p/big" of
// 20 MiB: 60 MiB allocated; the test wants less than 2.5× the payload.
func TestRV10_9(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const size = 20 << 20
	big := strings.Repeat("x", size)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	rej, err := s.Commit(Batch{Changes: []Change{{Topic: "p/big", Value: wire.Value{Kind: wire.String, Data: big}, Rev: 1}}, Rev: 1})
	runtime.ReadMemStats(&m1)
	if err != nil || len(rej) > 0 {
		t.Fatal(rej, err)
	}
	if alloc := m1.TotalAlloc - m0.TotalAlloc; alloc > size*5/2 {
		t.Errorf("a commit of one %d MiB row allocated %d MiB", size>>20, alloc>>20)
	}
}

// TestRV10HeldSplitRun: a topic holding a 0 byte ("a/\x00/x", refused)
// sorts between two rows of parent "a/" ("a/!" and "a/z"), so the commit
// visits "a/" twice; the second visit merges into the group the first
// wrote (review h-rv10, held).
func TestRV10HeldSplitRun(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cs := []Change{{Topic: "a/z", Value: val("2"), Rev: 1}, {Topic: "a/\x00/x", Value: val("x"), Rev: 1}, {Topic: "a/!", Value: val("1"), Rev: 1}}
	if order := sortedOrder(cs); cs[order[1]].Topic != "a/\x00/x" {
		t.Fatalf("the 0-byte topic does not sort between: %v", order)
	}
	rej, err := s.Commit(Batch{Changes: cs, Rev: 1})
	if err != nil || len(rej) != 1 || rej[0].Topic != "a/\x00/x" {
		t.Fatal(rej, err)
	}
	if rows := loadAll(t, s); len(rows) != 2 || rows[0].Topic != "a/!" || rows[1].Topic != "a/z" {
		t.Errorf("rows %+v", rows)
	}
	if k := layoutOf(t, s)["a/"]; !k.group || k.groupRows != 2 {
		t.Errorf("a/: %+v", *k)
	}
}
