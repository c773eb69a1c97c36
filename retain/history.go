package retain

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mote-mqtt/mote/wire"
)

// ErrTooMuch is a history read past its bound.
var ErrTooMuch = errors.New("retain: too much history")

// HistoryRule names rows whose past values are kept (SPEC §9): for each
// row matching Filter, up to Keep earlier values no older than MaxAge (0:
// any age).
type HistoryRule struct {
	Filter string
	Keep   int
	MaxAge time.Duration
}

// Validate checks a rule, naming what is wrong.
func (h HistoryRule) Validate() error {
	if err := wire.ValidateFilter(h.Filter); err != nil {
		return fmt.Errorf("history filter %q: %w", h.Filter, err)
	}
	if wire.IsMote(h.Filter) || strings.HasPrefix(h.Filter, "$SYS") {
		return fmt.Errorf("history filter %q: not a filter of rows", h.Filter)
	}
	if h.Keep < 1 {
		return fmt.Errorf("history filter %q: keep %d, want at least 1", h.Filter, h.Keep)
	}
	if h.MaxAge < 0 {
		return fmt.Errorf("history filter %q: max_age %v is negative", h.Filter, h.MaxAge)
	}
	return nil
}

// RuleFor is the first rule whose filter matches topic, or nil.
func RuleFor(rules []HistoryRule, topic string) *HistoryRule {
	for i := range rules {
		if wire.Match(rules[i].Filter, topic) {
			return &rules[i]
		}
	}
	return nil
}

// literalPrefix is the part of a filter before its first wildcard level:
// every topic the filter matches starts with it.
func literalPrefix(filter string) string {
	if filter == "#" || filter == "+" || strings.HasPrefix(filter, "+/") {
		return ""
	}
	if i := strings.Index(filter, "/+"); i >= 0 {
		filter = filter[:i+1]
	}
	if i := strings.Index(filter, "/#"); i >= 0 {
		filter = filter[:i] // "a/#" matches "a" itself
	}
	return filter
}

// splitHistKey splits a history key into epoch, topic, revision and
// sequence.
func splitHistKey(k []byte) (epoch uint64, topic string, rev uint64, seq uint32, ok bool) {
	t, ok := histKeyTopic(k)
	if !ok {
		return 0, "", 0, 0, false
	}
	return binary.BigEndian.Uint64(k), string(t), binary.BigEndian.Uint64(k[len(k)-12:]), binary.BigEndian.Uint32(k[len(k)-4:]), true
}

// histKeyTopic is the topic of a history key (histKey), in place.
func histKeyTopic(k []byte) ([]byte, bool) {
	if len(k) < 22 || k[len(k)-13] != 0 {
		return nil, false
	}
	return k[8 : len(k)-13], true
}

// epochs calls fn with the cursor at the first key of each epoch whose
// topics start with prefix, in epoch order (oldest first), and the start
// of that key range.
func epochs(c *bolt.Cursor, prefix []byte, fn func(start []byte) error) error {
	for k, _ := c.First(); k != nil && len(k) >= 8; k, _ = c.Seek(binary.BigEndian.AppendUint64(nil, binary.BigEndian.Uint64(k)+1)) {
		start := append(binary.BigEndian.AppendUint64(nil, binary.BigEndian.Uint64(k)), prefix...)
		if err := fn(start); err != nil {
			return err
		}
		if binary.BigEndian.Uint64(k) == ^uint64(0) {
			break
		}
	}
	return nil
}

func decodePair(rev uint64, v []byte) (Pair, bool) {
	kind, set, data, ok := splitPairValue(v)
	if !ok {
		return Pair{}, false
	}
	p := Pair{Rev: rev, MS: int64(binary.BigEndian.Uint64(v[1:]))}
	if set {
		p.Value = wire.Value{Kind: kind, Data: string(data)}
	}
	return p, true
}

// splitPairValue is a stored history value (histValue), in place: its
// kind and bytes, set false for a deletion (no value).
func splitPairValue(v []byte) (kind wire.Kind, set bool, data []byte, ok bool) {
	if len(v) < 9 {
		return 0, false, nil, false
	}
	if v[0] == 0 {
		return 0, false, nil, true
	}
	kind, ok = kindOf(v[0] & 0x0f)
	return kind, ok, v[9:], ok
}

