package broker

import (
	"errors"
	"sync/atomic"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// Direct writes. A QoS 0 message for a connection whose writer is idle and
// whose queue is empty is written at once by the goroutine that delivers
// it (a publisher's read goroutine for a plain event, the loop for a tree
// delta) instead of being queued for the writer: no channel send, no
// goroutine woken, no thread woken to run it (issue 15: that hand-off was
// the one the profile showed on the path, bench/README.md). The write is
// one non-blocking write(2): whatever the socket does not take at once is
// left to the writer, which takes the write role over and writes it with
// its deadline, so the deliverer never waits on a client, as the queue's
// rules say (a publisher waits at most PublishWait, the loop never).
//
// Ordering: one goroutine at a time holds a connection's write role
// (outQueue.role): the writer from the take that finds items until the
// take that finds none, or a deliverer from claim to unclaim. A deliverer
// claims it only while the queue is empty, not held (a SUBACK or a
// predecessor's leftovers go first) and not closed, so a message written
// directly comes after everything queued before it, and whatever is queued
// while it writes waits for it.

// writeRole says who writes to a connection's client now.
type writeRole uint8

const (
	roleNone   writeRole = iota // nobody: the writer is idle
	roleWriter                  // the writer goroutine
	roleDirect                  // a deliverer writing one message directly
)

// directMax is the largest message written directly: a larger one goes
// through the writer (its encode buffer is sized for flushAt).
const directMax = flushAt

// claimLocked gives the write role to a deliverer if the writer is idle,
// the queue empty, not held and not closed (mu held).
func (q *outQueue) claimLocked() bool {
	if q.role != roleNone || q.closed || q.held > 0 || q.head != len(q.items) {
		return false
	}
	q.role = roleDirect
	return true
}

// unclaim gives the write role back after a direct write. left: bytes the
// socket did not take wait in the endpoint's buffer; the writer takes the
// role over to write them (takeOver). The writer is woken if it has
// anything to do.
func (q *outQueue) unclaim(left bool) {
	q.mu.Lock()
	q.role = roleNone
	wake := left || q.head != len(q.items)
	if left {
		q.role, q.pending = roleWriter, true
	}
	if !wake {
		q.mu.Unlock()
		return
	}
	q.unlockAndWake()
}

// takeOver reports whether a direct write left bytes for the writer to
// write before anything it takes (it holds the write role then).
func (q *outQueue) takeOver() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	p := q.pending
	q.pending = false
	return p
}

// tryDirect writes m, a QoS 0 plain message or delta, straight to c's
// client if the write role is free (see above); false: queue it. The write
// never waits: what the socket does not take at once is the writer's to
// write. Only MQTT clients on plain TCP are written this way (TLS and
// WebSocket write through their own layers, which may block; a door
// session's callback runs on its writer).
func (c *conn) tryDirect(m item, qos byte) bool {
	if qos != 0 || m.cost() > directMax {
		return false
	}
	o, ok := c.out.(*mqttOut)
	if !ok {
		return false
	}
	if nc, ok := o.cl.Net.Conn.(*netConn); !ok || nc.raw == nil {
		return false
	}
	c.q.mu.Lock()
	if !c.q.claimLocked() {
		c.q.mu.Unlock()
		return false
	}
	c.q.mu.Unlock()
	var err error
	var delta *deltaItem
	switch m := m.(type) {
	case *plainItem:
		if !o.sendPlain0(c, m) {
			var pk packets.Packet
			m.packet(&pk)
			err = c.send(&pk, outPlain)
		}
	case *deltaItem:
		m.rev = m.sub.moteRev(m.rev)
		if o.sendTree0(c, &m.treeItem, outDelta) {
			delta = m
			break
		}
		pk := c.treePacket(&m.treeItem)
		var sent bool
		if sent, err = c.sendOut(&pk, outDelta); sent {
			delta = m
		}
	default:
		err = errors.New("broker: no direct write for this item")
	}
	rest := false
	if err == nil {
		rest, err = o.tryFlush()
	}
	if err == nil && delta != nil {
		delta.sub.wrote(delta.seq, delta.rev) // written, or its rest kept for the writer to write first
	}
	if err != nil {
		o.drop()
	}
	left := o.buf != nil || rest
	c.b.stats.Direct.Add(1)
	if left {
		c.b.stats.DirectRest.Add(1)
	}
	c.q.unclaim(left)
	if err != nil {
		c.fail(err)
	}
	return true
}

