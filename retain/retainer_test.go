package retain

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/mote-mqtt/mote/wire"
)

// testTimeout bounds every wait for an event; only a broken retainer
// reaches it.
const testTimeout = 10 * time.Second

// recv is the next value on ch; the test fails if none comes within
// testTimeout.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testTimeout):
		t.Fatalf("%s: nothing within %v", what, testTimeout)
	}
	var zero T
	return zero
}

// closeWithin closes r, failing the test if that takes testTimeout.
func closeWithin(t *testing.T, r *Retainer) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- r.Close() }()
	return recv(t, done, "Close")
}

// fakeStore keeps committed rows in memory. With calls set, every Commit
// first sends its changes on calls and then takes its outcome from
// results: the test decides each commit's fate as it happens.
type fakeStore struct {
	mu      sync.Mutex
	rows    map[string]Change
	commits [][]Change
	calls   chan []Change
	results chan error
}

func scripted() *fakeStore {
	return &fakeStore{calls: make(chan []Change), results: make(chan error)}
}

func (f *fakeStore) Meta() Meta { return Meta{} }

func (f *fakeStore) Deleted(since, upto uint64, fn func(string, uint64) bool) error { return nil }

func (f *fakeStore) Compact(uint64, int) (bool, error) { return false, nil }

func (f *fakeStore) Markers(int) (int, uint64, error) { return 0, 0, nil }

func (f *fakeStore) History(string, int, func(string, []Pair) bool) error { return nil }

func (f *fakeStore) Prune([]HistoryRule, int64, int) (bool, error) { return false, nil }

func (f *fakeStore) HistorySizes(string, func(string, HistSize) bool) bool { return true }

func (f *fakeStore) MarkClean(uint64) error { return nil }

func (f *fakeStore) MarkRunning() error { return nil }

func (f *fakeStore) Commit(b Batch) ([]Rejected, error) {
	cs := b.Changes
	if f.calls != nil {
		f.calls <- slices.Clone(cs)
		if err := <-f.results; err != nil {
			return nil, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rows == nil {
		f.rows = map[string]Change{}
	}
	for _, c := range cs {
		if c.Value.Kind == wire.None {
			delete(f.rows, c.Topic)
		} else {
			f.rows[c.Topic] = c
		}
	}
	f.commits = append(f.commits, slices.Clone(cs))
	return nil, nil
}

func (f *fakeStore) Load(func(Row) error) error { return nil }
func (f *fakeStore) Close() error               { return nil }

// answerAll answers every further commit of a scripted store with err,
// until the returned stop is called.
func (f *fakeStore) answerAll(err error) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-f.calls:
				f.results <- err
			case <-quit:
				return
			}
		}
	}()
	return func() { close(quit); <-done }
}

func (f *fakeStore) row(topic string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rows[topic].Value.Data
}

// logBuffer is a log sink safe for the retainer's goroutine and the test.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) lines(substr string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for line := range strings.Lines(l.b.String()) {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return out
}

func TestRetainerCoalescesAndFlushes(t *testing.T) {
	fs := &fakeStore{}
	r := must(New(fs, Options{Interval: time.Hour, MaxBatch: 1 << 30}, zerolog.Nop()))
	r.Add([]Change{{Topic: "a", Value: val("1")}, {Topic: "b", Value: val("1")}})
	r.Add([]Change{{Topic: "a", Value: val("2")}, {Topic: "b"}})
	if err := closeWithin(t, r); err != nil {
		t.Fatal(err)
	}
	if len(fs.commits) != 1 || len(fs.commits[0]) != 2 || fs.rows["a"].Value.Data != "2" || len(fs.rows) != 1 {
		t.Errorf("commits %v rows %v", fs.commits, fs.rows)
	}
	late := make(chan error, 1)
	r.Add([]Change{{Topic: "b", Value: val("1")}}, late)
	if err := recv(t, late, "add after close"); !errors.Is(err, ErrClosed) {
		t.Errorf("add after close: %v", err)
	}
}

