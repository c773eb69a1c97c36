package broker

import (
	"bytes"
	"errors"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// conn is the broker's side of one subscriber: an MQTT connection, or a
// session of the door. It has a queue and a writer goroutine that takes
// messages from it and writes them to the endpoint, and it owns nothing
// else: tree subscription state is the loop's (treeSub), plain
// subscriptions are in mochi's topic index under id.
type conn struct {
	b   *Broker
	p   Principal
	key string // owner of this connection's tree subscriptions: unique per connection
	id  string // the id its plain subscriptions are filed under in mochi's index
	v5  bool   // MQTT 5 properties (mote-seq, Content Type, …) go out
	q   *outQueue
	out endpoint

	acked   chan struct{} // one slot: an in-flight slot was freed
	dropped atomic.Int64

	// Touched only by an MQTT connection's read goroutine, where mochi runs
	// the hooks of one packet in order and sends the will.
	will         *will  // armed at CONNECT; handed to wills when due
	pendingTopic string // the topic of the publish OnPacketRead took aside
	pendingErr   error
}

// endpoint is where a conn's writer writes: an MQTT client, or a door
// session's callback.
type endpoint interface {
	// send writes one publish, or buffers it until flush. At QoS 1 and 2
	// an MQTT endpoint first takes a packet id and an in-flight slot,
	// waiting (on c.acked) while the client has as many in flight as it
	// accepts. errTooLarge: the packet exceeds what the client accepts,
	// and nothing of it was written.
	send(c *conn, pk packets.Packet) error
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
		b:     b,
		p:     p,
		key:   p.ClientID + "#" + strconv.FormatUint(b.serial.Add(1), 10),
		id:    id,
		v5:    v5,
		q:     newOutQueue(b.opts.QueueBytes),
		out:   out,
		acked: make(chan struct{}, 1),
	}
	if c.id == "" {
		c.id = c.key
	}
	b.writers.Add(1)
	go c.writeLoop()
	return c
}

// enqueue queues a message the broker itself sends (the loop, a replay):
// it never waits; a full queue applies the slow-client policy.
func (c *conn) enqueue(m item) {
	if !c.q.push(m, pubWait{}) {
		c.slow()
	}
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
	c.q.mu.Unlock()
	c.q.signal()
}

// slow applies the slow-client policy to a message that did not fit.
func (c *conn) slow() {
	n := c.dropped.Add(1)
	c.b.stats.Dropped.Add(1)
	if c.b.opts.SlowClient == SlowDisconnect {
		if c.q.close() {
			c.b.log.Warn().Str("client", c.p.ClientID).Msg("queue full; disconnecting slow client")
			c.out.stop(packets.ErrServerBusy)
		}
		return
	}
	if n == 1 || n%1000 == 0 {
		c.b.log.Warn().Str("client", c.p.ClientID).Int64("dropped", n).
			Msg("queue full; dropping messages for slow client")
	}
}

// close ends deliveries to c: its queue drops what it holds, its writer
// and any publisher waiting for room stop.
func (c *conn) close() { c.q.close() }

// inflightFreed wakes a writer waiting for an in-flight slot.
func (c *conn) inflightFreed() {
	select {
	case c.acked <- struct{}{}:
	default:
	}
}

// mqttOut is an MQTT client of mochi as an endpoint. Its writer encodes
// publishes into buf and writes them at once when it has taken all it can
// (flush): one write, one syscall, for a batch of messages. Only the
// writer touches buf.
type mqttOut struct {
	b   *Broker
	cl  *mqtt.Client
	buf bytes.Buffer
	n   int // packets in buf
}

// flushAt is the size past which the buffer is written at once.
const flushAt = 64 << 10

