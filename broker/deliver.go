package broker

import (
	"math/rand/v2"
	"slices"
	"strings"
	"unsafe"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/tree"
)

// message is a plain publish on its way to subscribers: what they all
// share (nobody changes it once made). Compact where mochi's Packet is
// 800 bytes: a queue of events holds many.
type message struct {
	topic   string
	payload []byte
	props   *packets.Properties // MQTT 5 properties; nil for none
	origin  string              // the publisher's client id (No Local)
	expiry  int64               // Unix seconds; 0: none
	size    int                 // bytes of its properties
	qos     byte
	retain  bool

	// first is the queue item of the first subscriber deliverTo gives it
	// to, made with the message (one allocation a message less: a fan-in's
	// messages have one subscriber each); firstUsed says it is taken.
	// Only deliverTo, which is given a message once, touches them.
	first     plainItem
	firstUsed bool
}

// messageProps is a message with MQTT 5 properties, allocated together:
// its message's props points at its own.
type messageProps struct {
	message
	props packets.Properties
}

// propsSize is roughly what MQTT 5 properties hold in memory.
func propsSize(p *packets.Properties) int {
	n := len(p.ContentType) + len(p.ResponseTopic) + len(p.CorrelationData)
	for _, u := range p.User {
		n += len(u.Key) + len(u.Val) + 32
	}
	return n
}

// bytesOf is s as bytes without a copy, for the store's own (immutable)
// strings on their way to an encoder that only reads them. Nothing may
// write to what it returns.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// deliverPlain sends a plain publish to every matching plain subscriber
// through their connections' queues, with MQTT's per-subscription rules
// (No Local, Retain As Published, subscription identifiers, QoS capped by
// the subscription) and the read check of each subscriber. pk is shared by
// every subscriber; nobody changes it. A full queue makes the caller wait
// for room until deadline (a publisher; the loop passes none and never
// waits), then the slow-client policy applies. A persistent session that
// is offline keeps QoS 1/2 messages in flight, resent when it comes back.
func (b *Broker) deliverPlain(msg *message, w pubWait) {
	sc := b.plainIdx.match(msg.topic, msg.origin)
	b.deliverTo(sc.out, msg, w)
	sc.release()
}

// deliverRow is deliverPlain of a row of a tree publish: the message is
// put on the heap only when the topic has a subscriber (a boot storm's
// rows have none: one allocation a row less).
func (b *Broker) deliverRow(msg message) {
	sc := b.plainIdx.match(msg.topic, msg.origin)
	if len(sc.out) > 0 {
		m := new(message)
		*m = msg
		b.deliverTo(sc.out, m, pubWait{})
	}
	sc.release()
}

// commonLevels is the longest run of whole levels that every row's topic
// continues below ("a/b" for a/b/c and a/b/d/e; "a" for a/b and a/b/c),
// or "" when they share none.
func commonLevels(rows []tree.Row) string {
	if len(rows) == 0 {
		return ""
	}
	p := rows[0].Topic
	for _, r := range rows[1:] {
		n := 0
		for n < len(p) && n < len(r.Topic) && p[n] == r.Topic[n] {
			n++
		}
		p = p[:n]
	}
	// Every topic has p's last '/' (it is their common prefix): the
	// levels before it are below every topic.
	if k := strings.LastIndexByte(p, '/'); k > 0 {
		return p[:k]
	}
	return ""
}

// deliverTo delivers msg to subs, the subscribers of its topic (one per
// client, its matching subscriptions merged: subIndex.match). It starts at
// a random one, so that those written directly are not always the same.
// A message is given to it once.
func (b *Broker) deliverTo(subs []subMatch, msg *message, w pubWait) {
	direct := 0         // messages written directly (at most directPerMessage)
	var held *holdBatch // messages for sessions without a connection, given under one hold of arriving's mutex
	defer func() {
		if held != nil {
			held.flush(b, w)
			b.holds.Put(held)
		}
	}()
	first := 0
	if len(subs) > 1 {
		first = rand.IntN(len(subs))
	}
	for k := range subs {
		sub := &subs[(first+k)%len(subs)]
		id := sub.client
		if msg.origin == id { // [MQTT-3.8.3-3]
			if sub.noLocal {
				continue
			}
			if sub.own != nil {
				sub = sub.own // only its subscriptions without No Local
			}
		}
		qos := min(msg.qos, sub.qos)
		c := b.connByID(id)
		var shard *arrivingShard // id's, stamped (v) only for an id without a connection
		var v uint64
		if c == nil {
			shard = b.arriving.shardOf(id)
			v = shard.stamp() // what is read for id from here to settled(v) is as give reads it
			c = b.connByID(id)
		}
		var p Principal
		var v5 bool
		var away *mqtt.Client // the session's mochi client, closed
		if c != nil {
			p, v5 = c.p, c.v5
		} else if cl, ok := b.server.Clients.Get(id); ok {
			if cl.Closed() {
				if qos == 0 && shard.settled(v) {
					// Away, and no client coming back to it: holdFor
					// would come to holdOffline, which holds no QoS 0
					// message (nor counts it). Nothing is made for it,
					// and its read check is not asked.
					continue
				}
				away = cl
			}
			p, v5 = mqttPrincipal(cl), cl.Properties.ProtocolVersion == 5
		} else {
			continue
		}
		if !b.access.canRead(p, msg.topic) && !b.readsUsersReport(p, msg.topic) {
			continue
		}
		if away != nil && qos > 0 && away.State.Inflight.Len() >= int(b.opts.MaxInflight) && shard.settled(v) {
			b.drop(dropOfflineFull, 1) // as holdOffline drops it, with nothing made for it
			continue
		}
		m := &msg.first
		if msg.firstUsed {
			m = new(plainItem)
		}
		msg.firstUsed = true
		*m = plainItem{
			msg:    msg,
			qos:    qos,
			retain: msg.retain && v5 && sub.rap, // [MQTT-3.3.1-12]
		}
		if len(sub.ids) > 0 { // [MQTT-3.3.4-3]: positive, sorted
			m.subIDs = slices.Clone(sub.ids)
		}
		if c != nil && direct < directPerMessage && c.tryDirect(m, m.qos) {
			direct++
			continue
		}
		if c != nil {
			if !b.queuePlain(id, c, m, w) {
				b.holdFor(id, p.User, m, w) // c handed its messages on meanwhile
			}
			continue
		}
		// Held for the session of the user it was checked for (another
		// user's may have replaced it meanwhile: TakeoverFresh): for its
		// client's connection if it is coming back, else in flight.
		if held == nil {
			held, _ = b.holds.Get().(*holdBatch)
			if held == nil {
				held = new(holdBatch)
			}
		}
		held.add(b, heldItem{id: id, user: p.User, m: m}, w)
	}
}

