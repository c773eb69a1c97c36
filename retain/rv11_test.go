package retain

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/wire"
)

// Review h-rv11: format 3 after h-group2 (Load refuses a row key whose
// parent is grouped or has no flag; dropFlag drops an empty flag). If any
// sequence of commits left a row key without its flag, the store would
// no longer open and the broker would never start again: these tests try
// to make one.

// rv11Topic is a random topic over {a, b, /, 0x01, 0xff}: parents collide
// and are prefixes of one another, leaves "" ("p/"), bytes below '/' and
// above every other.
func rv11Topic(rnd *rand.Rand, max int) string {
	const alpha = "ab/\x01\xff"
	n := 1 + rnd.IntN(max)
	b := make([]byte, n)
	for i := range b {
		if rnd.IntN(3) == 0 {
			b[i] = '/'
		} else {
			b[i] = alpha[rnd.IntN(len(alpha))]
		}
	}
	return string(b)
}

// rv11Payload is a payload: mostly small, some past a group's 2 KiB, a
// few large enough to turn a parent single alone.
func rv11Payload(rnd *rand.Rand) string {
	switch rnd.IntN(20) {
	case 0:
		return strings.Repeat("B", 2100+rnd.IntN(3000))
	case 1:
		return strings.Repeat("m", 200+rnd.IntN(900))
	}
	return strings.Repeat("v", rnd.IntN(40))
}

// rv11Batch is a random batch: sets and deletions of random topics, now
// and then a burst of more than 64 siblings (direct rows and deeper ones)
// under one parent, or deletion of every modelled row under a prefix,
// changes the store refuses (QoS 3, a 0 byte, an empty topic), and with
// dups a topic twice (a deletion and a set of it in one batch).
func rv11Batch(rnd *rand.Rand, model map[string]Row, rev uint64, dups bool, maxLen int) []Change {
	var cs []Change
	seen := map[string]bool{}
	add := func(tp string, set bool) {
		if seen[tp] && !dups {
			return
		}
		seen[tp] = true
		c := Change{Topic: tp, Rev: rev, MS: int64(rev)}
		if set {
			c.Value = wire.Value{Kind: wire.String, Data: rv11Payload(rnd)}
			c.QoS = byte(rnd.IntN(3))
		}
		cs = append(cs, c)
	}
	existing := func() string { // a modelled topic, or a random one
		for tp := range model {
			if rnd.IntN(4) == 0 {
				return tp
			}
		}
		return rv11Topic(rnd, maxLen)
	}
	switch rnd.IntN(8) {
	case 0: // a burst of siblings under one parent, some deeper
		parent := rv11Topic(rnd, 3)
		if !strings.HasSuffix(parent, "/") {
			parent += "/"
		}
		n := 66 + rnd.IntN(20)
		if rnd.IntN(20) == 0 {
			n = 260 // past the entries commitParent keeps
		}
		for i := range n {
			leaf := strconv.Itoa(i)
			if rnd.IntN(5) == 0 {
				leaf = "\x01/" + leaf
			}
			add(parent+leaf, rnd.IntN(6) > 0)
		}
	case 2: // a parent's direct rows around more than 64 keys of deeper parents
		parent := rv11Topic(rnd, 3)
		if !strings.HasSuffix(parent, "/") {
			parent += "/"
		}
		add(parent+"\x01", true)
		for i := range 60 + rnd.IntN(20) {
			add(parent+"\x01/"+strconv.Itoa(i), true)
		}
		add(parent+"b", rnd.IntN(2) == 0)
		add(parent+strings.Repeat("B", 2100), true) // past a group's bytes: single
	case 1: // every modelled row under a prefix deleted, one re-added
		prefix := rv11Topic(rnd, 2)
		var last string
		for tp := range model {
			if strings.HasPrefix(tp, prefix) {
				add(tp, false)
				last = tp
			}
		}
		if last != "" && rnd.IntN(2) == 0 {
			if dups {
				add(last, true)
			} else if i := len(cs) - 1; i >= 0 {
				cs[i].Value, cs[i].QoS = wire.Value{Kind: wire.String, Data: rv11Payload(rnd)}, 1
			}
		}
	}
	for range rnd.IntN(40) {
		switch r := rnd.IntN(20); {
		case r == 0:
			add(existing()+"\x00/"+rv11Topic(rnd, 2), rnd.IntN(2) == 0) // refused: a 0 byte
		case r == 1:
			add("", rnd.IntN(2) == 0)
		case r == 2: // refused: QoS 3 (the old value is deleted)
			add(existing(), true)
			cs[len(cs)-1].QoS = 3
		case r < 10:
			add(existing(), rnd.IntN(3) > 0)
		default:
			add(rv11Topic(rnd, maxLen), rnd.IntN(4) > 0)
		}
	}
	return cs
}

