package broker

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// item is one message waiting in a connection's queue. Each kind is its own
// type; cost is what it counts against the queue's byte bound.
type item interface{ cost() int }

// itemOverhead is what an item costs beyond its payload and topic.
const itemOverhead = 64

// plainItem is a live plain publish: the message is shared by all its
// subscribers, the flags are this subscriber's.
type plainItem struct {
	msg    *message
	qos    byte
	retain bool
	subIDs []int
}

// messageCost is what a message costs beyond its topic and payload (the
// message and its item); counted whole for every subscriber, though shared.
const messageCost = 160

func (m *plainItem) cost() int {
	return len(m.msg.payload) + len(m.msg.topic) + m.msg.size + messageCost
}

// treeItem is an encoded tree message: a snapshot (or one of its parts) or
// a delta.
type treeItem struct {
	topic   string // the filter as subscribed
	payload []byte
	qos     byte
	seq     uint64 // mote-seq
	rev     uint64 // mote-rev: the store revision the receiver's copy reflects once applied
	resume  bool   // a resume delta (mote-resume = 1)
	since   uint64 // with resume, the mote-since it answers
	codec   wire.Codec
	subID   int
	part    string  // "i/n" for a part of a split snapshot
	kind    outKind // snapshot, history or delta, for the metrics; a resume says so itself
}

func (m *treeItem) cost() int { return len(m.payload) + len(m.topic) + itemOverhead }

// leftOutRev is the mote-rev of a first message (snapshot, resume delta,
// $hist answer) sent in parts with values left out, and of the later
// messages of its subscription. SPEC §8: mote-rev is the revision the
// receiver's copy reflects, and a copy without a value that changed at
// or before the store's revision reflects none at or after that change:
// a client that later resumes from it must be sent the value again. A
// resume delta's copy reflects its mote-since (a resume from there sends
// again every row the delta held); any other copy reflects no revision,
// 0, from which a resume is a full snapshot or every row.
func (m *treeItem) leftOutRev() uint64 {
	if m.resume {
		return m.since
	}
	return 0
}

// sentAs is the kind of message m is, for the metrics.
func (m *treeItem) sentAs() outKind {
	if m.resume {
		return outResume
	}
	return m.kind
}

// deltaItem is a delta that the next deltas of its subscription fold into
// while it waits: the loop adds their rows (folded), and the loop encodes
// them once the writer takes it. While the item is queued, taken and the
// folded rows belong to the queue (guarded by its mu); once taken, to the
// writer.
type deltaItem struct {
	treeItem
	sub *treeSub // the loop's; the writer only hands it back to the loop

	taken  bool
	folded []tree.Change  // every row it holds, once something folded in; nil before
	at     map[string]int // topic → index in folded
	from   *ownRows       // its own rows, kept to list them on the first fold (batchRows.keep)
	rowQoS byte           // highest QoS among folded rows
	extra  int            // bytes the folded rows added to the queue
	bound  int            // at least the size of its payload once encoded again (foldBound); the loop's
	shown  int            // folded rows whose newest change is not its client's own (No Local: deltaItem.add)
}

func (d *deltaItem) cost() int { return d.treeItem.cost() + d.extra }

// snapshotItem is a $sync subscription's snapshot, encoded by the loop
// when the writer reaches it: a client holds at most one snapshot in
// memory however many it asked for at once.
type snapshotItem struct{ sub *treeSub }

// tokenCost is what a snapshot or replay token counts: about what a
// subscription waiting for it holds in memory.
const tokenCost = 512

func (*snapshotItem) cost() int { return tokenCost }

// replayItem is the retained rows a plain subscription gets, listed by the
// loop when the writer reaches it (a list shared with the replays of the
// same filter: replay.go) and read as the client drains them.
type replayItem struct {
	filter string
	qos    byte // granted QoS
	subID  int
	list   *replayList // the loop's; nil until listed, and once read to the end
	listed bool
	next   int
	// from is the store's revision as of the SUBSCRIBE (read once mochi
	// filed the subscription), drops the connection's drop count then
	// (see replayRows).
	from  uint64
	drops int64
}

func (m *replayItem) cost() int { return len(m.filter) + tokenCost }

