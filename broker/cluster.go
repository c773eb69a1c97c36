package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/mote-mqtt/mote/cluster"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/tree"
)

// Cluster makes the broker one node of a cluster on NATS JetStream (SPEC
// §12, docs/cluster.md): every retained write goes through the cluster's
// row log, and every node applies the log in order, at the log's
// sequence as its revision.
type Cluster struct {
	// Log is the cluster's row log; the broker's Options.Store must be
	// this node's copy of it (cluster.Store, bound to the log).
	Log *cluster.Log
	// Events, if set, carries plain non-retained publishes to the other
	// nodes and delivers theirs here.
	Events *cluster.Events
	// CatchUp bounds how long Start waits for the node to apply the log's
	// batches written while it was down; default 2 minutes.
	CatchUp time.Duration
	// MaxWaiting bounds the retained publishes waiting for the log (a
	// batch is appended at a time); past it publishes are refused with
	// 0x97. Default 10,000.
	MaxWaiting int
	// MaxWaitingBytes bounds the bytes (topics and payloads) of the
	// retained publishes waiting for the log: past it they are refused
	// with 0x97, unless none waits. Default 64 MiB.
	MaxWaitingBytes int64
	// AnswerWait bounds how long a publisher waits for its write to come
	// back through the log and be applied on its node (a follower that
	// cannot read the log, an election): past it the write is refused
	// 0x80, its outcome unknown (the log may still have it). Default 20
	// s, longer than a JetStream leader election (4–9 s).
	AnswerWait time.Duration
}

// errAnswerWait is a write not applied on its node within
// Cluster.AnswerWait: its publisher is answered, its outcome unknown.
var errAnswerWait = fmt.Errorf("%w: not applied on this node in time; it may still be", cluster.ErrUnreplicated)

// answerWait is how long a publisher may wait for its write on a
// cluster node (Cluster.AnswerWait), and why it was answered after.
func (cl *clusterNode) answerWait(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, cl.opts.AnswerWait, errAnswerWait)
}

// defaultMaxWaitingBytes is Cluster.MaxWaitingBytes's default.
const defaultMaxWaitingBytes = 64 << 20

// opBytes is what a waiting publish holds, as the waiting queue counts it.
func opBytes(op *tree.Op) int64 {
	n := int64(len(op.SetFilter) + len(op.Replace) + 64)
	for _, r := range op.Rows {
		n += int64(len(r.Topic) + len(r.Value.Data) + 48)
	}
	return n
}

// errLogBusy is a retained publish refused because too many wait for the
// cluster's log.
var errLogBusy = fmt.Errorf("%w: too many writes (or bytes) wait for the cluster's log", errQuota)

// clusterNode is the broker's side of a cluster. The loop owns waiting and
// flight; the follower and appender goroutines hand it their results as
// requests. Start starts them, shutdown stops them (ctx) and waits (wg).
type clusterNode struct {
	opts    Cluster
	waiting []request // retained publishes not yet planned: they wait for the flight to land (loop)
	held    int64     // opBytes of waiting (loop)
	flight  *flight   // the batch appended to the log and not yet applied here (loop)
	applied atomic.Uint64
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	failed  chan error            // the follower's end (buffered)
	stopped atomic.Pointer[error] // why the follower ended, while the broker runs
}

// health is why the node is not part of the cluster any more, or nil.
func (cl *clusterNode) health() error {
	if err := cl.stopped.Load(); err != nil {
		return fmt.Errorf("broker: cluster: not following the log: %w", *err)
	}
	return nil
}

// flight is a batch of this node's publishes on its way through the log:
// planned against this node's tree, appended under id, applied when the
// follower reads id back.
type flight struct {
	id   string
	ms   int64 // the time stamped on its rows, on every node
	ops  []tree.Op
	meta []*pubMeta
}

// clusterPrincipal publishes what other nodes wrote: rows of the log and
// their plain events, already checked where they entered.
var clusterPrincipal = Principal{ClientID: "", system: true}

