package broker

import (
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/translate"
	"github.com/mote-mqtt/mote/tree"
)

type reqKind uint8

const (
	reqPublish     reqKind = iota + 1 // apply an op
	reqSubscribe                      // register a tree subscription (its snapshot follows in the queue)
	reqUnsubscribe                    // remove an owner's tree subscriptions by topic
	reqDetach                         // a connection ended: remove all its tree subscriptions
	reqCall                           // run call on the loop (writers, reads of the tree, barriers)
)

// request is one unit of work for the message loop.
type request struct {
	kind   reqKind
	keep   bool // reqDetach: the connection's session stays (keepTrees)
	op     tree.Op
	pub    *pubMeta // reqPublish
	sub    *treeSub // reqSubscribe
	owner  string   // reqUnsubscribe, reqDetach: the connection's key
	topics []string // reqUnsubscribe
	call   func()   // reqCall
}

// pubMeta is what the loop needs to know of a publish besides its op.
type pubMeta struct {
	p     Principal
	topic string   // as sent, for refusal reports
	plain *message // a plain retained publish: delivered to plain subscribers once its row is applied
	rows  bool     // deliver each applied row to plain subscribers (a tree publish, $set)
	// expiry is when a non-retained tree publish's rows expire (Unix
	// seconds; 0: never), from its Message Expiry Interval: each is an
	// event as if published alone [MQTT-3.3.2-5] (SPEC §4).
	expiry int64
	// done, if not nil, is answered once the publish is applied (with
	// commit, once its rows are committed), or with why it was refused;
	// without it the loop reports a refusal itself.
	done   chan error
	commit bool
	// translated marks the broker's translation of a publish (SPEC §11):
	// its rows are delivered as the broker's (no No Local origin). trans,
	// for a $set or .replace, translates the rows it applied.
	translated bool
	trans      *translate.Set
	// queued, if not nil, is its MQTT publisher's count of publishes
	// queued and not yet delivered (mqttPublisher.queued): toLoop adds 1
	// when it queues the publish, the loop takes 1 once it ran it.
	queued *atomic.Int32
	// acked marks an MQTT client's QoS 1/2 publish acknowledged without
	// waiting for the loop: counted in Broker.ackedAhead while queued.
	acked bool
	// weight is what it weighed in the loop's inbox (requestQueue.weight),
	// set when it is queued or run inline: the loop counts it begun
	// (requestQueue.started).
	weight int
}

// batchRows is what the deltas of one batch share: its revision, the
// deltas written directly so far, and the rows of the delta being
// delivered (at), listed only when a subscription needs them one by one —
// a delta that folds, a paced or awaiting subscription: most never do.
// They are listed from the tree (Tree.AppendChanges): what the delta
// holds, not the batch, once for every subscription of the delta. Only
// the loop reads it.
type batchRows struct {
	rev    uint64 // the store's revision after the batch (mote-rev)
	direct int    // deltas of the batch written directly (direct.go)

	tree    *tree.Tree
	applied []tree.Applied // the batch's ops: rows listed without the tree (never, but safe)
	qos     []byte         // each op's
	at      *tree.Delta    // the delta being delivered

	list   []tree.Change // at's rows, once listed: the loop's scratch, or owned
	listed bool
	owned  bool     // list is not scratch: a queued delta may keep it as it is
	own    *ownRows // at's rows as queued deltas keep them (own), made once
}

// ownRows is a queued delta's own rows, read on its first fold: a copy
// shared by the deltas of its subscriptions that wait, and cost, what it
// counts against each queue while it waits.
type ownRows struct {
	list []tree.Change
	cost int
}

// resetBatchRows makes r, the loop's scratch, the batch just applied
// (loop only).
func resetBatchRows(r *batchRows, t *tree.Tree, applied []tree.Applied, ops []tree.Op, rev uint64) *batchRows {
	*r = batchRows{rev: rev, tree: t, applied: applied, qos: r.qos[:0], list: r.list[:0]}
	for i := range ops {
		r.qos = append(r.qos, ops[i].QoS)
	}
	return r
}

// heldRows is a batch of rows a subscription held (a paced flush): listed
// already, and the delta's own to keep.
func heldRows(held []tree.Change, rev uint64) *batchRows {
	return &batchRows{rev: rev, list: held, listed: true, owned: true}
}

