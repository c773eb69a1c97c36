package retain

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestMarkersAndMeta: a deletion leaves a marker at its revision; the
// revision is stored with the rows; Compact drops markers at or below the
// floor; the clean flag says whether the last run stopped cleanly.
func TestMarkersAndMeta(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m := s.Meta(); !m.Fresh || m.Rev != 0 {
		t.Fatalf("fresh store meta %+v", m)
	}
	commit := func(rev uint64, cs ...Change) {
		t.Helper()
		for i := range cs {
			cs[i].Rev, cs[i].MS = rev, int64(rev)*1000
		}
		if _, err := s.Commit(Batch{Changes: cs, Rev: rev}); err != nil {
			t.Fatal(err)
		}
	}
	commit(1, Change{Topic: "a", Value: val("1")}, Change{Topic: "b", Value: val("1")})
	commit(2, Change{Topic: "a"})
	commit(3, Change{Topic: "b"}, Change{Topic: "c", Value: val("3")})
	commit(5, Change{Topic: "a"})
	markers := func(since, upto uint64) string {
		var out []string
		if err := s.Deleted(since, upto, func(topic string, rev uint64) bool {
			out = append(out, fmt.Sprint(topic, "@", rev))
			return true
		}); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(out)
	}
	if got := markers(0, 10); got != "[a@2 b@3 a@5]" {
		t.Errorf("markers %s", got)
	}
	if got := markers(2, 4); got != "[b@3]" {
		t.Errorf("markers in (2, 4] %s", got)
	}
	if more, err := s.Compact(3, 100); err != nil || more {
		t.Fatal(more, err)
	}
	if got := markers(0, 10); got != "[a@5]" {
		t.Errorf("markers after compacting to 3: %s", got)
	}
	rows := rowsOf(t, s)
	if r := rows["c"]; r.Rev != 3 || r.MS != 3000 {
		t.Errorf("row c %+v", r)
	}
	if err := s.MarkRunning(); err != nil {
		t.Fatal(err)
	}
	s.Close() // not marked clean: a crash, as far as the next open knows
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m := s.Meta(); m.Clean || m.Fresh || m.Rev != 5 || m.Floor != 3 {
		t.Errorf("meta after an unclean stop %+v", m)
	}
	if err := s.MarkClean(7); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if m := s.Meta(); !m.Clean || m.Rev != 7 {
		t.Errorf("meta after a clean stop %+v", m)
	}
}