// TestRetainerIsolatesRefusedRows: rows the store refuses, between good
// rows of one batch and in later batches, cost only themselves: every good
// row is on disk, the waiter of a batch with a refused row gets an error
// naming it and the others nil, and Close reports the loss.
func TestRetainerIsolatesRefusedRows(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var logs logBuffer
	var reported []Rejected // appended on the retainer's goroutine, read after Close
	r := must(New(s, Options{Interval: time.Hour, MaxBatch: 1 << 30, OnReject: func(rej Rejected) { reported = append(reported, rej) }}, zerolog.New(&logs)))
	long := strings.Repeat("p", MaxTopic+1)
	set := func(topics ...string) []Change {
		var cs []Change
		for _, tp := range topics {
			cs = append(cs, Change{Topic: tp, Value: val("v")})
		}
		return cs
	}

	w1 := make(chan error, 1)
	r.Add(set("a", long, "b"), w1)
	err = recv(t, w1, "waiter of the batch with a refused row")
	if !errors.Is(err, ErrUnstorable) || !errors.Is(err, berrors.ErrKeyTooLarge) || !strings.Contains(err.Error(), fmt.Sprint(MaxTopic+1, " bytes")) {
		t.Errorf("waiter of the refused row: %v", err)
	}
	if len(fmt.Sprint(err)) > 600 {
		t.Errorf("the waiter's error holds the whole topic: %d bytes", len(err.Error()))
	}
	w2 := make(chan error, 1)
	r.Add(set("c"), w2)
	if err := recv(t, w2, "waiter of a later batch"); err != nil {
		t.Errorf("waiter of a good batch after a refused row: %v", err)
	}
	w3, w4 := make(chan error, 1), make(chan error, 1)
	r.Add(set("d", "", "e"), w3) // one commit or two: the answers are the same
	r.Add(set("f"), w4)
	if err := recv(t, w3, "second refused batch"); !errors.Is(err, berrors.ErrKeyRequired) {
		t.Errorf("waiter of the empty topic: %v", err)
	}
	if err := recv(t, w4, "good batch"); err != nil {
		t.Errorf("waiter of a good batch: %v", err)
	}
	r.Add(set("g", long+"2", "h")) // no waiter: committed at close

	err = closeWithin(t, r)
	if !errors.Is(err, ErrLost) || !strings.Contains(err.Error(), "3 rows and history values were not persisted") {
		t.Errorf("Close: %v", err)
	}
	if r.Lost.Load() != 3 || len(reported) != 3 || r.Committed.Load() != 8 {
		t.Errorf("lost %d, reported %d, committed %d; want 3, 3, 8", r.Lost.Load(), len(reported), r.Committed.Load())
	}
	rows := rowsOf(t, s)
	for _, tp := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		if _, ok := rows[tp]; !ok {
			t.Errorf("row %s is not on disk", tp)
		}
	}
	if len(rows) != 8 {
		t.Errorf("%d rows on disk, want 8", len(rows))
	}
	refused := logs.lines("refused a row")
	if len(refused) != 3 {
		t.Errorf("%d log lines for refused rows, want 3", len(refused))
	}
	for _, l := range refused {
		if len(l) > 600 {
			t.Errorf("a log line of %d bytes: the topic is not shortened", len(l))
		}
	}
}

var errDisk = errors.New("disk full")

