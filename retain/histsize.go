package retain

import (
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/tidwall/btree"
	bolt "go.etcd.io/bbolt"

	"github.com/mote-mqtt/mote/wire"
)

// The sizes of the stored history (R3-hist, docs/redteam-rt.md). An HTTP
// history answer is counted against its budget by an estimate before it
// is read from disk (broker.AnswerSize), and the estimate must bound it:
// a past value of control characters is written six times its size in
// JSON, a float of a JSON array nine bytes in CBOR, and past values may
// be larger than the row's value now, or belong to rows deleted since.
// So the store keeps, for each row with stored history values, how many
// it holds and an upper bound of their bytes as any codec writes them,
// counted where the values' bytes are at hand: when a commit writes them,
// when a prune drops them, and once at Open for what the file held. An
// estimate reads these figures (a map entry a row), never a value.

// HistSize is what the history values of one row take, as an answer in
// any codec writes them (RowStore.HistorySizes).
type HistSize struct {
	Values int   // how many
	Bytes  int64 // the sum of their ValueBound
	Most   int64 // at least the largest ValueBound of any of them
}

// ValueBound is an upper bound of v's bytes as any codec writes it: its
// own and what the codec that grows it most adds (wire.LeafGrowth: JSON
// escapes, base64, CBOR and MessagePack heads, floats). null for a
// deletion fits it too.
func ValueBound(v wire.Value) int64 { return int64(len(v.Data)) + int64(wire.LeafGrowth(v)) }

// histSizes is the HistSize of every row with history values in the
// store. Its writers are the store's writes (Commit, Prune: each once its
// transaction committed, still under Store.mu, so in the order of the
// writes: updateThen) and Open; its readers are the estimates
// (Store.HistorySizes).
//
// The rows are kept in topic order (a B-tree, github.com/tidwall/btree),
// not in a map: an estimate of a wildcard filter walks only the rows
// past its literal prefix (site/7/# the rows under site/7/, not every
// row with history), and a few hundred of them at a time (histChunk),
// letting the lock go between and taking it again past the last topic it
// saw, so a commit, which takes this lock under Store.mu, never waits for
// more than one chunk (review h-rv7: one estimate over 1,000,000 rows
// held it 70-290 ms, and 4 looping ones held commits for good). The
// B-tree costs a commit a search of the tree a value (0.5-1 µs at
// 1,000,000 rows, against 30-70 ns in a map; BenchmarkCountMillion) and
// no memory a row more; a map beside it for the lookups cost 43 B a row
// more (BenchmarkHistorySizesMillion's heap-B/row, 103 → 146).
type histSizes struct {
	mu   sync.Mutex // guards the fields below
	rows *btree.BTreeG[histRow]
	hint btree.PathHint // the last row written's path: a commit's rows come in key order
	// unknown: the history could not be read at Open (a damaged page):
	// the sizes of the values stored then are not known.
	unknown bool
	// writers is how many writes (count) wait for mu or are about to: a
	// walk lets them have it first (HistorySizes). A sync.Mutex let go
	// and taken again at once mostly goes back to its holder, not to
	// the goroutine woken for it, until that one has waited 1 ms: a
	// commit waited 4-9 ms behind walks whose holds took at most 0.3 ms
	// (BenchmarkHistorySizesMillion).
	writers atomic.Int32
	// walked, when set (tests), is told after each hold of mu by a walk
	// (HistorySizes) how many rows it visited, the last one's topic and
	// how long it held mu; mu is let go by then.
	walked func(rows int, last string, held time.Duration)
}

// histRow is the HistSize of one row: the B-tree's item, by value (no
// allocation a row beyond its topic's bytes).
type histRow struct {
	topic string
	HistSize
}

// histChunk is how many rows an estimate visits under one hold of
// histSizes.mu: 256 rows took a median 8-20 µs, 99% of holds under 75 µs
// (a topic compared and matched a row; BenchmarkHistorySizesMillion),
// well within the millisecond a commit may wait, and the walk's own
// cost between holds (a seek, a yield) stays small beside it.
const histChunk = 256

func lessHistRow(a, b histRow) bool { return a.topic < b.topic }