// outQueue is one connection's queue: a guarded slice of items plus a
// one-slot channel that wakes the writer (as nats-server's ipqueue). It
// owns nothing but order and the byte count. Producers are the message
// loop (tree messages, retained publishes), publishers' goroutines (plain
// events) and the connection's read goroutine (retained replays).
type outQueue struct {
	mu      sync.Mutex
	items   []item
	head    int // items[:head] are taken
	bytes   int // cost of the items not yet taken
	max     int
	held    int        // while > 0 the writer waits: an ack mochi writes must go first
	role    writeRole  // who writes to the client now (direct.go)
	pending bool       // a direct write left bytes for the writer (takeOver)
	closed  bool       // no more items: the connection is gone
	sealed  bool       // the leftovers were taken: a push answers pushGone
	stalled bool       // credit ran out, and has not come back whole (see patience)
	running bool       // a writer goroutine runs (mu held to change it; see start)
	left    *queueLeft // once closed, the leftovers; made by their first use (lefts): a queue never closed holds none
	// waits is its publishers' waits for room (queueWaits), made by the
	// first publisher that waits: an idle connection's queue has had
	// none (72 bytes: the 288-byte size class → 208).
	waits *queueWaits

	// How long this client may hold publishers back (a token bucket of
	// time): while any publisher waits for room, credit runs down; what
	// the client is written earns it back (creditBytes, creditMsg), up to
	// patience. A client out of credit is stalled: every waiting publisher
	// gives up, and none waits for it until the bucket is full again. A
	// subscriber that reads steadily, at 64 messages or 64 KiB a second or
	// more, earns its waits and slows publishers to its pace; one that
	// trickles (an acknowledgement now and then) cannot make publishers
	// crawl at its pace.
	//
	// The credit is spent only while someone waits, and publishers
	// deliver to their subscribers one after another: N clients that stop
	// reading together would each cost a publisher PublishWait in turn,
	// N × PublishWait in all. So the clock also runs in wall time
	// (fullAt): a client whose queue has been full for a patience with
	// nothing written to it is stalled at once, whoever waited, and
	// clients stalling together cost publishers about one patience.
	//
	// A write counts once it returns, and one write may take longer than
	// a patience while the client reads steadily: the kernel takes what
	// fits in the socket's send buffer at once, then has the writer wait
	// until the client has read about a third of it (the buffer grows to
	// 4 MiB: one write of a 256 KiB message waited 0.9–1.04 s for a client
	// reading 1.5 MB/s). So before it stalls a client, the queue looks at what
	// the client's TCP stack acknowledged since it last looked (acked,
	// takingLocked): bytes taken count as bytes written.
	patience  time.Duration
	credit    time.Duration
	lastWrote time.Time // when the client was last written something
	// acked reads how many bytes the client's TCP stack has acknowledged
	// (netConn.acked); nil, or false, when that is not known (not plain
	// TCP on Linux, a queue on its own in tests). look is what the looks
	// found: nil until the first (an idle connection's queue never looks).
	// An interface holding the netConn itself, not its method value: a
	// method value is a 16-byte closure a connection.
	acked tcpAcker
	look  *tcpLook

	// wake is a one-slot channel: items, a release, a direct write's rest
	// (sent with mu held: see idle). Made by the first wake-up after the
	// writer last stopped, nil while none runs (wakeLocked, idle): an idle
	// connection's queue carries no channel (112 bytes).
	wake chan struct{}
	done closeSignal // closed by close

	// The writer goroutine runs only while there is something to write
	// (writer.go): a wake-up starts it if it is not running (start), and
	// it stops once it found nothing for a while (idle). Once the queue is
	// closed a writer runs (close starts one if none does) and does its
	// finishing duties; none starts after it.
	start func() // starts the writer goroutine (the conn's); nil: none (a queue on its own, in tests)
}

// tcpLook is what an outQueue's looks at the client's TCP stack found
// (lookLocked, takingLocked), guarded by its mu; made at the first look,
// when the queue is first found full with a publisher waiting: an idle
// connection's queue carries a nil pointer. ackedAt is what acked read at
// the last look, at lookedAt (when the queue is found full, when the
// client is written while publishers wait, and by takingLocked); early is
// what takingLocked counted as written that the writes themselves have
// not yet paid back (wrote): the bytes acknowledged were counted once
// already, as their writes returned, or will be.
type tcpLook struct {
	ackedAt  uint64
	lookedAt time.Time
	early    int64
}

// creditBytes is what a client is written for each second of credit;
// creditMsg what one message written counts at least, so a client that
// reads 64 small messages a second earns as much as one read 64 KiB (a
// 64-byte message counted as its bytes earned 1/1000 of what it should:
// a subscriber reading 500 of them a second was stalled).
const (
	creditBytes = 64 << 10
	creditMsg   = 1 << 10
)

// waiter is a publisher waiting for room (queueWaits.waitq): its message;
// turn, a one-slot wake-up once it is answered (or, first in line, when
// its message may fit); and, once answered, what became of it (queued by
// admitLocked, stalled, or the queue closed). m, res and answered are guarded by the
// queue's mu. Once out of the line and back from put it is the queue's
// spare, timer and channel included.
type waiter struct {
	m        item
	cost     int
	turn     chan struct{}
	res      pushResult
	answered bool
	timer    *time.Timer // its wait's; made at its first wait, stopped after each
}

// tcpAcker reads how many bytes a client's TCP stack has acknowledged
// (netConn.acked); false when that is not known.
type tcpAcker interface {
	acked() (uint64, bool)
}

// ackedFunc is a function as a tcpAcker (tests).
type ackedFunc func() (uint64, bool)

func (f ackedFunc) acked() (uint64, bool) { return f() }

// queueWaits is an outQueue's publishers waiting for room (guarded by its
// mu), made by the first that waits (waitsLocked).
type queueWaits struct {
	// waitq is the publishers waiting for room, in the order they came:
	// room goes to them in that order (admitLocked): whoever makes room
	// queues the messages of those first in line that fit, and wakes
	// each of them once, its message queued.
	waitq []*waiter
	// spare is waiters done with, for the next waits: a fan-in's
	// publishers wait for one subscriber's room again and again (about
	// one message in four in mote bench's fan-in), each wait a waiter,
	// its channel and its timer otherwise.
	spare []*waiter
	since time.Time // since when credit runs down (waitq not empty)
	// fullAt is when the queue was first found full (a put found no room
	// for its message, or the message it queued left less room than it
	// took) since the client was last written something; zero: not
	// since then. Here, made with the waits by the first that needs
	// either (fullAtLocked), not in outQueue: an idle connection's queue
	// is 184 bytes, the 192 class, not 208.
	fullAt time.Time
}

