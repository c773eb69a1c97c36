package broker

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// conn is the broker's side of one subscriber: an MQTT connection, or a
// session of the door. It has a queue and a writer goroutine, running
// while there is something to write, that takes messages from it and
// writes them to the endpoint, and it owns nothing
// else: tree subscription state is the loop's (treeSub), plain
// subscriptions are in mochi's topic index under id.
type conn struct {
	b *Broker
	p Principal
	// serial makes the connection's key (key) with its client id: a
	// number, not the key's string, so that an idle connection keeps no
	// string and conn is 240 bytes, not 248.
	serial uint64
	id     string // the id its plain subscriptions are filed under in mochi's index
	q      *outQueue
	out    endpoint

	// acked is a one-slot channel: an in-flight slot was freed. Made by
	// the writer's first wait for one (ackedOf): an idle connection, or
	// one that never fills its in-flight window, carries a nil pointer in
	// place of a channel (112 bytes).
	acked   atomic.Pointer[chan struct{}]
	pub     *mqttPublisher // OnPublish's (the read goroutine's only): the mochi client's FlushHeld, the publish's wait clock; nil until the first publish
	dropped atomic.Int64

	snapPace *snapPace // the writer's: its snapshot token bucket (paceSnapshots); nil until its first snapshot
	// snapHolds is what its subscriptions hold of the broker's snapshot
	// budget: nil until one holds a snapshot, or the connection went
	// (holdsOf).
	snapHolds atomic.Pointer[snapHolds]

	// The hand-off of the leftovers (see finish), guarded by endMu. A
	// connection holds endMu while it hands them on, then its successor's.
	// Its flags sit together after endMu, with v5 and pacedProps (each
	// with its own guard), so that they fill one word (an idle
	// connection's conn is in a smaller size class).
	endMu      sync.Mutex
	writerDone bool // the writer exited: the leftovers are all there
	ended      bool // the session's end (dropConn) said whether it outlives the connection
	keep       bool // it does
	fresh      bool // the client that took the client id starts a new session: the leftovers go
	prev       bool // the previous connection's leftovers are still to come ahead of this one's (its queue is held)
	over       bool // the leftovers were handed on
	v5         bool // MQTT 5 properties (mote-seq, Content Type, …) go out; set once, by newConn
	pacedProps bool // the read goroutine's: a paced property-form tree subscription was filed (see propFiled)
	// hand is the hand-off's takeover state and its end's signal: nil
	// until a takeover (expect, succeed), the hand-off's end
	// (overLocked) or a publisher waiting for it needs it (handOf), so
	// that an idle connection's conn is 248 bytes, not 288.
	hand atomic.Pointer[handOff]

	flightMu sync.Mutex  // guards flight: the writer adds, mochi's ack hooks remove
	flight   *connFlight // the QoS 1/2 publishes in flight; nil until the first (most connections never have one)

	// will: armed at CONNECT (OnSessionEstablished); handed to wills when
	// due, by the read goroutine (OnWill) or by a CONNECT taking the id
	// over (takenWill), which may come first.
	will atomic.Pointer[will]

	// Touched only by an MQTT connection's read goroutine, where mochi runs
	// the hooks of one packet in order.
	pendingTopic string // the topic of the publish OnPacketRead took aside
	levels       int    // filter levels of the session's subscriptions, in all
	// replaced is what the filters of the SUBSCRIBE being processed
	// replace, from OnSubscribe to OnSubscribed (refuseFiled); nil when
	// none does.
	replaced *[]replacedSub

	logs logSlot // its share of Broker.logs (c.p.logs points here): guarded by Broker.logs.mu
}