// newHistRows is an empty set of rows' sizes. Its own locks are off: mu
// guards it.
func newHistRows() *btree.BTreeG[histRow] {
	return btree.NewBTreeGOptions(lessHistRow, btree.Options{NoLocks: true})
}

// addLocked counts a value of bound n stored for topic (h.mu held).
func (h *histSizes) addLocked(topic string, n int64) {
	if h.rows == nil {
		h.rows = newHistRows()
	}
	r, ok := h.rows.GetHint(histRow{topic: topic}, &h.hint)
	if !ok {
		// A copy: the entry lives as long as the row's history, and the
		// topic handed in may be cut from a larger string (a packet's
		// body, payload and all; a tree's slab), which it would keep
		// (TestHistorySizesOwnTopics).
		r.topic = strings.Clone(topic)
	}
	r.Values++
	r.Bytes += n
	r.Most = max(r.Most, n)
	h.rows.SetHint(r, &h.hint)
}

// dropLocked counts a value of bound n of topic dropped (h.mu held). Most
// stays: it bounds the values left all the same.
func (h *histSizes) dropLocked(topic string, n int64) {
	if h.rows == nil {
		return
	}
	r, ok := h.rows.GetHint(histRow{topic: topic}, &h.hint)
	if !ok {
		return
	}
	r.Values--
	r.Bytes -= n
	if r.Values <= 0 {
		h.rows.DeleteHint(r, &h.hint)
		return
	}
	h.rows.SetHint(r, &h.hint)
}

// count counts the values vs written (add) or dropped.
func (h *histSizes) count(vs []sized, add bool) {
	if len(vs) == 0 {
		return
	}
	h.writers.Add(1)
	h.mu.Lock()
	h.writers.Add(-1)
	defer h.mu.Unlock()
	for _, v := range vs {
		if add {
			h.addLocked(v.topic, v.n)
		} else {
			h.dropLocked(v.topic, v.n)
		}
	}
}

// sized is a history value written or dropped: its topic and ValueBound.
type sized struct {
	topic string
	n     int64
}

// HistorySizes calls fn with the HistSize of every row matching filter
// that has history values in the store, until fn returns false; fn must
// not call the store. false: the sizes are not known (countHistory).
//
// A wildcard filter's rows are read histChunk at a time, the lock let go
// between (histSizes), and fn is called without it. So the figures of
// each row are those committed when its chunk was read, not all of one
// instant: a row's values committed after its chunk are not counted,
// nor a row first written behind the walk. The estimate's callers count
// those apart: the values handed in before the estimate began are
// counted from the retainer's queue (Retainer.HistorySizes), and those
// handed in after it need no bound. Rows walked past are never missed:
// the walk resumes past the last topic it saw, in topic order.
func (s *Store) HistorySizes(filter string, fn func(topic string, size HistSize) bool) bool {
	h := &s.hsizes
	if !wire.HasWildcard(filter) {
		// A topic matches only itself: one lookup (a GET of one row's
		// history, the common one).
		r, ok, known := h.lookup(filter)
		if ok {
			fn(r.topic, r.HistSize)
		}
		return known
	}
	prefix, parent := walkRange(filter)
	if parent != "" && wire.Match(filter, parent) { // a/# matches a itself
		r, ok, known := h.lookup(parent)
		if !known {
			return false
		}
		if ok && !fn(r.topic, r.HistSize) {
			return true
		}
	}
	chunk := make([]histRow, 0, histChunk)
	from, past := prefix, false // resume at from; past: from was seen
	for {
		chunk = chunk[:0]
		if past {
			// Other goroutines first, a write waiting for mu above all
			// (histSizes.writers): a walk is a loop on the CPU, and the
			// retainer's goroutine, woken, would wait behind it for the
			// scheduler's 10 ms slice (BenchmarkCommitWhileEstimating).
			runtime.Gosched()
			for h.writers.Load() > 0 {
				runtime.Gosched()
			}
		}
		h.mu.Lock()
		var took time.Time
		if h.walked != nil {
			took = time.Now()
		}
		if h.unknown {
			h.mu.Unlock()
			return false
		}
		visited, end := 0, true
		if h.rows != nil {
			h.rows.Ascend(histRow{topic: from}, func(r histRow) bool {
				if past && r.topic == from {
					return true
				}
				if !strings.HasPrefix(r.topic, prefix) {
					return false
				}
				if visited == histChunk {
					end = false
					return false
				}
				visited++
				from = r.topic
				if wire.Match(filter, r.topic) {
					chunk = append(chunk, r)
				}
				return true
			})
		}
		var held time.Duration
		if h.walked != nil {
			held = time.Since(took)
		}
		h.mu.Unlock()
		if h.walked != nil {
			h.walked(visited, from, held)
		}
		past = true
		for _, r := range chunk {
			if !fn(r.topic, r.HistSize) {
				return true
			}
		}
		if end {
			return true
		}
	}
}