// tryFlush writes what send encoded without waiting: as much as the
// socket takes at once; the connection keeps the rest to write before
// anything else (netConn.writeRest). All of it stays in buf, for flush,
// when mochi or the writer is writing. rest: the connection kept some.
func (o *mqttOut) tryFlush() (rest bool, err error) {
	if o.buf == nil || o.buf.Len() == 0 || o.tail != nil { // a large payload apart (tail): the writer's flush writes it
		return false, nil
	}
	cl := o.cl
	if cl.Closed() {
		return false, mqtt.ErrConnectionClosed
	}
	nc, ok := cl.Net.Conn.(*netConn)
	if !ok || !cl.TryLock() { // mochi is writing (an ack): leave it all to the writer
		return false, nil
	}
	n, took, err := nc.tryWrite(o.buf.Bytes())
	cl.Unlock()
	if n > 0 {
		msgs := 0
		if took {
			msgs = o.n // its messages are the connection's now (a rest is written next)
		}
		o.q.wrote(n, msgs)
		atomic.AddInt64(&o.b.server.Info.BytesSent, int64(n))
	}
	if err != nil {
		return false, err
	}
	rest = took && n < o.buf.Len()
	if took { // written, or the rest kept by nc for the next write (flushRest)
		o.buf.Reset()
		info := o.b.server.Info
		atomic.AddInt64(&info.PacketsSent, int64(o.n))
		atomic.AddInt64(&info.MessagesSent, int64(o.n))
		o.n = 0
		o.b.bufs.put(o.buf)
		o.buf = nil
	}
	return rest, nil
}

// drop lets go of what send encoded and was not written (the write
// failed: the connection ends).
func (o *mqttOut) drop() {
	if o.buf != nil {
		o.b.bufs.put(o.buf)
		o.buf, o.n = nil, 0
	}
	o.tail = nil
}

// directPerMessage bounds the subscribers one plain message is written to
// directly, and directPerBatch the deltas of one loop batch: one
// goroutine's syscalls, one after the other, for a message with many
// subscribers would make it late for the last ones and slow the
// deliverer (the loop above all); the rest go through their writers,
// which write in parallel, batched.
const (
	directPerMessage = 4
	directPerBatch   = 4
)

// takeDirect reports whether one more delta of batch may be written
// directly (loop only).
func (r *batchRows) takeDirect() bool {
	if r.direct >= directPerBatch {
		return false
	}
	r.direct++
	return true
}

// flushRest writes what a direct write left (the writer's, on takeOver),
// with the client's lock so no ack mochi writes cuts it.
func (o *mqttOut) flushRest() error {
	cl := o.cl
	nc, ok := cl.Net.Conn.(*netConn)
	if !ok || !nc.hasRest() {
		return nil
	}
	if cl.Closed() {
		return mqtt.ErrConnectionClosed
	}
	cl.Lock()
	n, err := nc.writeRest()
	cl.Unlock()
	o.q.wrote(n, 0) // its messages were counted with their first bytes (tryFlush)
	atomic.AddInt64(&o.b.server.Info.BytesSent, int64(n))
	return err
}