// endpoint is where a conn's writer writes: an MQTT client, or a door
// session's callback.
type endpoint interface {
	// send writes one publish, or buffers it until flush. At QoS 1 and 2
	// an MQTT endpoint first takes a packet id and an in-flight slot,
	// waiting (on c.acked) while the client has as many in flight as it
	// accepts. errTooLarge: the packet exceeds what the client accepts,
	// and nothing of it was written. errSkipped: it was not sent, and
	// the writer goes on (expired, or dropped and counted). send may
	// change *pk (its expiry, topic alias, version), and keeps no
	// pointer to it: conn.send calls it by type, so that the packet stays
	// on its caller's stack.
	send(c *conn, pk *packets.Packet) error
	// flush writes what send has left buffered.
	flush() error
	// maxPacket is the largest packet the endpoint accepts (0: no limit
	// of its own).
	maxPacket() uint32
	// stop ends the connection (the writer failed, or the client is too
	// slow); err says why.
	stop(err error)
}

// errTooLarge is a packet larger than the client's Maximum Packet Size.
var errTooLarge = errors.New("broker: too large")

func newConn(b *Broker, p Principal, id string, v5 bool, out endpoint) *conn {
	c := &conn{
		b:      b,
		p:      p,
		serial: b.serial.Add(1),
		id:     id,
		v5:     v5,
		q:      newOutQueue(b.opts.QueueBytes, b.opts.PublishWait),
		out:    out,
	}
	if c.id == "" {
		c.id = c.key()
	}
	c.p.logs = &c.logs
	c.q.start = c.startWriter
	b.writers.Add(1) // done by the writer that does the finishing duties
	return c
}

// key is the owner of the connection's tree subscriptions, unique per
// connection: its client id and serial. Made when asked (a tree
// subscription, an unsubscribe, the detach at its end), never on a
// publish's path.
func (c *conn) key() string {
	return c.p.ClientID + "#" + strconv.FormatUint(c.serial, 10)
}

// enqueue queues a message the broker itself sends (the loop, a replay):
// it never waits; a full queue applies the slow-client policy.
func (c *conn) enqueue(m item) {
	if !c.q.push(m, pubWait{}) {
		c.slowFull(fullNoWait)
	}
}

// slowFull applies the slow-client policy to a message its queue had no
// room for, counting why.
func (c *conn) slowFull(why fullWhy) {
	c.b.meter.queueFull[why].Add(1)
	c.slow(dropQueueFull)
}

// enqueueToken queues a snapshot or replay token: tiny, and always
// accepted (they are bounded by the number of subscriptions).
func (c *conn) enqueueToken(m item) {
	c.q.mu.Lock()
	if c.q.closed {
		c.q.mu.Unlock()
		return
	}
	c.q.items = append(c.q.items, m)
	c.q.bytes += m.cost()
	c.q.unlockAndWake()
}

// slow applies the slow-client policy to a message that did not fit (its
// queue was full, or every packet id was in flight: why).
func (c *conn) slow(why dropReason) {
	n := c.dropped.Add(1)
	c.b.drop(why, 1)
	if c.b.opts.SlowClient == SlowDisconnect {
		if c.q.close() {
			c.b.meter.slowDisconnects.Add(1)
			if c.b.logs.allow(c.p.logs, c.p.ClientID, kindSlowClient) { // a client can cause one a connection
				c.b.log.Warn().Str("client", truncate(c.p.ClientID, 200)).Msg("queue full; disconnecting slow client")
			}
			c.out.stop(packets.ErrServerBusy)
		}
		return
	}
	c.b.meter.slowDrops.Add(1)
	if (n == 1 || n%1000 == 0) && c.b.logs.allow(c.p.logs, c.p.ClientID, kindSlowClient) {
		c.b.log.Warn().Str("client", truncate(c.p.ClientID, 200)).Int64("dropped", n).
			Msg("queue full; dropping messages for slow client")
	}
}

// close ends deliveries to c: its queue drops what it holds (but the
// leftovers, see finish), its writer and any publisher waiting for room
// stop.
func (c *conn) close() { c.q.close() }