// deliver makes d the delta whose rows r lists (loop only).
func (r *batchRows) deliver(d *tree.Delta) {
	clear(r.list)
	r.at, r.list, r.listed, r.own = d, r.list[:0], false, nil
}

// done lets go of what the loop's scratch holds of the batch: it pins
// nothing past it, and keeps no more room than retScratchRows rows.
func (r *batchRows) done() {
	clear(r.list)
	if cap(r.list) > retScratchRows || cap(r.qos) > retScratchRows {
		*r = batchRows{}
		return
	}
	*r = batchRows{qos: r.qos[:0], list: r.list[:0]}
}

// rows lists the delta's rows, the first time it is asked: those the
// tree gave it, the newest value of each topic.
func (r *batchRows) rows() []tree.Change {
	if r.listed {
		return r.list
	}
	r.listed = true
	var ok bool
	if r.list, ok = r.tree.AppendChanges(r.list[:0], r.at); ok {
		return r.list
	}
	// Not the tree's last batch (never: the loop lists a batch's deltas
	// before it applies the next). The batch's rows its receivers match,
	// newest last (a fold and a hold keep the newest), without their
	// origins (No Local would then not leave its own rows out).
	s := r.at.Subs[0]
	for i, a := range r.applied {
		if a.Err != nil {
			continue
		}
		for _, row := range a.Rows {
			if s.Matches(row.Topic) {
				r.list = append(r.list, tree.Change{Topic: row.Topic, Value: row.Value, QoS: r.qos[i], Retain: row.Retain})
			}
		}
	}
	return r.list
}

// keep returns the delta's rows as a delta waiting in a queue keeps them
// for its first fold: a copy made once for all the delta's receivers
// (the list itself when owned). Loop only.
func (r *batchRows) keep() *ownRows {
	if r.own == nil {
		list := r.rows()
		if !r.owned {
			list = slices.Clone(list)
		}
		cost := 0
		for i := range list {
			cost += changeCost(&list[i])
		}
		r.own = &ownRows{list: list, cost: cost}
	}
	return r.own
}

// requestQueue is the loop's inbox: a guarded slice, a condition to wake
// the loop, and a bound past which publishers wait (back-pressure).
//
// The bound is counted in the loop's time, not only in requests: a
// publish delivered to 300 subscribers costs the loop 300 times one
// delivered to one, and a count alone let publishers queue minutes of
// work (72,000 retained publishes to 260 away sessions subscribed to #:
// the loop ran for 100 s after the flood, and every other publish waited
// behind it). A publish is weighed by the rows it will write (weight): a
// tree publish's are in its op, a $set's are known only once the loop
// matched its filter, so it weighs what the $sets before it wrote
// (setWeight; the first weighs the limit). Counted one a request, a $set over 1,000 rows weighed what
// a plain publish does, and 20 clients flooding them queued seconds of
// the loop's work under a limit measured on cheap ones (a probe's publish
// waited 2.4 s at the median, 15 to 24 s in process: TestLoopSetFlood).
// The loop tells the queue what each batch's rows cost (ran); limit is
// about budget's worth of rows at that cost (max before any was
// measured), never fewer than minLoopLimit (or max, if smaller). A
// publisher waits while limit rows' worth of publishes wait (or max
// requests), or sooner while the batch
// running costs more than that (full), so the loop is never much more
// than budget behind (other requests never wait, and an admitted
// publish may pass the bound by its own weight), and a publish from
// anyone else waits about that long.
//
// Owner: mu guards every field but started, sets and setRows, which
// whoever holds the broker's loopMu adds to as it applies publishes
// (applyBatch), and begin sets started to 0 under mu (the batch's start,
// under loopMu too); ran and ranInline take sets and setRows under mu.
type requestQueue struct {
	mu     sync.Mutex
	ready  sync.Cond // signalled when items arrive or the queue closes
	items  []request
	units  int           // the weight of the publishes in items
	max    int           // LoopQueue: the bound in requests whatever the cost (and the limit until measured)
	limit  int           // publishers wait while this many rows' worth of publishes wait
	budget time.Duration // LoopBudget
	cost   float64       // what a row costs the loop, in ns (a moving average); 0: not measured yet
	closed bool
	// waiters are the publishers waiting for room, in the order they came:
	// each is let in (its channel closed) in turn, once there is room
	// (admit), and room is held for those let in until they queue
	// (admitted requests, admittedUnits of weight). Woken all at once to
	// race for mu, a waiter lost to publishers that never waited, again
	// and again: a flooder's connection, read without pause, kept another
	// client's publish out for many batches (TestLoopLimitFair).
	waiters       []inboxWaiter
	admitted      int
	admittedUnits int
	// running is set while a batch runs: one the loop took (swap), or
	// one run inline (runIdle); since is when it began, batch the weight
	// of its publishes, and started the weight of its publishes begun
	// (applyBatch). What the loop took so far over the rows it did is
	// what they cost now (full), weighed as the queued ones are: the
	// first $sets weigh 1 until the loop has run some: limit, from the batches before, lags
	// behind, and publishes that came after cheap ones (limit up to
	// LoopQueue) filled the inbox with thousands of costly ones before the
	// first batch of them was measured (TestLoopBudgetSwitch). The time
	// the loop takes to start a batch is not counted: waking it is not
	// what a publish costs.
	running bool
	since   time.Time
	batch   int
	started atomic.Int64
	// setWeight is what a $set weighs: the rows the $sets before it wrote,
	// a moving average (0: none yet, it weighs the limit); sets and setRows are the
	// $sets of the batches since it last moved and the rows they wrote.
	setWeight float64
	sets      atomic.Int64
	setRows   atomic.Int64
}