// sendPlain0 encodes m, a QoS 0 plain message written directly
// (tryDirect) or by the writer (conn.write), straight into the encode
// buffer, the fixed header, topic and payload written as they are, if it
// needs nothing of send's: no MQTT 5 properties (its own or a
// subscription identifier), no expiry, no outgoing topic alias (an MQTT
// 3.1.1 client, or one of MQTT 5 that allows none), under the client's
// Maximum Packet Size and fitting the buffer. It reports whether it did
// (counted as send and sendOut count it); false: send encodes it,
// through a packets.Packet, as before. The bytes are PublishEncode's
// (TestSendPlain0Bytes). A plain QoS 0 message's one delivery path
// stays the same (tryDirect, then the queue); this only skips building
// the 816-byte Packet and mochi's general encoder for it (issue 15: the
// code a message runs, bench/README.md, branch h-fast).
func (o *mqttOut) sendPlain0(c *conn, m *plainItem) bool {
	msg := m.msg
	if msg.props != nil || len(m.subIDs) > 0 || msg.expiry > 0 || len(msg.topic) == 0 || len(msg.topic) > 0xffff ||
		len(msg.payload) > flushAt { // send leaves a large payload apart (encodeHead)
		return false
	}
	cl := o.cl
	v5 := cl.Properties.ProtocolVersion == 5
	rem := 2 + len(msg.topic) + len(msg.payload)
	if v5 {
		if cl.Properties.TopicAliasMaximum() > 0 {
			return false // send sets or uses an alias
		}
		rem++ // a property length of 0
	}
	n := 1 + varIntLen(rem) + rem
	if v5 {
		if max := cl.Properties.MaximumPacketSize(); max > 0 && n > int(max) {
			return false // send skips and counts it [MQTT-3.1.2-24]
		}
	}
	return o.put0(c, n, rem, msg.topic, msg.payload, m.retain, v5, outPlain)
}

// put0 writes a QoS 0 PUBLISH of n bytes (Remaining Length rem) into the
// encode buffer, counted as k, unless the buffer holds others and this
// one would take it past flushAt (false: send flushes first).
// sendPlain0's and sendTree0's end.
func (o *mqttOut) put0(c *conn, n, rem int, topic string, payload []byte, retain, v5 bool, k outKind) bool {
	if o.buf == nil {
		o.buf = o.b.bufs.get()
	} else if o.buf.Len() > 0 && o.buf.Len()+len(o.tail)+n > flushAt {
		return false // send flushes first
	}
	o.buf.Write(appendPlain0(o.buf.AvailableBuffer(), rem, topic, payload, retain, v5))
	o.n++
	c.b.meter.out[k].Add(1)
	return true
}

// sendTree0 is sendPlain0 for a tree message m at QoS 0 to an MQTT 3.1.1
// (or 3.1) client, counted as k: such a client's tree message has no
// properties (treePacket gives them to MQTT 5 only) and no retain flag
// (SPEC §2), so its PUBLISH is a plain QoS 0 one, encoded straight into
// the out buffer without the 816-byte Packet and mochi's encoder. It
// reports false, having done nothing, for anything else (send's way).
func (o *mqttOut) sendTree0(c *conn, m *treeItem, k outKind) bool {
	if c.v5 || o.cl.Properties.ProtocolVersion == 5 || m.qos != 0 || len(m.topic) == 0 || len(m.topic) > 0xffff ||
		len(m.payload) > flushAt { // send leaves a large payload apart (encodeHead)
		return false
	}
	rem := 2 + len(m.topic) + len(m.payload)
	return o.put0(c, 1+varIntLen(rem)+rem, rem, m.topic, m.payload, false, false, k)
}

// appendPlain0 appends to b a QoS 0 PUBLISH of topic and payload whose
// Remaining Length is rem, with an empty property list if v5.
func appendPlain0(b []byte, rem int, topic string, payload []byte, retain, v5 bool) []byte {
	first := byte(packets.Publish << 4)
	if retain {
		first |= 1
	}
	b = append(b, first)
	for x := rem; ; x >>= 7 { // the Remaining Length, a Variable Byte Integer
		if x < 0x80 {
			b = append(b, byte(x))
			break
		}
		b = append(b, byte(x&0x7f)|0x80)
	}
	b = append(b, byte(len(topic)>>8), byte(len(topic)))
	b = append(b, topic...)
	if v5 {
		b = append(b, 0)
	}
	return append(b, payload...)
}

// varIntLen is the bytes of x as an MQTT Variable Byte Integer.
func varIntLen(x int) int {
	n := 1
	for ; x >= 0x80; x >>= 7 {
		n++
	}
	return n
}
