package broker

import (
	"sync"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

type reqKind uint8

const (
	reqPublish     reqKind = iota // apply an op
	reqSubscribe                  // register tree subscriptions (and send snapshots)
	reqUnsubscribe                // remove tree subscriptions by topic
	reqDetach                     // a connection ended: remove all its tree subscriptions
	reqCall                       // run call on the loop (reads of the tree: store tools, tests)
)

// request is one unit of work for the message loop.
type request struct {
	kind     reqKind
	conn     *conn
	op       tree.Op
	topic    string          // the publish topic as sent, for error reports
	plain    *packets.Packet // a plain retained publish for mochi, once its row is applied
	rows     bool            // deliver the applied rows to plain subscribers
	subs     []subReq
	retained []retainedReq // plain subscriptions whose retained rows to send
	topics   []string
	call     func(*tree.Tree)
	done     chan error // with SyncRetain: answered once the op's rows are committed (or refused)
}

// subReq is a tree subscription mochi has granted.
type subReq struct {
	topic  string            // the filter as subscribed: the outgoing topic
	parsed wire.Subscription // mode, codec and F
	qos    byte              // granted QoS
	id     int               // MQTT 5 subscription identifier, 0 if none
}

// retainedReq is a plain subscription mochi has granted whose matching
// retained rows the loop sends (mochi's own retained index stays empty).
type retainedReq struct {
	filter string
	qos    byte // granted QoS
	id     int  // MQTT 5 subscription identifier
}

// subState is the broker's part of a tree subscription (tree.Sub.Data).
type subState struct {
	conn  *conn
	mode  wire.Mode
	codec wire.Codec
	id    int
	seq   uint64 // mote-seq of the last message queued; only the loop touches it

	// The delta queued last takes in the next ones until the writer takes
	// it, so a client that is behind gets fewer, fuller deltas instead of a
	// backlog. All guarded by conn.mu: queued, qGen and qi find it in the
	// connection's queue; batch is the batch it came from, rows (each topic
	// once, at its index in at) what it holds once something folded in.
	queued bool
	qGen   uint64
	qi     int
	batch  *batchRows
	rows   []tree.Change
	at     map[string]int
	qos    byte // highest QoS among rows
}

// take adds the changes s matches to st.rows, newest value of each topic.
func (st *subState) take(s *tree.Sub, changes []tree.Change) {
	if st.at == nil {
		st.at = make(map[string]int)
	}
	for _, ch := range changes {
		if !s.Matches(ch.Topic) {
			continue
		}
		st.qos = max(st.qos, ch.QoS)
		if i, ok := st.at[ch.Topic]; ok {
			st.rows[i].Value, st.rows[i].QoS = ch.Value, max(st.rows[i].QoS, ch.QoS)
			continue
		}
		st.at[ch.Topic] = len(st.rows)
		st.rows = append(st.rows, ch)
	}
}

// batchRows is the rows one batch changed, listed (with their publishes'
// QoS) only when a delta of the batch has to fold: most never do. Only the
// loop reads it.
type batchRows struct {
	applied []tree.Applied
	qos     []byte // each op's
	list    []tree.Change
}

func newBatchRows(applied []tree.Applied, meta []*request) *batchRows {
	r := &batchRows{applied: applied, qos: make([]byte, len(meta))}
	for i, m := range meta {
		r.qos[i] = m.op.QoS
	}
	return r
}

// changes lists the rows, the first time it is asked.
func (r *batchRows) changes() []tree.Change {
	if r.applied == nil {
		return r.list
	}
	for i, a := range r.applied {
		if a.Err != nil {
			continue
		}
		for _, row := range a.Rows {
			r.list = append(r.list, tree.Change{Topic: row.Topic, Value: row.Value, QoS: r.qos[i]})
		}
	}
	r.applied = nil
	return r.list
}

// requestQueue is the loop's inbox: a guarded slice, a condition to wake
// the loop, and a bound past which publishers wait (back-pressure).
type requestQueue struct {
	mu     sync.Mutex
	ready  sync.Cond // signalled when items arrive or the queue closes
	space  sync.Cond // signalled when the loop takes items
	items  []request
	max    int
	closed bool
}

func newRequestQueue(max int) *requestQueue {
	q := &requestQueue{max: max}
	q.ready.L = &q.mu
	q.space.L = &q.mu
	return q
}

// push queues r, waiting while the queue is full; it reports false once the
// queue is closed.
func (q *requestQueue) push(r request) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) >= q.max && !q.closed && r.kind == reqPublish {
		q.space.Wait()
	}
	if q.closed {
		return false
	}
	q.items = append(q.items, r)
	if len(q.items) == 1 {
		q.ready.Signal()
	}
	return true
}

// take waits for work and swaps it out; ok is false when the queue is
// closed and empty.
func (q *requestQueue) take(spare []request) (items []request, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 && !q.closed {
		q.ready.Wait()
	}
	items, q.items = q.items, spare[:0]
	q.space.Broadcast()
	return items, len(items) > 0 || !q.closed
}

func (q *requestQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.ready.Broadcast()
	q.space.Broadcast()
}