// inboxWaiter is a publisher waiting for room in the inbox, and its weight.
type inboxWaiter struct {
	ch chan struct{}
	w  int
}

// minLoopLimit is the fewest rows' worth of publishes the inbox takes
// before publishers wait, however costly they were: a batch of one costly
// request must not make every publisher wait for the next.
const minLoopLimit = 64

// costWindow is how many rows the moving average of a row's cost
// (requestQueue.cost) mostly reflects: a batch that size or larger sets
// it anew, a smaller one moves it in proportion.
const costWindow = 256

// setWindow is how many $sets the moving average of a $set's rows
// (requestQueue.setWeight) mostly reflects, as costWindow.
const setWindow = 8

func newRequestQueue(max int, budget time.Duration) *requestQueue {
	q := &requestQueue{max: max, limit: max, budget: budget}
	q.ready.L = &q.mu
	return q
}

// weight is what r weighs in the inbox: the rows a publish writes (one at
// least; a $set's as the $sets before it, or the limit before any ran),
// nothing for other requests.
// Its caller holds mu.
func (q *requestQueue) weight(r *request) int {
	switch {
	case r.kind != reqPublish:
		return 0
	case r.op.SetFilter != "" && q.setWeight == 0:
		return max(q.limit, 1) // none run yet: it may cost a whole budget
	case r.op.SetFilter != "":
		return max(int(q.setWeight), 1)
	}
	return max(len(r.op.Rows), 1)
}

// weigh is weight, kept in r's pubMeta for the loop. Its caller holds mu.
func (q *requestQueue) weigh(r *request) int {
	w := q.weight(r)
	if r.pub != nil {
		r.pub.weight = w
	}
	return w
}

// full reports whether the inbox has no room for another publish, counting
// the room held for publishers let in (admitted). Its caller holds mu.
func (q *requestQueue) full() bool {
	if len(q.items)+q.admitted >= q.max {
		return true
	}
	n := q.units + q.admittedUnits
	if n >= q.limit {
		return true
	}
	if n < minLoopLimit || !q.running {
		return false
	}
	// The loop took took so far for the rows it did: past budget's worth
	// of rows at that cost, n is too many. Until a publish of the batch is
	// begun, the tree is applying them all at once (or a call runs): its
	// rows count as done, what they cost so far at the least.
	did := q.started.Load()
	if did == 0 {
		did = int64(q.batch)
	}
	if did == 0 {
		return false // a call (a snapshot, say): what it takes says nothing of what publishes cost
	}
	took := time.Since(q.since)
	return float64(n)*float64(took) >= float64(q.budget)*float64(did)
}

// turn waits, for a publish weighing w, until the publishers that came
// before it are in and there is room, in the order they came (waiters);
// it returns at once if nobody waits and there is room. Its caller holds
// mu; it is let go while waiting.
func (q *requestQueue) turn(w int) {
	if q.closed || len(q.waiters) == 0 && !q.full() {
		return
	}
	ch := make(chan struct{})
	q.waiters = append(q.waiters, inboxWaiter{ch: ch, w: w})
	q.mu.Unlock()
	<-ch
	q.mu.Lock()
	if !q.closed {
		q.admitted-- // its room is taken now
		q.admittedUnits -= w
	}
}

