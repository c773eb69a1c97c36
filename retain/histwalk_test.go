package retain

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/wire"
)

// TestHistorySizesWalkHolds: an estimate of a wildcard filter holds the
// sizes' lock, which a commit takes, for at most histChunk rows at a
// time, and visits only the rows past the filter's literal prefix
// (review h-rv7: one estimate over 1,000,000 rows held it 70-290 ms, every
// row visited whatever the filter; site/7/# visited site/70..., too).
func TestHistorySizesWalkHolds(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const rows = 80_000 // site/0..79/dev/D/temp, 1,000 rows a site
	fillSizes(s, rows)
	for _, c := range []struct {
		filter  string
		visited int // rows visited
		matched int
	}{
		{"#", rows, rows},
		{"+/zz", rows, 0},
		{"site/+/dev/1/temp", rows, 1},
		{"site/7/#", 1000, 1000}, // not site/70 to site/79's
		{"site/7/+/+/temp", 1000, 1000},
		{"site/79/dev/+/temp", 1000, 1000},
		{"site/7", 0, 0}, // a lookup
		{"site/8/dev/#", 1000, 1000},
		{"site/8/dev/1/#", 0, 0}, // site/8's devices are 8000 to 8999
		{"nothing/#", 0, 0},
	} {
		visited, holds, most := 0, 0, 0
		s.hsizes.walked = func(n int, _ string, _ time.Duration) {
			visited += n
			holds++
			most = max(most, n)
		}
		matched := 0
		if !s.HistorySizes(c.filter, func(string, HistSize) bool { matched++; return true }) {
			t.Fatalf("%q: sizes unknown", c.filter)
		}
		if visited != c.visited || matched != c.matched || most > histChunk {
			t.Errorf("%q: %d rows visited in %d holds, at most %d a hold, %d matched; want %d visited, at most %d a hold, %d matched",
				c.filter, visited, holds, most, matched, c.visited, histChunk, c.matched)
		}
	}
}

// TestHistorySizesWriterFirst: a write waiting for the sizes' lock while
// a walk lets it go between chunks has it before the walk takes it again
// (histSizes.writers): a sync.Mutex mostly goes back to the goroutine
// that let it go, and a commit waited for several chunks.
func TestHistorySizesWriterFirst(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fillSizes(s, 10*histChunk)
	h := &s.hsizes
	// After the first chunk, the hook holds the lock as another write
	// would, starts a write of the row just past the walk's last one,
	// lets it queue for the lock, and lets the lock go: a walk that
	// takes it first never sees the row (it resumes past it, the row
	// not there yet).
	var written string
	done := make(chan struct{})
	h.walked = func(_ int, last string, _ time.Duration) {
		if written != "" {
			return
		}
		written = last + "\x00"
		h.mu.Lock()
		go func() {
			defer close(done)
			h.count([]sized{{topic: written, n: 1}}, true)
		}()
		for h.writers.Load() == 0 {
			runtime.Gosched()
		}
		h.mu.Unlock()
	}
	seen := false
	s.HistorySizes("#", func(topic string, _ HistSize) bool {
		seen = seen || topic == written
		return true
	})
	<-done
	if !seen {
		t.Errorf("the walk went on before the write waiting for the lock: %q not seen", written)
	}
}

// TestHistorySizesWalkBound: an estimate whose walk lets the lock go
// between chunks is still an upper bound of what an answer then reads
// (R3-hist), with commits and prunes between its chunks: per row, at
// least as many values, as many bytes (ValueBound) and as large a value,
// counting, as Retainer.HistorySizes does, the values handed in before
// the estimate from its queue (here: those committed during the walk).
func TestHistorySizesWalkBound(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.db.NoSync = true // the interleavings, not the disk
	rnd := rand.New(rand.NewPCG(1, 2))
	now := time.Now().UnixMilli()
	rev := uint64(0)
	value := func() wire.Value {
		return wire.Value{Kind: wire.String, Data: strings.Repeat("\x01", rnd.IntN(40))}
	}
	topic := func() string { return fmt.Sprintf("p/%d/%d", rnd.IntN(12), rnd.IntN(300)) }
	commit := func(n int) []Change {
		hist := make([]Change, n)
		for i := range hist {
			rev++
			hist[i] = Change{Topic: topic(), Value: value(), Rev: rev, MS: now}
		}
		if _, err := s.Commit(Batch{History: hist, Rev: rev, Epoch: 1}); err != nil {
			t.Fatal(err)
		}
		return hist
	}
	for range 4 {
		commit(1500)
	}
	for round := range 30 {
		filter := []string{"#", "p/+/+", "p/3/#", "+/1/+", "p/#", "p/+/7"}[round%6]
		est := map[string]HistSize{}
		add := func(topic string, size HistSize) {
			e := est[topic]
			e.Values += size.Values
			e.Bytes += size.Bytes
			e.Most = max(e.Most, size.Most)
			est[topic] = e
		}
		s.hsizes.walked = func(int, string, time.Duration) {
			switch rnd.IntN(3) {
			case 0: // values handed in before the estimate: counted from the queue
				for _, c := range commit(rnd.IntN(200)) {
					if wire.Match(filter, c.Topic) {
						n := ValueBound(c.Value)
						add(c.Topic, HistSize{Values: 1, Bytes: n, Most: n})
					}
				}
			case 1:
				rules := []HistoryRule{{Filter: "p/#", Keep: rnd.IntN(3)}}
				if _, err := s.Prune(rules, now, rnd.IntN(500)); err != nil {
					t.Fatal(err)
				}
			}
		}
		if !s.HistorySizes(filter, func(topic string, size HistSize) bool { add(topic, size); return true }) {
			t.Fatal("sizes unknown")
		}
		s.hsizes.walked = nil
		rows := 0
		if err := s.History(filter, 0, func(topic string, pairs []Pair) bool {
			rows++
			var got HistSize
			for _, p := range pairs {
				n := ValueBound(p.Value)
				got.Values++
				got.Bytes += n
				got.Most = max(got.Most, n)
			}
			if e := est[topic]; got.Values > e.Values || got.Bytes > e.Bytes || got.Most > e.Most {
				t.Errorf("round %d, %q: %q: read %+v, estimated %+v", round, filter, topic, got, e)
			}
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if rows == 0 {
			t.Errorf("round %d, %q: no rows read", round, filter)
		}
	}
}
