package retain

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	bolt "go.etcd.io/bbolt"

	"github.com/mote-mqtt/mote/wire"
)

// flakyStore is a real Store whose Commit fails whole (as a full disk
// would) every failEvery-th call, before touching the file. It checks
// the batch it is handed is not written while it commits: the retainer
// hands the store its pending set's own slice, with no copy.
type flakyStore struct {
	*Store
	failEvery int
	calls     atomic.Int64
	failures  atomic.Int64
	changed   atomic.Int64 // commits whose Changes were written during Commit
}

var errDiskFull = errors.New("simulated: no space left on device")

func (f *flakyStore) Commit(b Batch) ([]Rejected, error) {
	n := f.calls.Add(1)
	before := slices.Clone(b.Changes)
	defer func() {
		if !slices.Equal(before, b.Changes) {
			f.changed.Add(1)
		}
	}()
	if f.failEvery > 0 && n%int64(f.failEvery) == 0 {
		f.failures.Add(1)
		return nil, errDiskFull
	}
	return f.Store.Commit(b)
}

// storable is whether the store keeps a set of topic (else it refuses
// it, and deletes the row).
func storable(topic string) bool { return topicError(topic) == nil }

// adversarial topics: empty, too long for a key, exactly the longest,
// non-ASCII, prefixes that are whole topics, equal 8-byte heads past
// the storm's common prefix, and bytes 0 and 0xff.
func adversarialTopics() []string {
	return []string{
		"",
		strings.Repeat("x", MaxTopic+1),
		strings.Repeat("y", bolt.MaxKeySize+1),
		strings.Repeat("z", MaxTopic),
		"h/" + strings.Repeat("w", 100),
		"é/ü/日本", "日本/語", "\xff\xfe", "a\x00b", "a", "a\x00", "\x00",
		"boot", "boot/", "boot/d", "boot/d00001", "boot/d00001/", "boot/d00001/r01",
		"boot/d00001/r01/xxxxxxxx", "boot/d00001/r01/xxxxxxxxA", "boot/d00001/r01/xxxxxxxxB",
		"boot/d00001/r01/xxxxxxxxA0", "boot/d00001/r01\x00", "boot/d00001/r01\xff",
		"h/a", "h/a/b", "h/日本", "h/\xff", "h/boot/d00001", "h/boot/d00001/r01",
		"zz/last", "zzzzzzzzzzzz/last",
	}
}

// TestRetainerStormThenRandomModel drives a retainer over a real store
// as the message loop does: a boot storm of appended rows (pages filled
// full), then random sets and deletes of storm rows and adversarial
// topics (random inserts into full pages), several changes of one topic
// in one Add (the last must win), commits failing whole now and then,
// Deleted read concurrently. At the end the store must hold exactly the
// newest storable value of every topic, a marker for every topic whose
// last change is a delete and no marker for a delete never made, every
// history value in order, and a file bbolt's check finds sound, before
// and after a reopen.
func TestRetainerStormThenRandomModel(t *testing.T) {
	for _, tc := range []struct {
		seed   uint64
		window uint64 // Options.ResumeWindow: markers are compacted during the run
	}{{1, 0}, {2, 0}, {3, 600}} {
		t.Run(fmt.Sprint("seed ", tc.seed), func(t *testing.T) { stormThenRandom(t, tc.seed, tc.window) })
	}
}