// TestRetainerCommitFails: a commit that fails whole refuses its waiters
// at once, keeps its rows pending (newer changes win), retries, and logs
// once per failure streak.
func TestRetainerCommitFails(t *testing.T) {
	fs := scripted()
	var logs logBuffer
	r := must(New(fs, Options{Interval: time.Millisecond}, zerolog.New(&logs)))
	w1 := make(chan error, 1)
	r.Add([]Change{{Topic: "a", Value: val("1")}}, w1)
	recv(t, fs.calls, "first commit")
	fs.results <- errDisk
	if err := recv(t, w1, "waiter of a failed commit"); !errors.Is(err, ErrCommit) || !errors.Is(err, errDisk) {
		t.Errorf("waiter of a failed commit: %v", err)
	}

	w2 := make(chan error, 1)
	r.Add([]Change{{Topic: "a", Value: val("2")}, {Topic: "b", Value: val("1")}}, w2)
	failures := 1 // one more: w2 is in the failing retry or in the one after
	for answered := false; !answered; {
		select {
		case <-fs.calls:
			if failures > 0 {
				failures--
				fs.results <- errDisk
			} else {
				fs.results <- nil
			}
		case err := <-w2:
			if err != nil && !errors.Is(err, ErrCommit) {
				t.Errorf("second waiter: %v", err)
			}
			answered = true
		case <-time.After(testTimeout):
			t.Fatal("second waiter never answered")
		}
	}
	stop := fs.answerAll(nil)
	err := closeWithin(t, r)
	stop()
	if err != nil {
		t.Fatal(err)
	}
	if fs.row("a") != "2" || fs.row("b") != "1" {
		t.Errorf("rows a=%q b=%q, want 2 and 1", fs.row("a"), fs.row("b"))
	}
	if r.Failures.Load() != 2 {
		t.Errorf("%d failures, want 2", r.Failures.Load())
	}
	if n := len(logs.lines("commit failed")); n != 1 {
		t.Errorf("%d log lines for one failure streak, want 1", n)
	}
}

// TestRetainerStoreAlwaysFails: with a store that never commits, waiters
// are still answered, Add never waits, and Close returns, reporting the
// rows it could not commit.
func TestRetainerStoreAlwaysFails(t *testing.T) {
	fs := scripted()
	stop := fs.answerAll(errDisk)
	defer stop()
	r := must(New(fs, Options{Interval: time.Millisecond}, zerolog.Nop()))
	for i := range 5 {
		w := make(chan error, 1)
		r.Add([]Change{{Topic: fmt.Sprint("t", i), Value: val("1")}}, w)
		if err := recv(t, w, "waiter"); !errors.Is(err, ErrCommit) {
			t.Errorf("waiter %d: %v", i, err)
		}
	}
	err := closeWithin(t, r)
	if !errors.Is(err, ErrLost) || !errors.Is(err, errDisk) || !strings.Contains(err.Error(), "5 rows not committed") {
		t.Errorf("Close: %v", err)
	}
}

// TestAddNeverWaits: a store stuck in a commit does not stop Add, and
// what piles up coalesces by topic.
func TestAddNeverWaits(t *testing.T) {
	fs := scripted()
	r := must(New(fs, Options{Interval: time.Millisecond, MaxBatch: 10}, zerolog.Nop()))
	r.Add([]Change{{Topic: "first", Value: val("1")}})
	recv(t, fs.calls, "first commit") // the retainer is now stuck in Commit
	added := make(chan struct{})
	go func() {
		for i := range 100_000 {
			r.Add([]Change{{Topic: fmt.Sprint("t", i%100), Value: val(fmt.Sprint(i))}})
		}
		close(added)
	}()
	recv(t, added, "Add while the store is stuck")
	if n := r.Pending(); n != 100 {
		t.Errorf("%d pending, want 100 coalesced rows", n)
	}
	fs.results <- nil
	stop := fs.answerAll(nil)
	err := closeWithin(t, r)
	stop()
	if err != nil {
		t.Fatal(err)
	}
	if fs.row("t99") != "99999" {
		t.Errorf("t99 = %v", fs.row("t99"))
	}
}