// finish is called twice at the end of an MQTT connection: by its writer
// when it exits, and when its session ends (dropConn), which says whether
// the session outlives the connection (keep). Then the QoS 1/2 plain
// messages the writer did not write (the queue's leftovers) go to the
// session when it is kept [MQTT-3.1.2-5]: a message published while the
// client disconnects is not lost. Nothing waits for the writer. A door
// session's connection has no session to end: its leftovers go with it.
func (c *conn) finish(ended, keep bool) {
	c.endMu.Lock()
	defer c.endMu.Unlock()
	if ended {
		c.ended, c.keep = true, keep
	} else {
		c.writerDone = true
	}
	c.handOffLocked()
}

// handOffLocked hands the leftovers on once the writer exited (endMu
// held), in the session's order:
//
//   - a client taking the session over has a connection (next): ahead of
//     its queue, held until then (a message the writer took in flight and
//     back that mochi moved to that client is not among them: the writer
//     leaves it out, takenBack.moved);
//   - a client is taking it over but has no connection yet (expecting):
//     they wait here (parked), and the connection stays the session's
//     route in byID (new messages join them) until the new one adopts them
//     (succeed) — mochi moves the old client's in-flight messages to the
//     new one meanwhile, and would lose what came in after;
//   - nobody, and the session outlives the connection: to the session's
//     holder now (arriving.handOn) — its mochi client, held in flight for
//     its return (holdOffline), or a client that took it over without
//     going through this connection (its CONNECT came while this one was
//     not filed) — in the step that files the connection off byID, so the
//     messages published afterwards, held after them, are resent after
//     them.
//
// A session that ended, or that a new one replaced (fresh), gets nothing
// (a replaced session's leftovers are counted session_ended).
// Publishers that found the connection handing on wait for handed.
func (c *conn) handOffLocked() {
	if !c.writerDone || c.prev || c.over {
		return
	}
	left, lost := []*plainItem(nil), 0
	_, isMQTT := c.out.(*mqttOut)
	h := c.hand.Load()
	switch n := h.successor(); {
	case !isMQTT:
		c.q.leftovers() // a door session's: they go with it
	case c.fresh:
		// A new session (a clean start, another user's) replaced this
		// one: what it had queued is dropped, and counted.
		left, lost = c.q.leftovers()
		lost += len(left)
		left = nil
	case n != nil:
		left, lost = c.q.leftovers()
		lost += n.q.pushFront(left)
	case h.expected() != nil:
		c.b.parked.Store(c, struct{}{}) // see unpark
		return
	case !c.ended:
		return
	case !c.keep:
		c.q.leftovers()
	default:
		left, lost = c.q.leftovers()
		lost += c.b.arriving.handOn(c.b, c, left)
	}
	c.overLocked(lost)
}

// parkedLocked reports whether the leftovers wait for the connection of a
// client taking the session over (endMu held).
func (c *conn) parkedLocked() bool {
	h := c.hand.Load()
	return c.writerDone && !c.prev && !c.over && !c.fresh && h.successor() == nil && h.expected() != nil
}

// overLocked ends the hand-off (endMu held): lost messages are counted,
// publishers that found the connection go on, and its successor may
// write, and hand its own leftovers on.
func (c *conn) overLocked(lost int) {
	c.b.drop(dropSessionEnded, int64(lost))
	c.over = true
	c.b.byID.compareAndDelete(c.id, c)
	c.b.parked.Delete(c)
	h := c.handOf() // made here if nobody needed it before: a publisher may wait for it next
	h.handed.close()
	if n := h.next; n != nil {
		n.endMu.Lock()
		n.prev = false
		n.q.release()
		n.handOffLocked()
		n.endMu.Unlock()
	}
}

// outOf is c's MQTT endpoint; false for none (nil, or a door session).
func (c *conn) outOf() (*mqttOut, bool) {
	if c == nil {
		return nil, false
	}
	o, ok := c.out.(*mqttOut)
	return o, ok
}

// expect tells a connection that cl is taking its session over (mochi is
// about to move the session to it): the leftovers wait for cl's
// connection (succeed) instead of going to the old client. fresh: cl
// starts a new session, or is another user's.
func (c *conn) expect(cl *mqtt.Client, fresh bool) {
	c.endMu.Lock()
	defer c.endMu.Unlock()
	if c.over {
		return
	}
	c.handOf().expecting, c.fresh = cl, c.fresh || fresh
	c.handOffLocked()
}