// applyModel applies cs to model as the store must: a set stored unless
// refused (then the row is gone), a deletion deletes. A topic twice in cs
// is left to the store (the sort does not order them): its row must be
// one of the batch's outcomes for it, and the model takes the store's.
func applyModel(t *testing.T, what string, model map[string]Row, cs []Change, stored map[string]Row) {
	t.Helper()
	count := map[string]int{}
	for _, c := range cs {
		count[c.Topic]++
	}
	for _, c := range cs {
		if topicError(c.Topic) != nil {
			continue
		}
		if count[c.Topic] > 1 {
			got, ok := stored[c.Topic]
			fine := false
			for _, d := range cs {
				if d.Topic != c.Topic {
					continue
				}
				want := Row{Topic: d.Topic, Value: d.Value, QoS: d.QoS, Rev: d.Rev, MS: d.MS}
				if d.Value.Kind == wire.None || d.QoS > 2 {
					fine = fine || !ok
				} else {
					fine = fine || (ok && got == want)
				}
			}
			if !fine {
				t.Fatalf("%s: duplicated %q stored as %+v (%v): none of the batch's outcomes", what, c.Topic, short(got), ok)
			}
			if ok {
				model[c.Topic] = got
			} else {
				delete(model, c.Topic)
			}
			continue
		}
		if c.Value.Kind == wire.None || c.QoS > 2 {
			delete(model, c.Topic)
			continue
		}
		model[c.Topic] = Row{Topic: c.Topic, Value: c.Value, QoS: c.QoS, Rev: c.Rev, MS: c.MS}
	}
}

// TestRV11Model: many seeds of random commits (rv11Batch) on a format 3
// store; after every commit Load succeeds and is the model, the layout
// keeps its invariant, and every few commits the store is reopened. Some
// commits fail (an injected I/O error after the rows are written) and
// are retried, as the retainer does. RV11_SEEDS sets the seeds (default
// 12; 300 passed in review h-rv11).
func TestRV11Model(t *testing.T) {
	seeds := 12
	if n, err := strconv.Atoi(os.Getenv("RV11_SEEDS")); err == nil {
		seeds = n
	}
	if testing.Short() {
		seeds = 4
	}
	errIO := errors.New("injected I/O error")
	for seed := uint64(1); seed <= uint64(seeds); seed++ {
		rnd := rand.New(rand.NewPCG(seed, 11))
		dups := seed%2 == 0
		dir := t.TempDir()
		format2 := seed%3 == 0 // main's layout, kept: one key a row
		if format2 {
			format2File(t, dir, nil, 0, 2)
		}
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if f := s.Meta().Format; f != map[bool]byte{true: 2, false: Format}[format2] {
			t.Fatalf("seed %d: format %d", seed, f)
		}
		model, wasSingle := map[string]Row{}, map[string]bool{}
		for commit := range 150 {
			what := fmt.Sprintf("seed %d commit %d", seed, commit)
			rev := uint64(commit + 1)
			cs := rv11Batch(rnd, model, rev, dups, 4+int(seed%6))
			if rnd.IntN(10) == 0 { // fails whole, then retried
				s.failRows = func() error { return errIO }
				if _, err := s.Commit(Batch{Changes: cs, Rev: rev}); !errors.Is(err, errIO) {
					t.Fatalf("%s: failing commit: %v", what, err)
				}
				s.failRows = nil
				sameRows(t, what+" (failed)", loadAll(t, s), model)
			}
			rej, err := s.Commit(Batch{Changes: cs, Rev: rev})
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			for _, r := range rej {
				if topicError(r.Topic) == nil && r.QoS <= 2 {
					t.Fatalf("%s: refused %q: %v", what, r.Topic, r.Err)
				}
			}
			stored := map[string]Row{}
			for _, r := range loadAll(t, s) {
				stored[r.Topic] = r
			}
			applyModel(t, what, model, cs, stored)
			sameRows(t, what, loadAll(t, s), model)
			if format2 {
				checkFormat2(t, what, s, model)
			} else {
				checkLayout(t, s, wasSingle)
			}
			if rnd.IntN(5) == 0 {
				s.Trim() // the idle retainer's: the commit scratch given back
			}
			if rnd.IntN(6) == 0 {
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				if s, err = Open(dir); err != nil {
					t.Fatalf("%s: reopen: %v", what, err)
				}
				sameRows(t, what+" (reopened)", loadAll(t, s), model)
			}
		}
		s.Close()
	}
}

