package broker

import (
	"errors"
	"fmt"
	"time"

	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// History (SPEC §9). The retainer stores every change of a row under a
// history rule, with its time, in the transaction that stores the row, and
// prunes by keep and max_age off the loop. A $hist subscription's first
// message is read in two steps: the loop takes the current rows and asks
// the retainer to commit what it holds (historyOf); the connection's
// writer then waits for that commit, reads the stored values and builds
// the tree (readHistory): the disk is never read on the loop.

// histQuery is what a $hist subscriber asked for: MQTT 5 user properties
// mote-from, mote-to (Unix ms, inclusive) and mote-limit.
type histQuery struct {
	from, to int64 // to is math.MaxInt64 when not asked
	limit    int   // 0: no limit
}

// maxHistLimit bounds mote-limit and a rule's keep.
const maxHistLimit = 1_000_000

// histReadBytes bounds the stored values one $hist answer reads; two
// answers are made at a time broker-wide (Broker.histReads), from the
// loop's copy of the current rows to the encoded answer.
const histReadBytes = 64 << 20

// histRead is one $hist answer being read: taken on the loop, finished
// by the writer.
type histRead struct {
	q       histQuery
	topic   string // as subscribed, for reports
	filter  string
	codec   wire.Codec
	allow   func(string) bool
	rev     uint64
	current map[string]tree.Entry // rows matching the filter now, that the client may read
	flushed chan error            // answered once everything handed to the retainer so far is committed; nil without a store
}

// historyOf takes what a $hist answer needs from the loop (loop only).
func (b *Broker) historyOf(st *treeSub) *histRead {
	ts := st.ts
	h := &histRead{q: *st.hist, topic: ts.Topic, filter: ts.Filter, codec: ts.Codec, allow: ts.Allow, rev: b.tree.Rev(), current: map[string]tree.Entry{}}
	b.tree.Store().Rows(ts.Filter, 0, func(e tree.Entry) bool {
		if ts.Allow == nil || ts.Allow(e.Topic) {
			h.current[e.Topic] = e
		}
		return true
	})
	if b.ret != nil && len(b.ret.HistoryRules()) > 0 {
		h.flushed = make(chan error, 1)
		b.ret.Add(nil, h.flushed)
	}
	return h
}

// readHistory finishes a $hist answer on the writer's goroutine: the
// stored values, then the current ones, shaped as SPEC §3 with arrays of
// [t, value] pairs as leaves.
func (b *Broker) readHistory(c *conn, h *histRead) ([]byte, error) {
	rows := map[string][]retain.Pair{}
	if h.flushed != nil {
		select {
		case err := <-h.flushed:
			if err != nil {
				b.log.Warn().Err(err).Msg("history: the retainer could not commit; answering from what is stored")
			}
		case <-c.q.done.wait():
			return nil, errWriterStop
		}
		now := time.Now().UnixMilli()
		rules := b.ret.HistoryRules() // the rules now: a Reload may have changed them
		err := b.ret.History(h.filter, histReadBytes, func(topic string, pairs []retain.Pair) bool {
			if h.allow != nil && !h.allow(topic) {
				return true
			}
			rule := retain.RuleFor(rules, topic)
			if rule == nil {
				return true
			}
			rows[topic] = keepPairs(pairs, rule, h.rev, now)
			return true
		})
		switch {
		case errors.Is(err, retain.ErrTooMuch):
			clear(rows)
			b.refuse(c.p, "subscribe", h.topic, fmt.Errorf("%w: %w; answering with current values only: narrow the filter", errQuota, err))
		case err != nil:
			clear(rows)
			b.log.Warn().Err(err).Msg("history: stored values unreadable; answering with current values")
		}
	}
	for topic, e := range h.current {
		pairs := rows[topic]
		if n := len(pairs); n > 0 && pairs[n-1].Value == e.Value {
			continue // the newest stored value is the current one (a QoS-only change stores none)
		}
		rows[topic] = append(pairs, retain.Pair{Rev: e.Rev, MS: e.MS, Value: e.Value})
	}
	out := tree.New()
	enc := wire.NewEncoder(h.codec, nil)
	for topic, pairs := range rows {
		pairs = h.q.sel(pairs)
		if len(pairs) == 0 {
			continue
		}
		// The leaf, in the subscriber's codec: [[t, value], …].
		leaf := wire.AppendArrayHead(nil, h.codec, len(pairs))
		for i, p := range pairs {
			if i > 0 && h.codec == wire.CodecJSON {
				leaf = append(leaf, ',')
			}
			leaf = wire.AppendInt(wire.AppendArrayHead(leaf, h.codec, 2), h.codec, p.MS)
			if h.codec == wire.CodecJSON {
				leaf = append(leaf, ',')
			}
			enc.Reset(h.codec, enc.Bytes()[:0])
			enc.Value(p.Value) // kind None writes null
			leaf = append(leaf, enc.Bytes()...)
			if h.codec == wire.CodecJSON {
				leaf = append(leaf, ']')
			}
		}
		if h.codec == wire.CodecJSON {
			leaf = append(leaf, ']')
		}
		out.Store().Set(topic, wire.Value{Kind: wire.Raw, Data: string(leaf)}, 0)
	}
	return out.Snapshot(h.filter, h.codec, nil), nil
}

// keepPairs is what a rule keeps of a row's stored values at time now:
// those at or below revision rev, the newest and up to Keep before it, no
// older than MaxAge (the newest always stays). Pruning drops the same
// values, later.
func keepPairs(pairs []retain.Pair, rule *retain.HistoryRule, rev uint64, now int64) []retain.Pair {
	n := len(pairs)
	for n > 0 && pairs[n-1].Rev > rev {
		n--
	}
	pairs = pairs[:n]
	if n > rule.Keep+1 {
		pairs = pairs[n-rule.Keep-1:]
	}
	if rule.MaxAge > 0 {
		oldest := now - rule.MaxAge.Milliseconds()
		i := 0
		for i < len(pairs)-1 && pairs[i].MS < oldest {
			i++
		}
		pairs = pairs[i:]
		if n := len(pairs); n == 1 && pairs[0].Value.Kind == wire.None && pairs[0].MS < oldest {
			return nil // deleted long ago: forgotten
		}
	}
	return pairs
}

// sel applies mote-from, mote-to and mote-limit to a row's pairs.
func (q histQuery) sel(pairs []retain.Pair) []retain.Pair {
	out := pairs[:0:0]
	for _, p := range pairs {
		if p.MS >= q.from && p.MS <= q.to {
			out = append(out, p)
		}
	}
	if q.limit > 0 && len(out) > q.limit {
		out = out[len(out)-q.limit:]
	}
	return out
}
