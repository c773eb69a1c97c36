package broker

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// conn is the broker's state for one client connection.
type conn struct {
	b   *Broker
	cl  *mqtt.Client
	key string // owner of this connection's tree subscriptions
	v5  bool

	// Touched only on the client's read goroutine, where mochi runs the
	// hooks of one packet in order.
	pending    *pendingPub // the Mote publish being read
	subParse   []wire.Subscription
	subExisted []bool
	subAcked   []subReq
	retained   []retainedReq
	subHeld    bool // the writer is held for the SUBACK being written

	mu      sync.Mutex // guards out, closed, writing, held, gen and subState's queued, qGen, qi
	space   sync.Cond  // on mu: signalled when the writer takes the queue
	out     []outMsg
	closed  bool
	writing bool
	held    int           // while > 0 the writer waits: an ack mochi writes must go first
	gen     uint64        // bumped each time the writer takes the queue
	wake    chan struct{} // one slot: out has messages
	done    chan struct{} // closed with the connection

	dropped atomic.Int64
}

// pendingPub is a Mote publish decoded in OnPacketRead, waiting for OnPublish.
type pendingPub struct {
	topic string // as sent
	op    tree.Op
	err   error
}

// outMsg is one tree message for the client.
type outMsg struct {
	topic   string
	payload []byte
	qos     byte
	seq     uint64
	codec   wire.Codec
	subID   int
	part    string              // "i/n" for a split snapshot
	plain   bool                // a retained row for a plain subscription: retain flag, no Mote properties
	props   *packets.Properties // MQTT 5 properties kept with a retained row
	pk      *packets.Packet     // a plain live publish, shared by all its subscribers
	retain  bool                // with pk: the retain flag this subscriber gets
	subIDs  []int               // with pk: its subscription identifiers
	st      *subState           // a delta: its subscription
	fold    *tree.Sub           // a delta later ones folded into: encode rows for it before writing
	rows    []tree.Change       // with fold: the rows to encode
	skip    bool                // not to be written after all
}

func newConn(b *Broker, cl *mqtt.Client) *conn {
	c := &conn{
		b:    b,
		cl:   cl,
		key:  cl.ID + "#" + strconv.FormatUint(b.serial.Add(1), 10),
		v5:   cl.Properties.ProtocolVersion == 5,
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	c.space.L = &c.mu
	return c
}

// enqueue queues a message. With limit > 0, a message finding that many
// queued is dropped (and counted) or gets the client disconnected, per
// Options.SlowClient; snapshots and retained rows have no limit. It never
// blocks.
func (c *conn) enqueue(m outMsg, limit int) {
	c.mu.Lock()
	c.pushLocked(m, limit, nil)
}

// enqueueDelta queues delta m of st, made from batch; later deltas of st
// fold into it while it waits (fold).
func (c *conn) enqueueDelta(st *subState, batch *batchRows, m outMsg, limit int) {
	m.st = st
	c.mu.Lock()
	st.batch, st.rows, st.at, st.qos = batch, nil, nil, 0
	c.pushLocked(m, limit, st)
}

// fold folds a new delta of st, made from batch, into st's queued delta if
// the writer has not taken that yet; it reports whether it did. It only
// gathers rows: the message, which keeps its place and its mote-seq, is
// encoded again once, when the writer takes it (encodeFolded).
func (c *conn) fold(st *subState, s *tree.Sub, batch *batchRows) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !st.queued || st.qGen != c.gen || c.closed || st.qi >= len(c.out) {
		return false
	}
	if st.batch != nil { // the first fold: the queued delta's own rows
		st.take(s, st.batch.changes())
		st.batch = nil
	}
	st.take(s, batch.changes())
	m := &c.out[st.qi]
	m.fold, m.qos = s, min(st.qos, s.QoS)
	return true
}

// takeFolded moves the rows of the folded deltas in a batch the writer
// just took from their subscriptions into the messages, and lets go of the
// batches behind the others (nothing folds into them now); c.mu is held.
func takeFolded(batch []outMsg) (n int) {
	for i := range batch {
		m := &batch[i]
		if m.st == nil {
			continue
		}
		if m.st.queued && m.st.qi == i { // still its subscription's latest
			m.st.batch = nil
		}
		if m.fold != nil {
			m.rows, m.st.rows, m.st.at = m.st.rows, nil, nil
			n++
		}
		m.st = nil
	}
	return n
}