// endedByTakeover reports whether a client that took c's client id over
// started a new session (conn.expect with fresh): c's session ended.
func (c *conn) endedByTakeover() bool {
	c.endMu.Lock()
	defer c.endMu.Unlock()
	return c.fresh
}

// succeed makes n, the connection of the client that took c's session
// over, its successor: c's leftovers go ahead of n's queue, which is held
// until then (n.prev, set by the caller). c's deliveries end now (mochi
// stopped its client): its writer stops, and n waits no longer than that.
func (c *conn) succeed(n *conn) {
	c.endMu.Lock()
	if !c.over && !c.fresh {
		h := c.handOf()
		h.next = n
		c.handOffLocked()
		c.endMu.Unlock()
		c.close()
		return
	}
	c.endMu.Unlock()
	n.endMu.Lock()
	n.prev = false
	n.q.release()
	n.handOffLocked()
	n.endMu.Unlock()
}

// unpark hands on the leftovers of a connection that waits for a client
// taking its session over that stopped before it had a connection (its
// CONNACK could not be written, say): to the session's client, away now,
// as any session's. It reports false while they still wait.
func (c *conn) unpark() bool {
	c.endMu.Lock()
	defer c.endMu.Unlock()
	if !c.parkedLocked() {
		return true
	}
	if !c.hand.Load().expecting.Closed() { // parked: expecting is set
		return false // on its way, or established: succeed unparks
	}
	left, lost := c.q.leftovers()
	lost += c.b.arriving.handOn(c.b, c, left)
	c.overLocked(lost)
	return true
}

// handOff is a connection's takeover state, and the signal that its
// leftovers were handed on. expecting and next are guarded by
// the connection's endMu, as they were in conn; handed by its own mutex.
type handOff struct {
	expecting *mqtt.Client // a client taking the session over (OnSessionEstablish): its connection adopts the leftovers
	next      *conn        // the connection that took the session over: the leftovers go ahead of its queue
	handed    closeSignal  // closed when over
}

// handOf is c's hand-off state, made by the first that needs it (any
// goroutine: the pointer is swapped in once, never changed after).
func (c *conn) handOf() *handOff {
	if h := c.hand.Load(); h != nil {
		return h
	}
	c.hand.CompareAndSwap(nil, new(handOff))
	return c.hand.Load()
}

// successor is h's next, nil for no hand-off state (endMu held).
func (h *handOff) successor() *conn {
	if h == nil {
		return nil
	}
	return h.next
}

// expected is h's expecting, nil for no hand-off state (endMu held).
func (h *handOff) expected() *mqtt.Client {
	if h == nil {
		return nil
	}
	return h.expecting
}

// connFlight is a connection's QoS 1/2 publishes in flight: the bytes
// of each, by packet id, and of all. Behind a pointer, with the
// snapshot pace (snapPace): conn is 288 bytes, not 320.
type connFlight struct {
	bytes map[uint16]int
	all   int
}

// inFlight records a publish in flight: its bytes count against the
// connection's queue bound until the client acknowledges it.
func (c *conn) inFlight(id uint16, n int) {
	c.flightMu.Lock()
	if c.flight == nil { // most connections never have a QoS 1/2 delivery in flight
		c.flight = &connFlight{bytes: map[uint16]int{}}
	}
	f := c.flight
	f.all += n - f.bytes[id]
	f.bytes[id] = n
	c.flightMu.Unlock()
}

// flightLoad is what the client has in flight: bytes and publishes the
// writer recorded.
func (c *conn) flightLoad() int {
	c.flightMu.Lock()
	defer c.flightMu.Unlock()
	if c.flight == nil {
		return 0
	}
	return c.flight.all
}

