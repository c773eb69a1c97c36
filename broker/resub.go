package broker

import (
	"cmp"
	"slices"
	"strings"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/wire"
)

// replacedSub is a subscription that a filter of a SUBSCRIBE would
// replace [MQTT-3.8.4-3], as mochi held it before that SUBSCRIBE
// (OnSubscribe); at is the filter's index in the packet.
type replacedSub struct {
	at  int
	sub packets.Subscription
}

// replacedAt is the subscription the SUBSCRIBE's filter at index i would
// replace, if the client held one (c.replaced, set by OnSubscribe).
func (c *conn) replacedAt(i int) (packets.Subscription, bool) {
	j, ok := slices.BinarySearchFunc(c.replaced, i, func(r replacedSub, i int) int { return cmp.Compare(r.at, i) })
	if !ok {
		return packets.Subscription{}, false
	}
	return c.replaced[j].sub, true
}

// refuseGranted refuses, of the filters mochi granted (codes below 0x80),
// those the broker refuses once they are filed (OnSubscribed, before the
// broker's index mirrors mochi's), and takes back what OnSubscribe
// counted of the filters mochi refused itself (the ACL, No Local on a
// shared filter).
//
// The broker refuses a snapshot ($sync) or retained rows (a plain filter
// not shared, Retain Handling not 2) to a client whose queue is full: it
// does not read, and would hold them all. A shared subscription gets no
// retained rows (MQTT 5 §4.8.2; OnSubscribed queues no replay): it is not
// refused.
func (b *Broker) refuseGranted(c *conn, cl *mqtt.Client, filters []packets.Subscription, codes []byte) {
	for i := range filters {
		if i >= len(codes) {
			break
		}
		f := &filters[i]
		if codes[i] >= 0x80 {
			if _, existed := c.replacedAt(i); f.Filter != "" && !existed {
				c.levels -= strings.Count(f.Filter, "/") + 1 // counted by OnSubscribe, never filed
			}
			continue
		}
		sf, ok := parseInternal(f.Filter)
		if !ok {
			continue
		}
		retained := sf.Mode == wire.Plain && f.RetainHandling != 2 && !mqtt.IsSharedFilter(f.Filter)
		if (sf.Mode == wire.Sync || retained) && c.q.full() {
			// A client that asks for snapshots or retained rows while it
			// holds a full queue (it does not read) gets no more of them.
			b.refuse(c.p, "subscribe", f.Filter, errQuotaf("the client's queue is full"))
			b.refuseFiled(c, cl, filters, codes, i, packets.ErrQuotaExceeded)
		}
	}
}

// refuseFiled refuses the filter at index i of a SUBSCRIBE, which mochi
// granted and filed, with code (0x80 for MQTT 3.1.1): as when mochi
// refuses a filter, the SUBSCRIBE changes nothing of it. The subscription
// it replaced, if any, is filed again whole, in mochi's session and index
// and in the broker's index; a tree subscription replaced is still the
// loop's (no subscribeTree is asked); else the filter is unfiled. The
// replaced one is what the client held before the SUBSCRIBE (OnSubscribe:
// c.replaced) or what an earlier filter of it that stays granted filed; a
// later one granted replaces it, and refuseFiled leaves it to that one.
// It runs in OnSubscribed, under the client's subscription lock, before
// any other goroutine may read mochi's state of the client.
func (b *Broker) refuseFiled(c *conn, cl *mqtt.Client, filters []packets.Subscription, codes []byte, i int, code packets.Code) {
	codes[i] = code.Code
	if !c.v5 {
		codes[i] = packets.ErrUnspecifiedError.Code
	}
	f := filters[i].Filter
	for k := i + 1; k < len(filters) && k < len(codes); k++ {
		if filters[k].Filter == f && codes[k] < 0x80 {
			return // mochi filed k after i: k's outcome decides
		}
	}
	prior, ok := c.replacedAt(i)
	for j := i - 1; j >= 0; j-- {
		if filters[j].Filter == f && codes[j] < 0x80 {
			prior, ok = filters[j], true
			break
		}
	}
	if !ok {
		b.unfile(cl, f)
		return
	}
	cl.State.Subscriptions.Add(f, prior)
	b.server.Topics.Subscribe(cl.ID, prior) // a replacement: the count stays
	if !isTreeFilter(f) {
		b.plainIdx.subscribe(cl.ID, prior)
	}
}
