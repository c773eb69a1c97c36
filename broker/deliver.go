package broker

import (
	"slices"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// deliverPlain sends a plain publish to every matching plain subscriber
// through their connections' queues, with MQTT's per-subscription rules
// (No Local, Retain As Published, subscription identifiers, QoS capped by
// the subscription) and the read check of each subscriber. pk is shared by
// every subscriber; nobody changes it. A full queue makes the caller wait
// for room until deadline (a publisher; the loop passes none and never
// waits), then the slow-client policy applies. A persistent session that
// is offline keeps QoS 1/2 messages in flight, resent when it comes back.
func (b *Broker) deliverPlain(pk *packets.Packet, deadline time.Time) {
	subs := b.server.Topics.Subscribers(pk.TopicName)
	if len(subs.Shared) > 0 {
		subs.SelectShared()
		subs.MergeSharedSelected()
	}
	for id, sub := range subs.Subscriptions {
		if sub.NoLocal && pk.Origin == id { // [MQTT-3.8.3-3]
			continue
		}
		c := b.connByID(id)
		var p Principal
		var v5 bool
		if c != nil {
			p, v5 = c.p, c.v5
		} else if cl, ok := b.server.Clients.Get(id); ok {
			p, v5 = mqttPrincipal(cl), cl.Properties.ProtocolVersion == 5
		} else {
			continue
		}
		if !b.access.canRead(p, pk.TopicName) {
			continue
		}
		m := &plainItem{
			pk:     pk,
			qos:    min(pk.FixedHeader.Qos, sub.Qos),
			retain: pk.FixedHeader.Retain && v5 && sub.RetainAsPublished, // [MQTT-3.3.1-12]
		}
		if len(sub.Identifiers) > 0 { // [MQTT-3.3.4-3]
			for _, i := range sub.Identifiers {
				m.subIDs = append(m.subIDs, i)
			}
			slices.Sort(m.subIDs)
		}
		if c != nil {
			if !c.q.push(m, deadline) {
				c.slow()
			}
			continue
		}
		if cl, ok := b.server.Clients.Get(id); ok && m.qos > 0 {
			b.holdOffline(cl, m.packet())
		}
	}
}

// connByID is the live connection plain subscriptions are filed under id.
func (b *Broker) connByID(id string) *conn {
	if v, ok := b.byID.Load(id); ok {
		return v.(*conn)
	}
	return nil
}