// checkFormat2 fails the test unless s is a format 2 store in main's
// layout: format byte 2, one key a row (the model's topics, no other).
func checkFormat2(t *testing.T, what string, s *Store, model map[string]Row) {
	t.Helper()
	if f := fileFormat(t, s); len(f) != 1 || f[0] != 2 || s.Meta().Format != 2 {
		t.Fatalf("%s: format %v (Meta %d), want 2", what, f, s.Meta().Format)
	}
	keys := rowKeys(t, s)
	if len(keys) != len(model) {
		t.Fatalf("%s: %d keys, want one a row: %d", what, len(keys), len(model))
	}
	for _, k := range keys {
		if _, ok := model[k]; !ok {
			t.Fatalf("%s: key %q is no row's", what, k)
		}
	}
}

// TestRV11Retainer: the retainer's path on a format 3 store. Random
// changes (rv11Batch's topics, a topic changed several times between two
// commits, so the retainer coalesces them) are handed to Retainer.Add in
// small pieces while it commits (MaxBatch 40, 1 ms interval), now and
// then waited for; every few rounds the retainer and the store are
// closed and reopened, and Load must succeed and be the model: the
// newest change of each topic (a refused set deletes its row). Every
// third seed starts from a format 2 file, which must stay format 2, one
// key a row.
func TestRV11Retainer(t *testing.T) {
	seeds := 8
	if testing.Short() {
		seeds = 2
	}
	for seed := uint64(1); seed <= uint64(seeds); seed++ {
		rnd := rand.New(rand.NewPCG(seed, 111))
		dir := t.TempDir()
		format2 := seed%3 == 0 // main's layout, kept
		if format2 {
			format2File(t, dir, nil, 0, 2)
		}
		model := map[string]Row{}
		rev := uint64(0)
		for run := range 6 {
			s, err := Open(dir)
			if err != nil {
				t.Fatalf("seed %d run %d: open: %v", seed, run, err)
			}
			sameRows(t, fmt.Sprintf("seed %d run %d (opened)", seed, run), loadAll(t, s), model)
			r, err := New(s, Options{Interval: time.Millisecond, MaxBatch: 40}, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			refused := false
			for range 30 {
				rev++
				cs := rv11Batch(rnd, model, rev, true, 4+int(seed%5))
				// The retainer keeps the newest change of a topic: the
				// model takes them in order.
				for _, c := range cs {
					switch {
					case topicError(c.Topic) != nil:
						refused = refused || c.Value.Kind != wire.None
					case c.Value.Kind == wire.None:
						delete(model, c.Topic)
					case c.QoS > 2:
						refused = true
						delete(model, c.Topic)
					default:
						model[c.Topic] = Row{Topic: c.Topic, Value: c.Value, QoS: c.QoS, Rev: c.Rev, MS: c.MS}
					}
				}
				for len(cs) > 0 {
					n := min(len(cs), 1+rnd.IntN(30))
					if rnd.IntN(8) == 0 {
						w := make(chan error, 1)
						r.Add(cs[:n], w)
						<-w
					} else {
						r.Add(cs[:n])
					}
					cs = cs[n:]
				}
			}
			if err := r.Close(); err != nil && !(refused && errors.Is(err, ErrLost)) {
				t.Fatalf("seed %d run %d: close: %v", seed, run, err)
			}
			if format2 {
				checkFormat2(t, fmt.Sprintf("seed %d run %d", seed, run), s, model)
			} else {
				checkLayout(t, s, map[string]bool{})
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}
		s, err := Open(dir)
		if err != nil {
			t.Fatalf("seed %d: open: %v", seed, err)
		}
		sameRows(t, fmt.Sprintf("seed %d (last open)", seed), loadAll(t, s), model)
		s.Close()
	}
}

// TestRV11_1: RV11-1. A format 2 file (main's layout, kept as it is since
// h-group2) may hold a row whose topic has a 0 byte: main's Commit checked
// only bbolt's key limits (MQTT never hands one in, a foreign or hand-made
// file may). Load hands it out as main did; but Commit, now checking
// topics for format 3's own keys in format 2 too, neither deletes it (the
// deletion was silently dropped: no key deleted, no marker, nothing
// Rejected) nor, when a set of it is refused, deletes its old value, so
// the old value comes back as current at every start. Input: format 2
// rows "n/x", "n/\x00g", "a\x00"; commit deletion of "n/\x00g" and a set
// of "a\x00"; reopen. Want (main's deletion, the package doc's "a refused
// row whose topic is a valid key is deleted"): only "n/x" left.
func TestRV11_1(t *testing.T) {
	dir := t.TempDir()
	format2File(t, dir, []Row{
		{Topic: "n/x", Value: val("x"), Rev: 1},
		{Topic: "n/\x00g", Value: val("old"), Rev: 1},
		{Topic: "a\x00", Value: val("old"), Rev: 1},
	}, 1, 2)
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(loadAll(t, s)); n != 3 || s.Meta().Format != 2 {
		t.Fatalf("%d rows, format %d: want main's 3 rows, format 2", n, s.Meta().Format)
	}
	rej, err := s.Commit(Batch{Changes: []Change{{Topic: "n/\x00g", Rev: 2}, {Topic: "a\x00", Value: val("new"), Rev: 2}}, Rev: 2})
	if err != nil || len(rej) != 1 || rej[0].Topic != "a\x00" || !errors.Is(rej[0].Err, ErrUnstorable) {
		t.Fatalf("rejected %+v, %v: want the set of %q refused", rej, err, "a\x00")
	}
	s.Close()
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sameRows(t, "reopened", loadAll(t, s), map[string]Row{"n/x": {Topic: "n/x", Value: val("x"), Rev: 1}})
	if keys := rowKeys(t, s); len(keys) != 1 {
		t.Errorf("keys %q, want one", keys)
	}
}

// FuzzRV11Commits: a byte string is a sequence of commits on a fresh
// format 3 store (fsync off): each change a topic over {a, b, /, 0x01,
// 0xff} of 1-6 bytes, a set (small, 300 B or 2,100 B) or a deletion, a
// change with bit 7 set ends its batch. After every commit Load succeeds
// and is the model, and the layout keeps its invariant.
func FuzzRV11Commits(f *testing.F) {
	f.Add([]byte("\x01\x02\x03\x84\x05\x06\x87"))
	f.Add([]byte{0x10, 0x21, 0x32, 0x43, 0x54, 0xe5, 0x10, 0x22, 0xb3})
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 600 {
			return
		}
		s, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		s.db.NoSync = true
		const alpha = "ab/\x01\xff"
		model, wasSingle := map[string]Row{}, map[string]bool{}
		var cs []Change
		seen := map[string]bool{}
		rev := uint64(1)
		for len(in) > 0 {
			op := in[0]
			n := 1 + int(op&3)%3 + int(op>>2&1)*3 // 1-6 topic bytes
			in = in[1:]
			if len(in) < n {
				n = len(in)
			}
			if n == 0 {
				break
			}
			tb := make([]byte, n)
			for i := range tb {
				tb[i] = alpha[int(in[i])%len(alpha)]
			}
			in = in[n:]
			tp := string(tb)
			if !seen[tp] {
				seen[tp] = true
				c := Change{Topic: tp, Rev: rev, MS: 1}
				switch op >> 3 & 7 {
				case 0, 1:
				case 2:
					c.Value = val(strings.Repeat("m", 300))
				case 3:
					c.Value = val(strings.Repeat("B", 2100))
				default:
					c.Value = val("v")
				}
				cs = append(cs, c)
			}
			if op&0x80 != 0 || len(in) == 0 {
				if _, err := s.Commit(Batch{Changes: cs, Rev: rev}); err != nil {
					t.Fatal(err)
				}
				for _, c := range cs {
					if c.Value.Kind == wire.None {
						delete(model, c.Topic)
					} else {
						model[c.Topic] = Row{Topic: c.Topic, Value: c.Value, Rev: c.Rev, MS: c.MS}
					}
				}
				sameRows(t, fmt.Sprintf("commit %d", rev), loadAll(t, s), model)
				checkLayout(t, s, wasSingle)
				cs, seen = cs[:0], map[string]bool{}
				rev++
			}
		}
	})
}