func newClusterNode(o Cluster) *clusterNode {
	if o.CatchUp <= 0 {
		o.CatchUp = 2 * time.Minute
	}
	if o.MaxWaiting <= 0 {
		o.MaxWaiting = 10000
	}
	if o.MaxWaitingBytes <= 0 {
		o.MaxWaitingBytes = defaultMaxWaitingBytes
	}
	if o.AnswerWait <= 0 {
		o.AnswerWait = 20 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &clusterNode{opts: o, ctx: ctx, cancel: cancel, failed: make(chan error, 1)}
}

// startCluster starts the follower (and the events' receiver) and waits
// until the node has applied every batch the log held when it started:
// a node never serves a stale snapshot as current. The loop must run.
func (b *Broker) startCluster() error {
	cl := b.cl
	from := b.tree.Rev() + 1
	cl.applied.Store(b.tree.Rev())
	ctx, cancel := context.WithTimeout(cl.ctx, cl.opts.CatchUp)
	defer cancel()
	var last uint64
	for {
		// Each try is bounded: a node not yet current with the JetStream
		// meta group leaves requests unanswered.
		try, cancelTry := context.WithTimeout(ctx, time.Second)
		_, l, err := cl.opts.Log.Bounds(try)
		cancelTry()
		if err == nil {
			last = l
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("broker: cluster log: within %v: %w", cl.opts.CatchUp, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	cl.wg.Add(1)
	go func() {
		defer cl.wg.Done()
		err := cl.opts.Log.Follow(cl.ctx, from, func(e cluster.Entry) error {
			if !b.onLoop(cl.ctx.Done(), func() { b.applyEntry(e) }) {
				return errShutdown
			}
			return nil
		})
		if cl.ctx.Err() == nil && !errors.Is(err, errShutdown) {
			b.log.Error().Err(err).Msg("cluster: the node stopped following the log: it serves its last state, and its writes wait until refused")
			cl.stopped.Store(&err)
			b.reqs.push(request{kind: reqCall, call: func() { b.unfollowed(err) }})
		}
		cl.failed <- err
	}()
	if cl.opts.Events != nil {
		err := cl.opts.Events.Receive(b.publishRemote, func(err error) {
			b.log.Warn().Err(err).Msg("cluster: dropped a malformed event")
		})
		if err != nil {
			return fmt.Errorf("broker: cluster events: %w", err)
		}
	}
	start := time.Now()
	for cl.applied.Load() < last {
		select {
		case err := <-cl.failed:
			cl.failed <- err
			return fmt.Errorf("broker: catching up with the cluster log: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("broker: catching up with the cluster log: at %d of %d after %v", cl.applied.Load(), last, cl.opts.CatchUp)
		case <-time.After(10 * time.Millisecond):
		}
	}
	b.log.Info().Uint64("rev", cl.applied.Load()).Uint64("from", from).Dur("took", time.Since(start)).Msg("cluster: caught up with the log")
	return nil
}

// errUnfollowed is a write refused because the node no longer follows
// the cluster's log.
var errUnfollowed = fmt.Errorf("%w: the node no longer follows the log", cluster.ErrUnreplicated)

// unfollowed refuses the writes of a node whose follower ended: they
// could never be applied here.
func (b *Broker) unfollowed(err error) {
	cl := b.cl
	why := fmt.Errorf("%w: %w", errUnfollowed, err)
	if f := cl.flight; f != nil {
		cl.flight = nil
		b.settle(f.ops, f.meta, why)
	}
	b.settleWaiting(why)
}

// settle ends publishes the log will not bring back: events (no row of
// the cluster's) are applied here, in order; writes are refused with err.
func (b *Broker) settle(ops []tree.Op, meta []*pubMeta, err error) {
	var lops []tree.Op
	var lmeta []*pubMeta
	for i := range ops {
		if isLocalOp(&ops[i]) {
			lops, lmeta = append(lops, ops[i]), append(lmeta, meta[i])
		} else {
			b.refuseWrite(meta[i], err)
		}
	}
	b.applyBatch(lops, lmeta, &tree.Stamp{Rev: b.tree.Rev(), MS: time.Now().UnixMilli()})
}

// settleWaiting settles every waiting publish (settle).
func (b *Broker) settleWaiting(err error) {
	cl := b.cl
	w := cl.waiting
	cl.waiting, cl.held = nil, 0 // applying events may queue translations
	ops := make([]tree.Op, len(w))
	meta := make([]*pubMeta, len(w))
	for i := range w {
		ops[i], meta[i] = w[i].op, w[i].pub
	}
	b.settle(ops, meta, err)
}

// stopCluster stops the follower, the appenders and the events, once the
// loop has stopped, and refuses what still waited for the log.
func (b *Broker) stopCluster() {
	cl := b.cl
	cl.cancel()
	if cl.opts.Events != nil {
		if err := cl.opts.Events.Close(); err != nil {
			b.log.Warn().Err(err).Msg("cluster: closing events")
		}
	}
	cl.wg.Wait()
	// The loop has ended: nothing else reads the flight or the waiting.
	if f := cl.flight; f != nil {
		for _, m := range f.meta {
			answer(m, errShutdown)
		}
	}
	for _, r := range cl.waiting {
		answer(r.pub, errShutdown)
	}
	cl.flight, cl.waiting, cl.held = nil, nil, 0
}

// answer tells a publish's waiter (if any) its outcome, never twice,
// never blocking.
func answer(m *pubMeta, err error) {
	if m.done == nil {
		return
	}
	select {
	case m.done <- err:
	default:
	}
}

// applyCluster is apply on a cluster node: publishes that change no
// cluster row (events, the broker's $SYS rows) are applied here at once
// without moving the revision; the rest wait for the log.
func (b *Broker) applyCluster(ops []tree.Op, meta []*pubMeta) {
	cl := b.cl
	var lops []tree.Op
	var lmeta []*pubMeta
	for i := range ops {
		local := isLocalOp(&ops[i])
		// A client's event waits behind the writes waiting for the log, so
		// a subscriber gets one client's publishes to a topic in order
		// (MQTT 4.6); the broker's own ($SYS, other nodes' events) never.
		if local && (meta[i].p.system || cl.flight == nil && len(cl.waiting) == 0) {
			lops, lmeta = append(lops, ops[i]), append(lmeta, meta[i])
			continue
		}
		if err := cl.stopped.Load(); err != nil && !local {
			b.refuseWrite(meta[i], fmt.Errorf("%w: %w", errUnfollowed, *err))
			continue
		}
		size := opBytes(&ops[i])
		if len(cl.waiting) >= cl.opts.MaxWaiting || len(cl.waiting) > 0 && cl.held+size > cl.opts.MaxWaitingBytes {
			b.refuseWrite(meta[i], errLogBusy)
			continue
		}
		cl.waiting = append(cl.waiting, request{kind: reqPublish, op: ops[i], pub: meta[i]})
		cl.held += size
	}
	if len(lops) > 0 {
		b.applyBatch(lops, lmeta, &tree.Stamp{Rev: b.tree.Rev(), MS: time.Now().UnixMilli()})
	}
	b.flush()
}

// isLocalOp reports whether op changes no row of the cluster's: an event
// (no retained row), or the broker's own $SYS rows.
func isLocalOp(op *tree.Op) bool {
	if op.SetFilter != "" || op.Replace != "" {
		return false
	}
	for _, r := range op.Rows {
		if r.Retain && !isSys(r.Topic) {
			return false
		}
	}
	return true
}

// refuseWrite answers a refused publish, or reports it if nobody waits.
func (b *Broker) refuseWrite(m *pubMeta, err error) {
	if m.done != nil {
		answer(m, err)
		return
	}
	b.refuse(m.p, "publish", m.topic, err)
}

// flush plans the waiting publishes into the next flight and appends it,
// unless one is on its way: a node plans against a tree holding all its
// own earlier writes, so a $set sees the rows its client wrote before it.
func (b *Broker) flush() {
	cl := b.cl
	for cl.flight == nil && len(cl.waiting) > 0 {
		limit := cl.opts.Log.MaxBatch() / 2
		f := &flight{id: nuid.Next(), ms: time.Now().UnixMilli()}
		var changes []retain.Change
		size, n := int64(0), 0
		for ; n < len(cl.waiting); n++ {
			r := &cl.waiting[n]
			if len(f.ops) > 0 && (r.op.SetFilter != "" || r.op.Replace != "") {
				break // planned once the flight's rows are in the tree
			}
			a := b.tree.Plan(&r.op)
			if a.Err != nil {
				b.refuseWrite(r.pub, a.Err)
				continue
			}
			var bytes int64
			for _, row := range a.Rows {
				bytes += int64(len(row.Topic) + len(row.Value.Data) + 32)
			}
			if len(f.ops) > 0 && size+bytes > limit {
				break // the next flight's
			}

			size += bytes
			f.ops = append(f.ops, tree.Op{Rows: a.Rows, QoS: r.op.QoS})
			f.meta = append(f.meta, r.pub)
			for _, row := range a.Rows {
				if row.Retain { // a .replace without retain: its events stay here
					changes = append(changes, retain.Change{Topic: row.Topic, Value: row.Value, QoS: r.op.QoS, MS: f.ms})
				}
			}
		}
		for i := range n {
			cl.held -= opBytes(&cl.waiting[i].op)
		}
		rest := copy(cl.waiting, cl.waiting[n:])
		clear(cl.waiting[rest:])
		cl.waiting = cl.waiting[:rest]
		if len(f.ops) == 0 {
			continue
		}
		if len(changes) == 0 { // a $set or .replace that matched nothing
			b.applyBatch(f.ops, f.meta, &tree.Stamp{Rev: b.tree.Rev(), MS: f.ms})
			continue
		}
		cl.flight = f
		cl.wg.Add(1)
		go b.appendFlight(f, changes)
	}
}

// appendFlight appends a flight's rows to the log; a refusal is handed to
// the loop (success is not: the follower brings the batch back).
func (b *Broker) appendFlight(f *flight, changes []retain.Change) {
	defer b.cl.wg.Done()
	_, err := b.cl.opts.Log.AppendID(b.cl.ctx, f.id, changes)
	if err == nil {
		return
	}
	b.log.Warn().Err(err).Int("rows", len(changes)).Msg("cluster: a write was refused: the log did not take it")
	b.reqs.push(request{kind: reqCall, call: func() { b.flightFailed(f, err) }})
}

// flightFailed refuses a flight's publishes, unless the log brought it
// back meanwhile (an Append whose acknowledgement was lost). If no quorum
// took it within the log's timeout, the publishes waiting behind it are
// refused too: each would wait another timeout, the last of a long queue
// for hours.
func (b *Broker) flightFailed(f *flight, err error) {
	cl := b.cl
	if cl.flight != f {
		return
	}
	cl.flight = nil
	b.settle(f.ops, f.meta, err)
	if errors.Is(err, cluster.ErrUnreplicated) {
		b.settleWaiting(err)
	}
	b.flush()
}

// applyEntry applies one batch of the log at its sequence: this node's
// own flight with its publishers' state (answers, properties, No Local,
// translations), another node's as rows the broker publishes.
func (b *Broker) applyEntry(e cluster.Entry) {
	cl := b.cl
	if e.Seq <= cl.applied.Load() {
		return // applied before a restart, committed again
	}
	defer cl.applied.Store(e.Seq)
	var changed bool
	if f := cl.flight; f != nil && e.ID == f.id {
		cl.flight = nil
		changed = b.applyBatch(f.ops, f.meta, &tree.Stamp{Rev: e.Seq, MS: f.ms})
		defer b.flush()
	} else if len(e.Changes) > 0 {
		ops := make([]tree.Op, 0, 1)
		var meta []*pubMeta
		for _, c := range e.Changes {
			if n := len(ops); n == 0 || ops[n-1].QoS != c.QoS {
				ops = append(ops, tree.Op{QoS: c.QoS})
				meta = append(meta, &pubMeta{p: clusterPrincipal, topic: c.Topic, rows: true, translated: true})
			}
			op := &ops[len(ops)-1]
			op.Rows = append(op.Rows, tree.Row{Topic: c.Topic, Value: c.Value, Retain: true})
		}
		changed = b.applyBatch(ops, meta, &tree.Stamp{Rev: e.Seq, MS: e.Changes[0].MS})
	}
	if !changed {
		// The revision is where a restart on the store's files puts it
		// (and where the log resumes), so mote-rev is the same for the
		// same state on every node, restarted or not.
		b.tree.SetRev(max(b.tree.Rev(), e.Seq))
		b.applied.Store(b.tree.Rev())
		if b.ret != nil {
			b.ret.SetRev(e.Seq)
		}
	}
}

// shareEvent sends a publish that changes no row (a plain event, a tree
// publish without retain, and their translations) to the other nodes,
// which deliver it as their own broker would (SPEC §12). A tree publish
// goes whole, so it stays one delta there; one in the original dialect
// (SPEC §7) stays on its node. An event too large for one NATS message is
// ErrTooLarge, sent nowhere: the publish is refused, not delivered on
// this node alone.
func (b *Broker) shareEvent(p Principal, m *Message, r *prepared) error {
	if b.cl.opts.Events == nil {
		return nil
	}
	var err error
	switch {
	case !r.mote:
		err = b.publishEvent(r.plain)
	case sharesEvents(&r.op) && !p.original:
		props := *m.properties()
		props.TopicAlias, props.TopicAliasFlag, props.SubscriptionIdentifier = 0, false, nil
		err = b.publishEvent(&message{topic: m.Topic, payload: m.Payload, qos: m.QoS, props: &props})
	}
	if errors.Is(err, nats.ErrMaxPayload) {
		return fmt.Errorf("%w: an event for the other nodes: %w", cluster.ErrTooLarge, err)
	}
	if r.trans != nil {
		for _, row := range r.trans.Rows {
			b.publishEvent(&message{topic: row.Topic, payload: bytesOf(row.Value.Data), qos: r.trans.QoS}) //nolint:errcheck // logged; the publish itself crossed
		}
	}
	return nil
}

// sharesEvents reports whether op, a publish without retain, is events
// the other nodes deliver: a tree publish's rows. (A .replace without
// retain deletes nothing and has no Replace filter; one that has it
// deletes through the log.)
func sharesEvents(op *tree.Op) bool {
	if op.Replace != "" && op.SetFilter == "" {
		o := *op
		o.Replace = ""
		return len(o.Rows) > 0 && isLocalOp(&o)
	}
	return isLocalOp(op)
}

// publishEvent sends a plain event to the other nodes; a failure is
// logged, and returned.
func (b *Broker) publishEvent(m *message) error {
	e := cluster.Event{Topic: m.topic, Payload: m.payload, QoS: m.qos}
	if m.props != nil {
		var buf bytes.Buffer
		m.props.Encode(packets.Publish, packets.Mods{}, &buf, 0)
		e.Props = buf.Bytes()
	}
	if err := b.cl.opts.Events.Publish(e); err != nil {
		b.log.Warn().Err(err).Str("topic", truncate(m.topic, 200)).Msg("cluster: an event did not reach the other nodes")
		return err
	}
	return nil
}

// errRemoteEvent is an event from another node that writes rows or
// publishes to the broker's topics.
var errRemoteEvent = errors.New("cluster: an event from another node on a topic no client may publish to")

// publishRemote delivers another node's plain event here, as its own
// broker would: to plain subscribers and folded into tree deltas.
func (b *Broker) publishRemote(origin string, e cluster.Event) {
	m := Message{Topic: e.Topic, Payload: e.Payload, QoS: min(e.QoS, 2)}
	if len(e.Props) > 0 {
		if _, err := m.Properties.Decode(packets.Publish, bytes.NewBuffer(e.Props)); err != nil {
			b.log.Warn().Err(err).Str("node", origin).Msg("cluster: dropped an event with malformed properties")
			return
		}
	}
	r, err := b.prepare(clusterPrincipal, &m)
	if err == nil && r.mote && r.op.SetFilter == "" {
		r.op.Replace = "" // a .replace's events: its deletions come through the log
	}
	if err == nil && (r.mote && !isLocalOp(&r.op) || !r.mote && reserved(e.Topic)) {
		err = errRemoteEvent // a row write, or the broker's topics: never an event
	}
	for i := 0; err == nil && r.mote && i < len(r.op.Rows); i++ {
		if reserved(r.op.Rows[i].Topic) {
			err = errRemoteEvent
		}
	}
	if err != nil {
		b.log.Warn().Err(err).Str("node", origin).Str("topic", truncate(e.Topic, 200)).Msg("cluster: dropped an event")
		return
	}
	if r.plain != nil {
		r.plain.origin = ""
	}
	if err := b.dispatch(b.cl.ctx, clusterPrincipal, &m, &r, waitNone, false, nil); err != nil {
		b.log.Warn().Err(err).Str("node", origin).Msg("cluster: an event was not delivered")
	}
}