// loop is the message loop: the only goroutine that touches b.tree.
func (b *Broker) loop() {
	defer close(b.loopDone)
	var items, spare []request
	var ops []tree.Op
	var meta []*request
	for {
		var ok bool
		items, ok = b.reqs.take(spare)
		if !ok {
			return
		}
		ops, meta = ops[:0], meta[:0]
		for i := range items {
			r := &items[i]
			if r.kind == reqPublish {
				ops = append(ops, r.op)
				meta = append(meta, r)
				continue
			}
			b.apply(ops, meta) // keep order: earlier publishes first
			ops, meta = ops[:0], meta[:0]
			b.handle(r)
		}
		b.apply(ops, meta)
		clear(items) // drop references for the GC
		spare = items
	}
}

// apply applies a batch of publishes and delivers what it produced.
func (b *Broker) apply(ops []tree.Op, meta []*request) {
	if len(ops) == 0 {
		return
	}
	res := b.tree.Apply(ops)
	b.stats.Batches.Add(1)
	b.stats.OpsApplied.Add(int64(len(ops)))
	atomic.StoreInt64(&b.server.Info.Retained, int64(b.tree.Store().Len()))
	var changes []retain.Change
	var waiters []chan error
	for i, a := range res.Applied {
		r := meta[i]
		if a.Err != nil {
			if r.done != nil {
				r.done <- a.Err // the publisher refuses it with the reason
			} else {
				b.refuse(r.conn, "publish", r.topic, a.Err)
			}
			continue
		}
		if b.ret != nil {
			n := len(changes)
			for _, row := range a.Rows {
				if row.Retain {
					changes = append(changes, retain.Change{Topic: row.Topic, Value: row.Value, QoS: r.op.QoS})
				}
			}
			if r.done != nil {
				if len(changes) > n {
					waiters = append(waiters, r.done)
				} else {
					r.done <- nil
				}
			}
		} else if r.done != nil {
			r.done <- nil
		}
		if r.plain != nil {
			b.deliverPlain(*r.plain, false)
		}
		b.keepProps(r, a.Rows)
		if r.rows {
			for _, row := range a.Rows {
				pk := rowPacket(row, r.op.QoS)
				if r.conn != nil {
					pk.Origin = r.conn.cl.ID
				}
				b.deliverPlain(pk, false)
			}
		}
	}
	if len(changes) > 0 || len(waiters) > 0 {
		b.ret.Add(changes, waiters...) // never waits on the disk
	}
	var batch *batchRows
	for _, d := range res.Deltas {
		if batch == nil {
			batch = newBatchRows(res.Applied, meta)
		}
		for _, s := range d.Subs {
			st := s.Data.(*subState)
			if st.conn.fold(st, s, batch) {
				b.stats.Folded.Add(1)
				continue
			}
			st.seq++
			st.conn.enqueueDelta(st, batch, outMsg{
				topic: s.Topic, payload: d.Payload, qos: min(d.QoS, s.QoS),
				seq: st.seq, codec: st.codec, subID: st.id,
			}, b.opts.TreeQueue)
		}
	}
}

// handle runs a subscription request.
func (b *Broker) handle(r *request) {
	switch r.kind {
	case reqSubscribe:
		for _, s := range r.subs {
			st := &subState{conn: r.conn, mode: s.parsed.Mode, codec: s.parsed.Codec, id: s.id}
			ts := &tree.Sub{Owner: r.conn.key, Topic: s.topic, Filter: s.parsed.Filter, Codec: s.parsed.Codec, QoS: s.qos, Data: st,
				Allow: b.allowRead(r.conn.cl)}
			snap, err := b.tree.Subscribe(ts)
			if err != nil {
				b.refuse(r.conn, "subscribe", s.topic, err)
				continue
			}
			if s.parsed.Mode == wire.Sync {
				r.conn.sendSnapshot(st, ts, snap)
			}
		}
		allow := b.allowRead(r.conn.cl)
		for _, rr := range r.retained {
			// Every matching row, paced by the client's writer: none dropped.
			b.tree.Store().Match(rr.filter, func(topic string, v wire.Value, qos byte) bool {
				if allow != nil && !allow(topic) {
					return true
				}
				m := outMsg{topic: topic, payload: []byte(v.Data), qos: min(qos, rr.qos), subID: rr.id, plain: true}
				if p, ok := b.props[topic]; ok {
					m.props = &p
				}
				r.conn.enqueue(m, 0)
				return true
			})
		}
	case reqUnsubscribe:
		for _, t := range r.topics {
			b.tree.Unsubscribe(r.conn.key, t)
		}
	case reqDetach:
		b.tree.RemoveOwner(r.conn.key)
	case reqCall:
		r.call(b.tree)
	}
	b.treeSubs.Store(int64(b.tree.Subscriptions()))
	if r.kind == reqSubscribe {
		b.subsSent.Add(-1) // after the Store: hasTreeSubs never misses it
	}
}

// keepProps keeps the MQTT 5 properties of plain retained publishes (content
// type, user properties, …) for retained delivery; any other change to the
// row drops them. They live in memory only: the store keeps payloads.
func (b *Broker) keepProps(r *request, rows []tree.Row) {
	if r.plain != nil && r.plain.ProtocolVersion == 5 && len(r.plain.Payload) > 0 && hasProps(&r.plain.Properties) {
		p := r.plain.Properties
		p.MessageExpiryInterval, p.TopicAlias, p.TopicAliasFlag, p.SubscriptionIdentifier = 0, 0, false, nil
		b.props[r.plain.TopicName] = p
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
