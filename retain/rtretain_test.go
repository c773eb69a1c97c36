package retain

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/wire"
)

// TestResumeOverUnpersistedDeletions: a deletion the retainer could not
// persist (the store refused it, or is damaged: in the commit that found
// the damage, or any after) must not be missing from a resume (SPEC §8).
// The broker answers a resume from below Floor with a full snapshot, else
// with the rows changed since and the topics Deleted reports: so either
// Floor rises past the revision before the deletion, or Deleted reports
// it. Neither did: the resume delta left the deletion out.
func TestResumeOverUnpersistedDeletions(t *testing.T) {
	damaged := func(t *testing.T) *Store {
		s, err := Open(damagedStore(t, "rows"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	type step struct {
		changes []Change
		deleted string // deleted in changes, at their last revision
		corrupt bool   // the waiter is told the store is damaged
	}
	for _, c := range []struct {
		name  string
		store func(t *testing.T) *Store
		steps []step
	}{
		{"damaged store", damaged, []step{
			// row/00001 is on the damaged page: this commit panics.
			{[]Change{{Topic: "row/00001", Value: val("w"), Rev: 2001}, {Topic: "row/01999", Rev: 2001}}, "row/01999", true},
			{[]Change{{Topic: "row/01998", Rev: 2002}}, "row/01998", true},
		}},
		{"a row's key is a nested bucket", func(t *testing.T) *Store { return storeWithBucket(t, bucketRows, []byte("bad")) }, []step{
			{[]Change{{Topic: "ok", Value: val("1"), Rev: 5}, {Topic: "bad", Rev: 5}}, "bad", false},
		}},
		{"a marker's key is a nested bucket", func(t *testing.T) *Store { return storeWithBucket(t, bucketDead, deadKey(5, "gone")) }, []step{
			{[]Change{{Topic: "ok", Value: val("1"), Rev: 5}, {Topic: "gone", Rev: 5}}, "gone", false},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := must(New(c.store(t), Options{Interval: time.Millisecond}, zerolog.Nop()))
			for _, st := range c.steps {
				w := make(chan error, 1)
				r.Add(st.changes, w)
				if err := recv(t, w, "waiter"); !errors.Is(err, ErrUnstorable) || errors.Is(err, ErrCorrupt) != st.corrupt {
					t.Fatalf("waiter: %v", err)
				}
				rev := st.changes[len(st.changes)-1].Rev
				since := rev - 1 // a client that saw the revision before the deletion
				reported := false
				if err := r.Deleted(since, rev, func(topic string, _ uint64) bool {
					reported = reported || topic == st.deleted
					return true
				}); err != nil {
					t.Fatal(err)
				}
				if !reported && r.Floor() <= since {
					t.Errorf("a resume from %d would leave out %s, deleted at %d (floor %d)", since, st.deleted, rev, r.Floor())
				}
			}
			if err := closeWithin(t, r); !errors.Is(err, ErrLost) {
				t.Errorf("Close: %v", err)
			}
		})
	}
}

// breakingStore is a bbolt store that a commit finds damaged once left
// commits have succeeded: it fails as one that made bbolt panic does.
type breakingStore struct {
	*Store
	left atomic.Int32
}

func (b *breakingStore) Commit(batch Batch) ([]Rejected, error) {
	if b.left.Add(-1) < 0 {
		return nil, fmt.Errorf("retain: commit %d rows: %w: bbolt panicked in a write (simulated)", len(batch.Changes), ErrCorrupt)
	}
	return b.Store.Commit(batch)
}

// TestDamageUnderLoad: publishers hand in rows (each its own topic, with a
// waiter, and waiting for room as the broker's do) while the store turns
// damaged and readers ask for health and markers. Every waiter is
// answered; a row answered nil is on disk, one refused is not; every row
// is counted committed or lost, once; no publisher is left waiting for
// room; Close reports the loss and leaves the store unclean.
func TestDamageUnderLoad(t *testing.T) {
	const publishers, each = 8, 300
	for _, after := range []int32{0, 3, 40} {
		t.Run(fmt.Sprint("damaged after ", after, " commits"), func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			bs := &breakingStore{Store: s}
			bs.left.Store(after)
			r := must(New(bs, Options{Interval: time.Millisecond, MaxPending: 16}, zerolog.Nop()))
			stop, readerDone := make(chan struct{}), make(chan struct{})
			go func() { // the readers, stopped by the test
				defer close(readerDone)
				for {
					select {
					case <-stop:
						return
					default:
					}
					r.Health(time.Hour)
					r.Deleted(0, ^uint64(0), func(string, uint64) bool { return true })
					r.Floor()
					r.Pending()
				}
			}()
			type answer struct {
				topic string
				err   error
			}
			answers := make(chan answer, publishers*each)
			var rev atomic.Uint64
			for p := range publishers {
				go func() { // each ends after its last Add (bounded by Wait, which the test checks)
					for i := range each {
						r.Wait()
						w := make(chan error, 1)
						topic := fmt.Sprintf("p%d/%04d", p, i)
						c := Change{Topic: topic, Value: val("v"), Rev: rev.Add(1)}
						if i%5 == 4 {
							c.Value = wire.Value{} // a deletion
						}
						r.Add([]Change{c}, w)
						go func() { answers <- answer{topic, <-w} }()
					}
				}()
			}
			ok := map[string]bool{}
			for range publishers * each {
				a := recv(t, answers, "a waiter's answer")
				switch {
				case a.err == nil:
					ok[a.topic] = true
				case !errors.Is(a.err, ErrUnstorable) || !errors.Is(a.err, ErrCorrupt):
					t.Errorf("%s: %v", a.topic, a.err)
				}
			}
			close(stop)
			<-readerDone
			if err := closeWithin(t, r); !errors.Is(err, ErrLost) || !errors.Is(err, ErrCorrupt) {
				t.Errorf("Close: %v", err)
			}
			if got := r.Committed.Load() + r.Lost.Load(); got != publishers*each || r.Committed.Load() != int64(len(ok)) {
				t.Errorf("committed %d + lost %d = %d rows, want %d; %d answered nil", r.Committed.Load(), r.Lost.Load(), got, publishers*each, len(ok))
			}
			onDisk := map[string]bool{}
			s.Load(func(row Row) error { onDisk[row.Topic] = true; return nil })
			for p := range publishers {
				for i := range each {
					topic := fmt.Sprintf("p%d/%04d", p, i)
					if want := ok[topic] && i%5 != 4; onDisk[topic] != want {
						t.Errorf("%s on disk: %v, want %v", topic, onDisk[topic], want)
					}
				}
			}
			s.Close()
			again, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			if again.Meta().Clean {
				t.Error("marked clean")
			}
			again.Close()
		})
	}
}

// damageOpen gives every leaf page of s's file that holds key no page
// type while s is open: bbolt panics on the next read of it.
func damageOpen(t *testing.T, s *Store, key []byte) {
	t.Helper()
	data, err := os.ReadFile(s.path)
	if err != nil {
		t.Fatal(err)
	}
	size, n := s.db.Info().PageSize, 0
	for off := 0; off+size <= len(data); off += size {
		if p := data[off : off+size]; binary.LittleEndian.Uint16(p[8:]) == 0x02 && bytes.Contains(p, key) {
			setPageType(t, s.path, size, off/size, 0x40)
			n++
		}
	}
	if n == 0 {
		t.Fatalf("no leaf page holds %q", key)
	}
}

// lineSignal is a log sink that sends every line holding substr.
type lineSignal struct {
	substr string
	lines  chan string
}

func (l lineSignal) Write(p []byte) (int, error) {
	if strings.Contains(string(p), l.substr) {
		select {
		case l.lines <- string(p):
		default:
		}
	}
	return len(p), nil
}

// TestMaintenanceFindsDamage: a compaction or prune after a commit that
// makes bbolt panic leaves the store taking no writes; the retainer says
// so at once (Health, one error in the log), as it does when a commit
// finds the damage, and Close leaves the store unclean. Health said
// nothing was wrong, and the log that it would be retried, until a row
// came to be committed.
func TestMaintenanceFindsDamage(t *testing.T) {
	for _, c := range []struct {
		name string
		seed Batch
		key  []byte // on the page damaged
		opts Options
	}{
		{"compaction", Batch{Changes: deletions(2000), Rev: 2000}, deadKey(1, "x/00001"),
			Options{ResumeWindow: 100}},
		{"pruning", Batch{History: histValues(2000), Rev: 2000, Epoch: 1}, histKey(1, "x/00001", 1, 1),
			Options{History: []HistoryRule{{Filter: "x/#", Keep: 1}}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Commit(c.seed); err != nil {
				t.Fatal(err)
			}
			log := lineSignal{substr: c.name[:5], lines: make(chan string, 1)} // "compa" / "pruni"
			opts := c.opts
			opts.Interval = time.Millisecond
			r := must(New(s, opts, zerolog.New(io.MultiWriter(log, lineSignal{substr: "damaged", lines: log.lines}))))
			r.SetHistory(opts.History) // prune after the next commit
			damageOpen(t, s, c.key)
			w := make(chan error, 1)
			r.Add([]Change{{Topic: "y", Value: val("1"), Rev: 3000}}, w) // not on the damaged page
			if err := recv(t, w, "the commit"); err != nil {
				t.Fatalf("the commit: %v", err)
			}
			line := recv(t, log.lines, "a log line on the damage")
			if !strings.Contains(line, "damaged") || strings.Contains(line, "retried") {
				t.Errorf("log: %s", line)
			}
			if err := r.Health(time.Hour); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Health: %v", err)
			}
			if err := closeWithin(t, r); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Close: %v", err)
			}
			s.Close()
			again, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			if again.Meta().Clean {
				t.Error("marked clean")
			}
			again.Close()
		})
	}
}

