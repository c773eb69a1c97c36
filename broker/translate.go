package broker

import (
	"fmt"
	"strings"

	"github.com/mote-mqtt/mote/translate"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// Translators (SPEC §11). The rule set of the moment is one immutable
// translate.Set behind an atomic pointer (Broker.trans), swapped whole by
// Reload. The door asks it about every publish that passed its checks —
// one atomic load and, with rules loaded, one walk of their index per
// topic, allocating nothing when no rule matches — and only a matching
// publish is translated:
//
//   - a plain publish or a tree publish names its rows: the door makes the
//     translated op (the matching rows, each at its new topic with its
//     mapped value, the original's QoS and each row's retain flag) on the
//     publisher's goroutine, and hands it in with the original as one
//     push, so the loop applies both in the same batch (same revision,
//     one delta for a subscription that sees both), nothing between them;
//     a plain event's translation is delivered by the publisher right
//     after the original, as the original is;
//   - a $set or .replace knows its rows only in the loop: the loop
//     translates the rows it applied (set, and deleted as deletions) and
//     applies that op right after the batch (the next revision).
//
// A translated op is the broker's own: it takes no ACL check (SPEC §11:
// ACLs apply to the original only), is never translated again, is
// delivered with no MQTT 5 properties and no No Local origin, and a
// refusal of it (a topic past the limits) is reported to the original's
// publisher and logged.

// translatedBy is the principal of a translation of p's publish: refusals
// are reported to p, and its rows are delivered as the broker's.
func translatedBy(p Principal) Principal {
	return Principal{User: p.User, ClientID: p.ClientID, Answered: p.Answered}
}

// translation makes the translated op of a prepared publish at the door,
// or returns nil (allocating nothing: every publish asks). For a $set or
// .replace it leaves the set for the loop in r (loopTrans).
func (b *Broker) translation(p Principal, m *Message, r *prepared) *tree.Op {
	set := b.trans.Load()
	if set == nil || p.system {
		return nil
	}
	var out []tree.Row
	if r.mote {
		if r.op.SetFilter != "" || r.op.Replace != "" {
			r.loopTrans = set
			return nil
		}
		var bad refusedRows
		for _, row := range r.op.Rows {
			if set.Match(row.Topic) {
				out = b.translateRow(set, out, row, &bad)
			}
		}
		r.transRefused = bad.report(b, p)
		out = ownRowsWin(out, r.op.Rows)
	} else if set.Match(m.Topic) {
		row := tree.Row{Topic: m.Topic, Value: b.parser.TypePlain(m.Payload), Retain: m.Retain}
		if m.Retain && len(m.Payload) == 0 {
			row.Value = wire.Value{} // a deletion
		}
		var bad refusedRows
		out = b.translateRow(set, nil, row, &bad)
		r.transRefused = bad.report(b, p)
		out = ownRowsWin(out, []tree.Row{row})
	}
	if len(out) == 0 {
		return nil
	}
	return &tree.Op{Rows: dedupe(out), QoS: m.QoS}
}

// refusedRows gathers the translated rows of one publish that were
// refused: one publish of 100,000 rows makes one report and one log line,
// not 100,000 (the first refusal, and how many there were).
type refusedRows struct {
	first error
	to    string
	n     int
}

// add notes a refused translated row.
func (r *refusedRows) add(to string, err error) {
	if r.n == 0 {
		r.first, r.to = err, to
	}
	r.n++
}

// report reports the refusals gathered, if any, to p, and returns the
// refusal (nil if none).
func (r *refusedRows) report(b *Broker, p Principal) *Refusal {
	err := r.first
	switch {
	case r.n == 0:
		return nil
	case r.n > 1:
		err = fmt.Errorf("%d translated rows refused, the first: %w", r.n, r.first)
	}
	return &Refusal{Code: b.refuse(translatedBy(p), "publish", r.to, err), Topic: r.to, Err: err}
}

// translateRow appends row's translation to out; a translated topic past
// the topic limits, or one of the broker's, is refused, noted in bad (for
// the publisher's report), and left out.
func (b *Broker) translateRow(set *translate.Set, out []tree.Row, row tree.Row, bad *refusedRows) []tree.Row {
	to, v, ok := set.Translate(row.Topic, row.Value)
	if !ok {
		return out
	}
	err := wire.ValidateTopic(to)
	if err == nil {
		err = b.opts.Limits.CheckTopic(to)
	}
	switch {
	case err != nil:
	case reserved(to): // a filled first level: "+/b" from "a/$SYS/c"
		err = wire.ErrReservedf("%.200q is the broker's", to)
	case strings.HasPrefix(to, "$") && set.FillsFirst(row.Topic): // a rule's own "$x/…" is the operator's
		err = wire.ErrReservedf("%.200q: a level starting with $ cannot become the first", to)
	}
	if err != nil {
		bad.add(to, fmt.Errorf("%s, translating %.200q: %w", set.Rule(row.Topic), row.Topic, err))
		return out
	}
	return append(out, tree.Row{Topic: to, Value: v, Retain: row.Retain})
}

// ownRowsWin leaves out of out the translated rows whose topic the
// publish itself writes: a tree that names both sides of a two_way rule
// keeps the values it gives them (each side's translation would
// otherwise overwrite the other's, swapping them), and a rule that maps
// a topic to itself ("a/+" → "a/+", or "+/x" → "x/+" for x/x) leaves the
// publish as it is.
func ownRowsWin(out, own []tree.Row) []tree.Row {
	if len(out) == 0 || len(own) == 0 {
		return out
	}
	if len(own) == 1 { // a plain publish, a tree of one row: no map
		kept := out[:0]
		for _, r := range out {
			if r.Topic != own[0].Topic {
				kept = append(kept, r)
			}
		}
		return kept
	}
	written := make(map[string]struct{}, len(own))
	for _, r := range own {
		written[r.Topic] = struct{}{}
	}
	kept := out[:0]
	for _, r := range out {
		if _, ok := written[r.Topic]; !ok {
			kept = append(kept, r)
		}
	}
	return kept
}

// dedupe keeps the last of rows with the same topic (two one-way rules
// may share a target).
func dedupe(rows []tree.Row) []tree.Row {
	if len(rows) < 2 {
		return rows
	}
	last := make(map[string]int, len(rows))
	for i, r := range rows {
		last[r.Topic] = i
	}
	if len(last) == len(rows) {
		return rows
	}
	out := rows[:0]
	for i, r := range rows {
		if last[r.Topic] == i {
			out = append(out, r)
		}
	}
	return out
}

// translatedMeta is the pubMeta of a translated op.
func translatedMeta(p Principal, op tree.Op, deliver bool) *pubMeta {
	return &pubMeta{p: translatedBy(p), topic: op.Rows[0].Topic, rows: deliver, translated: true}
}

// deliverTranslatedEvent delivers a translated plain event to plain
// subscribers, on the publisher's goroutine (as the original was).
func (b *Broker) deliverTranslatedEvent(op tree.Op, w pubWait) {
	for _, row := range op.Rows {
		b.deliverPlain(&message{topic: row.Topic, payload: bytesOf(row.Value.Data), qos: op.QoS}, w)
	}
}

// translateApplied is the translation of a $set's or .replace's applied
// rows (on the loop), or false.
func (b *Broker) translateApplied(m *pubMeta, rows []tree.Row, qos byte) (tree.Op, *pubMeta, bool) {
	var out []tree.Row
	var bad refusedRows
	for _, row := range rows {
		if m.trans.Match(row.Topic) {
			out = b.translateRow(m.trans, out, row, &bad)
		}
	}
	bad.report(b, m.p)
	out = ownRowsWin(out, rows)
	if len(out) == 0 {
		return tree.Op{}, nil, false
	}
	op := tree.Op{Rows: dedupe(out), QoS: qos}
	return op, translatedMeta(m.p, op, true), true
}

// pushPair queues a publish and its translation together: nothing comes
// between them, so the loop applies them in one batch. It waits while the
// queue is full, as push does; it reports false once the queue is closed.
func (q *requestQueue) pushPair(a, b request) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	wa, wb := q.weigh(&a), q.weigh(&b)
	q.turn(wa + wb)
	if q.closed {
		return false
	}
	q.items = append(q.items, a, b) // (admitted, the pair held room for one request: it may pass the bound in requests by one)
	q.units += wa + wb
	if len(q.items) == 2 {
		q.ready.Signal()
	}
	return true
}