// fullAtLocked is q's fullAt (queueWaits), zero while its waits are not
// made (mu held).
func (q *outQueue) fullAtLocked() time.Time {
	if q.waits == nil {
		return time.Time{}
	}
	return q.waits.fullAt
}

// waitsLocked is q's waits, made if none waited yet (mu held).
func (q *outQueue) waitsLocked() *queueWaits {
	if q.waits == nil {
		q.waits = new(queueWaits)
	}
	return q.waits
}

// waitingLocked is how many publishers wait for room (mu held).
func (q *outQueue) waitingLocked() int {
	if q.waits == nil {
		return 0
	}
	return len(q.waits.waitq)
}

// maxSpareWaiters bounds the waiters a queue keeps for the next waits.
const maxSpareWaiters = 128

// newWaiterLocked is a waiter for m, a spare one if the queue has one
// (mu held).
func (q *outQueue) newWaiterLocked(m item, cost int) *waiter {
	var w *waiter
	if ws := q.waitsLocked(); len(ws.spare) > 0 {
		n := len(ws.spare)
		w = ws.spare[n-1]
		ws.spare[n-1] = nil
		ws.spare = ws.spare[:n-1]
	} else {
		w = &waiter{turn: make(chan struct{}, 1)}
	}
	w.m, w.cost = m, cost
	return w
}

// spareLocked keeps w, out of the line and done with, for a next wait
// (mu held): nobody wakes it any more, so a wake-up left in turn is
// stale.
func (q *outQueue) spareLocked(w *waiter) {
	select {
	case <-w.turn:
	default:
	}
	w.m, w.res, w.answered = nil, 0, false
	if ws := q.waitsLocked(); len(ws.spare) < maxSpareWaiters {
		ws.spare = append(ws.spare, w)
	}
}

// answerLocked ends w's wait with r (mu held); w is out of the line.
func answerLocked(w *waiter, r pushResult) {
	w.res, w.answered = r, true
	select {
	case w.turn <- struct{}{}:
	default: // woken already
	}
}

func newOutQueue(max int, patience time.Duration) *outQueue {
	return &outQueue{max: max, patience: patience, credit: patience}
}

// spendLocked runs the credit down for the time publishers waited, and
// to nothing once the queue has been full for a patience with nothing
// written (fullAt); out of credit, the client is stalled and every
// waiting publisher gives up (mu held). Before it stalls a client it
// looks whether its TCP stack is taking a write still in progress
// (takingLocked), which earns credit as written bytes do.
func (q *outQueue) spendLocked(now time.Time) {
	q.chargeLocked(now)
	q.stallIfDueLocked(now)
}

// chargeLocked runs the credit down for the time publishers waited since
// it last ran (mu held).
func (q *outQueue) chargeLocked(now time.Time) {
	if q.waitingLocked() > 0 {
		q.credit -= now.Sub(q.waits.since)
		q.waits.since = now
	}
}

// stallIfDueLocked stalls the client if it is out of credit, or its
// queue has been full a patience with nothing written, and its TCP stack
// took too little since the last look to earn more (mu held).
func (q *outQueue) stallIfDueLocked(now time.Time) {
	if !q.stalled && q.dueLocked(now) {
		q.takingLocked(now)
	}
	if at := q.stallAtLocked(); !at.IsZero() && !now.Before(at) {
		q.credit = 0
	}
	if q.credit <= 0 && !q.stalled {
		q.stalled = true
		q.answerAllLocked(pushStalled)
	}
}

// dueLocked reports whether the client is to be stalled now, unless it
// is taking a write (mu held).
func (q *outQueue) dueLocked(now time.Time) bool {
	at := q.stallAtLocked()
	return q.credit <= 0 || (!at.IsZero() && !now.Before(at))
}

// takingLocked looks whether the client's TCP stack acknowledged at least
// creditMsg bytes since the last look (ackedAt): the client is reading,
// though no write returned (the writer waits in one for the kernel's
// room). Those bytes earn credit as written ones do, the client counts as
// written now (lastWrote), and they move the wall-time clock on by the
// time they earn, up to now (the queue is still full) (mu held). Nothing
// else changes: a client that stops reading is stalled a patience after
// its TCP stack stopped taking bytes (two at most: lookLocked), and one
// that trickles earns what its bytes earn, as before (creditBytes), in
// credit and in wall time: clients that trickle together cost
// publishers about one patience, not one each (a restart of the clock
// at any 1 KiB taken let 32 of them at 8 KiB/s hold publishers 32
// patiences: TestQueueTricklingTogether).
func (q *outQueue) takingLocked(now time.Time) {
	if q.acked == nil {
		return
	}
	a, ok := q.acked.acked()
	if !ok {
		return
	}
	lk := q.lookOfLocked()
	if a < lk.ackedAt+creditMsg {
		return
	}
	d := int64(a - lk.ackedAt)
	lk.ackedAt, lk.lookedAt = a, now
	lk.early += d
	earned := q.earnLocked(d, now)
	if ws := q.waits; ws != nil && !ws.fullAt.IsZero() {
		ws.fullAt = ws.fullAt.Add(earned)
		if ws.fullAt.After(now) {
			ws.fullAt = now
		}
	}
}