// admit lets waiting publishers in, first come first, while there is
// room. Its caller holds mu.
func (q *requestQueue) admit() {
	n := 0
	for ; n < len(q.waiters) && !q.full(); n++ {
		close(q.waiters[n].ch)
		q.admitted++
		q.admittedUnits += q.waiters[n].w
	}
	clear(q.waiters[:n])
	q.waiters = q.waiters[n:]
}

// push queues r, a publish waiting its turn while the queue is full
// (turn); it reports false once the queue is closed.
func (q *requestQueue) push(r request) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	w := q.weigh(&r)
	if r.kind == reqPublish && (r.pub == nil || r.pub.p != systemPrincipal) {
		// The broker's own $SYS rows (31 at most, a second) never wait:
		// their ticker also sweeps the sessions arriving and prunes what
		// is held for those away, and all of it waited ~10 s behind a
		// flood, a turn per row (sysTicker). Only they: other nodes'
		// events (clusterPrincipal, system too) wait as any publish.
		q.turn(w)
	}
	if q.closed {
		return false
	}
	q.items = append(q.items, r)
	q.units += w
	if len(q.items) == 1 {
		q.ready.Signal()
	}
	return true
}

// begin starts the clock of a batch running at now, its publishes
// weighing units. Its caller holds mu, and loopMu.
func (q *requestQueue) begin(units int, now time.Time) {
	q.running, q.since, q.batch = true, now, units
	q.started.Store(0)
}

// end stops it once the batch ran. Its caller holds mu.
func (q *requestQueue) end() { q.running = false }

// ranInline is ran for requests run inline (runIdle): their cost is not
// counted, a publish run alone costing more than one in a batch; the rows
// their $sets wrote are (foldSets).
func (q *requestQueue) ranInline() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.end()
	q.foldSets()
	q.admit() // room for those waiting, if the time rule held them (full)
}

// foldSets moves what a $set weighs (setWeight) by the $sets run since it
// last moved. Its caller holds mu.
func (q *requestQueue) foldSets() {
	n := q.sets.Swap(0)
	rows := q.setRows.Swap(0)
	if n <= 0 {
		return
	}
	avg := max(float64(rows)/float64(n), 1) // (0 is none yet: weight)
	if w := float64(n) / setWindow; q.setWeight == 0 || w >= 1 {
		q.setWeight = avg
	} else {
		q.setWeight += (avg - q.setWeight) * w
	}
}

// ran is the loop telling the queue that it ran a batch in which
// publishes writing n rows took took (what the other requests took is
// not counted: a call's time, a snapshot's say, says nothing of what
// publishes cost): it moves the average cost of a row, and the limit with
// it, and what a $set weighs (foldSets). The loop calls it holding
// loopMu, so no publish run inline (runIdle) begins before the batch is
// told ended.
func (q *requestQueue) ran(n int, took time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.end()
	q.foldSets()
	defer q.admit() // room for those waiting, if it grew
	if n <= 0 {
		return
	}
	c := float64(took) / float64(n)
	if w := float64(n) / costWindow; q.cost == 0 || w >= 1 {
		q.cost = c
	} else {
		q.cost += (c - q.cost) * w
	}
	// LoopQueue bounds the requests (full), not their rows, which the
	// budget bounds: capped at LoopQueue too, a batch of tree publishes of
	// cheap rows was a third of the budget (the boot storm's, 0.65× main).
	l := min(float64(q.budget)/q.cost, maxLoopRows) // (+Inf if it took no time)
	q.limit = max(int(l), min(minLoopLimit, q.max))
}

// maxLoopRows bounds the limit however cheap rows were (a batch that took
// no time): the int it is kept in.
const maxLoopRows = 1 << 30

// limitNow is the rows' worth of publishes past which publishers wait now.
func (q *requestQueue) limitNow() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.limit
}

// wait waits until work is queued or the queue is closed.
func (q *requestQueue) wait() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 && !q.closed {
		q.ready.Wait()
	}
}