// encodeFolded has the message loop, the owner of the tree, encode the
// folded deltas of a batch, and waits for it. It reports false when the
// connection or the broker is closing.
func (c *conn) encodeFolded(batch []outMsg) bool {
	done := make(chan struct{})
	call := func(t *tree.Tree) {
		defer close(done)
		for i := range batch {
			m := &batch[i]
			if m.fold == nil {
				continue
			}
			if payload, qos, ok := t.Fold(m.fold, m.rows); ok {
				m.payload, m.qos = payload, min(qos, m.fold.QoS)
			} else {
				m.skip = true // unsubscribed meanwhile, or nothing it may read
			}
			m.fold, m.rows = nil, nil
		}
	}
	if !c.b.reqs.push(request{kind: reqCall, call: call}) {
		return false
	}
	select {
	case <-done:
		return true
	case <-c.done:
		return false
	}
}

// pushLocked is enqueue with c.mu held; it unlocks it. A delta (st not
// nil) is recorded as st's queued one.
func (c *conn) pushLocked(m outMsg, limit int, st *subState) {
	if st != nil {
		st.queued = false
	}
	if c.closed {
		c.mu.Unlock()
		return
	}
	if limit > 0 && len(c.out) >= limit {
		disconnect := c.b.opts.SlowClient == SlowDisconnect
		if disconnect {
			c.closed = true
		}
		c.mu.Unlock()
		c.slow(disconnect)
		return
	}
	c.out = append(c.out, m)
	if st != nil {
		st.queued, st.qGen, st.qi = true, c.gen, len(c.out)-1
	}
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	c.b.stats.DeltasQueued.Add(1)
	if start {
		c.b.writers.Add(1)
		go c.writeLoop()
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// slow handles a client whose tree queue is full.
func (c *conn) slow(disconnect bool) {
	n := c.dropped.Add(1)
	c.b.stats.Dropped.Add(1)
	if disconnect {
		c.b.log.Warn().Str("client", c.cl.ID).Str("remote", c.cl.Net.Remote).
			Msg("delivery queue full; disconnecting slow client")
		close(c.done)
		c.cl.Stop(packets.ErrServerBusy)
		return
	}
	if n == 1 || n%1000 == 0 {
		c.b.log.Warn().Str("client", c.cl.ID).Str("remote", c.cl.Net.Remote).Int64("dropped", n).
			Msg("delivery queue full; dropping messages for slow client")
	}
}

// hold makes the writer wait until release: what the loop queues for a
// subscription it registered before mochi wrote the SUBACK goes out after it.
func (c *conn) hold() {
	c.mu.Lock()
	c.held++
	c.mu.Unlock()
}

// release undoes one hold and wakes the writer.
func (c *conn) release() {
	c.mu.Lock()
	c.held--
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// close stops the writer; queued messages are dropped.
func (c *conn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		close(c.done)
	}
	c.out = nil
	c.space.Broadcast()
}

// writeLoop writes queued tree messages until the connection closes.
func (c *conn) writeLoop() {
	defer c.b.writers.Done()
	var batch []outMsg
	for {
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
		for {
			c.mu.Lock()
			if c.held > 0 {
				c.mu.Unlock()
				break // release wakes us
			}
			batch, c.out = c.out, batch[:0]
			c.gen++ // queued deltas are taken: nothing folds into them now
			folded := takeFolded(batch)
			c.space.Broadcast()
			c.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			if folded > 0 && !c.encodeFolded(batch) {
				c.close() // the broker is stopping
				return
			}
			for i := range batch {
				if batch[i].skip {
					batch[i] = outMsg{}
					continue
				}
				if err := c.write(&batch[i]); err != nil {
					if !errors.Is(err, mqtt.ErrConnectionClosed) {
						c.b.log.Debug().Err(err).Str("client", c.cl.ID).Msg("tree write failed")
					}
					c.close()
					return
				}
				batch[i] = outMsg{}
			}
		}
	}
}

// write sends one tree message with MQTT semantics: at QoS 1 and 2 it takes
// a packet id and an in-flight slot from mochi's client state, so mochi
// completes the flow and resends it to a resumed session.
func (c *conn) write(m *outMsg) error {
	if m.pk != nil {
		return c.send(m.packet())
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.qos, Retain: m.plain},
		TopicName:   m.topic,
		Payload:     m.payload,
		Created:     time.Now().Unix(),
	}
	if c.v5 && m.plain {
		if m.props != nil {
			pk.Properties = *m.props
		}
		if m.subID > 0 {
			pk.Properties.SubscriptionIdentifier = []int{m.subID}
		}
	} else if c.v5 {
		pk.Properties.ContentType = m.codec.ContentType()
		pk.Properties.User = []packets.UserProperty{{Key: "mote-seq", Val: strconv.FormatUint(m.seq, 10)}}
		if m.part != "" {
			pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: "mote-part", Val: m.part})
		}
		if m.subID > 0 {
			pk.Properties.SubscriptionIdentifier = []int{m.subID}
		}
	}
	return c.send(pk)
}

