package retain

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/mote-mqtt/mote/wire"
)

// nestBucket makes the store file in dir hold a nested bucket under key
// in bucket parent, as a foreign or old file may (this package never
// makes one). The store must be closed. A row's key (in "rows", a topic)
// comes with its parent's flag key: the parent is single, its rows one
// key each, and a commit meets the bucket.
func nestBucket(t *testing.T, dir string, parent, key []byte) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		if bytes.Equal(parent, bucketRows) && bytes.IndexByte(key, 0) < 0 {
			if err := tx.Bucket(parent).Put(flagKey(nil, string(key[:parentLen(string(key))])), []byte{}); err != nil {
				return err
			}
		}
		_, err := tx.Bucket(parent).CreateBucket(key)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// storeWithBucket is a store whose bucket parent holds a nested bucket
// under key.
func storeWithBucket(t *testing.T, parent, key []byte) *Store {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	nestBucket(t, dir, parent, key)
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// storedTopics is the topics of the rows stored in s, grouped or not,
// past nested buckets and damaged groups (which Load refuses).
func storedTopics(t *testing.T, s *Store) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRows).ForEach(func(k, v []byte) error {
			parent, group, own := ownKey(k)
			switch {
			case v == nil || (own && !group):
			case own:
				rows, _ := decodeGroup(parent, v)
				for _, r := range rows {
					out[r.Topic] = true
				}
			default:
				out[string(k)] = true
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// keysOf is the keys of bucket that hold values (Load refuses a rows
// bucket holding a nested bucket).
func keysOf(t *testing.T, s *Store, bucket []byte) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			if v != nil {
				out[string(k)] = true
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCommitPastNestedBuckets: a key of the file that holds a nested
// bucket (a foreign or old file's) costs only the change that meets it:
// it is refused, naming why, and the rest of the batch is committed, with
// its revision; so is the next commit. bbolt's Put and Delete fail on
// such a key, and the whole commit failed, every retry again: no row was
// persisted after it.
func TestCommitPastNestedBuckets(t *testing.T) {
	for _, c := range []struct {
		name        string
		parent, key []byte
		change      Change  // the change that meets the bucket
		history     *Change // a history value to go with it
		nestedErr   bool    // refused for the bucket (else for itself)
		historyOnly bool    // only the history value is refused
	}{
		{name: "a row's key", parent: bucketRows, key: []byte("bad"),
			change: Change{Topic: "bad", Value: val("v"), Rev: 2}, nestedErr: true},
		{name: "a group's key", parent: bucketRows, key: groupKey(nil, ""),
			change: Change{Topic: "bad", Value: val("v"), Rev: 2}, nestedErr: true},
		{name: "a flag's key", parent: bucketRows, key: flagKey(nil, ""),
			change: Change{Topic: "bad", Value: val("v"), Rev: 2}, nestedErr: true},
		{name: "a deleted grouped row's key", parent: bucketRows, key: groupKey(nil, ""),
			change: Change{Topic: "bad", Rev: 2}, nestedErr: true},
		{name: "a deleted row's key", parent: bucketRows, key: []byte("bad"),
			change: Change{Topic: "bad", Rev: 2}, nestedErr: true},
		{name: "a refused row's key", parent: bucketRows, key: []byte("bad"),
			change: Change{Topic: "bad", Value: val("v"), QoS: 3, Rev: 2}},
		{name: "a deletion marker's key", parent: bucketDead, key: deadKey(2, "gone"),
			change: Change{Topic: "gone", Rev: 2}, nestedErr: true},
		{name: "a history value's key", parent: bucketHist, key: histKey(1, "h", 2, 1),
			change: Change{Topic: "h", Value: val("v"), Rev: 2}, history: &Change{Topic: "h", Value: val("v"), Rev: 2, Seq: 1},
			nestedErr: true, historyOnly: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := storeWithBucket(t, c.parent, c.key)
			b := Batch{
				Changes: []Change{{Topic: "a/ok", Value: val("1"), Rev: 2}, c.change, {Topic: "z/ok", Value: val("1"), Rev: 2}},
				History: []Change{{Topic: "a/ok", Value: val("1"), Rev: 2, Seq: 1}},
				Rev:     2, Epoch: 1,
			}
			if c.history != nil {
				b.History = append(b.History, *c.history)
			}
			rej, err := s.Commit(b)
			if err != nil {
				t.Fatalf("the commit failed whole: %v", err)
			}
			if len(rej) != 1 || rej[0].Topic != c.change.Topic || !errors.Is(rej[0].Err, ErrUnstorable) ||
				errors.Is(rej[0].Err, berrors.ErrIncompatibleValue) != c.nestedErr || rej[0].History != c.historyOnly {
				t.Fatalf("refused %+v; want %q alone (bucket %v, history %v)", rej, c.change.Topic, c.nestedErr, c.historyOnly)
			}
			if c.nestedErr && !strings.Contains(rej[0].Err.Error(), "nested bucket") {
				t.Errorf("the reason does not say why: %v", rej[0].Err)
			}
			if _, err := s.Commit(Batch{Changes: []Change{{Topic: "m/ok", Value: val("1"), Rev: 3}}, Rev: 3}); err != nil {
				t.Fatalf("the next commit: %v", err)
			}
			rows := storedTopics(t, s)
			for _, tp := range []string{"a/ok", "z/ok", "m/ok"} {
				if !rows[tp] {
					t.Errorf("row %s is not stored", tp)
				}
			}
			if rows[c.change.Topic] != (c.historyOnly && c.change.Value.Kind != wire.None) {
				t.Errorf("row %s stored: %v", c.change.Topic, rows[c.change.Topic])
			}
			if !keysOf(t, s, bucketHist)[string(histKey(1, "a/ok", 2, 1))] {
				t.Error("the history value of a/ok is not stored")
			}
			var rev uint64
			s.db.View(func(tx *bolt.Tx) error { rev = getUint(tx.Bucket(bucketMeta), keyRev); return nil })
			if rev != 3 {
				t.Errorf("store revision %d, want 3", rev)
			}
		})
	}
}

// TestMaintenancePastNestedBuckets: compaction and pruning step over a
// key that holds a nested bucket and drop the others; they failed whole
// on it, after every commit, for ever.
func TestMaintenancePastNestedBuckets(t *testing.T) {
	now := time.Now().UnixMilli()
	for _, c := range []struct {
		name        string
		parent, key []byte
		seed        Batch
		run         func(s *Store) error
		bucket      []byte // where only the nested bucket is left
	}{
		{"compaction", bucketDead, deadKey(1, "x"),
			Batch{Changes: []Change{{Topic: "y", Rev: 2}, {Topic: "z", Rev: 3}}, Rev: 3},
			func(s *Store) error { _, err := s.Compact(3, 100); return err }, bucketDead},
		{"pruning", bucketHist, []byte("not a history key"),
			Batch{History: []Change{{Topic: "h", Value: val("1"), Rev: 1, MS: now, Seq: 1}, {Topic: "h", Value: val("2"), Rev: 2, MS: now, Seq: 1}}, Rev: 2, Epoch: 1},
			func(s *Store) error { _, err := s.Prune(nil, now, 100); return err }, bucketHist},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := storeWithBucket(t, c.parent, c.key)
			if _, err := s.Commit(c.seed); err != nil {
				t.Fatal(err)
			}
			if err := c.run(s); err != nil {
				t.Fatalf("failed on the nested bucket: %v", err)
			}
			if left := keysOf(t, s, c.bucket); len(left) != 0 {
				t.Errorf("left %v", left)
			}
		})
	}
}

// TestOpenRefusesMetaBuckets: a file whose meta bucket holds a nested
// bucket under one of its keys is refused at open, naming the key: with
// "rev" every commit failed, with "clean" every start.
func TestOpenRefusesMetaBuckets(t *testing.T) {
	for _, key := range [][]byte{keyRev, keyFloor, keyClean} { // "format" is always a value

		t.Run(string(key), func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			nestBucket(t, dir, bucketMeta, key)
			s, err = Open(dir)
			if err == nil {
				s.Close()
				t.Fatal("opened")
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), FileName) {
				t.Errorf("open: %v", err)
			}
		})
	}
}