// lookLocked notes what the client's TCP stack has acknowledged so far,
// for takingLocked to count from, unless it looked less than a quarter
// of a patience ago (mu held): a look is a system call (5 µs here), and a
// queue that publishers wait for is found full and written again and
// again, a look each time. takingLocked may so count bytes the client
// took up to a quarter of a patience before its queue was found full.
func (q *outQueue) lookLocked(now time.Time) {
	if q.acked == nil || q.look != nil && now.Sub(q.look.lookedAt) < q.patience/4 {
		return
	}
	if a, ok := q.acked.acked(); ok {
		lk := q.lookOfLocked()
		lk.ackedAt, lk.lookedAt = a, now
	}
}

// lookOfLocked is q.look, made at the first look (mu held).
func (q *outQueue) lookOfLocked() *tcpLook {
	if q.look == nil {
		q.look = &tcpLook{}
	}
	return q.look
}

// earnLocked adds the credit n bytes written earn, up to patience, and
// notes the client written now (mu held). It returns what they earned,
// before the cap.
func (q *outQueue) earnLocked(n int64, now time.Time) time.Duration {
	q.lastWrote = now
	earned := time.Duration(n * int64(time.Second) / creditBytes)
	q.credit = min(q.credit+earned, q.patience)
	return earned
}

// stallAtLocked is when the client is stalled in wall time, having been
// full a patience with nothing written to it; zero: it is not full (mu
// held).
func (q *outQueue) stallAtLocked() time.Time {
	at := q.fullAtLocked()
	if at.IsZero() {
		return time.Time{}
	}
	return at.Add(q.patience)
}

// markFullLocked notes that the queue is full now, unless it was already
// since the client was last written (mu held).
func (q *outQueue) markFullLocked(now time.Time) {
	if q.fullAtLocked().IsZero() {
		q.waitsLocked().fullAt = now
		q.lookLocked(now)
	}
}

// noteFullLocked marks the queue full (markFullLocked) if it has no room
// left for another message like the one of cost c just queued: the
// client's next publisher will find it so, maybe only once it is done
// waiting for the subscribers before this one (mu held).
func (q *outQueue) noteFullLocked(c int) {
	if q.bytes+c > q.max && q.fullAtLocked().IsZero() {
		now := time.Now()
		q.waitsLocked().fullAt = now
		q.lookLocked(now)
	}
}

// answerAllLocked ends every publisher's wait with r (mu held).
func (q *outQueue) answerAllLocked(r pushResult) {
	if q.waits == nil {
		return
	}
	for _, w := range q.waits.waitq {
		answerLocked(w, r)
	}
	clear(q.waits.waitq)
	q.waits.waitq = q.waits.waitq[:0]
}

// admitLocked queues the messages of the publishers first in line, in
// line order, while they fit, and wakes each of them with its wait
// answered (pushed) (mu held). It reports whether it queued any, for
// the caller to wake the writer. Each publisher is woken once, when its
// message is queued: no herd, and no hand-off down the line either (the
// first woken used to queue its message and wake the next, one goroutine
// switch a message: in mote bench's fan-in, where the publishers wait
// for one subscriber's room in turn, that chain was what refilled the
// queue).
func (q *outQueue) admitLocked() bool {
	if q.closed || q.waits == nil {
		return false
	}
	ws := q.waits
	n := 0
	for ; n < len(ws.waitq); n++ {
		w := ws.waitq[n]
		if q.bytes > 0 && q.bytes+w.cost > q.max {
			break
		}
		q.items = append(q.items, w.m)
		q.bytes += w.cost
		answerLocked(w, pushed)
	}
	if n == 0 {
		return false
	}
	q.noteFullLocked(ws.waitq[n-1].cost)
	k := copy(ws.waitq, ws.waitq[n:])
	clear(ws.waitq[k:])
	ws.waitq = ws.waitq[:k]
	return true
}

// leaveWaitLocked takes w out of the line (mu held).
func (q *outQueue) leaveWaitLocked(w *waiter) {
	if q.waits == nil {
		return
	}
	if i := slices.Index(q.waits.waitq, w); i >= 0 {
		q.waits.waitq = slices.Delete(q.waits.waitq, i, i+1)
	}
}

// unlockAndWake leaves a wake-up for the writer, starting one if none
// runs, and unlocks mu (held). The wake-up is left with mu held, so a
// writer that finds none under mu (idle) may stop: whoever comes next
// starts another.
func (q *outQueue) unlockAndWake() {
	q.wakeLocked()
	start := !q.running && q.start != nil
	if start {
		q.running = true
	}
	q.mu.Unlock()
	if start {
		q.start()
	}
}

// wakeLocked leaves a wake-up for the writer, making the channel if
// none runs (mu held).
func (q *outQueue) wakeLocked() {
	if q.wake == nil {
		q.wake = make(chan struct{}, 1)
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// wakeOf is the channel the writer waits on for wake-ups (made here if
// no wake-up made it: a writer started by close, or a queue on its own
// in tests).
func (q *outQueue) wakeOf() chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.wake == nil {
		q.wake = make(chan struct{}, 1)
	}
	return q.wake
}

// idle reports whether the writer may stop, having found nothing to write
// for a while: no wake-up waits and the queue is open (a closed queue's
// writer does its finishing duties). From then on the next wake-up starts
// a writer.
func (q *outQueue) idle() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || len(q.wake) > 0 {
		return false
	}
	q.running = false
	q.wake = nil // the next wake-up makes another, for the writer it starts
	return true
}

// pushResult is what became of a pushed item.
type pushResult int