// lookup is topic's row: ok, it has one; known: the sizes are known.
func (h *histSizes) lookup(topic string) (r histRow, ok, known bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.unknown {
		return r, false, false
	}
	if h.rows != nil {
		r, ok = h.rows.Get(histRow{topic: topic})
	}
	return r, ok, true
}

// walkRange is what an estimate of a wildcard filter walks: the rows
// whose topics start with prefix, and parent's own row (when not empty).
// Every topic the filter matches is one of them: prefix is the filter's
// levels before its first wildcard and their separators (site/+/x:
// site/; site/7/#: site/7/, then site/7 itself, which # matches too), so
// site/70 is not walked for site/7/#.
func walkRange(filter string) (prefix, parent string) {
	i := strings.IndexAny(filter, "+#")
	prefix = filter[:i] // a wildcard is a whole level: prefix is empty or ends in /
	if filter[i] == '#' && i > 0 {
		parent = prefix[:len(prefix)-1]
	}
	return prefix, parent
}

// HistorySizes calls fn with the HistSize of the history values of
// every row matching filter (see RowStore.HistorySizes), those committed
// and those handed in since (Add): an answer read after the estimate
// waits for the latter to be committed. A row may come more than once
// (its committed values, then each one handed in since), and a value
// being committed may be counted twice: the figures add up to at least
// what the store holds. It reads the values handed in but not committed
// (wire.LeafGrowth), a few milliseconds' worth of changes while the
// store keeps up. false: the sizes are not known (RowStore.HistorySizes).
func (r *Retainer) HistorySizes(filter string, fn func(topic string, size HistSize) bool) bool {
	r.mu.Lock()
	// Add and failed only append to these slices, past the lengths taken
	// here, and nothing writes a change once appended: their first
	// elements are read without the lock.
	pending, committing := r.hist, r.committingHist
	r.mu.Unlock()
	more := true
	if !r.store.HistorySizes(filter, func(topic string, size HistSize) bool {
		more = fn(topic, size)
		return more
	}) {
		return false
	}
	for _, hist := range [][]Change{committing, pending} {
		for i := range hist {
			c := &hist[i]
			if !more {
				return true
			}
			if wire.Match(filter, c.Topic) {
				n := ValueBound(c.Value)
				more = fn(c.Topic, HistSize{Values: 1, Bytes: n, Most: n})
			}
		}
	}
	return true
}

// countHistory counts the history values the store holds (Open): every
// value's bytes are read once per start. A damaged page leaves the sizes
// unknown (histSizes.unknown), not the store unopened: its rows, and the
// history of other pages, are still read as before.
func (s *Store) countHistory() {
	h := histSizes{rows: newHistRows()}
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketHist).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			// The key and value read in place (LeafGrowth keeps nothing
			// of the value; addLocked copies the topic once a row).
			topic, ok := histKeyTopic(k)
			if !ok {
				continue
			}
			kind, set, data, ok := splitPairValue(v)
			if !ok {
				continue
			}
			var val wire.Value
			if set {
				val = wire.Value{Kind: kind, Data: unsafe.String(unsafe.SliceData(data), len(data))}
			}
			h.addLocked(unsafe.String(unsafe.SliceData(topic), len(topic)), ValueBound(val))
		}
		return nil
	})
	if err != nil {
		h.rows, h.unknown = nil, true
	}
	s.hsizes.rows, s.hsizes.unknown = h.rows, h.unknown
}
