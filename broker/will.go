package broker

import (
	"context"
	"slices"
	"sync"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// will is a client's will: a publish of that client, made through the door
// with the client's own rights when the will is due.
type will struct {
	p     Principal
	m     Message
	cl    *mqtt.Client // the connection that set it
	timer *time.Timer  // while it waits out its Will Delay Interval
	// ended (wills.mu): a CONNECT ended its session while the will was
	// still its CONNECT's (connWills: the CONNACK not yet written or
	// failing): it is published when due (wills.end).
	ended bool
}

// willOf is the will of a CONNECT packet, nil if it has none.
func willOf(p Principal, pk *packets.Packet) *will {
	if !pk.Connect.WillFlag {
		return nil
	}
	m := Message{Topic: pk.Connect.WillTopic, Payload: pk.Connect.WillPayload, QoS: pk.Connect.WillQos, Retain: pk.Connect.WillRetain}
	wp := pk.Connect.WillProperties
	m.Properties = packets.Properties{
		ContentType:           wp.ContentType,
		MessageExpiryInterval: wp.MessageExpiryInterval, // sent as the will's Publication Expiry Interval (§3.1.3.2.4)
		PayloadFormat:         wp.PayloadFormat,
		PayloadFormatFlag:     wp.PayloadFormatFlag,
		ResponseTopic:         wp.ResponseTopic,
		CorrelationData:       wp.CorrelationData,
		User:                  wp.User,
	}
	return &will{p: p, m: m}
}

// wills holds the wills waiting out their delay. mochi's own will
// handling is bypassed (hook OnWill): it publishes a will before it looks
// at the Will Delay Interval, with no ACL check and past Mote's prefixes.
type wills struct {
	b       *Broker
	mu      sync.Mutex
	delayed map[string][]*will // by client id: one per connection that left one (a CONNECT whose CONNACK failed leaves its own beside its predecessor's)
	closed  bool
	// ending: *mqtt.Client → []*will, the delayed wills of the session
	// that client's CONNECT ended (end), published once the id's takeover
	// lock is let go (publishEnded): a publish may wait for a slow
	// subscriber.
	ending sync.Map
}

// due handles the will of a connection that ended without a normal
// DISCONNECT: published at once, or after its delay — the Will Delay
// Interval or the session's expiry, whichever is first [MQTT-3.1.3-9] —
// unless the client connects again to the session first. A session that
// a clean start (or another user) took over meanwhile has ended
// (ended): its will is published now.
func (ws *wills) due(w *will, cl *mqtt.Client, ended func() bool) {
	w.cl = cl
	delay := time.Duration(cl.Properties.Will.WillDelayInterval) * time.Second
	if cl.Properties.ProtocolVersion == 5 {
		delay = min(delay, time.Duration(cl.Properties.Props.SessionExpiryInterval)*time.Second)
	} else {
		delay = 0
	}
	if delay <= 0 {
		ws.publish(w)
		return
	}
	ws.mu.Lock()
	// ended is asked under ws.mu: a takeover marks the session ended
	// (conn.expect) before it publishes the id's delayed wills (end), so
	// the will is either published by end or here.
	if ended() || w.ended {
		ws.mu.Unlock()
		ws.publish(w)
		return
	}
	defer ws.mu.Unlock()
	if ws.closed || ws.reconnected(w) {
		return
	}
	w.timer = time.AfterFunc(delay, func() { ws.fire(w) })
	ws.delayed[cl.ID] = append(ws.delayed[cl.ID], w)
}

// reconnected reports whether the will's client id is connected again on
// another connection.
func (ws *wills) reconnected(w *will) bool {
	c := ws.b.connByID(w.cl.ID)
	return c != nil && c.out.(*mqttOut).cl != w.cl
}

// fire publishes a delayed will whose time has come.
func (ws *wills) fire(w *will) {
	ws.mu.Lock()
	if ws.closed || !ws.takeLocked(w) {
		ws.mu.Unlock()
		return
	}
	skip := ws.reconnected(w)
	ws.mu.Unlock()
	if !skip {
		ws.publish(w)
	}
}

// takeLocked removes w from the delayed wills, reporting whether it was
// there. ws.mu is held.
func (ws *wills) takeLocked(w *will) bool {
	id := w.cl.ID
	for i, d := range ws.delayed[id] {
		if d == w {
			if rest := slices.Delete(ws.delayed[id], i, i+1); len(rest) > 0 {
				ws.delayed[id] = rest
			} else {
				delete(ws.delayed, id)
			}
			return true
		}
	}
	return false
}

// publish makes the will's publish, as its client, through the door.
func (ws *wills) publish(w *will) {
	if err := ws.b.publish(context.Background(), w.p, w.m, waitNone); err != nil {
		ws.b.log.Debug().Err(err).Str("client", w.p.ClientID).Msg("will refused")
	}
}

// takeAll stops and removes the delayed wills of a client id.
func (ws *wills) takeAll(id string) []*will {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.takeAllLocked(id)
}

// takeAllLocked is takeAll, ws.mu held.
func (ws *wills) takeAllLocked(id string) []*will {
	d := ws.delayed[id]
	for _, w := range d {
		w.timer.Stop()
	}
	delete(ws.delayed, id)
	return d
}

// end takes the delayed wills of cl's client id, whose session cl's
// CONNECT ended (Clean Start 1, or another user's): a will's delay runs
// until the Will Delay Interval passes or the session ends, whichever is
// first [MQTT-3.1.3-9]. Called under the id's takeover lock, before the
// CONNACK; publishEnded publishes them after it, whether the CONNACK was
// written or not (the new session's failing does not bring the old one
// back).
//
// existing, the client filed under the id (nil for none), may still hold
// its will as its CONNECT's (connWills: its CONNACK not written, or
// failing): that will is marked ended, and published when its
// connection's end makes it due (due) — it was not among the delayed
// wills to take, and waiting out its delay it was cancelled by cl's
// CONNACK. Marked under ws.mu, as due reads it: one or the other.
func (ws *wills) end(cl, existing *mqtt.Client) {
	ws.mu.Lock()
	d := ws.takeAllLocked(cl.ID)
	if existing != nil {
		if w, ok := ws.b.connWills.Load(existing); ok {
			w.(*will).ended = true
		}
	}
	ws.mu.Unlock()
	if len(d) > 0 {
		ws.ending.Store(cl, d)
	}
}

// publishEnded publishes the wills end took for cl.
func (ws *wills) publishEnded(cl *mqtt.Client) {
	if d, ok := ws.ending.LoadAndDelete(cl); ok {
		for _, w := range d.([]*will) {
			ws.publish(w)
		}
	}
}

// cancel drops the delayed wills of a client id that user connected
// again to (its CONNACK written) [MQTT-3.1.3-9]. Another user's
// connection (TakeoverFresh) is not one to the will's session, which it
// ended: the will is published now. Dropping it let another user silence
// it.
func (ws *wills) cancel(id, user string) {
	for _, w := range ws.takeAll(id) {
		if w.p.User != user {
			ws.publish(w)
		}
	}
}

// close stops every delayed will: the broker is stopping.
func (ws *wills) close() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.closed = true
	for id, d := range ws.delayed {
		for _, w := range d {
			w.timer.Stop()
		}
		delete(ws.delayed, id)
	}
}