func TestWaitBoundsPending(t *testing.T) {
	fs := scripted()
	r := must(New(fs, Options{Interval: time.Millisecond, MaxBatch: 1 << 30, MaxPending: 10}, zerolog.Nop()))
	r.Add([]Change{{Topic: "x", Value: val("1")}})
	recv(t, fs.calls, "commit of x") // stuck committing x
	for i := range 20 {
		r.Add([]Change{{Topic: fmt.Sprint(i), Value: val("1")}})
	}
	waited := make(chan bool, 1)
	go func() { waited <- r.Wait() }()
	select {
	case <-waited:
		t.Fatal("Wait returned with 20 rows pending and a bound of 10")
	case <-time.After(50 * time.Millisecond): // can only miss a bug, never fail a good build
	}
	fs.results <- nil
	stop := fs.answerAll(nil)
	if !recv(t, waited, "Wait") {
		t.Error("Wait reported no wait")
	}
	closeWithin(t, r)
	stop()
}

func must(r *Retainer, err error) *Retainer {
	if err != nil {
		panic(err)
	}
	return r
}

// TestRetainerHealth: Health says nil while commits succeed, names the
// error of a failed commit, a commit stuck past its bound, and a closed
// retainer; OnCommit sees every commit.
func TestRetainerHealth(t *testing.T) {
	type commit struct {
		rows int
		err  error
	}
	commits := make(chan commit, 16)
	fs := scripted()
	r := must(New(fs, Options{Interval: time.Millisecond, OnCommit: func(took time.Duration, rows int, err error) {
		if took < 0 {
			t.Errorf("commit took %v", took)
		}
		commits <- commit{rows, err}
	}}, zerolog.Nop()))
	if err := r.Health(time.Minute); err != nil {
		t.Errorf("a new retainer: %v", err)
	}
	if !r.LastCommit().IsZero() {
		t.Error("a last commit before any")
	}

	w := make(chan error, 1)
	r.Add([]Change{{Topic: "a", Value: val("1")}, {Topic: "b", Value: val("1")}}, w)
	recv(t, fs.calls, "first commit")
	fs.results <- nil
	recv(t, w, "waiter")
	if c := recv(t, commits, "OnCommit"); c.rows != 2 || c.err != nil {
		t.Errorf("OnCommit got %+v, want 2 rows, no error", c)
	}
	if err := r.Health(time.Minute); err != nil {
		t.Errorf("after a commit: %v", err)
	}
	if r.LastCommit().IsZero() {
		t.Error("no last commit after one")
	}

	r.Add([]Change{{Topic: "a", Value: val("2")}}, w)
	recv(t, fs.calls, "failing commit")
	fs.results <- errDisk
	recv(t, w, "waiter of the failed commit")
	if c := recv(t, commits, "OnCommit"); !errors.Is(c.err, errDisk) {
		t.Errorf("OnCommit got %+v, want the disk error", c)
	}
	if err := r.Health(time.Minute); !errors.Is(err, errDisk) || !strings.Contains(err.Error(), "last commit failed") {
		t.Errorf("after a failed commit: %v", err)
	}

	recv(t, fs.calls, "retry") // the retry is now stuck in the store
	deadline := time.Now().Add(testTimeout)
	for err := r.Health(time.Millisecond); ; err = r.Health(time.Millisecond) {
		if err != nil && strings.Contains(err.Error(), "commit has been running") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a stuck commit: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
	fs.results <- nil
	recv(t, commits, "OnCommit of the retry")
	if err := r.Health(time.Minute); err != nil {
		t.Errorf("after the retry: %v", err)
	}

	stop := fs.answerAll(nil)
	defer stop()
	closeWithin(t, r)
	if err := r.Health(time.Minute); err == nil {
		t.Error("a closed retainer is healthy")
	}
}

// TestSpareOutgrown: when a commit holds more rows than half of what the
// spare set was made for, the next changes wait in a set made for twice
// the commit's rows, not in the spare grown (its slice copied) as they
// come: storm commits that grow from one to the next copy nothing.
func TestSpareOutgrown(t *testing.T) {
	f := scripted()
	const maxBatch, storm = 1000, 5000
	r := must(New(f, Options{Interval: time.Millisecond, MaxBatch: maxBatch}, zerolog.Nop()))
	rev := uint64(0)
	pile := func() { pileStorm(r, storm, &rev) } // rows piling up behind a running commit
	done := make(chan error, 1)
	r.Add([]Change{{Topic: "a", Value: val("1"), Rev: 1}}, done)
	recv(t, f.calls, "first commit")
	pile()
	f.results <- nil
	if err := recv(t, done, "first commit"); err != nil {
		t.Fatal(err)
	}
	if got := len(recv(t, f.calls, "storm commit")); got != storm {
		t.Fatalf("storm commit of %d rows", got)
	}
	pile() // behind the storm's commit: in the set the commit made ready
	r.mu.Lock()
	made, held := r.pending.hint, r.pending.len()
	r.mu.Unlock()
	if made < held {
		t.Errorf("the next rows wait in a set made for %d rows, grown to hold %d", made, held)
	}
	f.results <- nil
	stop := f.answerAll(nil)
	defer stop()
	if err := closeWithin(t, r); err != nil {
		t.Fatal(err)
	}
}

// pileStorm adds n storm rows to r, one Add each, their revisions
// counted on from rev.
func pileStorm(r *Retainer, n int, rev *uint64) {
	for i := range n {
		*rev++
		r.Add([]Change{{Topic: fmt.Sprintf("boot/d%06d", i), Value: val(fmt.Sprint(*rev)), Rev: *rev}})
	}
}

// TestStormSetsReused: commits of a storm, one after another each of
// more rows than a set kept after a storm may hold, reuse the two sets
// made for them (a set made anew at every commit was hundreds of
// thousands of rows of garbage each time); once the retainer has nothing
// to commit, neither set is kept.
func TestStormSetsReused(t *testing.T) {
	f := scripted()
	const maxBatch, storm, commits = 1000, 40_000, 7
	r := must(New(f, Options{Interval: time.Millisecond, MaxBatch: maxBatch}, zerolog.Nop()))
	rev := uint64(0)
	pile := func() { pileStorm(r, storm, &rev) } // rows piling up behind a running commit
	done := make(chan error, 1)
	r.Add([]Change{{Topic: "a", Value: val("1"), Rev: 1}}, done)
	recv(t, f.calls, "first commit")
	sets := map[*rowSet]int{} // each set the rows waited in: the commit it first held
	for k := range commits {
		pile()
		r.mu.Lock()
		if _, ok := sets[r.pending]; !ok {
			sets[r.pending] = k
		}
		r.mu.Unlock()
		f.results <- nil
		if got := len(recv(t, f.calls, "storm commit")); got != storm {
			t.Fatalf("storm commit %d of %d rows", k, got)
		}
	}
	for _, k := range sets {
		if k > 3 {
			t.Errorf("storm commit %d: the rows waited in a set made anew (%d sets for %d commits)", k, len(sets), commits)
		}
	}
	f.results <- nil
	if err := recv(t, done, "first commit"); err != nil {
		t.Fatal(err)
	}
	// Nothing left to commit: the storm's sets go, the spare and the
	// emptied one the rows after the last commit were to wait in. (The
	// spare alone is no sign: a running commit has taken it.)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		r.mu.Lock()
		spare, pending, committing := r.spare, r.pending, r.committing
		r.mu.Unlock()
		spareKept := spare != nil && spare.size() > spareRows
		if committing == nil && !spareKept && pending.size() <= spareRows {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("idle: spare kept %v, an empty pending set made for %d rows kept (%d slots)", spareKept, pending.size(), len(pending.slots))
		}
	}
	stop := f.answerAll(nil)
	defer stop()
	if err := closeWithin(t, r); err != nil {
		t.Fatal(err)
	}
}