// TestRetainerPastNestedBucket: through the retainer, a row whose key
// holds a nested bucket is refused alone (its waiter told why, a log line
// naming it, Lost, Close's error), every other row persisted, in its
// commit and after. The commit failed whole and was retried for ever.
func TestRetainerPastNestedBucket(t *testing.T) {
	for _, c := range []struct {
		name        string
		parent, key []byte
		change      Change
	}{
		{"a row's key", bucketRows, []byte("bad"), Change{Topic: "bad", Value: val("v"), Rev: 5}},
		{"a group's key", bucketRows, groupKey(nil, ""), Change{Topic: "bad", Value: val("v"), Rev: 5}},
		{"a deletion marker's key", bucketDead, deadKey(5, "gone"), Change{Topic: "gone", Rev: 5}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := storeWithBucket(t, c.parent, c.key)
			var logs logBuffer
			r := must(New(s, Options{Interval: 5 * time.Millisecond, MaxBatch: 1 << 30}, zerolog.New(&logs)))
			w1, w2 := make(chan error, 1), make(chan error, 1)
			r.Add([]Change{{Topic: "a/ok", Value: val("1"), Rev: 5}, c.change, {Topic: "z/ok", Value: val("1"), Rev: 5}}, w1)
			if err := recv(t, w1, "waiter of the batch"); !errors.Is(err, ErrUnstorable) || !errors.Is(err, berrors.ErrIncompatibleValue) || !strings.Contains(err.Error(), c.change.Topic) {
				t.Errorf("waiter of the batch: %v", err)
			}
			r.Add([]Change{{Topic: "m/ok", Value: val("1"), Rev: 6}}, w2)
			if err := recv(t, w2, "waiter of the next batch"); err != nil {
				t.Errorf("waiter of the next batch: %v", err)
			}
			if err := closeWithin(t, r); !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "1 rows and history values were not persisted") {
				t.Errorf("Close: %v", err)
			}
			if r.Lost.Load() != 1 || r.Failures.Load() != 0 {
				t.Errorf("lost %d, failures %d; want 1, 0", r.Lost.Load(), r.Failures.Load())
			}
			if l := logs.lines("refused a row"); len(l) != 1 || !strings.Contains(l[0], `"topic":"`+c.change.Topic+`"`) {
				t.Errorf("log lines %q", l)
			}
			rows := storedTopics(t, s)
			for _, tp := range []string{"a/ok", "z/ok", "m/ok"} {
				if !rows[tp] {
					t.Errorf("row %s is not on disk", tp)
				}
			}
		})
	}
}