// inflightFreed forgets an acknowledged (or dropped) publish and wakes a
// writer waiting for room in flight.
func (c *conn) inflightFreed(id uint16) {
	c.flightMu.Lock()
	if f := c.flight; f != nil {
		f.all -= f.bytes[id]
		delete(f.bytes, id)
	}
	c.flightMu.Unlock()
	c.wakeWriter()
}

// wakeWriter wakes the writer if it waits for room in flight
// (waitInflight), without waiting itself.
func (c *conn) wakeWriter() {
	p := c.acked.Load()
	if p == nil {
		// Nobody ever waited. A writer that does makes the channel
		// before it looks at what is in flight (waitInflight), under
		// the locks the acknowledgement released before it came here:
		// it sees this acknowledgement, or this sees its channel.
		return
	}
	select {
	case *p <- struct{}{}:
	default:
	}
}

// ackedOf is c.acked's channel, made at the first call (the writer's
// waitInflight).
func (c *conn) ackedOf() chan struct{} {
	if p := c.acked.Load(); p != nil {
		return *p
	}
	ch := make(chan struct{}, 1)
	c.acked.CompareAndSwap(nil, &ch)
	return *c.acked.Load()
}

// mqttOut is an MQTT client of mochi as an endpoint. Its writer encodes
// publishes into buf and writes them at once when it has taken all it can
// or buf is full (flush): one write, one syscall, for a batch of messages.
// Only the writer touches buf, which it holds from its first encode to the
// flush (then it goes back to the broker's pool: a writer with nothing to
// write holds none).
type mqttOut struct {
	b   *Broker
	cl  *mqtt.Client
	q   *outQueue     // its connection's, told what was written
	buf *bytes.Buffer // nil between flushes
	n   int           // packets in buf
	// tail is the payload of the last packet in buf when it is larger
	// than flushAt (a snapshot, say): flush writes it after buf, from the
	// payload's own bytes, so a payload of megabytes is not copied into
	// the encode buffer (nor held twice while the client reads it).
	tail []byte

	ids idSpaces // the client's packet ids apart from the deliveries'
}

func (o *mqttOut) maxPacket() uint32 {
	if o.cl.Properties.ProtocolVersion == 5 {
		return o.cl.Properties.MaximumPacketSize()
	}
	return 0
}

func (o *mqttOut) stop(err error) {
	var ne net.Error
	if nc, ok := o.cl.Net.Conn.(*netConn); ok && errors.As(err, &ne) && ne.Timeout() {
		nc.abort() // a write that timed out: the client stopped reading
	}
	o.cl.Stop(err)
}

// errSkipped is a publish not sent, and rightly so (expired, or dropped
// and counted): the writer goes on.
var errSkipped = errors.New("broker: skipped")

// errEncode is a publish that could not be encoded.
var errEncode = errors.New("broker: cannot encode")