// History calls fn with the stored values of every topic matching
// filter, oldest first, in topic order, until fn returns false: the key
// range of the filter's literal prefix in each epoch. It reads them all
// before it calls fn, so no read transaction stays open while fn runs.
//
// max bounds the bytes of the values read (0: no bound); past it History
// returns an error wrapping ErrTooMuch and calls fn for nothing.
func (s *Store) History(filter string, max int, fn func(topic string, pairs []Pair) bool) error {
	prefix := []byte(literalPrefix(filter))
	rows := map[string][]Pair{}
	size := 0
	keep := func(topic string, p Pair) error {
		size += len(p.Value.Data) + 48
		if max > 0 && size > max {
			return fmt.Errorf("%w: the history of %q is more than %d bytes", ErrTooMuch, filter, max)
		}
		rows[topic] = append(rows[topic], p)
		return nil
	}
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketHist).Cursor()
		return epochs(c, prefix, func(start []byte) error {
			for k, v := c.Seek(start); k != nil && bytes.HasPrefix(k, start); k, v = c.Next() {
				_, topic, rev, _, ok := splitHistKey(k)
				if !ok || !wire.Match(filter, topic) {
					continue
				}
				if p, ok := decodePair(rev, v); ok {
					if err := keep(topic, p); err != nil {
						return err
					}
				}
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("retain: read history of %s: %w", s.path, err)
	}
	topics := make([]string, 0, len(rows))
	for t := range rows {
		topics = append(topics, t)
	}
	slices.Sort(topics)
	for _, t := range topics {
		if !fn(t, rows[t]) {
			break
		}
	}
	return nil
}

// Prune drops up to max history values that rules no longer keep at time
// now (Unix ms): beyond a row's Keep earlier values, older than MaxAge
// (the newest value of a row stays, unless it is a deletion older than
// MaxAge), or of rows no rule names any more. more reports values left to
// drop.
func (s *Store) Prune(rules []HistoryRule, now int64, max int) (more bool, err error) {
	var dropped []sized // the values dropped, once committed (histSizes)
	err = s.updateThen(func(tx *bolt.Tx) error {
		hist := tx.Bucket(bucketHist)
		// A topic's values are spread over the epochs: count them first.
		type row struct {
			n, seen int
			gone    bool // the newest value is a deletion
		}
		rows := map[string]*row{}
		c := hist.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if _, topic, _, _, ok := splitHistKey(k); ok {
				r := rows[topic]
				if r == nil {
					r = &row{}
					rows[topic] = r
				}
				r.n++
				r.gone = len(v) > 0 && v[0] == 0
			}
		}
		var drop [][]byte
		dropped = dropped[:0]
		for k, v := c.First(); k != nil; k, v = c.Next() { // oldest first within each topic
			if len(drop) == max {
				more = true
				break
			}
			_, topic, rev, _, ok := splitHistKey(k)
			if !ok {
				drop = append(drop, bytes.Clone(k))
				continue
			}
			r := rows[topic]
			newer := r.n - 1 - r.seen // values of the topic after this one
			r.seen++
			var ms int64
			if len(v) >= 9 {
				ms = int64(binary.BigEndian.Uint64(v[1:]))
			}
			rule := RuleFor(rules, topic)
			switch {
			case rule == nil:
			case newer > rule.Keep:
			case (newer > 0 || r.gone) && rule.MaxAge > 0 && ms < now-rule.MaxAge.Milliseconds():
			default:
				continue
			}
			drop = append(drop, bytes.Clone(k))
			if p, ok := decodePair(rev, v); ok { // as Open counted it, or Commit
				dropped = append(dropped, sized{topic, ValueBound(p.Value)})
			}
		}
		for _, k := range drop {
			if err := hist.Delete(k); err != nil && !nested(err) { // a foreign file's bucket stays
				return err
			}
		}
		return nil
	}, func() { s.hsizes.count(dropped, false) })
	if err != nil {
		return false, fmt.Errorf("retain: prune history of %s: %w", s.path, err)
	}
	return more, nil
}