// damagedStore is a closed store in a directory of its own whose first
// leaf page of rows (bucket "rows") or of deletion markers ("dead") has
// no page type: bbolt panics on any read of it ("unexpected type/flags").
// It holds the rows row/00001 to row/02000, or the markers of topics
// dead/00001 to dead/02000 at revisions 1 to 2000. Opening it, and
// counting the markers of a damaged rows bucket, do not read that page.
func damagedStore(t *testing.T, bucket string) string {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	var cs []Change
	for i := 1; i <= 2000; i++ {
		if bucket == "rows" {
			cs = append(cs, Change{Topic: fmt.Sprintf("row/%05d", i), Value: val("v"), Rev: uint64(i)})
		} else {
			cs = append(cs, Change{Topic: fmt.Sprintf("dead/%05d", i), Rev: uint64(i)})
		}
	}
	if _, err := s.Commit(Batch{Changes: cs, Rev: 2000}); err != nil {
		t.Fatal(err)
	}
	size := s.db.Info().PageSize
	s.Close()
	path := filepath.Join(dir, FileName)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	first := []byte("row/00001")
	if bucket != "rows" {
		first = append(binary.BigEndian.AppendUint64(nil, 1), "dead/00001"...)
	}
	n := 0
	for off := 0; off+size <= len(data); off += size {
		p := data[off : off+size]
		if binary.LittleEndian.Uint16(p[8:]) == 0x02 && bytes.Contains(p, first) { // a leaf page
			binary.LittleEndian.PutUint16(p[8:], 0x40) // no page type
			n++
		}
	}
	if n == 0 {
		t.Fatal("no leaf page holds the first marker")
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestStorePanics: a panic inside bbolt is an error wrapping ErrCorrupt,
// never a crash. After a write's, the store takes no write (the same
// write would panic again, and bbolt promises nothing of its state after
// a panic) and still closes; a read's leaves the store as it was. The
// panic took the process down.
func TestStorePanics(t *testing.T) {
	for _, c := range []struct {
		name   string
		bucket string // whose page is damaged
		run    func(s *Store) error
		broken bool // later writes are refused untried
	}{
		{"a commit writing a row on the page", "rows", func(s *Store) error {
			_, err := s.Commit(Batch{Changes: []Change{{Topic: "row/00001", Value: val("w"), Rev: 2001}}, Rev: 2001})
			return err
		}, true},
		{"a commit writing a marker on the page", "dead", func(s *Store) error {
			_, err := s.Commit(Batch{Changes: []Change{{Topic: "dead/00001", Rev: 1}}, Rev: 2001})
			return err
		}, true},
		{"a compaction reading the page", "dead", func(s *Store) error { _, err := s.Compact(10, 100); return err }, true},
		{"a read of the markers on the page", "dead", func(s *Store) error {
			return s.Deleted(0, 10, func(string, uint64) bool { return true })
		}, false},
		{"a count of the markers", "dead", func(s *Store) error { _, _, err := s.Markers(0); return err }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := Open(damagedStore(t, c.bucket))
			if err != nil {
				t.Fatal(err)
			}
			err = c.run(s)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "panicked") || !strings.Contains(err.Error(), "unexpected type/flags") {
				t.Errorf("the panic's error: %v", err)
			}
			_, err = s.Commit(Batch{Changes: []Change{{Topic: "zz/fine", Value: val("1"), Rev: 2001}}, Rev: 2001})
			if c.broken != errors.Is(err, ErrCorrupt) || (!c.broken && err != nil) {
				t.Errorf("a commit after it: %v (broken %v)", err, c.broken)
			}
			if err := s.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
		})
	}
}