const (
	pushed      pushResult = iota // queued (or, closed, kept among the leftovers, or dropped as of no use)
	pushFull                      // refused: the queue is at its bound (and the sender does not wait)
	pushGone                      // the connection ended and its leftovers were handed on: deliver elsewhere
	pushStalled                   // refused: at its bound, and the client is stalled (out of credit)
	pushLate                      // refused: at its bound, and the publisher's wait ended
)

// full reports whether r is a refusal for want of room, and why.
func (r pushResult) full() (fullWhy, bool) {
	switch r {
	case pushFull:
		return fullNoWait, true
	case pushStalled:
		return fullStalled, true
	case pushLate:
		return fullLate, true
	}
	return 0, false
}

// push queues m; false means the queue is full (see put).
func (q *outQueue) push(m item, w pubWait) bool {
	_, full := q.put(m, w).full()
	return !full
}

// put queues m. A queue whose bytes would pass the bound refuses it
// (pushFull), unless it is empty: one message larger than the bound still
// goes through alone. A closed queue keeps a QoS 1/2 plain message among
// its leftovers (see close; pushFull past their bound), drops anything
// else, and once the leftovers were taken answers pushGone.
//
// A publisher (w not zero) waits for room instead, in line behind those
// already waiting (first come, first served), for as long as the client
// keeps reading: it gives up when the client is stalled (pushStalled: it
// was written too little to earn the time publishers waited for it, see
// outQueue), or once w.deadline passed and the client was written nothing
// for a patience (pushLate). So a subscriber that reads steadily slows its
// publishers to its pace and loses nothing, one that stops reading holds
// them at most a patience (and several that stop together about one
// patience in all, not one each: fullAt), and a publish to several subscribers that do
// not read waits at most until its deadline in all.
func (q *outQueue) put(m item, w pubWait) pushResult {
	c := m.cost()
	q.mu.Lock()
	if q.closed {
		defer q.mu.Unlock()
		return q.closedPutLocked(m)
	}
	fits := q.bytes == 0 || q.bytes+c <= q.max
	if fits && (q.waitingLocked() == 0 || w.never()) {
		// Room, and nobody waiting ahead (a sender that never waits may
		// pass them: it takes room only when there is some).
		q.items = append(q.items, m)
		q.bytes += c
		q.noteFullLocked(c)
		q.unlockAndWake()
		return pushed
	}
	now := time.Now()
	w = w.from(now)
	if !fits {
		q.markFullLocked(now)
	}
	q.spendLocked(now)
	switch {
	case w.deadline.IsZero():
		q.mu.Unlock()
		return pushFull
	case q.stalled:
		q.mu.Unlock()
		return pushStalled
	case q.lateLocked(w, now) || w.stopped():
		// Its wait is over (an earlier subscriber of the same publish
		// used it up): refused now, not after a timer's sleep in line
		// that would spend this client's credit too.
		q.mu.Unlock()
		return pushLate
	}
	wt := q.newWaiterLocked(m, c)
	ws := q.waits // made by newWaiterLocked
	if len(ws.waitq) == 0 {
		ws.since = now
	}
	ws.waitq = append(ws.waitq, wt)
	for {
		// Wake when the credit would run out (spent, or in wall time),
		// or when the publish may give up, whichever comes first.
		giveUp := w.deadline
		if read := q.lastWrote.Add(q.patience); read.After(giveUp) {
			giveUp = read
		}
		if !w.limit.IsZero() && w.limit.Before(giveUp) {
			giveUp = w.limit
		}
		d := min(q.credit, giveUp.Sub(now))
		if at := q.stallAtLocked(); !at.IsZero() {
			d = min(d, at.Sub(now))
		}
		q.mu.Unlock()
		if w.idle != nil {
			w.idle() // the acks of the publishes before this one go out before it waits
			w.idle = nil
		}
		// The timer is the waiter's, stopped after each wait: a stopped
		// timer delivers nothing stale (Go 1.23).
		if wt.timer == nil {
			wt.timer = time.NewTimer(max(d, time.Millisecond))
		} else {
			wt.timer.Reset(max(d, time.Millisecond))
		}
		select {
		case <-wt.turn:
		case <-wt.timer.C:
		case <-w.stop:
		}
		wt.timer.Stop()
		q.mu.Lock()
		now = time.Now()
		q.spendLocked(now)
		if wt.answered { // queued by admitLocked, stalled, or the queue closed
			res := wt.res
			q.spareLocked(wt)
			q.mu.Unlock()
			return res
		}
		if ws.waitq[0] == wt && (q.bytes == 0 || q.bytes+c <= q.max) { // its turn, and room
			ws.waitq = slices.Delete(ws.waitq, 0, 1)
			q.items = append(q.items, m)
			q.bytes += c
			q.spareLocked(wt)
			q.admitLocked() // the next in line
			q.unlockAndWake()
			return pushed
		}
		if q.lateLocked(w, now) || w.stopped() {
			q.leaveWaitLocked(wt)
			q.spareLocked(wt)
			if q.admitLocked() { // those behind it may fit
				q.unlockAndWake()
			} else {
				q.mu.Unlock()
			}
			return pushLate
		}
	}
}

// lateLocked reports whether a publisher waiting w must give up now: past
// its deadline with the client written nothing for a patience, or past
// its limit (mu held).
func (q *outQueue) lateLocked(w pubWait, now time.Time) bool {
	return !now.Before(w.deadline) && (!now.Before(q.lastWrote.Add(q.patience)) || (!w.limit.IsZero() && !now.Before(w.limit)))
}

