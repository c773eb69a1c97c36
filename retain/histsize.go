package retain

import (
	"strings"
	"sync"
	"unsafe"

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
type histSizes struct {
	mu   sync.Mutex // guards rows
	rows map[string]*HistSize
	// unknown: the history could not be read at Open (a damaged page):
	// the sizes of the values stored then are not known.
	unknown bool
}

// addLocked counts a value of bound n stored for topic (h.mu held).
func (h *histSizes) addLocked(topic string, n int64) {
	s := h.rows[topic]
	if s == nil {
		if h.rows == nil {
			h.rows = map[string]*HistSize{}
		}
		s = &HistSize{}
		// A copy: the entry lives as long as the row's history, and the
		// topic handed in may be cut from a larger string (a packet's
		// body, payload and all; a tree's slab), which it would keep
		// (TestHistorySizesOwnTopics).
		h.rows[strings.Clone(topic)] = s
	}
	s.Values++
	s.Bytes += n
	s.Most = max(s.Most, n)
}

// dropLocked counts a value of bound n of topic dropped (h.mu held). Most
// stays: it bounds the values left all the same.
func (h *histSizes) dropLocked(topic string, n int64) {
	s := h.rows[topic]
	if s == nil {
		return
	}
	s.Values--
	s.Bytes -= n
	if s.Values <= 0 {
		delete(h.rows, topic)
	}
}

// count counts the values vs written (add) or dropped.
func (h *histSizes) count(vs []sized, add bool) {
	if len(vs) == 0 {
		return
	}
	h.mu.Lock()
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
// not call the store. The figures are those of the committed values.
// false: they are not known (countHistory).
func (s *Store) HistorySizes(filter string, fn func(topic string, size HistSize) bool) bool {
	h := &s.hsizes
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.unknown {
		return false
	}
	if !wire.HasWildcard(filter) {
		// A topic matches only itself: one lookup, not a walk of every
		// row with history (a GET of one row's history, the common one,
		// cost 100-150 ns a stored row under this lock, which the
		// retainer's commit waits for; review h-rv6).
		if size := h.rows[filter]; size != nil {
			fn(filter, *size)
		}
		return true
	}
	prefix := literalPrefix(filter) // no topic without it matches
	for topic, size := range h.rows {
		if strings.HasPrefix(topic, prefix) && wire.Match(filter, topic) && !fn(topic, *size) {
			break
		}
	}
	return true
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
	h := histSizes{rows: map[string]*HistSize{}}
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketHist).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			// The key and value read in place (LeafGrowth keeps nothing
			// of the value), the topic copied once a row.
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
			size := h.rows[string(topic)]
			if size == nil {
				size = &HistSize{}
				h.rows[string(topic)] = size
			}
			n := ValueBound(val)
			size.Values++
			size.Bytes += n
			size.Most = max(size.Most, n)
		}
		return nil
	})
	if err != nil {
		h.rows, h.unknown = nil, true
	}
	s.hsizes.rows, s.hsizes.unknown = h.rows, h.unknown
}