// TestRetainerStoreErrors: a commit that fails whole is retried; one that
// finds the store damaged (ErrCorrupt) is not, nor is the store written
// again: its rows and every later row are refused at once and counted
// lost, Health says why, one log line, and Close reports the loss. The
// retainer retried it for ever, answering ErrCommit ("kept and retried").
func TestRetainerStoreErrors(t *testing.T) {
	for _, c := range []struct {
		name    string
		err     error
		retried bool
	}{
		{"disk full", errDisk, true},
		{"damaged", fmt.Errorf("retain: commit 1 rows to x: %w: bbolt panicked in a write", ErrCorrupt), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			fs := scripted()
			var logs logBuffer
			r := must(New(fs, Options{Interval: time.Millisecond}, zerolog.New(&logs)))
			w1, w2 := make(chan error, 1), make(chan error, 1)
			r.Add([]Change{{Topic: "a", Value: val("1")}}, w1)
			recv(t, fs.calls, "first commit")
			fs.results <- c.err
			err := recv(t, w1, "waiter of the failed commit")
			if c.retried != errors.Is(err, ErrCommit) || c.retried == errors.Is(err, ErrUnstorable) || !errors.Is(err, c.err) {
				t.Errorf("waiter of the failed commit: %v", err)
			}
			r.Add([]Change{{Topic: "b", Value: val("1")}}, w2)
			calls := 0
			for answered := false; !answered; {
				select {
				case <-fs.calls:
					if !c.retried {
						t.Fatal("the damaged store was written again")
					}
					calls++
					fs.results <- nil
				case err := <-w2:
					if c.retried && err != nil || !c.retried && (!errors.Is(err, ErrUnstorable) || !errors.Is(err, ErrCorrupt)) {
						t.Errorf("waiter of the next batch: %v", err)
					}
					answered = true
				case <-time.After(testTimeout):
					t.Fatal("the waiter of the next batch was never answered")
				}
			}
			if c.retried && calls == 0 {
				t.Error("the failed commit was not retried")
			}
			health := r.Health(time.Hour)
			stop := fs.answerAll(nil)
			err = closeWithin(t, r)
			stop()
			if c.retried {
				if err != nil || health != nil {
					t.Errorf("Close %v, Health %v", err, health)
				}
				return
			}
			if !errors.Is(health, ErrCorrupt) || !strings.Contains(health.Error(), "damaged") {
				t.Errorf("Health: %v", health)
			}
			if !errors.Is(err, ErrLost) || !errors.Is(err, ErrCorrupt) || r.Lost.Load() != 2 {
				t.Errorf("Close: %v, lost %d, want 2", err, r.Lost.Load())
			}
			if len(fs.commits) != 0 {
				t.Errorf("the damaged store was written %d times at close", len(fs.commits))
			}
			if n := len(logs.lines("store is damaged")); n != 1 {
				t.Errorf("%d log lines, want 1", n)
			}
		})
	}
}