// deletions is n deletion markers, of x/00001 at revision 1 onwards.
func deletions(n int) []Change {
	cs := make([]Change, n)
	for i := range cs {
		cs[i] = Change{Topic: fmt.Sprintf("x/%05d", i+1), Rev: uint64(i + 1)}
	}
	return cs
}

// histValues is n history values, of x/00001 at revision 1 onwards.
func histValues(n int) []Change {
	cs := make([]Change, n)
	for i := range cs {
		cs[i] = Change{Topic: fmt.Sprintf("x/%05d", i+1), Value: val("v"), Rev: uint64(i + 1), MS: time.Now().UnixMilli(), Seq: 1}
	}
	return cs
}

// TestMetaPagesDamaged: both meta pages of the open file damaged (bbolt
// panics as a transaction begins, in a read holding its meta and mmap
// locks, which stay held): every read and write after is an error
// wrapping ErrCorrupt, none waits, and the retainer and the store close.
// The second read after the damage, the next commit, the retainer's
// Close and the store's Close waited for ever.
func TestMetaPagesDamaged(t *testing.T) {
	for _, first := range []string{"read", "write"} {
		t.Run("a "+first+" first", func(t *testing.T) {
			s, err := Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Commit(Batch{Changes: deletions(10), Rev: 10}); err != nil {
				t.Fatal(err)
			}
			r := must(New(s, Options{Interval: time.Millisecond}, zerolog.Nop()))
			size := s.db.Info().PageSize
			f, err := os.OpenFile(s.path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, off := range []int{16, size + 16} { // each meta page's magic
				if _, err := f.WriteAt([]byte{0, 0, 0, 0}, int64(off)); err != nil {
					t.Fatal(err)
				}
			}
			f.Close()
			done := make(chan string, 16)
			go func() { // bounded by recv below; a hang fails the test
				read := func(what string) {
					err := r.Deleted(0, 10, func(string, uint64) bool { return true })
					if !errors.Is(err, ErrCorrupt) {
						t.Errorf("%s: %v", what, err)
					}
					done <- what
				}
				write := func(what string) {
					w := make(chan error, 1)
					r.Add([]Change{{Topic: "a", Value: val("1"), Rev: 11}}, w)
					if err := <-w; !errors.Is(err, ErrCorrupt) {
						t.Errorf("%s: %v", what, err)
					}
					done <- what
				}
				if first == "read" {
					read("the first read")
					read("the second read")
					write("a commit")
				} else {
					write("a commit")
					read("the first read")
					read("the second read")
				}
				if err := r.Close(); !errors.Is(err, ErrLost) {
					t.Errorf("the retainer's Close: %v", err)
				}
				done <- "the retainer's Close"
				if err := s.Close(); err == nil {
					t.Error("the store's Close: no error")
				}
				done <- "the store's Close"
			}()
			last := "the damage"
			for range 5 {
				last = recv(t, done, "the next step after "+last)
			}
		})
	}
}
