package broker

import (
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// Revisions and resume (SPEC §8). The tree core counts the store's
// revision and stamps every row with the revision of its last change; a
// deleted row leaves a deletion marker, kept for the resume window. With
// a store the retainer writes the markers to disk and compacts them (the
// loop reads them there when a client resumes); without one the loop
// keeps them in memory (markLog).

// bootRevSkip is how far the revision jumps after a stop that was not
// clean: revisions handed out after the last commit were lost, and no
// revision a client saw may ever mean another state. It is far more than
// any run hands out between two commits.
const bootRevSkip = 1 << 32

// mark is one deletion marker in memory.
type mark struct {
	rev   uint64
	topic string
}

// markLog is the deletion markers of a broker without a store, oldest
// first, and the floor below which they were dropped. The loop owns it;
// a writer may read a slice of marks the loop handed it (entries are
// never changed once appended).
// Besides the window, its bytes are bounded (markLogBytes): past that the
// oldest go, and the floor rises with them.
type markLog struct {
	marks  []mark
	floor  uint64
	window uint64
	bytes  int
}

// markLogBytes bounds the memory of a markLog.
const markLogBytes = 32 << 20

// markCost is what a marker counts against markLogBytes.
func markCost(m mark) int { return len(m.topic) + 40 }

// note records the rows deleted among rows, applied at rev, and drops the
// markers that fell out of the window or past the bound.
func (l *markLog) note(rows []tree.Row, rev uint64) {
	for _, r := range rows {
		if r.Retain && !r.Same && r.Value.Kind == wire.None && !isSys(r.Topic) {
			// A copy: a tree publish's topics are pieces of one string, which
			// the marker would keep whole for the resume window.
			m := mark{rev: rev, topic: strings.Clone(r.Topic)}
			l.marks = append(l.marks, m)
			l.bytes += markCost(m)
		}
	}
	if rev > l.window {
		l.floor = max(l.floor, rev-l.window)
	}
	i := 0
	for i < len(l.marks) && (l.marks[i].rev <= l.floor || l.bytes > markLogBytes) {
		l.bytes -= markCost(l.marks[i])
		l.floor = max(l.floor, l.marks[i].rev)
		i++
	}
	if i > 0 {
		// Reslice, never copy what stays: the next append that outgrows the
		// array moves only the live markers (amortized O(1) a marker). The
		// dropped entries are not cleared either: a resume may be reading
		// them on a writer (finishResume), and nothing below a slice's
		// length is ever written again; the next reallocation lets them go.
		l.marks = l.marks[i:]
	}
}

// markerFloor is the revision at or below which markers may be gone.
func (b *Broker) markerFloor() uint64 {
	if b.ret != nil {
		return b.ret.Floor()
	}
	return b.marks.floor
}

// resumeRead is a resume delta being made: the loop lists the rows
// changed since (resumeOf), the writer reads the deletion markers off the
// loop and has the loop encode the delta (finishResume).
type resumeRead struct {
	since, rev uint64
	changes    []tree.Change
	seen       map[string]bool
	marks      []mark // without a store: the in-memory markers, read by the writer
}

// resumeOf starts st's resume delta: the rows matching its filter that
// changed after st.since; the writer reads the deletion markers (from
// the retainer and the disk, or the in-memory log without a store) and
// has the loop encode it (finishResume). ok is false when the broker
// no longer knows every change since then (or never handed out that
// revision): the client gets a full snapshot instead (loop only).
func (b *Broker) resumeOf(st *treeSub) (payload []byte, rr *resumeRead, ok bool) {
	since, rev := st.since, b.tree.Rev()
	if since < b.markerFloor() || since < b.resumeFloor || since > rev {
		return nil, nil, false
	}
	ts := st.ts
	if !wire.HasWildcard(ts.Filter) { // a bare value: the delta is the value itself
		return b.tree.Snapshot(ts.Filter, ts.Codec, ts.Allow), nil, true
	}
	return nil, b.changedSince(ts, since, rev), true
}

// awayResumeOf starts the resume delta of st, a $tree subscription of a
// resumed session, since its mark (the last message its client was
// written), whose mote-seq it goes on from: nil when the broker does not
// know every change since then (SPEC §8: outside the resume window, or
// no mark was kept) (loop only).
func (b *Broker) awayResumeOf(st *treeSub) *resumeRead {
	if !st.resume {
		return nil
	}
	st.seq, st.since = st.mark.seq.Load(), st.mark.rev.Load()
	since, rev := st.since, b.tree.Rev()
	if since < b.markerFloor() || since < b.resumeFloor || since > rev {
		return nil
	}
	return b.changedSince(st.ts, since, rev)
}

// changedSince lists the rows matching ts's filter, and its read check,
// changed after since, for a resume delta; the writer adds the deleted
// ones (finishResume) (loop only).
func (b *Broker) changedSince(ts *tree.Sub, since, rev uint64) *resumeRead {
	rr := &resumeRead{since: since, rev: rev, seen: map[string]bool{}}
	b.tree.Store().Rows(ts.Filter, since, func(e tree.Entry) bool {
		if ts.Allow == nil || ts.Allow(e.Topic) {
			rr.changes = append(rr.changes, tree.Change{Topic: e.Topic, Value: e.Value, QoS: e.QoS})
			rr.seen[e.Topic] = true
		}
		return true
	})
	if b.ret == nil {
		rr.marks = b.marks.marks
	}
	return rr
}

// add adds a deleted topic to the resume delta, once, if s's filter
// matches it. It runs on the writer: s's read check is the loop's (a
// Reload changes it), and applied there when the delta is encoded (Fold).
func (rr *resumeRead) add(s *tree.Sub, topic string) {
	if !rr.seen[topic] && wire.Match(s.Filter, topic) {
		rr.seen[topic] = true
		rr.changes = append(rr.changes, tree.Change{Topic: topic})
	}
}

// encodeResume encodes a resume delta; with nothing changed, an empty
// tree (loop only).
func (b *Broker) encodeResume(ts *tree.Sub, changes []tree.Change) []byte {
	if payload, _, enc := b.tree.Fold(ts, changes); enc {
		return payload
	}
	e := wire.NewEncoder(ts.Codec, nil)
	e.BeginObject()
	e.EndObject()
	return e.Bytes()
}

// finishResume reads the deletion markers of a resume delta on the
// writer's goroutine (a disk read never holds up the loop) and has the
// loop encode it into first. Every marker up to rr.rev was handed to the
// retainer before the loop listed the rows, so none is missed. If the
// markers were compacted meanwhile, first becomes a full snapshot; if st
// was unsubscribed, first.payload stays nil.
func (b *Broker) finishResume(c *conn, st *treeSub, rr *resumeRead, first *treeItem) error {
	ts := st.ts
	var err error
	if b.ret != nil {
		err = b.ret.Deleted(rr.since, rr.rev, func(topic string, _ uint64) bool {
			rr.add(ts, topic)
			return true
		})
	} else {
		i := sort.Search(len(rr.marks), func(i int) bool { return rr.marks[i].rev > rr.since })
		for _, m := range rr.marks[i:] {
			if m.rev > rr.rev {
				break
			}
			rr.add(ts, m.topic)
		}
	}
	if err != nil {
		b.log.Warn().Err(err).Msg("resume: deletion markers unreadable; sending a full snapshot")
	}
	if !b.onLoop(c.q.done.wait(), func() {
		if st.away {
			b.awayFirst(st, rr, first, err == nil && rr.since >= b.markerFloor() && rr.since >= b.resumeFloor)
			return
		}
		if !ts.Active() {
			return
		}
		if err != nil || rr.since < b.markerFloor() || rr.since < b.resumeFloor { // compacted, or a Reload, while they were read: a snapshot after all
			first.payload, first.resume, first.rev = b.tree.Snapshot(ts.Filter, ts.Codec, ts.Allow), false, b.tree.Rev()
			return
		}
		first.payload = b.encodeResume(ts, rr.changes)
	}) {
		return errWriterStop
	}
	return nil
}

// awayFirst makes into first the first message of st, a $tree
// subscription of a resumed session, once the writer read the deletion
// markers since its mark (loop only): one delta of every row matching its
// filter changed after the mark's revision (rr: listed by snapshotOf,
// deleted ones as null) and of every change held since (newest wins),
// with mote-resume 1 and mote-seq the mark's + 1; none when nothing the
// client may read changed (the count goes on). known is false when the
// markers were compacted (or the read rules reloaded) meanwhile: then a
// mote-seq is skipped, and what was held since goes as a delta after the
// gap. Held changes dropped past the queue's bound skip one too. The
// subscription is live from here: its deltas follow.
func (b *Broker) awayFirst(st *treeSub, rr *resumeRead, first *treeItem, known bool) {
	held, at, lost := st.events, st.at, st.lost
	st.c.q.reserve(-st.held)
	st.events, st.at, st.held, st.lost = nil, nil, 0, false
	st.await, st.holdAll = false, false
	first.payload = nil
	if !st.ts.Active() {
		return
	}
	var changes []tree.Change
	if known {
		for _, ch := range rr.changes {
			if _, ok := at[ch.Topic]; !ok {
				changes = append(changes, ch)
			}
		}
	}
	for _, ch := range held {
		if ch.Topic != "" { // an event a retained change of its row dropped before the listing, which has the row
			changes = append(changes, ch)
		}
	}
	first.rev = b.tree.Rev()
	if !known || lost {
		st.seq++ // a gap: the client's copy misses what was not known, or dropped
		first.resume = first.resume && known
		if lost {
			first.rev = rr.rev // what was held after the listing is not in it
		}
	}
	payload, qos, enc := b.tree.Fold(st.ts, changes)
	if !enc {
		return // nothing sent: a paced subscription is idle
	}
	st.seq++
	first.payload, first.seq = payload, st.seq
	if !first.resume {
		first.qos = deltaQoS(st.ts, qos) // a delta's; a resume's is the subscription's, as a $sync resume's (a deletion's QoS is not kept)
	}
	if st.interval > 0 {
		st.sent = time.Now() // deltas follow an interval after it
	}
}

// treeOpts are the MQTT 5 user properties of a SUBSCRIBE that shape a
// tree subscription's first message: mote-since for $sync (SPEC §8),
// mote-from, mote-to and mote-limit for $hist (SPEC §9).
type treeOpts struct {
	since   uint64
	resume  bool
	hist    histQuery
	histSet bool // any of mote-from, mote-to, mote-limit was given
	// noLocal is the subscription's MQTT 5 No Local option (not a user
	// property): its deltas leave out its own client's rows (tree.Sub.Local).
	noLocal bool
}

// readTreeOpts reads them; a value that does not parse is an error naming
// it (the SUBSCRIBE's tree filters are refused with it).
func readTreeOpts(props []packets.UserProperty) (treeOpts, error) {
	o := treeOpts{hist: histQuery{from: math.MinInt64, to: math.MaxInt64}}
	for _, k := range []string{"mote-since", "mote-from", "mote-to", "mote-limit"} {
		if _, _, err := moteProp(props, k); err != nil {
			return o, err
		}
	}
	if v, ok := userProp(props, "mote-since"); ok {
		n, err := parseDecimal(v)
		if err != nil {
			return o, wire.ErrPrefixf("user property mote-since=%.40q: want a revision, a decimal number", v)
		}
		o.since, o.resume = n, true
	}
	for _, k := range []string{"mote-from", "mote-to"} {
		v, ok := userProp(props, k)
		if !ok {
			continue
		}
		n, err := parseDecimal(v)
		if err != nil || n > math.MaxInt64 {
			return o, wire.ErrPrefixf("user property %s=%.40q: want a time in Unix milliseconds", k, v)
		}
		if k == "mote-from" {
			o.hist.from = int64(n)
		} else {
			o.hist.to = int64(n)
		}
		o.histSet = true
	}
	if o.hist.from > o.hist.to {
		return o, wire.ErrPrefixf("mote-from %d is after mote-to %d", o.hist.from, o.hist.to)
	}
	if v, ok := userProp(props, "mote-limit"); ok {
		n, err := parseDecimal(v)
		if err != nil || n < 1 || n > maxHistLimit {
			return o, wire.ErrPrefixf("user property mote-limit=%.40q: want 1 to %d", v, maxHistLimit)
		}
		o.hist.limit, o.histSet = int(n), true
	}
	return o, nil
}

// check refuses the options a tree subscription of mode m cannot use.
func (o treeOpts) check(m wire.Mode) error {
	switch {
	case m == wire.Plain:
		return nil // plain subscriptions ignore Mote's properties
	case o.resume && m != wire.Sync:
		return wire.ErrPrefixf("mote-since is for $sync subscriptions, not $%s", m)
	case o.histSet && m != wire.Hist:
		return wire.ErrPrefixf("mote-from, mote-to and mote-limit are for $hist subscriptions, not $%s", m)
	}
	return nil
}

// parseDecimal reads an unsigned decimal number: digits only, no sign,
// no spaces, at most 20 of them.
func parseDecimal(s string) (uint64, error) {
	if s == "" || len(s) > 20 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, strconv.ErrSyntax
	}
	return strconv.ParseUint(s, 10, 64)
}