// TestRetainerDamagedFile: the retainer on a store whose commit makes
// bbolt panic goes on: one commit tried, every waiter answered, the
// broker's process alive, the store closed after.
func TestRetainerDamagedFile(t *testing.T) {
	s, err := Open(damagedStore(t, "rows"))
	if err != nil {
		t.Fatal(err)
	}
	commits := 0 // on the retainer's goroutine; read after Close
	r := must(New(s, Options{Interval: time.Millisecond, OnCommit: func(time.Duration, int, error) { commits++ }}, zerolog.Nop()))
	for i, cs := range [][]Change{
		{{Topic: "row/00001", Value: val("2"), Rev: 2001}, {Topic: "zz", Value: val("1"), Rev: 2001}}, // row/00001 is on the damaged page
		{{Topic: "zz", Value: val("2"), Rev: 2002}},
	} {
		w := make(chan error, 1)
		r.Add(cs, w)
		if err := recv(t, w, "waiter"); !errors.Is(err, ErrCorrupt) {
			t.Errorf("waiter %d: %v", i, err)
		}
	}
	if err := closeWithin(t, r); !errors.Is(err, ErrLost) || !errors.Is(err, ErrCorrupt) {
		t.Errorf("Close: %v", err)
	}
	if commits != 1 {
		t.Errorf("%d commits tried, want 1", commits)
	}
	if err := s.Close(); err != nil {
		t.Errorf("store close: %v", err)
	}
}

// setPageType writes flags as the page type of page id of the file at
// path (the store may be open: bbolt reads the file through a shared
// mapping, so it sees the change).
func setPageType(t *testing.T, path string, size, id int, flags uint16) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(binary.LittleEndian.AppendUint16(nil, flags), int64(id*size+8)); err != nil {
		t.Fatal(err)
	}
}

// TestPanicHoldsWriterLock: when the rollback after a panic panics too
// (its freelist page damaged as well), bbolt's writer lock stays held:
// a later write, or Close, would wait for it for ever. Neither waits: the
// write is refused (the store broken), Close leaves the file open and
// says why. The first panic took the process down.
func TestPanicHoldsWriterLock(t *testing.T) {
	dir := damagedStore(t, "rows")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	size, freelist := s.db.Info().PageSize, -1
	s.db.View(func(tx *bolt.Tx) error {
		for id := 2; ; id++ {
			p, err := tx.Page(id)
			if err != nil || p == nil {
				return err
			}
			if p.Type == "freelist" {
				freelist = id
			}
		}
	})
	if freelist < 0 {
		t.Fatal("no freelist page")
	}
	setPageType(t, filepath.Join(dir, FileName), size, freelist, 0x40)
	done := make(chan error, 1)
	go func() { // bounded: a hang fails the test, not the run
		_, err := s.Commit(Batch{Changes: []Change{{Topic: "row/00001", Value: val("w"), Rev: 2001}}, Rev: 2001})
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "invalid freelist page") {
			t.Errorf("the commit: %v", err)
		}
		_, err = s.Commit(Batch{Changes: []Change{{Topic: "zz", Value: val("1"), Rev: 2002}}, Rev: 2002})
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("a commit after it: %v", err)
		}
		done <- s.Close()
	}()
	if err := recv(t, done, "the commits and Close"); err == nil || !strings.Contains(err.Error(), "left open") || !errors.Is(err, ErrCorrupt) {
		t.Errorf("Close: %v", err)
	}
	// The file stays open, and locked, until the test process exits.
}