// closedPutLocked is put on a closed queue (mu held).
func (q *outQueue) closedPutLocked(m item) pushResult {
	if q.sealed {
		return pushGone
	}
	if !q.leaveLocked(m) {
		return pushFull
	}
	return pushed
}

// pubWait is how long a publisher waits for room in a subscriber's queue:
// until deadline (for the whole publish, whatever its subscribers do), and
// past it while the subscriber is being written, but never past limit
// (zero: no limit): a publisher's connection is not read while it waits,
// and its client expects answers to its pings. The zero pubWait does not
// wait (the loop, the broker's own messages).
type pubWait struct {
	deadline time.Time
	limit    time.Time
	stop     <-chan struct{} // closed: the publisher gave up (its context ended); nil: never
	idle     func()          // called once before the publisher first waits, without locks: its connection writes the acks it held (heldAcks); nil: none
	// clock, for an MQTT client's publish, holds deadline and limit
	// instead, set when one of the publish's deliveries first has to
	// wait (from): a publish that never waits reads no clock. nil: the
	// fields above are set.
	clock *pubClock
}

// pubClock is when the wait of an MQTT client's publish for room ends,
// set from the moment one of its deliveries first has to wait (not from
// its start: its earlier deliveries, queued or written directly, never
// wait, so they took microseconds), and shared by the later ones, so
// the publish waits PublishWait in all. It is its connection's
// (mqttPublisher), used by the read goroutine for one publish at a time.
type pubClock struct {
	wait            time.Duration // PublishWait
	started         bool
	deadline, limit time.Time
}

// never reports whether w is the zero pubWait, which does not wait.
func (w pubWait) never() bool { return w.deadline.IsZero() && w.clock == nil }

// from is w with its deadline and limit, its clock started now if it was
// not.
func (w pubWait) from(now time.Time) pubWait {
	if c := w.clock; c != nil {
		if !c.started {
			c.started, c.deadline, c.limit = true, now.Add(c.wait), now.Add(waitLimit*c.wait)
		}
		w.deadline, w.limit = c.deadline, c.limit
	}
	return w
}

// mqttPublisher is what an MQTT connection's read goroutine carries into
// the door with each publish (conn.pub, publishInline): publisherWait puts
// its flush in pubWait.idle, so an ack mochi held while this publish
// waited in its read buffer does not wait with it for room in a
// subscriber's queue (up to 5 × publish_wait), and its clock in
// pubWait.clock. It went in the publish's context (a context value) until
// a lookup there, two a plain publish, showed in its profile (issue 15).
type mqttPublisher struct {
	flush func()   // writes the acks mochi held for the client (mochi Client.FlushHeld)
	clock pubClock // the wait of the publish being delivered
	// queued counts the client's publishes that change rows and were
	// queued to the loop (not run inline) and that the loop has not yet
	// delivered: while it is not 0, the client's plain events wait for
	// them (MQTT 4.6, dispatch). Added to by the read goroutine, taken
	// from by the loop once it ran them (pubMeta.queued).
	queued atomic.Int32
}

// stopped reports whether w's publisher gave up.
func (w pubWait) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// waitLimit is how many times PublishWait a publisher waits at most for
// a subscriber that is being written (pubWait.limit): 5 s by default,
// within the 10 s a Paho client waits for a PINGRESP.
const waitLimit = 5

// publisherWait is the wait of a publish made now with ctx: it ends with
// ctx too (a door publisher that gave up, an HTTP client gone). An MQTT
// client's (its context has no deadline nor end) starts its clock only if
// it waits (pubClock); mp is its publisher, nil for any other.
func (b *Broker) publisherWait(ctx context.Context, mp *mqttPublisher) pubWait {
	if mp != nil {
		mp.clock = pubClock{wait: b.opts.PublishWait}
		return pubWait{stop: ctx.Done(), idle: mp.flush, clock: &mp.clock}
	}
	now := time.Now()
	w := pubWait{deadline: now.Add(b.opts.PublishWait), limit: now.Add(waitLimit * b.opts.PublishWait), stop: ctx.Done()}
	if d, ok := ctx.Deadline(); ok {
		if d.Before(w.deadline) {
			w.deadline = d
		}
		if d.Before(w.limit) {
			w.limit = d
		}
	}
	return w
}

// reserve counts n bytes the loop holds for this connection (events kept
// for a snapshot that waits) against the queue's bound, if they fit; a
// negative n gives them back.
func (q *outQueue) reserve(n int) bool {
	q.mu.Lock()
	switch {
	case q.closed: // nothing is counted any more
	case n > 0 && q.bytes > 0 && q.bytes+n > q.max:
		q.mu.Unlock()
		return false
	default:
		q.bytes += n
		if n < 0 && q.admitLocked() {
			q.unlockAndWake()
			return true
		}
	}
	q.mu.Unlock()
	return true
}

// full reports whether the queue has reached its bound.
func (q *outQueue) full() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.bytes >= q.max
}

