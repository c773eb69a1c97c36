package broker

import (
	"slices"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/mote-mqtt/mote/broker/auth"
)

// deliverPlain sends a plain publish to every matching plain subscriber
// through their connections' writers, with MQTT's per-subscription rules
// (No Local, Retain As Published, subscription identifiers, QoS capped by
// the subscription). It replaces mochi's delivery, which drops messages
// that do not fit a client's queue: here a publisher (wait) waits for room
// in a subscriber's queue, up to Options.PlainWait, before the slow-client
// policy applies; the message loop (no wait) never waits. A persistent
// session that is offline keeps QoS 1/2 messages in flight, resent when it
// comes back, as mochi does.
func (b *Broker) deliverPlain(pk packets.Packet, wait bool) {
	subs := b.server.Topics.Subscribers(pk.TopicName)
	if len(subs.Shared) > 0 {
		subs.SelectShared()
		subs.MergeSharedSelected()
	}
	shared := &pk // one copy of the packet for every subscriber; each adds only its flags
	for id, sub := range subs.Subscriptions {
		if sub.NoLocal && pk.Origin == id { // [MQTT-3.8.3-3]
			continue
		}
		cl, ok := b.server.Clients.Get(id)
		if !ok {
			continue
		}
		if b.opts.ACL != nil && !b.opts.ACL.CanRead(auth.Client{User: string(cl.Properties.Username), ID: cl.ID}, pk.TopicName) {
			continue
		}
		m := outMsg{
			pk:     shared,
			qos:    min(pk.FixedHeader.Qos, sub.Qos, b.server.Options.Capabilities.MaximumQos),
			retain: pk.FixedHeader.Retain && cl.Properties.ProtocolVersion == 5 && sub.RetainAsPublished, // [MQTT-3.3.1-12]
		}
		if len(sub.Identifiers) > 0 { // [MQTT-3.3.4-3]
			for _, i := range sub.Identifiers {
				m.subIDs = append(m.subIDs, i)
			}
			slices.Sort(m.subIDs)
		}
		if v, ok := b.conns.Load(cl); ok {
			v.(*conn).enqueuePlain(m, wait)
			continue
		}
		out := m.packet()
		b.holdOffline(cl, &out)
	}
}

// packet is the publish of a plain outMsg for its subscriber.
func (m *outMsg) packet() packets.Packet {
	out := *m.pk
	out.FixedHeader.Qos, out.FixedHeader.Retain = m.qos, m.retain
	out.Properties.SubscriptionIdentifier = m.subIDs
	out.Properties.TopicAlias, out.Properties.TopicAliasFlag = 0, false
	out.PacketID = 0
	return out
}

// holdOffline keeps a QoS 1/2 message for a persistent session that is
// away, in mochi's in-flight state, which resends it on reconnect.
func (b *Broker) holdOffline(cl *mqtt.Client, out *packets.Packet) {
	if out.FixedHeader.Qos == 0 || cl.State.Inflight.Len() >= int(b.server.Options.Capabilities.MaximumInflight) {
		return
	}
	id, err := cl.NextPacketID()
	if err != nil {
		return
	}
	out.PacketID = uint16(id)
	out.Created = time.Now().Unix()
	if cl.State.Inflight.Set(*out) {
		atomic.AddInt64(&b.server.Info.Inflight, 1)
	}
}

// enqueuePlain queues a plain message. With wait, a full queue makes the
// caller (a publisher's connection goroutine) wait for room, up to
// Options.PlainWait; then, or at once without wait, the slow-client policy
// applies.
func (c *conn) enqueuePlain(m outMsg, wait bool) {
	limit := c.b.opts.PlainQueue
	c.mu.Lock()
	if wait && len(c.out) >= limit && !c.closed {
		deadline := time.Now().Add(c.b.opts.PlainWait)
		timer := time.AfterFunc(c.b.opts.PlainWait, func() {
			c.mu.Lock()
			c.space.Broadcast()
			c.mu.Unlock()
		})
		for len(c.out) >= limit && !c.closed && time.Now().Before(deadline) {
			c.space.Wait()
		}
		timer.Stop()
	}
	c.pushLocked(m, limit, nil)
}