// send writes one publish; at QoS 1 and 2 it first takes a packet id and an
// in-flight slot.
func (c *conn) send(pk packets.Packet) error {
	if pk.FixedHeader.Qos > 0 {
		if err := c.waitInflight(); err != nil {
			return err
		}
		id, err := c.cl.NextPacketID()
		if err != nil { // every id in flight: the client is not acknowledging
			c.slow(false)
			return nil
		}
		pk.PacketID = uint16(id)
		if c.cl.State.Inflight.Set(pk) {
			atomic.AddInt64(&c.b.server.Info.Inflight, 1)
			c.cl.State.Inflight.DecreaseSendQuota()
		}
	}
	return c.cl.WritePacket(pk)
}

// waitInflight waits while the client has as many QoS messages in flight
// as it accepts (its Receive Maximum, or the broker's in-flight bound).
func (c *conn) waitInflight() error {
	limit := int(c.b.server.Options.Capabilities.MaximumInflight)
	if rm := int(c.cl.Properties.Props.ReceiveMaximum); c.v5 && rm > 0 && rm < limit {
		limit = rm
	}
	for c.cl.State.Inflight.Len() >= limit {
		select {
		case <-c.done:
			return mqtt.ErrConnectionClosed
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

// payloadRoom is the largest tree payload that fits one packet to this
// client on topic, leaving room for the header and Mote's properties.
func (c *conn) payloadRoom(topic string) int {
	max := c.b.opts.MaxPacketSize
	if cm := c.cl.Properties.Props.MaximumPacketSize; c.v5 && cm > 0 && cm < max {
		max = cm
	}
	return int(max) - 5 - 2 - len(topic) - 2 - 160
}

// sendSnapshot queues a snapshot (mote-seq 0). One that does not fit the
// client's maximum packet size is split by subtree for MQTT 5 clients
// (mote-part i/n) and reported as an error to MQTT 3.1.1 clients.
func (c *conn) sendSnapshot(st *subState, ts *tree.Sub, snap []byte) {
	m := outMsg{topic: ts.Topic, payload: snap, qos: ts.QoS, codec: ts.Codec, subID: st.id}
	room := c.payloadRoom(ts.Topic)
	if len(snap) <= room {
		c.enqueue(m, 0)
		return
	}
	if !c.v5 {
		c.b.refuse(c, "subscribe", ts.Topic, fmt.Errorf("%w: snapshot of %d bytes does not fit the maximum packet size; MQTT 5 clients get it in parts", errTooLarge, len(snap)))
		return
	}
	parts, err := wire.Split(ts.Codec, snap, room)
	if err != nil {
		c.b.refuse(c, "subscribe", ts.Topic, fmt.Errorf("%w: snapshot: %w", errTooLarge, err))
		return
	}
	for i, p := range parts {
		m.payload, m.part = p, strconv.Itoa(i+1)+"/"+strconv.Itoa(len(parts))
		c.enqueue(m, 0)
	}
}

var errTooLarge = errors.New("broker: too large")