// take moves up to maxBytes worth of items (at least one) into out and
// returns it; none while the queue is held or closed, or a deliverer
// writes directly. The writer holds the write role from a take that
// returns items to one that returns none (direct.go).
func (q *outQueue) take(out []item, maxBytes int) []item {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.role == roleDirect || q.pending {
		// A deliverer writes, or left bytes the writer writes first
		// (takeOver): either wakes the writer (unclaim).
		return out
	}
	if q.held > 0 || q.closed {
		q.role = roleNone
		return out
	}
	n := 0
	for q.head < len(q.items) && (len(out) == 0 || n < maxBytes) {
		m := q.items[q.head]
		q.items[q.head] = nil
		q.head++
		c := m.cost()
		if d, ok := m.(*deltaItem); ok {
			d.taken = true
			d.from = nil // nothing folds into it now: its batch may go
		}
		n += c
		q.bytes -= c
		out = append(out, m)
	}
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	} else if q.head > len(q.items)/2 {
		k := copy(q.items, q.items[q.head:])
		clear(q.items[k:])
		q.items, q.head = q.items[:k], 0
	}
	if len(out) > 0 && q.admitLocked() {
		// The writer's next take finds them; the wake-up is for a writer
		// that stops before it (writeUntilDone takes until empty).
		q.wakeLocked()
	}
	q.role = roleNone
	if len(out) > 0 {
		q.role = roleWriter
	}
	return out
}

// wrote tells the queue the client was written n bytes in msgs
// messages, which earns credit back (creditBytes, creditMsg), but for
// the bytes takingLocked counted already (early). Only what was written
// counts: messages skipped (too large for the client) do not make a
// subscriber that reads nothing look alive. The credit is earned before
// the stall is checked: a write that returns is the client reading.
func (q *outQueue) wrote(n, msgs int) {
	if n <= 0 {
		return
	}
	q.mu.Lock()
	now := q.nowLocked()
	if q.steadyLocked() {
		// What the rest would do here: the client written now, its
		// credit full already (earnLocked's cap), nothing to charge,
		// look at or stall. A direct write's step on the read goroutine
		// without it: 37 L1 instruction misses fewer a plain message
		// (bench/README.md, branch h-fast).
		q.lastWrote = now
		q.mu.Unlock()
		return
	}
	q.chargeLocked(now)
	var paid int64
	if q.look != nil {
		paid = min(int64(n), q.look.early)
		q.look.early -= paid
	}
	q.earnLocked(max(int64(n)-paid, int64(msgs)*creditMsg), now)
	if q.waits != nil {
		q.waits.fullAt = time.Time{} // written: full only from the next time it is found so
	}
	if q.waitingLocked() > 0 {
		q.lookLocked(now) // takingLocked counts from here
	}
	q.stallIfDueLocked(now)
	if q.stalled && q.credit >= q.patience {
		q.stalled = false
	}
	q.mu.Unlock()
}

// steadyLocked reports whether a write changes nothing of q's credit
// but when the client was last written (wrote): its credit is full
// (patience, and patience is not zero: with none, a write stalls it),
// it is not stalled, nobody waits for room, it is not marked full since
// its last write and no look at its TCP stack is pending (mu held).
func (q *outQueue) steadyLocked() bool {
	return q.patience > 0 && q.credit >= q.patience && !q.stalled && q.look == nil &&
		(q.waits == nil || len(q.waits.waitq) == 0 && q.waits.fullAt.IsZero())
}

// nowLocked is the time now, for wrote, which a direct write pays on
// the read goroutine's step: from lastWrote by the monotonic clock
// (time.Since reads it once, time.Now reads it and the wall clock; 57 ns
// a read on this kvm-clock VM). The queue's times are compared with each
// other only, which goes by the monotonic clock, so its wall reading,
// lastWrote's plus the time since, serves. The first write has no
// lastWrote: time.Now (mu held).
func (q *outQueue) nowLocked() time.Time {
	if q.lastWrote.IsZero() {
		return time.Now()
	}
	return q.lastWrote.Add(time.Since(q.lastWrote))
}

// hold makes the writer wait until release: what is queued while mochi
// writes a SUBACK goes out after it.
func (q *outQueue) hold() {
	q.mu.Lock()
	q.held++
	q.mu.Unlock()
}

// release undoes one hold and wakes the writer if it has something to
// write now: a SUBSCRIBE refused whole held the writer and queued nothing,
// and woke (or started) a writer goroutine for nothing, a wake-up for
// each packet of a client flooding them.
func (q *outQueue) release() {
	q.mu.Lock()
	q.held--
	if q.held > 0 || (q.head == len(q.items) && !q.pending && !q.closed) {
		q.mu.Unlock()
		return
	}
	q.unlockAndWake()
}

// close ends the queue: it wakes the writer (or starts one, for its
// finishing duties) and every waiting publisher (see below), and keeps, of what was
// not taken, the QoS 1/2 plain messages (the leftovers, which a
// persistent session must not lose: see conn.finish) and drops the rest.
// It reports whether it closed the queue (false: already closed).
func (q *outQueue) close() bool {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	defer q.unlockAndWake()
	q.closed = true
	for _, m := range q.items[q.head:] {
		if !q.leaveLocked(m) {
			q.lefts().lost++
		}
	}
	clear(q.items)
	q.items, q.head, q.bytes = nil, 0, 0
	q.done.close()
	// Waiting publishers' messages join the leftovers, in line order,
	// while they fit; from the first QoS 1/2 one that does not, they go
	// elsewhere once the leftovers are handed on (pushGone: to the
	// connection's successor or the session), after the leftovers: the
	// queue was full when they came, and a session that lives on must not
	// lose them for that.
	gone := false
	if q.waits == nil {
		return true
	}
	for _, w := range q.waits.waitq {
		if p, ok := w.m.(*plainItem); ok && p.qos > 0 && q.lefts().bytes > 0 && q.lefts().bytes+w.cost > q.max {
			gone = true
		}
		if gone {
			answerLocked(w, pushGone)
		} else {
			answerLocked(w, q.closedPutLocked(w.m))
		}
	}
	q.waits.waitq = nil
	return true
}