func stormThenRandom(t *testing.T, seed, window uint64) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	fs := &flakyStore{Store: s, failEvery: 7}
	rules := []HistoryRule{{Filter: "h/#", Keep: 1 << 20}}
	r := must(New(fs, Options{Interval: time.Millisecond, MaxBatch: 1500, History: rules, ResumeWindow: window}, zerolog.Nop()))

	rnd := rand.New(rand.NewPCG(seed, 99))
	type state struct {
		c    Change
		sets []Change // every change in order (history)
	}
	model := map[string]*state{}
	deletes := map[string]map[uint64]bool{} // topic → revisions it was deleted at
	rev := uint64(0)
	apply := func(cs []Change) {
		for _, c := range cs {
			st := model[c.Topic]
			if st == nil {
				st = &state{}
				model[c.Topic] = st
			}
			st.c = c
			st.sets = append(st.sets, c)
			if c.Value.Kind == wire.None {
				if deletes[c.Topic] == nil {
					deletes[c.Topic] = map[uint64]bool{}
				}
				deletes[c.Topic][c.Rev] = true
			}
		}
	}

	// Concurrent readers of what is pending and committing.
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := r.Deleted(0, ^uint64(0), func(string, uint64) bool { return true }); err != nil {
				t.Error(err)
				return
			}
			r.Pending()
		}
	}()

	// The storm: rows appended in key order, in Adds of one device each.
	var stormTopics []string
	for d := range 400 {
		rev++
		cs := make([]Change, 0, 50)
		for k := range 50 {
			topic := fmt.Sprintf("boot/d%05d/r%02d", d, k)
			stormTopics = append(stormTopics, topic)
			cs = append(cs, Change{Topic: topic, Value: val(fmt.Sprint("s", rev)), Rev: rev, MS: int64(rev)})
		}
		apply(cs)
		r.Add(cs)
	}
	// Random changes: of storm rows (inserts into full pages) and of
	// adversarial topics, several changes of one topic in one Add.
	pool := append(adversarialTopics(), stormTopics...)
	for i := range 3000 {
		rev++
		n := 1 + rnd.IntN(6)
		cs := make([]Change, 0, n)
		for range n {
			var topic string
			switch rnd.IntN(4) {
			case 0:
				topic = pool[rnd.IntN(len(adversarialTopics()))]
			case 1: // a recent change's topic again, in the same Add
				if len(cs) > 0 {
					topic = cs[rnd.IntN(len(cs))].Topic
					break
				}
				fallthrough
			case 2:
				topic = pool[rnd.IntN(len(pool))]
			default: // a new row between stored ones
				topic = fmt.Sprintf("boot/d%05d/r%02d/n%d", rnd.IntN(400), rnd.IntN(50), rnd.IntN(4))
			}
			c := Change{Topic: topic, Rev: rev, MS: int64(rev)}
			if rnd.IntN(3) != 0 {
				c.Value = wire.Value{Kind: wire.Bytes, Data: fmt.Sprintf("v%d.%d", rev, len(cs))}
				c.QoS = byte(rnd.IntN(3))
			}
			cs = append(cs, c)
		}
		apply(cs)
		if i%97 == 0 { // a publisher waiting for its rows (SyncRetain)
			done := make(chan error, 1)
			r.Add(cs, done)
			recv(t, done, "commit")
			// Resume (SPEC §8): every row whose last change is a delete
			// above the floor is reported deleted, at that revision.
			seen := map[string]uint64{}
			if err := r.Deleted(0, rev, func(topic string, rev uint64) bool {
				seen[topic] = max(seen[topic], rev)
				return true
			}); err != nil {
				t.Fatal(err)
			}
			floor := r.Floor()
			for topic, st := range model {
				if st.c.Value.Kind == wire.None && st.c.Rev > floor && storable(topic) && seen[topic] != st.c.Rev {
					t.Fatalf("after rev %d: Deleted reports %.40q at %d, want its delete at %d (floor %d)", rev, topic, seen[topic], st.c.Rev, floor)
				}
			}
		} else {
			r.Add(cs)
		}
	}
	close(stop)
	readers.Wait()
	if err := closeWithin(t, r); err != nil && !errors.Is(err, ErrLost) {
		t.Fatal(err)
	}
	if window > 0 && r.Floor() == 0 {
		t.Fatal("no marker compacted: the test did not test compaction")
	}
	t.Logf("%d commits, %d failed, %d rows refused, floor %d, rev %d", fs.calls.Load(), fs.failures.Load(), r.Lost.Load(), r.Floor(), rev)
	if fs.failures.Load() == 0 {
		t.Fatal("no commit failed: the test did not test failures")
	}
	if n := fs.changed.Load(); n > 0 {
		t.Fatalf("%d commits' changes were written while the store committed them", n)
	}
	// Only topics bbolt cannot hold may be refused.
	if lost := r.Lost.Load(); lost == 0 {
		t.Fatal("no row refused: the adversarial topics were not committed")
	}

	check := func(s *Store) {
		t.Helper()
		rows := rowsOf(t, s)
		for topic, st := range model {
			row, ok := rows[topic]
			want := st.c.Value.Kind != wire.None && storable(topic)
			switch {
			case want && !ok:
				t.Errorf("row %.40q (rev %d) missing", topic, st.c.Rev)
			case !want && ok:
				t.Errorf("row %.40q present (rev %d), its last change at %d is a delete or unstorable", topic, row.Rev, st.c.Rev)
			case ok && (row.Value != st.c.Value || row.QoS != st.c.QoS || row.Rev != st.c.Rev || row.MS != st.c.MS):
				t.Errorf("row %.40q is %+v, want %+v", topic, row, st.c)
			}
		}
		for topic := range rows {
			if model[topic] == nil {
				t.Errorf("row %.40q was never set", topic)
			}
		}
		// Markers: one at the last delete of every topic that ends deleted,
		// none for a delete never made.
		marked := map[string]map[uint64]bool{}
		err := s.Deleted(0, ^uint64(0), func(topic string, rev uint64) bool {
			if !deletes[topic][rev] {
				t.Errorf("marker %.40q at %d: no such delete", topic, rev)
			}
			if marked[topic] == nil {
				marked[topic] = map[uint64]bool{}
			}
			marked[topic][rev] = true
			return true
		})
		if err != nil {
			t.Fatal(err)
		}
		floor := max(s.Meta().Floor, r.Floor())
		for topic, st := range model {
			if st.c.Value.Kind == wire.None && storable(topic) && st.c.Rev > floor && !marked[topic][st.c.Rev] {
				t.Errorf("no marker for %.40q deleted at %d", topic, st.c.Rev)
			}
		}
		// History: every change of the rows under h/#, in order.
		got := map[string][]Pair{}
		if err := s.History("h/#", 0, func(topic string, pairs []Pair) bool {
			got[topic] = slices.Clone(pairs)
			return true
		}); err != nil {
			t.Fatal(err)
		}
		for topic, st := range model {
			if RuleFor(rules, topic) == nil {
				continue
			}
			var want []Pair
			for _, c := range st.sets {
				want = append(want, Pair{Rev: c.Rev, MS: c.MS, Value: c.Value})
			}
			if !slices.Equal(got[topic], want) {
				t.Errorf("history of %q: %d values, want %d\n got %v\nwant %v", topic, len(got[topic]), len(want), got[topic], want)
			}
		}
		if err := s.db.View(func(tx *bolt.Tx) error {
			for err := range tx.Check() {
				t.Errorf("bbolt check: %v", err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Meta().Clean || s.Meta().Rev != rev {
		t.Errorf("reopened: %+v, want clean at rev %d", s.Meta(), rev)
	}
	check(s)
}

// FuzzSortedOrder: sortedOrder against a plain sort by topic, for topics
// cut from the input at each '|' (distinct: a batch holds one change per
// topic). The topics may share any prefix, be empty, or be prefixes of
// one another.
func FuzzSortedOrder(f *testing.F) {
	f.Add("boot/d00001/r01|boot/d00001/r0|boot/d00001/r01\x00|boot/d00001")
	f.Add("|a|a\x00|a\x00\x00\x00\x00\x00\x00\x00\x00|\xff\xff\xff\xff\xff\xff\xff\xff\xff")
	f.Add("é/ü|é/ü/日本|é|日本")
	f.Add("prefix/xxxxxxxxA|prefix/xxxxxxxxB|prefix/xxxxxxxx|prefix/xxxxxxxxA0|prefix/")
	f.Fuzz(func(t *testing.T, in string) {
		seen := map[string]bool{}
		var changes []Change
		for _, topic := range strings.Split(in, "|") {
			if !seen[topic] {
				seen[topic] = true
				changes = append(changes, Change{Topic: topic})
			}
		}
		got, want := sortedOrder(changes), byTopic(changes)
		if len(got) != len(want) {
			t.Fatalf("%d indexes, want %d", len(got), len(want))
		}
		for i := range got {
			if changes[got[i]].Topic != changes[want[i]].Topic {
				t.Fatalf("at %d: %q, want %q", i, changes[got[i]].Topic, changes[want[i]].Topic)
			}
		}
	})
}

// crashTopic is the topic the crash child writes at index i: a storm of
// appended rows first, then rewrites of them and, every 7th, a new row
// between stored ones (an insert into pages filled full).
func crashTopic(i int) string {
	const storm = 30_000
	j := i % storm
	base := fmt.Sprintf("boot/d%05d/r%02d", j/50, j%50)
	if i >= storm && i%7 == 0 {
		return base + "/x"
	}
	return base
}

// crashRound separates the values of the crash child's rounds.
const crashRound = 1_000_000

// TestCrashChild is the process TestKillDuringStorm kills: it writes
// crashTopic(i) = round×crashRound + i through a retainer, and prints "acked i" each time
// the rows up to i are committed.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv("MOTE_RT_CRASH_DIR")
	if dir == "" {
		t.Skip("run by TestKillDuringStorm")
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	round, _ := strconv.Atoi(os.Getenv("MOTE_RT_CRASH_ROUND"))
	r := must(New(s, Options{Interval: time.Millisecond, MaxBatch: 2000}, zerolog.Nop()))
	for i := 0; ; {
		cs := make([]Change, 10)
		for k := range cs {
			cs[k] = Change{Topic: crashTopic(i), Value: val(strconv.Itoa(round*crashRound + i)), Rev: uint64(i + 1)}
			i++
		}
		if i%1000 != 0 {
			r.Add(cs)
			continue
		}
		done := make(chan error, 1)
		r.Add(cs, done)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		fmt.Printf("acked %d\n", i-1)
	}
}

// TestKillDuringStorm kills a process writing a storm of rows through a
// retainer (pages filled full, then rows inserted between them) with
// SIGKILL at a random point, several rounds on one store: the store must
// open, pass bbolt's check, and hold every row acknowledged before the
// kill, with its acknowledged value or a later one it was set to.
func TestKillDuringStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a process several times")
	}
	dir := t.TempDir()
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))
	for round := range 3 {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), "MOTE_RT_CRASH_DIR="+dir, fmt.Sprint("MOTE_RT_CRASH_ROUND=", round))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		threshold := 5_000 + rnd.IntN(60_000)
		acked := -1
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if n, ok := strings.CutPrefix(sc.Text(), "acked "); ok {
				acked, _ = strconv.Atoi(n)
				if acked >= threshold {
					break
				}
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
		cancel()
		if acked < threshold {
			t.Fatalf("round %d: the child stopped at %d acked: %s", round, acked, stderr.String())
		}
		s, err := Open(dir)
		if err != nil {
			t.Fatalf("round %d: store does not open after kill -9: %v", round, err)
		}
		rows := rowsOf(t, s)
		last := map[string]int{} // topic → the last index ≤ acked that wrote it
		for i := 0; i <= acked; i++ {
			last[crashTopic(i)] = i
		}
		for topic, i := range last {
			row, ok := rows[topic]
			if !ok {
				t.Errorf("round %d: acked row %s (index %d) missing", round, topic, i)
				continue
			}
			v, err := strconv.Atoi(row.Value.Data)
			if err != nil || v < round*crashRound+i || crashTopic(v%crashRound) != topic {
				t.Errorf("round %d: row %s is %q, want %d or a later write of it", round, topic, row.Value.Data, round*crashRound+i)
			}
		}
		if err := s.db.View(func(tx *bolt.Tx) error {
			for err := range tx.Check() {
				t.Errorf("round %d: bbolt check: %v", round, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if t.Failed() {
			return
		}
		t.Logf("round %d: killed after %d acked, %d rows", round, acked, len(rows))
	}
}

// TestStormSetsNotKept: after a storm commit of 200,000 rows, the sets
// the retainer keeps (pending, and the spare for the next commit) are
// back to the bound within two small commits: none stays made for the
// storm's size.
func TestStormSetsNotKept(t *testing.T) {
	f := scripted()
	const maxBatch = 1000
	r := must(New(f, Options{Interval: time.Millisecond, MaxBatch: maxBatch}, zerolog.Nop()))
	step := func(what string, cs []Change, during func()) {
		t.Helper()
		done := make(chan error, 1)
		r.Add(cs, done)
		recv(t, f.calls, what)
		if during != nil {
			during()
		}
		f.results <- nil
		if err := recv(t, done, what); err != nil {
			t.Fatal(err)
		}
	}
	step("first commit", []Change{{Topic: "a", Value: val("1"), Rev: 1}}, func() {
		for i := range 200_000 { // the storm piles up behind the running commit
			r.Add([]Change{{Topic: fmt.Sprintf("boot/d%06d", i), Value: val("x"), Rev: uint64(i + 2)}})
		}
	})
	if got := len(recv(t, f.calls, "storm commit")); got != 200_000 {
		t.Fatalf("storm commit of %d rows", got)
	}
	f.results <- nil
	for i := range 2 {
		step("small commit", []Change{{Topic: "a", Value: val(fmt.Sprint(i)), Rev: uint64(300_000 + i)}}, nil)
	}
	r.mu.Lock()
	pending, spare := r.pending.size(), 0
	if r.spare != nil {
		spare = r.spare.size()
	}
	r.mu.Unlock()
	if pending > 2*maxBatch || spare > 2*maxBatch {
		t.Errorf("after the storm: pending set made for %d rows, spare for %d; want at most %d", pending, spare, 2*maxBatch)
	}
	stop := f.answerAll(nil)
	defer stop()
	if err := closeWithin(t, r); err != nil {
		t.Fatal(err)
	}
}

// windowStore is an in-memory store whose Commit fails whole every
// third call and, before applying a batch, yields a while and checks the
// batch was not written meanwhile (the retainer hands it the pending
// set's own slice).
type windowStore struct {
	fakeStore
	calls   atomic.Int64
	changed atomic.Int64
}

func (w *windowStore) Commit(b Batch) ([]Rejected, error) {
	before := slices.Clone(b.Changes)
	for range 50 {
		runtime.Gosched() // room for Adds to land where they must not
	}
	if !slices.Equal(before, b.Changes) {
		w.changed.Add(1)
	}
	if w.calls.Add(1)%3 == 0 {
		return nil, errDiskFull
	}
	return w.fakeStore.Commit(b)
}

// TestPendingSliceNotAliased: several goroutines add changes (many to
// the same topics, the last of each must win) while commits run and
// fail, and Deleted and Pending read the sets; run with -race. No
// commit's slice is written while the store holds it, and the store ends
// with the newest change of every topic.
func TestPendingSliceNotAliased(t *testing.T) {
	for round := range 20 {
		w := &windowStore{}
		r := must(New(w, Options{Interval: time.Microsecond, MaxBatch: 64}, zerolog.Nop()))
		const adders, adds, topics = 4, 2000, 97
		last := make([]map[string]Change, adders)
		stop := make(chan struct{})
		var wg, readers sync.WaitGroup
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r.Deleted(0, ^uint64(0), func(string, uint64) bool { return true })
				r.Pending()
			}
		}()
		for a := range adders {
			last[a] = map[string]Change{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				rnd := rand.New(rand.NewPCG(uint64(round), uint64(a)))
				for i := range adds {
					cs := make([]Change, 1+rnd.IntN(4))
					for k := range cs {
						c := Change{Topic: fmt.Sprintf("t%d/%d", a, rnd.IntN(topics)), Rev: uint64(i*adders + a + 1)}
						if rnd.IntN(4) != 0 {
							c.Value = val(fmt.Sprint(i, ".", k))
						}
						cs[k] = c
						last[a][c.Topic] = c
					}
					r.Add(cs)
				}
			}()
		}
		wg.Wait()
		close(stop)
		readers.Wait()
		if err := closeWithin(t, r); err != nil {
			t.Fatal(err)
		}
		if n := w.changed.Load(); n > 0 {
			t.Fatalf("round %d: %d commits' changes were written while the store held them", round, n)
		}
		for a := range adders {
			for topic, c := range last[a] {
				got, ok := w.rows[topic]
				switch {
				case c.Value.Kind == wire.None && ok:
					t.Fatalf("round %d: %s deleted last (rev %d), stored %+v", round, topic, c.Rev, got)
				case c.Value.Kind != wire.None && got != c:
					t.Fatalf("round %d: %s is %+v, want %+v", round, topic, got, c)
				}
			}
		}
	}
}

// TestRowSetPastMaxHint: a set made for maxHint rows grows past it (the
// slice doubles twice) and keeps every topic's newest change, in the
// order the topics first came, with each topic once.
func TestRowSetPastMaxHint(t *testing.T) {
	s := newRowSet(1 << 30)
	const n = 2*maxHint + 1000
	for i := range n {
		s.put(Change{Topic: strconv.Itoa(i), Rev: uint64(i)})
		if i%3 == 0 && i > 0 { // overwrite an older topic, after a growth or not
			s.put(Change{Topic: strconv.Itoa(i / 2), Rev: uint64(n + i)})
		}
	}
	if s.len() != n {
		t.Fatalf("%d topics, want %d", s.len(), n)
	}
	want := make([]uint64, n)
	for i := range n {
		want[i] = uint64(i)
	}
	for i := 3; i < n; i += 3 {
		want[i/2] = uint64(n + i)
	}
	for i, c := range s.rows() {
		if c.Topic != strconv.Itoa(i) || c.Rev != want[i] {
			t.Fatalf("row %d is %s at %d, want %d at %d", i, c.Topic, c.Rev, i, want[i])
		}
	}
}