// holdBatch is what deliverTo holds for sessions that had no connection,
// given under one hold of arriving's mutex (give) per holdBatchSize
// messages: with clients arriving and leaving all the time, taking the
// mutex once per session away made a message to 2,000 of them wait 2,000
// times behind those clients' holders (bench/README.md, "Churning
// clients and away sessions"). Each session has one message of a publish,
// so holding them together orders nothing differently; a holder between
// two batches waits for at most one.
type holdBatch struct {
	n     int
	items [holdBatchSize]heldItem
}

// holdBatchSize bounds how many messages deliverTo gives under one hold
// of arriving's mutex (a few microseconds each).
const holdBatchSize = 64

// heldItem is a message for the session of id, checked for user; c is
// the connection give found for it meanwhile.
type heldItem struct {
	id, user string
	m        *plainItem
	c        *conn
}

// add adds it to h, giving h's items first if h is full.
func (h *holdBatch) add(b *Broker, it heldItem, w pubWait) {
	if h.n == len(h.items) {
		h.flush(b, w)
	}
	h.items[h.n] = it
	h.n++
}

// flush gives h's items (holdFor, with arriving's mutex taken once): those
// for which a connection was filed meanwhile are queued to it after.
func (h *holdBatch) flush(b *Broker, w pubWait) {
	if h.n == 0 {
		return
	}
	items := h.items[:h.n]
	h.n = 0
	b.arriving.lock()
	for i := range items {
		it := &items[i]
		c, ok := b.arriving.giveLocked(b, it.id, it.user, it.m)
		it.c = nil
		if ok {
			it.c = c
		}
	}
	b.arriving.unlock()
	for i := range items {
		it := &items[i]
		if it.c != nil && !b.queuePlain(it.id, it.c, it.m, w) {
			b.holdFor(it.id, it.user, it.m, w) // it.c handed its messages on meanwhile: again
		}
		*it = heldItem{}
	}
}

// queuePlain queues m for the connection c of id; false: id has none now
// (c ended and handed its messages on, after which m goes: see
// conn.handOffLocked), hold m for the session.
func (b *Broker) queuePlain(id string, c *conn, m *plainItem, w pubWait) bool {
	for c != nil {
		if max := c.out.maxPacket(); max > 0 && minPacketSize(m.msg, m.qos, c.v5) > int(max) {
			b.stats.TooLarge.Add(1) // it cannot fit the client [MQTT-3.1.2-25]: not queued at all
			return true
		}
		r := c.q.put(m, w)
		if why, full := r.full(); full {
			c.slowFull(why)
			return true
		}
		if r == pushed {
			return true
		}
		<-c.handOf().handed.wait() // pushGone: c is handing its messages on; m comes after them
		next := b.connByID(id)
		switch {
		case next == c:
			next = nil
		case next != nil && next.p.User != c.p.User:
			return true // another user's session replaced c's (TakeoverFresh): m was for c's
		}
		c = next
	}
	return false
}

// minPacketSize is the least a publish of msg encodes to: a lower bound,
// so a message above a client's Maximum Packet Size by it surely does not
// fit.
func minPacketSize(msg *message, qos byte, v5 bool) int {
	n := 2 + 2 + len(msg.topic) + len(msg.payload)
	if qos > 0 {
		n += 2
	}
	if v5 {
		n++
	}
	return n
}

// connByID is the live connection plain subscriptions are filed under id.
func (b *Broker) connByID(id string) *conn {
	c, _ := b.byID.load(id)
	return c
}