// leaveLocked keeps m among the leftovers if it is a QoS 1/2 plain
// message and they stay within the queue's bound; anything else is
// dropped (mu held). It reports false for a QoS 1/2 plain message it
// could not keep.
func (q *outQueue) leaveLocked(m item) bool {
	if q.sealed {
		return true
	}
	switch m := m.(type) {
	case *plainItem:
		if m.qos == 0 {
			return true
		}
	case *replayItem:
		// Only its QoS is read here: a trip to the loop that its writer
		// gave up on (the broker stops) may still be reading rows into it.
		if m.qos == 0 {
			return true
		}
	default:
		return true
	}
	if l, c := q.lefts(), m.cost(); l.bytes == 0 || l.bytes+c <= q.max {
		l.items = append(l.items, m)
		l.bytes += c
		return true
	}
	return false
}

// queueLeft is a closed queue's leftovers: QoS 1/2 plain messages not
// written, for the session (see close), and QoS 1/2 replays not finished
// (expanded by the writer: handReplaysOn), their bytes, and how many QoS
// 1/2 plain messages close and unsent could not keep (over the bound).
// Behind a pointer: 40 bytes every open connection's queue held (outQueue
// 304 → 272 bytes, the 288-byte size class, not 320).
type queueLeft struct {
	items []item
	bytes int
	lost  int
}

// lefts is the queue's leftovers, made by the first call (mu held).
func (q *outQueue) lefts() *queueLeft {
	if q.left == nil {
		q.left = new(queueLeft)
	}
	return q.left
}

// leftReplays lists the unfinished QoS 1/2 replays among the leftovers of
// a closed queue, for the writer to expand (handReplaysOn).
func (q *outQueue) leftReplays() []*replayItem {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []*replayItem
	for _, m := range q.lefts().items {
		if r, ok := m.(*replayItem); ok {
			out = append(out, r)
		}
	}
	return out
}

// leftRoom is how many bytes of plain messages r's place among the
// leftovers may take within their bound (expand).
func (q *outQueue) leftRoom(r *replayItem) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.max - q.lefts().bytes + r.cost()
}

// expand puts rows in r's place among the leftovers, within the queue's
// bound (what does not fit is counted lost); gone, it does nothing.
func (q *outQueue) expand(r *replayItem, rows []*plainItem) {
	q.mu.Lock()
	defer q.mu.Unlock()
	i := slices.IndexFunc(q.lefts().items, func(m item) bool { return m == r })
	if i < 0 || q.sealed {
		return
	}
	q.lefts().bytes -= r.cost()
	n := 0
	for _, p := range rows {
		if c := p.cost(); q.lefts().bytes+c > q.max {
			q.lefts().lost += len(rows) - n
			break
		}
		q.lefts().bytes += p.cost()
		n++
	}
	ms := make([]item, n)
	for j, p := range rows[:n] {
		ms[j] = p
	}
	q.lefts().items = slices.Replace(q.lefts().items, i, i+1, ms...)
}

// unsent puts back, ahead of the leftovers, what the writer took but did
// not write (it stops): they came before whatever was still queued.
func (q *outQueue) unsent(ms []item) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.prependLocked(ms)
}

// prependLocked makes ms the first leftovers, the bound keeping the
// earliest (mu held).
func (q *outQueue) prependLocked(ms []item) {
	l := q.lefts()
	rest := l.items
	l.items, l.bytes = nil, 0
	for _, m := range ms {
		if !q.leaveLocked(m) {
			q.lefts().lost++
		}
	}
	for _, m := range rest {
		if !q.leaveLocked(m) {
			q.lefts().lost++
		}
	}
}

// leftovers takes the leftovers of a closed queue, in order, and how many
// it could not keep; from then on a push answers pushGone. A replay not
// expanded (the session does not outlive the connection) is dropped.
func (q *outQueue) leftovers() ([]*plainItem, int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var left []*plainItem
	for _, m := range q.lefts().items {
		if p, ok := m.(*plainItem); ok {
			left = append(left, p)
		}
	}
	lost := q.lefts().lost
	q.left, q.sealed = nil, true
	return left, lost
}

// pushFront puts the leftovers of the connection a session had before
// this one ahead of everything queued: they are older. They may take the
// queue past its bound, by at most one queue's worth. A closed queue takes
// them ahead of its own leftovers (what does not fit is counted with
// them); it reports how many it dropped.
func (q *outQueue) pushFront(ms []*plainItem) int {
	if len(ms) == 0 {
		return 0
	}
	q.mu.Lock()
	if q.closed {
		defer q.mu.Unlock()
		if q.sealed { // not reached: a successor hands its leftovers on after its predecessor (conn.prev)
			return len(ms)
		}
		items := make([]item, len(ms))
		for i, m := range ms {
			items[i] = m
		}
		q.prependLocked(items)
		return 0
	}
	items := make([]item, 0, len(ms)+len(q.items)-q.head)
	for _, m := range ms {
		items = append(items, m)
		q.bytes += m.cost()
	}
	clear(q.items[:q.head])
	q.items, q.head = append(items, q.items[q.head:]...), 0
	q.unlockAndWake()
	return 0
}

// isClosed reports whether close has run.
func (q *outQueue) isClosed() bool {
	return q.done.isClosed()
}