func (o *mqttOut) maxPacket() uint32 {
	if o.cl.Properties.ProtocolVersion == 5 {
		return o.cl.Properties.Props.MaximumPacketSize
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

// send encodes one publish with MQTT's semantics: a packet id and an
// in-flight entry in mochi's client state, so mochi completes QoS 1 and 2
// flows and resends them to a resumed session; an outgoing topic alias
// when the client allows them; the client's Maximum Packet Size.
func (o *mqttOut) send(c *conn, pk packets.Packet) error {
	cl := o.cl
	if pk.Expiry > 0 { // the time it has left [MQTT-3.3.2-6]; none: it is not sent [MQTT-3.3.2-5]
		left := pk.Expiry - time.Now().Unix()
		if left < 1 {
			return nil
		}
		pk.Properties.MessageExpiryInterval = uint32(left)
	}
	if pk.FixedHeader.Qos > 0 {
		if err := o.waitInflight(c); err != nil {
			return err
		}
		if err := o.b.takeInflight(cl, &pk); err != nil {
			c.slow() // every packet id in flight: the client does not acknowledge
			return nil
		}
	}
	if max := cl.Properties.Props.TopicAliasMaximum; c.v5 && max > 0 && pk.TopicName != "" {
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
	mark := o.buf.Len()
	err := pk.PublishEncode(&o.buf)
	if err == nil && c.v5 {
		if max := cl.Properties.Props.MaximumPacketSize; max > 0 && o.buf.Len()-mark > int(max) {
			err = errTooLarge // [MQTT-3.1.2-24]
		}
	}
	if err != nil {
		o.buf.Truncate(mark)
		if pk.FixedHeader.Qos > 0 {
			o.b.dropInflight(cl, pk.PacketID)
		}
		return err
	}
	o.n++
	if o.buf.Len() >= flushAt {
		return o.flush()
	}
	return nil
}

// flush writes what send encoded, under the client's lock (mochi writes
// its acks under it too), and counts it in mochi's figures.
func (o *mqttOut) flush() error {
	if o.buf.Len() == 0 {
		return nil
	}
	cl := o.cl
	if cl.Closed() || cl.Net.Conn == nil {
		return mqtt.ErrConnectionClosed
	}
	cl.Lock()
	n, err := cl.Net.Conn.Write(o.buf.Bytes())
	cl.Unlock()
	info := o.b.server.Info
	atomic.AddInt64(&info.BytesSent, int64(n))
	atomic.AddInt64(&info.PacketsSent, int64(o.n))
	atomic.AddInt64(&info.MessagesSent, int64(o.n))
	o.n = 0
	if o.buf.Cap() > 4*flushAt {
		o.buf = bytes.Buffer{} // a snapshot went through: do not keep its size
	} else {
		o.buf.Reset()
	}
	return err
}

// waitInflight waits while the client has as many QoS messages in flight
// as it accepts (its Receive Maximum, or the broker's in-flight bound),
// woken by mochi's acknowledgement hooks; what is encoded goes out first,
// or the client could not acknowledge it.
func (o *mqttOut) waitInflight(c *conn) error {
	limit := int(o.b.opts.MaxInflight)
	if rm := int(o.cl.Properties.Props.ReceiveMaximum); c.v5 && rm > 0 && rm < limit {
		limit = rm
	}
	for o.cl.State.Inflight.Len() >= limit {
		if err := o.flush(); err != nil {
			return err
		}
		select {
		case <-c.acked:
		case <-c.q.done:
			return errWriterStop
		}
	}
	return nil
}

// takeInflight gives a QoS 1/2 publish a packet id and records it in
// flight in mochi's client state, which completes the flow when the client
// acknowledges and resends it to a resumed session. It is the one place
// packet ids are taken for deliveries.
func (b *Broker) takeInflight(cl *mqtt.Client, pk *packets.Packet) error {
	id, err := cl.NextPacketID()
	if err != nil {
		return err
	}
	pk.PacketID = uint16(id)
	if pk.Created == 0 {
		pk.Created = time.Now().Unix()
	}
	if cl.State.Inflight.Set(*pk) {
		atomic.AddInt64(&b.server.Info.Inflight, 1)
		cl.State.Inflight.DecreaseSendQuota()
	}
	return nil
}

// dropInflight undoes takeInflight for a publish that was not written.
func (b *Broker) dropInflight(cl *mqtt.Client, id uint16) {
	if cl.State.Inflight.Delete(id) {
		atomic.AddInt64(&b.server.Info.Inflight, -1)
		cl.State.Inflight.IncreaseSendQuota()
	}
}

// holdOffline keeps a QoS 1/2 message for a persistent session that is
// away, in mochi's in-flight state, which resends it on reconnect.
func (b *Broker) holdOffline(cl *mqtt.Client, out packets.Packet) {
	if out.FixedHeader.Qos == 0 || cl.State.Inflight.Len() >= int(b.opts.MaxInflight) {
		return
	}
	b.takeInflight(cl, &out) //nolint:errcheck // no packet id left: nothing held, as for a full in-flight window
}

// errWriterStop ends a writer quietly: its connection or the broker closed.
var errWriterStop = errors.New("broker: writer stopped")