// send encodes one publish with MQTT's semantics: a packet id and an
// in-flight entry in mochi's client state, so mochi completes QoS 1 and 2
// flows and resends them to a resumed session; an outgoing topic alias
// when the client allows them; the client's Maximum Packet Size. An error
// means the publish was not taken in flight.
func (o *mqttOut) send(c *conn, pk *packets.Packet) error {
	cl := o.cl
	// A publish that would take the buffer past flushAt goes after what
	// it holds (before it is in flight: an error leaves it unsent), so
	// buffers keep their size.
	if o.buf != nil && o.buf.Len() > 0 && o.buf.Len()+len(o.tail)+encodedAtLeast(pk) > flushAt {
		if err := o.flush(); err != nil {
			return err
		}
	}
	if pk.Expiry > 0 { // the time it has left [MQTT-3.3.2-6]; none: it is not sent [MQTT-3.3.2-5]
		left := pk.Expiry - time.Now().Unix()
		if left < 1 {
			return errSkipped
		}
		pk.Properties.MessageExpiryInterval = uint32(left)
	}
	if pk.FixedHeader.Qos > 0 {
		if err := o.waitInflight(c); err != nil {
			return err
		}
		// A client taken over (mochi stops it, moves its in-flight
		// messages to the new client, which wakes waitInflight) must not
		// take more: they would be lost. It stays unsent, for the session
		// (finish). Closed after Set, it may or may not have been moved:
		// takeBack asks mochi (takenBack.moved): the $tree mark notes
		// a moved message, the writer leaves a moved plain one out of
		// the session's leftovers.
		if cl.Closed() {
			return errWriterStop
		}
		seam := o.b.takingInflight.Load() // a test's (one load, nil)
		if seam != nil {
			(*seam)(cl, takeAbout)
		}
		if err := o.b.takeInflight(&o.ids, cl, pk); err != nil {
			c.slow(dropInflightFull) // every packet id in flight: the client does not acknowledge
			return errSkipped
		}
		if seam != nil {
			(*seam)(cl, takeTaken)
		}
		if cl.Closed() {
			if seam != nil {
				(*seam)(cl, takeBackNow)
			}
			return o.b.takeBack(cl, pk.PacketID)
		}
		c.inFlight(pk.PacketID, len(pk.Payload)+len(pk.TopicName)+messageCost)
	}
	if max := cl.Properties.TopicAliasMaximum(); c.v5 && max > 0 && pk.TopicName != "" {
		alias, known := cl.State.TopicAliases.Outbound.Set(pk.TopicName)
		if alias > 0 {
			pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = alias, true
			if known {
				pk.TopicName = ""
			}
		}
	}
	pk.ProtocolVersion = cl.Properties.ProtocolVersion
	pk.Mods.AllowResponseInfo = true
	if o.buf == nil {
		o.buf = o.b.bufs.get()
	}
	mark := o.buf.Len()
	var err error
	if len(pk.Payload) > flushAt {
		err = o.encodeHead(pk)
	} else {
		err = pk.PublishEncode(o.buf)
	}
	if err == nil && c.v5 {
		if max := cl.Properties.MaximumPacketSize(); max > 0 && o.buf.Len()-mark+len(o.tail) > int(max) {
			err = errTooLarge // [MQTT-3.1.2-24]
		}
	}
	if err != nil {
		o.buf.Truncate(mark)
		o.tail = nil
		if pk.FixedHeader.Qos > 0 {
			o.b.dropInflight(cl, pk.PacketID)
			c.inflightFreed(pk.PacketID)
		}
		if errors.Is(err, errTooLarge) {
			return err
		}
		return fmt.Errorf("%w: %w", errEncode, err)
	}
	o.n++
	return nil
}

// flush writes what send encoded, under the client's lock (mochi writes
// its acks under it too), and counts it in mochi's figures.
func (o *mqttOut) flush() error {
	if o.buf == nil || o.buf.Len() == 0 {
		return o.flushRest()
	}
	cl := o.cl
	if cl.Closed() || cl.Net.Conn == nil {
		return mqtt.ErrConnectionClosed
	}
	cl.LetWritesFirst() // a PINGRESP or an ack mochi writes: before this flush, not behind the next ones
	cl.Lock()
	n, err := cl.Net.Conn.Write(o.buf.Bytes())
	if err == nil && o.tail != nil {
		var m int
		m, err = cl.Net.Conn.Write(o.tail)
		n += m
	}
	cl.Unlock()
	o.tail = nil
	o.q.wrote(n, o.n)
	info := o.b.server.Info
	atomic.AddInt64(&info.BytesSent, int64(n))
	atomic.AddInt64(&info.PacketsSent, int64(o.n))
	atomic.AddInt64(&info.MessagesSent, int64(o.n))
	o.n = 0
	o.b.bufs.put(o.buf)
	o.buf = nil
	return err
}

