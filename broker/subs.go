package broker

import (
	"bytes"
	"errors"
	"sync/atomic"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// treeSub is the broker's state of one tree subscription (tree.Sub.Data).
// Only the message loop touches it; queue items point at it only to hand
// it back to the loop.
type treeSub struct {
	c    *conn
	ts   *tree.Sub
	mode wire.Mode
	id   int    // MQTT 5 subscription identifier, 0 if none
	seq  uint64 // mote-seq of the last message queued

	// since, with resume, is the revision a $sync subscriber asked to
	// resume from (mote-since, SPEC §8); hist is a $hist query (SPEC §9).
	since  uint64
	resume bool
	hist   *histQuery

	// away is set for a $tree subscription of a resumed session (filed
	// again without a SUBSCRIBE): its first message is a resume delta
	// since what its client was last written (mark, resumeTrees), or a
	// mote-seq gap when the broker cannot tell what changed since then
	// (awayFirst). handed marks a subscription whose mark a resumed one
	// took over, so that its detach does not keep it again. holdAll is
	// set while its resume delta is being made (after snapshotOf listed
	// the rows, until awayFirst encodes it): every change is held,
	// retained or not, to go in it. All three the loop's; away is set
	// before the subscription is registered and never changes (the
	// writer reads it: takeSnapshot).
	away    bool
	handed  bool
	holdAll bool

	// mark is what the client of a $tree subscription of an MQTT
	// connection was last written (treeMark): kept, when the connection
	// ends and its session stays, for the session's return (awayTrees).
	// Set before the subscription is registered (or, resumed, by the loop
	// as it registers it); the writer, or the loop writing directly,
	// notes each message written in it.
	mark *treeMark

	// resumed is set for a $sync or $tree subscription of a resumed session,
	// registered without a SUBSCRIBE: it holds nothing of the snapshot
	// budget until its writer finds room (awaitSnapshotRoom). Set before
	// it is registered, read by the writer.
	resumed bool

	// A $sync subscription awaits its snapshot until the writer reaches
	// it: the snapshot then holds every retained row as it is, and events
	// (non-retained rows) that came meanwhile are kept here, newest per
	// topic, to follow it as one delta. Past the queue's bound they are
	// dropped and lost is set: a mote-seq gap after the snapshot.
	await  bool
	events []tree.Change
	at     map[string]int // topic → index in events
	held   int            // bytes in events
	lost   bool

	last *deltaItem // the delta queued last: the next ones fold into it while it waits

	// shared is the snapshot it shares with others while its writer
	// writes it: set by the loop (snapshotOf), let go by the writer
	// (takeShared), or by the loop if the writer gave up waiting.
	shared atomic.Pointer[sharedSnap]

	// revCap is 1 + the highest mote-rev the subscription's messages may
	// carry, 0 for no bound: set by the writer once a value was left out
	// of its first message (snapshotMessages), read by whoever writes its
	// deltas. See leftOutRev.
	revCap atomic.Uint64

	// Paced deltas (SPEC §2, .<N>ms): with interval > 0, once a message
	// left (the snapshot taken, a delta queued), the changes that come
	// within interval are held in events as above (every matching row,
	// retained or not) until due, when the pacer (pace.go) sends them as
	// one delta; lost then spends a mote-seq.
	interval time.Duration
	sent     time.Time // when its last message left the loop
	due      time.Time // when the changes it holds leave
	slot     int       // 1 + its index in the pacer's heap; 0 while it holds nothing
}

// treeMark is the mote-seq and mote-rev of the last message a $tree
// subscription's client was written: rev is the revision its copy is
// known to reflect (SPEC §8), seq the count its next message continues
// from. Only a message written counts, not one queued: what a connection
// queued or took and never wrote is lost with it. A QoS 1 message written
// and not acknowledged is sent again to the resumed session (DUP), so it
// counts. It outlives its subscription while the session is away
// (awayTrees), and a subscription resumed from it notes into the same
// mark. Written by whoever holds the connection's write role (one at a
// time), read by the loop once that connection's writer is done (a new
// connection of the session writes only after its predecessor's writer
// exited: conn.prev); atomics, for the race detector's sake.
type treeMark struct {
	seq, rev atomic.Uint64
}

// newTreeMark is a mark of seq and rev.
func newTreeMark(seq, rev uint64) *treeMark {
	m := new(treeMark)
	m.seq.Store(seq)
	m.rev.Store(rev)
	return m
}

// wrote notes that st's message of mote-seq seq and mote-rev rev was
// written to its client; a subscription without a mark notes nothing.
func (st *treeSub) wrote(seq, rev uint64) {
	if m := st.mark; m != nil {
		m.seq.Store(seq)
		m.rev.Store(rev)
	}
}

// wrotePart notes that a part, not the last, of st's message of
// mote-seq seq was written to its client (or moved to a client taking the
// session over, which sends it again): the count goes on from seq, and
// the revision stays the last whole message's. A next connection's resume
// then takes seq+1 and holds every row changed since that revision, the
// parts never written among them: the client never sees seq again with
// other rows, nor a gap (its copy misses nothing). Noted from the whole
// message alone, the resume took seq again, with rows changed meanwhile
// (TestX5TreeAwayPartsTakeover).
func (st *treeSub) wrotePart(seq uint64) {
	if m := st.mark; m != nil {
		m.seq.Store(seq)
	}
}

// changeCost is what a held or folded row counts against a queue's bound.
func changeCost(ch *tree.Change) int { return len(ch.Topic) + len(ch.Value.Data) + 32 }

// holdEvents keeps the events among changes (rows of st's delta: st
// matches each) while st awaits its snapshot; a retained change of a
// topic drops its held event (the snapshot has it). What it holds counts
// against the connection's queue bound; past it the events are dropped
// and lost is set.
//
// No Local (tree.Sub.Local): a change of the client's own is not held,
// and drops the event held for its topic (the newest change of the row is
// the client's, which it has). Held for a resume delta (holdAll), every
// change is kept, its own too: the resume is the store's state (SPEC §8).
func (st *treeSub) holdEvents(changes []tree.Change) {
	if st.holdAll {
		for i := 0; i < len(changes) && !st.lost; i++ {
			ch := changes[i]
			ch.Origin = "" // a state, not a forwarded message: its own rows too
			st.hold(ch)
		}
		return
	}
	q := st.c.q
	for _, ch := range changes {
		i, ok := st.at[ch.Topic]
		own := st.own(&ch)
		switch {
		case (ch.Retain || own) && ok:
			n := changeCost(&st.events[i])
			st.held -= n
			q.reserve(-n)
			st.events[i] = tree.Change{} // dropped (its value with it); skipped at the snapshot
			delete(st.at, ch.Topic)
		case ch.Retain || own || st.lost:
		default:
			st.hold(ch)
		}
	}
}

// own reports whether ch's newest change came from st's own client and st
// has No Local [MQTT-3.8.3-3]: such a row is not forwarded to it.
func (st *treeSub) own(ch *tree.Change) bool {
	return st.ts.Local != "" && ch.Origin == st.ts.Local
}

// hold keeps ch among st's held changes, the newest value of each topic
// (and its origin: a paced flush leaves a row out whose newest change is
// the client's own, No Local) with the highest QoS, counted against the
// connection's queue bound; past it every held change is dropped and lost
// is set.
func (st *treeSub) hold(ch tree.Change) {
	q := st.c.q
	if i, ok := st.at[ch.Topic]; ok {
		n := len(ch.Value.Data) - len(st.events[i].Value.Data)
		if !q.reserve(n) {
			st.dropEvents()
			return
		}
		st.held += n
		st.events[i].Value, st.events[i].QoS, st.events[i].Origin = ch.Value, max(st.events[i].QoS, ch.QoS), ch.Origin
		return
	}
	n := changeCost(&ch)
	if !q.reserve(n) {
		st.dropEvents()
		return
	}
	if st.at == nil {
		st.at = map[string]int{}
	}
	st.at[ch.Topic] = len(st.events)
	st.events = append(st.events, ch)
	st.held += n
}

// dropEvents lets go of the held events: the first delta after the
// snapshot shows the gap.
func (st *treeSub) dropEvents() {
	st.c.q.reserve(-st.held)
	st.events, st.at, st.held, st.lost = nil, nil, 0, true
}

// queueDelta queues delta d for st, or folds it into st's delta still in
// the queue (loop only).
func (b *Broker) queueDelta(st *treeSub, d *tree.Delta, batch *batchRows) {
	c := st.c
	if st.await {
		st.holdEvents(batch.rows())
		return
	}
	if st.slot > 0 { // paced, and holding changes: these join them, after them
		st.holdPaced(batch.rows())
		return
	}
	add := deltaBound(d.Payload, d.Rows)
	if st.last != nil && c.q.fold(st.last, st.ts, batch, c.packetLimit(), add) {
		b.stats.Folded.Add(1)
		st.folded()
		return
	}
	if d.Payload == nil {
		// No Local: every row of it was the client's own (tree.Sub.Local).
		// Nothing held or queued needed to take them in: nothing is sent,
		// no mote-seq taken.
		return
	}
	if st.interval > 0 && b.pace.hold(st, batch) {
		return
	}
	b.pushDelta(st, d.Payload, d.QoS, batch, add)
}

// folded follows a fold into st's queued delta (st.last): when No Local
// left it nothing to send (the newest change of every row it holds is
// the client's own), it gives its mote-seq back, if no other was taken
// since, and is done with (its writer skips it: encodeFolded), so the
// count goes on without a gap (loop only). It reports whether it did.
func (st *treeSub) folded() bool {
	if d := st.last; st.ts.Local != "" && d.shown == 0 && st.seq == d.seq {
		st.seq--
		st.last = nil
		return true
	}
	return false
}

// deltaBound bounds from above the bytes a delta of rows rows, payload
// once encoded, adds to the payload of the delta it folds into, once that
// is encoded again (encodeFolded): its own bytes (a row's key and value
// are encoded as they were; a node both hold is counted twice, its key
// once in the fold), and per row 16 bytes for what the fold may add at its
// node, the object form ({"/": value, children}) or a longer map header.
// It takes no pass over the rows: a delta that matched one row of a
// batch of thousands costs its fold a constant, not the batch.
func deltaBound(payload []byte, rows int) int {
	return len(payload) + 16*rows + 16
}

// moteRev is the mote-rev a message of st made at store revision rev
// carries: rev, or less once a value was left out of st's first message
// (revCap).
func (st *treeSub) moteRev(rev uint64) uint64 {
	if c := st.revCap.Load(); c > 0 && rev >= c {
		return c - 1
	}
	return rev
}

// pushDelta queues st's next delta, of batch's delivered rows (which a
// queued one keeps while it waits, counted: batchRows.keep) and payload
// at most bound bytes once folded (deltaBound), as the one later deltas
// fold into (loop only).
func (b *Broker) pushDelta(st *treeSub, payload []byte, qos byte, batch *batchRows, bound int) {
	st.seq++
	d := deltaItem{
		treeItem: treeItem{topic: st.ts.Topic, payload: payload, qos: deltaQoS(st.ts, qos), seq: st.seq, rev: batch.rev, codec: st.ts.Codec, subID: st.id, kind: outDelta},
		sub:      st,
		bound:    bound,
	}
	if batch.takeDirect() {
		// Tried in the loop's scratch item: written, it is not kept.
		b.loopDelta = d
		ok := st.c.tryDirect(&b.loopDelta, d.qos)
		b.loopDelta = deltaItem{}
		if ok {
			st.last = nil // written: nothing folds into it
			b.stats.DeltasQueued.Add(1)
			return
		}
	}
	it := new(deltaItem)
	*it = d
	it.from = batch.keep() // its rows, for a fold, as long as it waits
	it.extra = it.from.cost
	if st.c.q.push(it, pubWait{}) {
		st.last = it
		b.stats.DeltasQueued.Add(1)
		return
	}
	st.last = nil
	st.c.slowFull(fullNoWait) // the seq is spent: the gap tells an MQTT 5 client
}

// fold adds the rows of batch's delivered delta to delta d, if the writer
// has not taken d yet, they fit the queue's bound and the folded delta
// may still fit limit, the largest packet the client takes; it reports
// whether it did. add bounds from above the bytes they add to d's payload
// (deltaBound, foldBound). d keeps its place and its mote-seq; the loop
// encodes it again for s when the writer takes it (encodeFolded). A fold
// past limit would be skipped whole [MQTT-3.1.2-24], though each delta
// alone fits: the next delta queues behind d instead. Called by the loop.
//
// It costs the rows it folds, not the batch: they are the delta's, listed
// by the tree once for all its subscriptions (batchRows.rows), and d's own
// were kept with it (batchRows.keep). Neither refusal lists a row: a
// delta already taken, or one the bound says would not fit. A new value
// of a row d holds counts only what it adds: a queue full of a stalled
// client's deltas still takes in their next values.
func (q *outQueue) fold(d *deltaItem, s *tree.Sub, batch *batchRows, limit, add int) bool {
	bound := d.bound + add
	if bound+len(d.topic)+packetOverhead > limit {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if d.taken || q.closed {
		return false
	}
	if d.from != nil {
		// The first fold: d's own rows become its folded rows, which
		// count what they pinned.
		q.bytes -= d.extra
		d.extra = d.add(s, d.from.list)
		q.bytes += d.extra
		d.from = nil
	}
	next := batch.rows()
	if q.bytes+d.growth(next) > q.max {
		return false
	}
	d.bound = bound
	n := d.add(s, next)
	d.extra += n
	q.bytes += n
	d.rev = batch.rev
	return true
}

// foldBound bounds from above the bytes changes (rows a subscription
// held) add to a delta's encoded payload: each row's topic (its keys,
// five bytes of syntax a level at most) and value, escaped in JSON (six
// bytes a byte at worst: \u00XX; raw bytes in base64 take 4/3), and 16
// bytes of syntax.
func foldBound(changes []tree.Change) int {
	n := 0
	for i := range changes {
		ch := &changes[i]
		n += 6*(len(ch.Topic)+len(ch.Value.Data)) + 16
	}
	return n
}

// packetOverhead bounds what a tree message's PUBLISH holds besides its
// topic and payload: fixed header, packet id and properties (Content
// Type, mote-seq, mote-rev, a subscription identifier, a topic alias).
const packetOverhead = 160

// growth is how many bytes adding changes would add to d's folded rows
// (mu held). Topics seen twice in changes are counted twice: an upper bound.
func (d *deltaItem) growth(changes []tree.Change) int {
	n := 0
	for i := range changes {
		ch := &changes[i]
		if j, ok := d.at[ch.Topic]; ok {
			n += len(ch.Value.Data) - len(d.folded[j].Value.Data)
		} else {
			n += changeCost(ch)
		}
	}
	return n
}

// add folds changes (rows of s's deltas: s matches each) into d, newest
// value of each topic with its origin, and returns the bytes they added
// (mu held). It counts the rows whose newest change is not s's own
// client's (shown; No Local leaves the others out: tree.Sub.Local).
func (d *deltaItem) add(s *tree.Sub, changes []tree.Change) int {
	if d.at == nil {
		d.at = map[string]int{}
	}
	shown := func(ch *tree.Change) int {
		if s.Local != "" && ch.Origin == s.Local {
			return 0
		}
		return 1
	}
	n := 0
	for _, ch := range changes {
		d.rowQoS = max(d.rowQoS, ch.QoS)
		if i, ok := d.at[ch.Topic]; ok {
			f := &d.folded[i]
			n += len(ch.Value.Data) - len(f.Value.Data)
			d.shown += shown(&ch) - shown(f)
			f.Value, f.QoS, f.Origin = ch.Value, max(f.QoS, ch.QoS), ch.Origin
			continue
		}
		d.at[ch.Topic] = len(d.folded)
		d.folded = append(d.folded, ch)
		d.shown += shown(&ch)
		n += changeCost(&ch)
	}
	d.qos = deltaQoS(s, d.rowQoS)
	return n
}

// encodeFolded has the loop, the owner of the tree, encode a delta that
// others folded into, now that the writer took it. It reports false when
// there is nothing to write after all (unsubscribed meanwhile, or nothing
// the client may read).
func (b *Broker) encodeFolded(c *conn, d *deltaItem) (bool, error) {
	ok := false
	if !b.onLoop(c.q.done.wait(), func() {
		if d.sub.ts.Active() {
			if payload, qos, enc := b.tree.Fold(d.sub.ts, d.folded); enc {
				d.payload, d.qos, ok = payload, deltaQoS(d.sub.ts, qos), true
			}
		}
		d.folded, d.at = nil, nil
	}) {
		return false, errWriterStop
	}
	return ok, nil
}

// takeSnapshot has the loop take st's snapshot now that the writer reached
// it, with the events that came while it waited as the delta after it, and
// cuts it into the messages that carry it.
func (b *Broker) takeSnapshot(c *conn, st *treeSub) ([]*treeItem, error) {
	var first treeItem
	var events *treeItem
	var later firstRead
	active := false
	if st.hist != nil {
		// A $hist answer copies the current rows and decodes the stored
		// history: a few at a time broker-wide, whoever asks.
		select {
		case b.histReads <- struct{}{}:
		case <-c.q.done.wait():
			return nil, errWriterStop
		}
		defer func() { <-b.histReads }()
	}
	// A shared snapshot is the writer's to let go of, unless it gave up
	// waiting for the loop (which may still run the call): then the
	// loop's, or whoever of the two comes second.
	var state atomic.Int32 // 0: the call runs; 1: it ran, the writer reads; 2: the writer gave up
	if !b.onLoop(c.q.done.wait(), func() {
		first, events, later, active = b.snapshotOf(st)
		if !state.CompareAndSwap(0, 1) {
			b.releaseShared(st.takeShared())
		}
	}) {
		if !state.CompareAndSwap(0, 2) {
			b.releaseShared(st.takeShared())
		}
		return nil, errWriterStop
	}
	if !active {
		return nil, nil // unsubscribed or replaced meanwhile
	}
	if st.away && first.payload == nil && later.hist == nil && later.resume == nil {
		// A resumed session's $tree subscription whose mote-seq shows a
		// gap: no first message, its held events follow. (Any other
		// subscription's first message is sent, empty too: the original
		// dialect's snapshot of a row that does not exist.)
		if events != nil {
			return []*treeItem{events}, nil
		}
		return nil, nil
	}
	if n := len(first.payload); n > flushAt && cap(first.payload)-n > n/8 {
		// The encoder grew it by doubling: held until the client has read
		// it, its spare room would be up to as large again.
		first.payload = bytes.Clone(first.payload)
	}
	ts := st.ts
	switch {
	case later.hist != nil:
		payload, err := b.readHistory(c, later.hist)
		if err != nil {
			return nil, err
		}
		first.payload = payload
	case later.resume != nil:
		if err := b.finishResume(c, st, later.resume, &first); err != nil {
			return nil, err
		}
		if first.payload == nil {
			return nil, nil // unsubscribed meanwhile
		}
	}
	msgs, err := c.snapshotMessages(first)
	if errors.Is(err, errWriterStop) {
		return nil, err
	}
	if err != nil && len(msgs) > 0 {
		// Values were left out of the parts: their mote-rev, and that of
		// every later message of st, is one a resume from still brings
		// the values in (SPEC §8).
		st.revCap.Store(first.leftOutRev() + 1)
		if events != nil {
			events.rev = st.moteRev(events.rev)
		}
	}
	if err != nil { // msgs may still carry it (MQTT 5), without the values the error names
		code := b.refuse(c.p, "subscribe", ts.Topic, err)
		if o, ok := c.out.(*funcOut); ok {
			// A Session's front end answers its caller: an HTTP request
			// waiting for this first message (Delivery.Err): refused, even
			// when parts without the values left out follow.
			o.refused(c, &Refusal{Code: code, Topic: ts.Topic, Err: err})
		}
	}
	if events != nil {
		msgs = append(msgs, events)
	}
	return msgs, nil
}

// snapshotOf encodes st's first message — its snapshot, its resume delta
// (SPEC §8), or for $hist what the writer reads the history with — and
// the delta of its held events, and makes st live: deltas of later
// batches follow (loop only).
func (b *Broker) snapshotOf(st *treeSub) (first treeItem, events *treeItem, later firstRead, ok bool) {
	if !st.ts.Active() || !st.await {
		st.c.q.reserve(-st.held) // unsubscribed while it waited: what it held goes
		st.events, st.at, st.held = nil, nil, 0
		return first, nil, later, false
	}
	st.await = false
	rev := b.tree.Rev()
	first = treeItem{topic: st.ts.Topic, qos: st.ts.QoS, rev: rev, codec: st.ts.Codec, subID: st.id, kind: outSnapshot}
	switch {
	case st.hist != nil:
		later.hist, first.kind = b.historyOf(st), outHistory
	case st.away:
		if rr := b.awayResumeOf(st); rr != nil {
			// The delta is made once the writer read the deletion markers
			// (awayFirst); every change until then is held for it.
			st.await, st.holdAll = true, true
			later.resume, first.resume, first.since, first.kind = rr, true, st.since, outDelta
			return first, nil, later, true
		}
		st.seq++ // what changed is not known: a mote-seq gap (SPEC §2), and no first message
	case st.resume:
		first.payload, later.resume, first.resume = b.resumeOf(st)
		first.since = st.since
	}
	switch {
	case st.away:
	case first.payload != nil || later.hist != nil || later.resume != nil:
	case st.ts.Allow == nil && st.c.sharesSnapshots():
		sh := b.sharedSnapshot(st)
		first.payload = sh.payload
		st.shared.Store(sh)
	default:
		first.payload = b.tree.Snapshot(st.ts.Filter, st.ts.Codec, st.ts.Allow)
	}
	held := st.events[:0]
	for _, ch := range st.events {
		if ch.Topic != "" {
			held = append(held, ch)
		}
	}
	if st.interval > 0 && (!st.away || len(held) > 0) {
		// The snapshot left (a $tree subscription resumed with a gap sends
		// none: idle, unless it holds events): deltas follow an interval
		// after it.
		st.sent = time.Now()
	}
	switch {
	case st.lost:
		st.seq++ // events were dropped: the gap says so
	case len(held) > 0 && st.interval > 0:
		// Paced: the events are held, with the changes that follow, until
		// an interval after the snapshot.
		clear(st.at)
		for i := range held {
			st.at[held[i].Topic] = i
		}
		clear(st.events[len(held):])
		st.events = held
		b.pace.add(st, st.sent.Add(st.interval), st.sent)
		b.stats.DeltasQueued.Add(1)
		return first, nil, later, true
	case len(held) > 0:
		if payload, qos, enc := b.tree.Fold(st.ts, held); enc {
			st.seq++
			events = &treeItem{topic: st.ts.Topic, payload: payload, qos: deltaQoS(st.ts, qos), seq: st.seq, rev: rev, codec: st.ts.Codec, subID: st.id, kind: outDelta}
		}
	}
	st.c.q.reserve(-st.held)
	st.events, st.at, st.held, st.lost = nil, nil, 0, false
	b.stats.DeltasQueued.Add(1)
	return first, events, later, true
}

// firstRead is what the writer reads off the loop to finish a first
// message: a $hist answer, or a resume delta's deletion markers.
type firstRead struct {
	hist   *histRead
	resume *resumeRead
}

// replayRow is one retained row read for a replay: the strings are the
// store's own (immutable), nothing is copied.
type replayRow struct {
	at    int // its index in the replay's list
	topic string
	value wire.Value
	qos   byte
	props *packets.Properties // MQTT 5 properties kept with the row
}

// replay reads the next retained rows of a plain subscription's replay,
// on the loop (one trip: replayRowsMax rows or replayBytes at most); done
// once there are no more. It gives up once stop is closed.
func (b *Broker) replay(stop <-chan struct{}, c *conn, r *replayItem, out []replayRow) ([]replayRow, bool, error) {
	var rows []replayRow // written on the loop; read only once it answered
	var done bool
	if !b.onLoop(stop, func() { rows, done = b.replayRows(r, out, c.dropped.Load()) }) {
		return nil, true, errWriterStop
	}
	return rows, done, nil
}

// replayRows lists the rows of r's filter the first time, then reads the
// next of them: up to replayRowsMax rows or replayBytes of payload, so
// one trip to the loop serves many rows and a writer holds little (loop
// only). done: r has no more. drops is the connection's drop count.
//
// A row is read as it is now, not as it was at the SUBSCRIBE. A row that
// changed after the SUBSCRIBE (its revision is past r.from) is skipped:
// mochi filed the subscription before r.from was read, and the loop
// stores the revision of a batch before it delivers it, so each such
// change is a live publish to this subscriber, queued behind the replay,
// and the subscriber sees the row's values in order (a retained 2 before
// the live 1 and 2 would take a dashboard back). Once the connection
// dropped a message (a full queue) that live publish may be gone, and the
// row is replayed as it is.
func (b *Broker) replayRows(r *replayItem, out []replayRow, drops int64) ([]replayRow, bool) {
	if !r.listed {
		r.list, r.listed = b.lists.list(b.tree.Store(), r.filter), true
	}
	if r.list == nil {
		return out, true
	}
	refs := r.list.refs
	skipNewer := drops == r.drops // rows changed since the SUBSCRIBE come live
	n := 0
	for r.next < len(refs) && len(out) < replayRowsMax && n < replayBytes {
		ref := refs[r.next]
		topic, v, qos, ok := ref.Row()
		r.next++
		if !ok || skipNewer && ref.Rev() > r.from {
			continue
		}
		if len(v.Data) == 0 {
			// A tree leaf "" (or an empty CBOR byte string) is a row whose
			// plain payload has zero bytes: MQTT never replays such a
			// retained message [MQTT-3.3.1-11], and a plain client would
			// read it as the row's deletion. Tree subscribers still see "".
			continue
		}
		// props are shared, not copied: a copy taken by address escaped to
		// the heap for every row replayed (300 bytes each, half of what a
		// retained replay storm allocated).
		out = append(out, replayRow{at: r.next - 1, topic: topic, value: v, qos: qos, props: b.props[topic]})
		n += len(v.Data)
	}
	return out, r.next >= len(refs) // the writer lets the list go once it sent the rows
}

// replayRowsMax and replayBytes bound one read of a replay.
const (
	replayRowsMax = 512
	replayBytes   = 32 << 10
)