// swap swaps the queued work out; ok is false when the queue is closed
// and empty. Only the holder of the broker's loopMu calls it.
func (q *requestQueue) swap(spare []request) (items []request, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	items, q.items = q.items, spare[:0]
	if len(items) > 0 {
		q.begin(q.units, time.Now())
	}
	q.units = 0
	q.admit()
	return items, len(items) > 0 || !q.closed
}

// runIdle reports whether nothing is queued and the queue is open, and if
// so counts reqs, to be run inline (runInline), as the batch running, as
// swap does: publishes queued meanwhile are bounded by its cost (full).
// Its caller holds loopMu, and tells ranInline once they ran.
func (q *requestQueue) runIdle(reqs []request, now time.Time) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) > 0 || q.closed {
		return false
	}
	units := 0
	for i := range reqs {
		units += q.weigh(&reqs[i])
	}
	q.begin(units, now)
	return true
}

// len is the number of requests waiting.
func (q *requestQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

func (q *requestQueue) close() {
	q.mu.Lock()
	q.closed = true
	for _, w := range q.waiters {
		close(w.ch) // they find the queue closed
	}
	q.waiters, q.admitted, q.admittedUnits = nil, 0, 0
	q.mu.Unlock()
	q.ready.Broadcast()
}

// onLoop runs fn on the message loop and waits for it to finish. It
// reports false, without waiting further, once done is closed or the
// loop has stopped: fn may then still run later, so it must write only
// what its caller does not read once it gave up.
func (b *Broker) onLoop(done <-chan struct{}, fn func()) bool {
	fin := make(chan struct{})
	if !b.reqs.push(request{kind: reqCall, call: func() { fn(); close(fin) }}) {
		return false
	}
	select {
	case <-fin:
		return true
	case <-done:
		return false
	case <-b.loopDone:
		return false
	}
}

// loop is the message loop: it takes what waits in the inbox, batch by
// batch, and runs it holding loopMu. Whoever holds loopMu — this
// goroutine, or a publisher running its own publish while the loop is idle
// (runInline) — is the only one that touches b.tree, the tree
// subscriptions' state (treeSub) and b.props.
func (b *Broker) loop() {
	defer close(b.loopDone)
	defer b.pace.stop()
	var items, spare []request
	for {
		b.reqs.wait()
		b.loopMu.Lock()
		// Swapped out under loopMu: a publisher runs its own publish
		// inline only while the inbox is empty and it holds loopMu, so
		// nothing queued before it can be applied after it.
		var ok bool
		items, ok = b.reqs.swap(spare)
		if !ok {
			b.loopMu.Unlock()
			return
		}
		start := time.Now()
		rows, others := b.runBatch(items, start)
		b.reqs.ran(rows, time.Since(start)-others)
		b.loopMu.Unlock()
		var acked int64
		for i := range items { // delivered: their publishers' events need not wait for them
			if r := &items[i]; r.kind == reqPublish {
				if r.pub.queued != nil {
					r.pub.queued.Add(-1)
				}
				if r.pub.acked {
					acked++
				}
			}
		}
		if acked > 0 { // applied and delivered: a SUBSCRIBE need not wait for them
			b.ackedAhead.Add(-acked)
		}
		clear(items) // drop references for the GC
		spare = items
	}
}

// runInline runs reqs on the caller's goroutine, as the loop would have,
// when the loop is idle: nothing queued, nothing being run. It saves a
// publish the hop to the loop's goroutine and back (issue 15: ~20 µs of a
// tree publish's latency); it reports false, having done nothing, when the
// loop is busy or not running, and the caller then queues reqs. Its
// callers hold no lock the loop's work takes (the door, for a client's
// publish).
//
// meta is the pubMeta of reqs[0], which has none yet: run, it lives in
// the loop's own (loopPub) while the batch runs, as nothing keeps it past
// the batch but a cluster's log (then it gets its own).
func (b *Broker) runInline(reqs []request, meta pubMeta) bool {
	if !b.loopLive.Load() || !b.loopMu.TryLock() {
		return false
	}
	defer b.loopMu.Unlock()
	if b.cl != nil {
		reqs[0].pub = new(pubMeta) // a cluster's log holds it
		*reqs[0].pub = meta
	} else {
		b.loopPub = meta
		reqs[0].pub = &b.loopPub
		defer func() { b.loopPub = pubMeta{} }() // pins nothing after
	}
	// One clock read starts the batch's clock and is its start (runBatch):
	// they were two reads a publish, nanoseconds apart (bench/README.md,
	// branch h-tlat4).
	now := time.Now()
	if !b.reqs.runIdle(reqs, now) {
		reqs[0].pub = nil
		return false // the loop has work to do first, and is awake for it
	}
	b.stats.Inline.Add(1)
	defer b.inlinePanicked() // before loopMu is let go
	b.runBatch(reqs, now)
	b.reqs.ranInline()
	return true
}

// inlinePanicked, deferred by runInline, ends the process when the loop's
// work panicked on a publisher's goroutine, as an unrecovered panic on the
// loop goroutine does: the batch is half applied (rows in the tree not
// given to the retainer, deliveries half made, a connection's write role
// or queue perhaps left taken), so nothing may run on the loop's state
// again. Left to the connection's recovery (serve), it would close that
// one connection and the broker would go on from that state — or crash,
// had the loop been busy and run the same publish. loopMu stays held, so
// nothing touches the state while the process ends.
func (b *Broker) inlinePanicked() {
	r := recover()
	if r == nil {
		return
	}
	p := &loopPanic{val: r, stack: debug.Stack()}
	go func() { panic(p) }() // nothing recovers it there: the process ends
	select {}
}

// loopPanic is a panic of the loop's work run inline, carrying the stack
// it happened on to the goroutine that ends the process with it.
type loopPanic struct {
	val   any
	stack []byte
}

func (p *loopPanic) Error() string {
	return fmt.Sprintf("broker: the message loop's work panicked on a publisher's goroutine (runInline): %v\n\n%s", p.val, p.stack)
}

// applyPart applies the publishes of a batch gathered so far and empties
// ops and meta for the next, their elements cleared for the GC: each
// part's, not only the last one's (review h-rv9, RV9-3: the parts before
// a request of another kind, or a translated publish, kept their rows,
// payloads and messages pinned past the slices' ends).
func (b *Broker) applyPart(ops []tree.Op, meta []*pubMeta) ([]tree.Op, []*pubMeta) {
	b.apply(ops, meta)
	tree.ClearSmall(ops)
	tree.ClearSmall(meta)
	return ops[:0], meta[:0]
}

// runBatch runs one batch of requests in order: consecutive publishes are
// applied together. Its caller holds loopMu. It returns the rows its
// publishes wrote (one at least each: what they weigh, requestQueue) and
// what the other requests took (requestQueue.ran). start is the time it
// is begun at, which its caller read.
func (b *Broker) runBatch(items []request, start time.Time) (rows int, others time.Duration) {
	rows0 := b.loopRows
	b.lastTick.Store(start.UnixNano())
	ops, meta := b.loopOps[:0], b.loopMeta[:0]
	for i := range items {
		r := &items[i]
		if r.kind == reqPublish {
			ops = append(ops, r.op)
			meta = append(meta, r.pub)
			if r.pub != nil && r.pub.trans != nil {
				// Translated once applied (a $set, a .replace): its
				// translation, applied at the end of its batch, must
				// land before the translations of the publishes after
				// it, so the batch ends with it.
				ops, meta = b.applyPart(ops, meta)
			}
			continue
		}
		ops, meta = b.applyPart(ops, meta) // keep order: earlier publishes first
		t, n := time.Now(), b.loopRows
		b.handle(r)
		if b.loopRows == n {
			// A call's time says nothing of what rows cost; one that
			// applied rows (a cluster node's log entry: applyEntry)
			// counts with them, or they would seem to cost nothing
			// (TestLoopClusterCost).
			others += time.Since(t)
		}
	}
	b.loopOps, b.loopMeta = b.applyPart(ops, meta)
	b.meter.batchSize.Observe(float64(len(items)))
	b.meter.batchSeconds.Observe(time.Since(start).Seconds())
	return b.loopRows - rows0, others
}

// apply applies a batch of publishes and delivers what it produced; on a
// cluster node, the retained ones go through the cluster's log first
// (cluster.go).
func (b *Broker) apply(ops []tree.Op, meta []*pubMeta) {
	if len(ops) == 0 {
		return
	}
	if b.cl != nil {
		b.applyCluster(ops, meta)
		return
	}
	b.applyBatch(ops, meta, nil)
}

// applyBatch applies a batch of publishes (at the stamp given, or the
// next revision) and delivers what it produced; it reports whether the
// batch changed a row.
func (b *Broker) applyBatch(ops []tree.Op, meta []*pubMeta, at *tree.Stamp) bool {
	if len(ops) == 0 {
		return false
	}
	for i, m := range meta {
		// Whose rows they are, for No Local on tree subscriptions (as
		// deliverTo's msg.origin): a translation is the broker's.
		if !m.translated {
			ops[i].Origin = m.p.origin()
		}
	}
	var res tree.Result
	if at != nil {
		res = b.tree.ApplyAt(ops, *at)
	} else {
		res = b.tree.Apply(ops)
	}
	b.applied.Store(b.tree.Rev()) // before its deliveries: see replayRows
	b.stats.Batches.Add(1)
	b.stats.OpsApplied.Add(int64(len(ops)))
	atomic.StoreInt64(&b.server.Info.Retained, int64(b.tree.Store().Len()))
	// The changes of the publishes no one waits for, committed together,
	// in the loop's scratch slice: Retainer.Add copies what it keeps.
	changes := b.retScratch[:0]
	if b.ret != nil {
		n := 0
		for _, a := range res.Applied {
			n += len(a.Rows)
		}
		changes = slices.Grow(changes, n) // at once, not by doubling
	}
	var tops []tree.Op // translations of $set and .replace, applied after
	var tmeta []*pubMeta
	for i, a := range res.Applied {
		m := meta[i]
		// What the batch's publishes begun weigh (requestQueue.full),
		// the rows it wrote (ran), and what a $set weighs (weight).
		b.reqs.started.Add(int64(max(m.weight, 1)))
		b.loopRows += max(len(a.Rows), 1)
		if ops[i].SetFilter != "" {
			// Refused ones too (no row written): a $set weighs the whole
			// limit until one is counted, and a flood of refused ones ran
			// one a batch (TestLoopRefusedSetWeight).
			b.reqs.sets.Add(1)
			b.reqs.setRows.Add(int64(len(a.Rows)))
		}
		if a.Err != nil {
			if m.done != nil {
				m.done <- a.Err // the publisher refuses it with the reason
			} else {
				b.refuse(m.p, "publish", m.topic, a.Err)
			}
			continue
		}
		from := len(changes) // this publish's own changes are changes[from:]
		if b.ret != nil {
			for _, row := range a.Rows {
				if row.Retain && !row.Same && !isSys(row.Topic) { // $SYS rows are the broker's live counters: not kept
					changes = append(changes, retain.Change{Topic: row.Topic, Value: row.Value, QoS: ops[i].QoS, Rev: res.Rev, MS: res.MS, QoSOnly: row.QoSOnly})
				}
			}
		} else if res.Changed {
			b.marks.note(a.Rows, res.Rev)
		}
		if m.plain != nil {
			b.deliverPlain(m.plain, pubWait{})
		}
		b.keepProps(m.plain, a.Rows)
		if m.rows {
			origin := m.p.origin()
			if m.translated {
				origin = ""
			}
			// A tree publish's rows share a parent level: when no plain
			// subscription can match below it, none of them is looked up.
			if p := commonLevels(a.Rows); p == "" || b.plainIdx.mayMatchBelow(p) {
				for _, row := range a.Rows {
					msg := message{topic: row.Topic, payload: bytesOf(row.Value.Data), origin: origin, qos: ops[i].QoS, retain: row.Retain}
					if !row.Retain {
						msg.expiry = m.expiry // a row never expires (SPEC §1)
					}
					b.deliverRow(msg)
				}
			}
		}
		// Answered once delivered: a publisher told its publish is applied
		// may send the next on the same topic, which must come after it
		// (MQTT 4.6).
		switch {
		case m.done != nil && m.commit && len(changes) > from:
			// Its own Add, in order, so the answer is about its rows only.
			if from > 0 {
				b.ret.Add(changes[:from])
			}
			b.ret.Add(changes[from:], m.done)
			changes = changes[:0]
		case m.done != nil:
			m.done <- nil
		}
		if m.trans != nil {
			if op, tm, ok := b.translateApplied(m, a.Rows, ops[i].QoS); ok {
				tops, tmeta = append(tops, op), append(tmeta, tm)
			}
		}
	}
	var batch *batchRows
	for i := range res.Deltas {
		d := &res.Deltas[i]
		if batch == nil {
			batch = resetBatchRows(&b.loopBatch, b.tree, res.Applied, ops, res.Rev)
		}
		batch.deliver(d)
		for _, s := range d.Subs {
			b.queueDelta(s.Data.(*treeSub), d, batch)
		}
	}
	if batch != nil {
		batch.done()
	}
	// The retainer gets the rows once the deltas are out: waking it is
	// not on their way (issue 15).
	if len(changes) > 0 {
		b.ret.Add(changes) // never waits on the disk
	} else if res.Changed && b.ret != nil {
		b.ret.SetRev(res.Rev) // only $SYS changed: the revision is kept all the same
	}
	if at == nil && b.cl == nil {
		b.recycleRows(res.Applied, meta)
	}
	changed := res.Changed
	b.tree.Release(&res) // what a queued delta holds of it was copied (batchRows.keep)
	b.retScratch = nil
	if cap(changes) <= retScratchRows { // a storm's largest batch is not kept for good
		clear(changes) // drop the rows' references for the GC
		b.retScratch = changes[:0]
	}
	b.apply(tops, tmeta) // never translated again: no deeper
	return changed
}

// recycleRows gives the row slices of a batch's tree publishes back to the
// Parser for the next ones (tree.Parser.Recycle), once the batch is done
// with them: the deltas (written at once, queued with their own rows:
// batchRows.keep), held events and folded rows copied what they read.
// Its caller checked that no cluster log holds them; a
// $set's or .replace's rows that the loop translates are left alone.
// Everything else the batch made of them copied their strings: the
// retainer's changes, the markers, the plain deliveries.
func (b *Broker) recycleRows(applied []tree.Applied, meta []*pubMeta) {
	for i := range applied {
		if a := &applied[i]; meta[i].rows && meta[i].trans == nil && a.Err == nil {
			b.parser.Recycle(a.Rows)
			a.Rows = nil
		}
	}
}

// retScratchRows bounds the loop's slice of retainer changes kept from
// one batch to the next (about 300 KiB).
const retScratchRows = 4096

// handle runs a request other than a publish.
func (b *Broker) handle(r *request) {
	switch r.kind {
	case reqSubscribe:
		st := r.sub
		st.ts.Allow = b.access.readCheck(st.c.p) // the rules now: a Reload sets every registered one
		replaced, err := b.tree.Register(st.ts)
		if err != nil {
			st.c.releaseSnapshot(st) // no snapshot follows
			b.refuse(st.c.p, "subscribe", st.ts.Topic, err)
			break
		}
		b.countSub(st, 1)
		if replaced != nil {
			b.countSub(replaced.Data.(*treeSub), -1)
		}
		if st.mark != nil && !st.away {
			st.mark.rev.Store(b.tree.Rev()) // every change after it comes in its deltas
		}
		if st.await {
			st.c.enqueueToken(&snapshotItem{sub: st})
		}
		b.pace.forget(st.ts.Owner) // the subscription it replaced, if paced
	case reqUnsubscribe:
		b.uncountSubs(r.owner, r.topics, false)
		for _, t := range r.topics {
			b.tree.Unsubscribe(r.owner, t)
		}
		b.pace.forget(r.owner)
	case reqDetach:
		if r.keep {
			b.keepTrees(r.owner)
		}
		b.uncountSubs(r.owner, nil, true)
		b.tree.RemoveOwner(r.owner)
		b.pace.forget(r.owner)
	case reqCall:
		r.call()
	}
	b.treeSubs.Store(int64(b.tree.Subscriptions()))
	if r.kind == reqSubscribe {
		b.subsSent.Add(-1) // after the Store: hasTreeSubs never misses it
	}
}

// keepProps keeps the MQTT 5 properties of plain retained publishes
// (content type, user properties, …) for retained delivery; any other
// change to the row drops them. They live in memory only: the store keeps
// payloads.
func (b *Broker) keepProps(plain *message, rows []tree.Row) {
	if plain != nil && len(plain.payload) > 0 && plain.props != nil && hasProps(plain.props) {
		b.props[plain.topic] = plain.props // the message's: nobody changes it
		return
	}
	if len(b.props) == 0 {
		return
	}
	for _, row := range rows {
		if row.Retain {
			delete(b.props, row.Topic)
		}
	}
}

func hasProps(p *packets.Properties) bool {
	return p.ContentType != "" || len(p.User) > 0 || p.PayloadFormatFlag || p.ResponseTopic != "" || len(p.CorrelationData) > 0
}