// waitInflight waits while the client has as many QoS messages in flight
// as it accepts (its Receive Maximum, or the broker's in-flight bound), or
// their bytes reach the connection's queue bound (what is in flight is
// held for resending: a client that never acknowledges holds no more than
// its queue's worth), woken by mochi's acknowledgement hooks; what is
// encoded goes out first, or the client could not acknowledge it.
func (o *mqttOut) waitInflight(c *conn) error {
	limit := int(o.b.opts.MaxInflight)
	if rm := int(o.cl.Properties.ReceiveMaximum()); c.v5 && rm > 0 && rm < limit {
		limit = rm
	}
	inflight := func() int { return o.cl.State.Inflight.Len() + o.ids.displacedN() }
	if n := inflight(); n < limit && (n == 0 || c.flightLoad() < c.q.max) {
		return nil // not full: the common case, without the channel
	}
	acked := c.ackedOf() // before the next look (wakeWriter)
	for n := inflight(); n >= limit || (n > 0 && c.flightLoad() >= c.q.max); n = inflight() {
		if err := o.flush(); err != nil {
			return err
		}
		select {
		case <-acked:
		case <-c.q.done.wait():
			return errWriterStop
		}
	}
	return nil
}

// takeInflight gives a QoS 1/2 publish a packet id and records it in
// flight in mochi's client state, which completes the flow when the client
// acknowledges and resends it to a resumed session. It is the one place
// packet ids are taken for deliveries.
func (b *Broker) takeInflight(ids *idSpaces, cl *mqtt.Client, pk *packets.Packet) error {
	// mochi resends held messages in the order of uint16(Created) (its
	// own second-resolution times, sorted unstably, came back shuffled):
	// packet ids are given in order, and never two alike in flight; ids
	// skips the one a client packet being processed carries.
	set, err := ids.take(cl, pk)
	if err != nil {
		return err
	}
	if set {
		atomic.AddInt64(&b.server.Info.Inflight, 1)
		cl.State.Inflight.DecreaseSendQuota()
	}
	return nil
}

// takeBack undoes takeInflight for publish id on cl, stopped before it
// was written. Still in cl's map, it was never sent; gone, mochi's moveOut
// may have moved it to the client that took the session over, which
// sends it: moved, if mochi says it did (the ids moveOut moved, mochi
// change 90). Gone but not moved, clearTakenOverInflights deleted it
// after the move (the writer set it in the emptied map): nobody has it.
// Reading "gone" as "moved" noted in the $tree mark a message the client
// never got (a mote-seq gap, TestRTX5TakenBackCleared).
func (b *Broker) takeBack(cl *mqtt.Client, id uint16) *takenBack {
	deleted, moved := cl.State.Inflight.TakeBack(id)
	if deleted {
		atomic.AddInt64(&b.server.Info.Inflight, -1)
		cl.State.Inflight.IncreaseSendQuota()
	}
	return &takenBack{id: id, moved: moved}
}

// dropInflight undoes takeInflight for a publish that was not written;
// false if it was no longer in cl's map (a takeover moved it).
func (b *Broker) dropInflight(cl *mqtt.Client, id uint16) bool {
	if !cl.State.Inflight.Delete(id) {
		return false
	}
	atomic.AddInt64(&b.server.Info.Inflight, -1)
	cl.State.Inflight.IncreaseSendQuota()
	return true
}

// holdOffline keeps a QoS 1/2 message for a persistent session that is
// away, in mochi's in-flight state, which resends it on reconnect: at most
// MaxInflight of them per session, and MaxOfflineBytes for all sessions
// (every held message is a copy of mochi's 800-byte packet: many sessions
// subscribed to much could otherwise hold gigabytes), room made by
// dropping what a user holding more holds (roomLocked). What does not fit
// is dropped and counted. The packet is made only once the session has
// room for it (a flood to sessions that hold MaxInflight makes none).
// arriving's mutex is held.
func (b *Broker) holdOffline(cl *mqtt.Client, m *plainItem) {
	if m.qos == 0 {
		return
	}
	if cl.SessionEndsWithConnection() {
		// Never resumed (MQTT 3.1.1 CleanSession 1, MQTT 5 Session
		// Expiry 0): nothing held for it is ever sent. Closed, it stays
		// filed and subscribed until mochi removes it (RemoveSession,
		// which clears its in-flight map without arriving's mutex): a
		// message held after that clear stayed in the map of a client
		// nobody holds, and in Info.Inflight for good (D2,
		// TestInflightHeldForRemovedSession). Dropped as its end drops it.
		b.drop(dropSessionEnded, 1)
		return
	}
	if cl.State.Inflight.Len() >= int(b.opts.MaxInflight) {
		b.drop(dropOfflineFull, 1)
		return
	}
	n := m.heldCost() // heldCostOf its packet, made only once it has room
	user := b.heldUserOf(cl)
	if !b.roomLocked(user, n) {
		b.drop(dropOfflineFull, 1)
		return
	}
	var out packets.Packet
	m.packet(&out)
	b.arriving.mark(cl.ID) // what cl holds in flight changes (arriving.settled)
	if b.takeInflight(nil, cl, &out) != nil {
		b.drop(dropOfflineFull, 1) // no packet id free: not held, so counted dropped
		return
	}
	b.offline.add(cl, user, n)
}