// TestHistoryStoreAndPrune: history values are stored with the rows,
// read per topic oldest first, and pruned by keep and max_age (the newest
// value stays unless it is an old deletion; rows no rule names go).
func TestHistoryStoreAndPrune(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now().UnixMilli()
	hour := time.Hour.Milliseconds()
	var hist []Change
	add := func(topic, v string, ms int64) {
		c := Change{Topic: topic, Rev: uint64(len(hist) + 1), MS: ms}
		if v != "" {
			c.Value = val(v)
		}
		hist = append(hist, c)
	}
	for i := range 5 {
		add("s/a", fmt.Sprint(i), now-int64(5-i)*hour) // 5 h ago … 1 h ago
	}
	add("s/b", "x", now-3*hour)
	add("s/b", "", now-3*hour) // deleted 3 h ago
	add("s/c", "y", now-3*hour)
	add("t/x", "z", now)
	if _, err := s.Commit(Batch{History: hist, Rev: uint64(len(hist))}); err != nil {
		t.Fatal(err)
	}
	read := func(filter string) string {
		out := map[string][]string{}
		err := s.History(filter, 0, func(topic string, pairs []Pair) bool {
			for _, p := range pairs {
				out[topic] = append(out[topic], p.Value.Data)
			}
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(out)
	}
	if got := read("s/+"); got != "map[s/a:[0 1 2 3 4] s/b:[x ] s/c:[y]]" {
		t.Errorf("history %s", got)
	}
	// Two values of one row in one batch (one revision, ordered by Seq) are both kept.
	twice := []Change{{Topic: "u/x", Value: val("1"), Rev: 99, MS: now, Seq: 1}, {Topic: "u/x", Value: val("2"), Rev: 99, MS: now, Seq: 2}}
	if _, err := s.Commit(Batch{History: twice, Rev: 99}); err != nil {
		t.Fatal(err)
	}
	if got := read("u/#"); got != "map[u/x:[1 2]]" {
		t.Errorf("two values in one revision: %s", got)
	}
	if got := read("s/a"); got != "map[s/a:[0 1 2 3 4]]" {
		t.Errorf("history of one row %s", got)
	}
	// A read past its bound fails, and hands out nothing.
	called := false
	if err := s.History("s/+", 100, func(string, []Pair) bool { called = true; return true }); !errors.Is(err, ErrTooMuch) || called {
		t.Errorf("bounded read: %v, called %v", err, called)
	}
	rules := []HistoryRule{{Filter: "s/#", Keep: 3, MaxAge: 150 * time.Minute}, {Filter: "u/#", Keep: 5}}
	if more, err := s.Prune(rules, now, 100); err != nil || more {
		t.Fatal(more, err)
	}
	// s/a: keep 3 before the newest leaves 1..4, max_age 2.5 h leaves 3, 4;
	// s/b's deletion is older than max_age: gone; s/c's newest value stays;
	// t/x has no rule.
	if got := read("#"); got != "map[s/a:[3 4] s/c:[y] u/x:[1 2]]" {
		t.Errorf("after prune %s", got)
	}
	if more, err := s.Prune(nil, now, 1); err != nil || !more {
		t.Errorf("bounded prune: more %v %v", more, err)
	}
}

// TestRetainerHistoryAndFloor: the retainer records the changes of rows
// under a rule, every one, committed with the rows; it compacts markers
// that fall out of the resume window and raises its floor first.
func TestRetainerHistoryAndFloor(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := must(New(s, Options{Interval: time.Millisecond, ResumeWindow: 16, History: []HistoryRule{{Filter: "h/+", Keep: 10}}}, zerolog.Nop()))
	for i := uint64(1); i <= 40; i++ {
		cs := []Change{{Topic: "h/a", Value: val(fmt.Sprint(i)), Rev: i}, {Topic: "n/a", Value: val("x"), Rev: i}}
		if i%2 == 0 {
			cs = append(cs, Change{Topic: fmt.Sprint("d/", i), Rev: i})
		}
		r.Add(cs)
	}
	done := make(chan error, 1)
	r.Add(nil, done)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n := 0
	err = r.History("#", 0, func(topic string, pairs []Pair) bool {
		if topic != "h/a" {
			t.Errorf("history of %s", topic)
		}
		n = len(pairs)
		return true
	})
	if err != nil || n == 0 {
		t.Fatalf("history: %d values, %v", n, err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if f := r.Floor(); f < 40-16-16 || f > 40-16 {
		t.Errorf("floor %d, want about %d", f, 40-16)
	}
	var first uint64
	s.Deleted(0, 100, func(_ string, rev uint64) bool { first = rev; return false })
	if first <= r.Floor() {
		t.Errorf("marker at %d survived compaction to %d", first, r.Floor())
	}
	if m := s.Meta(); m.Rev != 0 { // Meta is what the store knew when opened
		t.Errorf("meta %+v", m)
	}
}

// TestHistoryEpochs: a row's values spread over several epochs read back
// oldest first, a filter's literal prefix is honoured in each epoch, and
// prune counts a row's values over all of them.
func TestHistoryEpochs(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now().UnixMilli()
	rev := uint64(0)
	for epoch := uint64(1); epoch <= 3; epoch++ {
		var hist []Change
		for _, topic := range []string{"a/x", "b/x", "a/y"} {
			rev++
			hist = append(hist, Change{Topic: topic, Value: val(fmt.Sprint(topic, "@", epoch)), Rev: rev, MS: now})
		}
		if _, err := s.Commit(Batch{History: hist, Rev: rev, Epoch: epoch * 10}); err != nil {
			t.Fatal(err)
		}
	}
	read := func(filter string) string {
		out := map[string][]string{}
		if err := s.History(filter, 0, func(topic string, pairs []Pair) bool {
			for _, p := range pairs {
				out[topic] = append(out[topic], p.Value.Data)
			}
			return true
		}); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(out)
	}
	if got := read("a/+"); got != "map[a/x:[a/x@1 a/x@2 a/x@3] a/y:[a/y@1 a/y@2 a/y@3]]" {
		t.Errorf("a/+ over three epochs: %s", got)
	}
	if got := read("b/x"); got != "map[b/x:[b/x@1 b/x@2 b/x@3]]" {
		t.Errorf("b/x over three epochs: %s", got)
	}
	if s2 := s.Meta(); s2.Epoch != 0 { // Meta is what the store knew when opened
		t.Errorf("meta epoch %d", s2.Epoch)
	}
	if more, err := s.Prune([]HistoryRule{{Filter: "#", Keep: 1}}, now, 100); err != nil || more {
		t.Fatal(more, err)
	}
	if got := read("#"); got != "map[a/x:[a/x@2 a/x@3] a/y:[a/y@2 a/y@3] b/x:[b/x@2 b/x@3]]" {
		t.Errorf("after prune to keep 1: %s", got)
	}
}

// TestMaxMarkers: past MaxMarkers the oldest markers go whatever the
// window, and the floor rises with them.
func TestMaxMarkers(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := must(New(s, Options{Interval: time.Millisecond, MaxMarkers: 10}, zerolog.Nop()))
	for i := uint64(1); i <= 50; i++ {
		done := make(chan error, 1)
		r.Add([]Change{{Topic: fmt.Sprint("d/", i), Rev: i}}, done)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	n, _, err := s.Markers(0)
	if err != nil || n > 12 || n == 0 {
		t.Errorf("%d markers kept, want about 10 (%v)", n, err)
	}
	var first uint64
	s.Deleted(0, 100, func(_ string, rev uint64) bool { first = rev; return false })
	if f := r.Floor(); f < 30 || first <= f {
		t.Errorf("floor %d, oldest marker %d", f, first)
	}
}

// TestRetainerSetHistory: rules handed in with SetHistory apply to the
// changes added after it; the values stored before stay, and the prune
// after the next commit applies the new keep to them (and drops the
// values of a row no rule names any more).
func TestRetainerSetHistory(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := must(New(s, Options{Interval: time.Hour, PruneEvery: time.Hour, History: []HistoryRule{{Filter: "a/+", Keep: 10}}}, zerolog.Nop()))
	rev := uint64(0)
	add := func(topics ...string) {
		t.Helper()
		for i := range 5 {
			rev++
			var cs []Change
			for _, topic := range topics {
				cs = append(cs, Change{Topic: topic, Value: val(fmt.Sprint(i)), Rev: rev})
			}
			r.Add(cs)
		}
		done := make(chan error, 1)
		r.Add(nil, done)
		if err := recv(t, done, "flush"); err != nil {
			t.Fatal(err)
		}
	}
	counts := func() map[string]int {
		t.Helper()
		n := map[string]int{}
		if err := r.History("#", 0, func(topic string, pairs []Pair) bool { n[topic] = len(pairs); return true }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	add("a/x", "b/x")
	if got := fmt.Sprint(counts()); got != "map[a/x:5]" {
		t.Fatalf("before: %s", got)
	}
	rules := []HistoryRule{{Filter: "b/+", Keep: 2}, {Filter: "a/x", Keep: 1}}
	r.SetHistory(rules)
	rules[0].Keep = 99 // SetHistory kept its own copy
	if got := r.HistoryRules(); len(got) != 2 || got[0].Keep != 2 {
		t.Fatalf("HistoryRules: %+v", got)
	}
	// The next commit (one: the interval is long, the waiter makes it)
	// keeps b/x's changes, and the prune after it applies the new rules to
	// what is stored: a/x keeps 1 earlier value, b/x 2.
	settled := func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := fmt.Sprint(counts())
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("history %s, want %s", got, want)
			}
			time.Sleep(5 * time.Millisecond) // the prune follows the commit on the retainer's goroutine
		}
	}
	add("b/x")
	settled("map[a/x:2 b/x:3]")
	// No rule for a/x any more: its stored values go at the next prune;
	// new changes of it are not kept.
	r.SetHistory([]HistoryRule{{Filter: "b/+", Keep: 2}})
	add("a/x", "b/x")
	settled("map[b/x:3]")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}
