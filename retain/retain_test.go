package retain

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/wire"
)

func val(s string) wire.Value { return wire.Value{Kind: wire.String, Data: s} }

func rowsOf(t *testing.T, s RowStore) map[string]Row {
	t.Helper()
	out := map[string]Row{}
	if err := s.Load(func(r Row) error { out[r.Topic] = r; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Commit([]Change{
		{Topic: "a/b", Value: val("x"), QoS: 1},
		{Topic: "a/c", Value: wire.Value{Kind: wire.Bytes, Data: "\x00\xff"}},
		{Topic: "d", Value: wire.Value{Kind: wire.Object, Data: `{"k":1}`}, QoS: 2},
		{Topic: "gone", Value: val("y")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit([]Change{{Topic: "gone"}, {Topic: "never"}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := rowsOf(t, s)
	want := map[string]Row{
		"a/b": {"a/b", val("x"), 1},
		"a/c": {"a/c", wire.Value{Kind: wire.Bytes, Data: "\x00\xff"}, 0},
		"d":   {"d", wire.Value{Kind: wire.Object, Data: `{"k":1}`}, 2},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("rows %v\nwant %v", got, want)
	}
	st, err := s.Stats()
	if err != nil || st.Rows != 3 || st.TopLevel["a"] != 2 {
		t.Errorf("stats %+v %v", st, err)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	os.WriteFile(path, []byte(strings.Repeat("not a bolt file ", 1000)), 0o600)
	_, err := Open(dir)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
		t.Errorf("corrupt file: %v", err)
	}
	dir2 := t.TempDir()
	s, err := Open(dir2)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(dir2); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second open: %v", err)
	}
	if _, err := Open("/proc/no/such/dir"); err == nil {
		t.Error("opened a store in an impossible directory")
	}
}

// TestCorruptPages damages a valid store's pages: opening or loading it
// is an error naming the file, never a panic.
func TestCorruptPages(t *testing.T) {
	for _, offset := range []int64{0, 4096, 8192, 12288, 16384} {
		dir := t.TempDir()
		s, _ := Open(dir)
		var cs []Change
		for i := range 2000 {
			cs = append(cs, Change{Topic: fmt.Sprintf("t/%d", i), Value: val(strings.Repeat("v", 50))})
		}
		s.Commit(cs)
		s.Close()
		f, _ := os.OpenFile(filepath.Join(dir, FileName), os.O_RDWR, 0)
		f.WriteAt([]byte(strings.Repeat("\xde\xad\xbe\xef", 256)), offset)
		f.Close()
		s, err := Open(dir)
		if err == nil {
			err = s.Load(func(Row) error { return nil })
			s.Close()
		}
		if err != nil && (!errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), FileName)) {
			t.Errorf("offset %d: %v", offset, err)
		}
	}
}

// fakeStore records commits; block, if set, holds every commit until closed.
type fakeStore struct {
	mu      sync.Mutex
	rows    map[string]Change
	commits [][]Change
	block   chan struct{}
	fail    atomic.Int32 // commits to fail
}

func (f *fakeStore) Commit(cs []Change) error {
	if f.block != nil {
		<-f.block
	}
	if f.fail.Add(-1) >= 0 {
		return errors.New("disk full")
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
	f.commits = append(f.commits, append([]Change(nil), cs...))
	return nil
}

func (f *fakeStore) Load(func(Row) error) error { return nil }
func (f *fakeStore) Close() error               { return nil }

func TestRetainerCoalescesAndFlushes(t *testing.T) {
	fs := &fakeStore{}
	r := New(fs, Options{Interval: time.Hour, MaxBatch: 1 << 30}, zerolog.Nop())
	r.Add([]Change{{Topic: "a", Value: val("1")}, {Topic: "b", Value: val("1")}})
	r.Add([]Change{{Topic: "a", Value: val("2")}, {Topic: "b"}})
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if len(fs.commits) != 1 || len(fs.commits[0]) != 2 || fs.rows["a"].Value.Data != "2" || len(fs.rows) != 1 {
		t.Errorf("commits %v rows %v", fs.commits, fs.rows)
	}
}

func TestRetainerWaitersAndRetry(t *testing.T) {
	fs := &fakeStore{}
	fs.fail.Store(2)
	r := New(fs, Options{Interval: time.Millisecond}, zerolog.Nop())
	done := make(chan error, 1)
	r.Add([]Change{{Topic: "a", Value: val("1")}}, done)
	select {
	case err := <-done:
		if err != nil || r.Failures.Load() != 2 || fs.rows["a"].Value.Data != "1" {
			t.Errorf("after retries: %v, %d failures, rows %v", err, r.Failures.Load(), fs.rows)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter never answered")
	}
	r.Close()
	late := make(chan error, 1)
	r.Add([]Change{{Topic: "b", Value: val("1")}}, late)
	if err := <-late; !errors.Is(err, ErrClosed) {
		t.Errorf("add after close: %v", err)
	}
}

// TestAddNeverWaits: a store stuck in a commit does not stop Add, and
// what piles up coalesces by topic.
func TestAddNeverWaits(t *testing.T) {
	fs := &fakeStore{block: make(chan struct{})}
	r := New(fs, Options{Interval: time.Millisecond, MaxBatch: 10}, zerolog.Nop())
	r.Add([]Change{{Topic: "first", Value: val("1")}})
	time.Sleep(20 * time.Millisecond) // the retainer is now stuck in Commit
	added := make(chan struct{})
	go func() {
		for i := range 100_000 {
			r.Add([]Change{{Topic: fmt.Sprint("t", i%100), Value: val(fmt.Sprint(i))}})
		}
		close(added)
	}()
	select {
	case <-added:
	case <-time.After(10 * time.Second):
		t.Fatal("Add waited on the store")
	}
	if n := r.Pending(); n != 100 {
		t.Errorf("%d pending, want 100 coalesced rows", n)
	}
	close(fs.block)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if fs.rows["t99"].Value.Data != "99999" {
		t.Errorf("t99 = %v", fs.rows["t99"])
	}
}

func TestWaitBoundsPending(t *testing.T) {
	fs := &fakeStore{block: make(chan struct{})}
	r := New(fs, Options{Interval: time.Millisecond, MaxBatch: 1 << 30, MaxPending: 10}, zerolog.Nop())
	r.Add([]Change{{Topic: "x", Value: val("1")}})
	time.Sleep(20 * time.Millisecond) // stuck committing x
	for i := range 20 {
		r.Add([]Change{{Topic: fmt.Sprint(i), Value: val("1")}})
	}
	waited := make(chan bool, 1)
	go func() { waited <- r.Wait() }()
	select {
	case <-waited:
		t.Fatal("Wait returned with 20 rows pending and a bound of 10")
	case <-time.After(50 * time.Millisecond):
	}
	close(fs.block)
	if !<-waited {
		t.Error("Wait reported no wait")
	}
	r.Close()
}