// heldCost is heldCostOf of m's packet, without making the packet: a flood
// to sessions away past MaxOfflineBytes makes none for what is dropped.
func (m *plainItem) heldCost() int64 {
	n := heldCost + len(m.msg.topic) + len(m.msg.payload) + 8*len(m.subIDs)
	if p := m.msg.props; p != nil {
		n += propsBytes(p) - 8*len(p.SubscriptionIdentifier) // the packet's are m's
	}
	return int64(n)
}

// errWriterStop ends a writer quietly: its connection or the broker closed.
var errWriterStop = errors.New("broker: writer stopped")

// takeStep is where a writer taking a QoS 1/2 publish in flight calls a
// test's Broker.takingInflight.
type takeStep int

const (
	takeAbout   takeStep = iota // the client found not stopped, the publish about to be taken in flight
	takeTaken                   // taken in flight, before it looks whether the client stopped meanwhile
	takeBackNow                 // taken, the client found stopped: about to take it back (takeBack)
)

// takenBack is errWriterStop for a publish the writer took in flight, as
// packet id, on a client that stopped meanwhile, and took back: mochi may
// have moved it to a client taking the session over; moved: it did (its
// moveOut says so, mochi change 90), and that client sends it (DUP).
type takenBack struct {
	id    uint16
	moved bool
}

func (e *takenBack) Error() string { return errWriterStop.Error() }
func (e *takenBack) Unwrap() error { return errWriterStop }

// closeSignal is a channel closed once (close), made only when somebody
// waits for it (wait): most connections end with nobody waiting, and an
// idle connection holds no channel for it (bench/README.md, "Idle
// connections"). The zero value is open.
type closeSignal struct {
	mu     sync.Mutex
	ch     chan struct{}
	closed bool
}

// wait is a channel closed once close is called.
func (s *closeSignal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
		if s.closed {
			close(s.ch)
		}
	}
	return s.ch
}

// isClosed reports whether close was called.
func (s *closeSignal) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// close closes the signal; only once.
func (s *closeSignal) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.ch != nil {
		close(s.ch)
	}
}

// encodeHead encodes pk into buf without its payload, with the remaining
// length that counts it, and leaves the payload to flush (tail): written
// from its own bytes, not copied.
func (o *mqttOut) encodeHead(pk *packets.Packet) error {
	payload := pk.Payload
	pk.Payload = nil
	mark := o.buf.Len()
	err := pk.PublishEncode(o.buf)
	pk.Payload = payload
	if err != nil {
		return err
	}
	// The head as encoded: the fixed header's first byte, the remaining
	// length (without the payload), then the topic, packet id and
	// properties: a few bytes to KiB, copied to make room for the
	// remaining length with the payload.
	head := o.buf.Bytes()[mark:]
	k := 1
	for head[k]&0x80 != 0 {
		k++
	}
	rest := bytes.Clone(head[k+1:])
	o.buf.Truncate(mark)
	pk.FixedHeader.Remaining = len(rest) + len(payload)
	pk.FixedHeader.Encode(o.buf) // the same first byte, the remaining length with the payload
	o.buf.Write(rest)
	o.tail = payload
	return nil
}
