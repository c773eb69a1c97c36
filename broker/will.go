package broker

import (
	"context"
	"sync"
	"sync/atomic"
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
	// seq orders the wills of a client id by their CONNECT's session
	// establishment (OnSessionEstablish, under the id's takeover lock):
	// of two wills of one session, the higher is the newer connection's.
	seq uint64
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
//
// A client id has at most one will waiting: the will of its session
// [MQTT-3.1.3-9]. Every way a session ends takes its waiting will and
// publishes it (end, cancel for another user, the delay capped by the
// session's expiry, close), so a second will of an id can only come from
// a newer connection to the same session: one whose CONNACK was not
// written (it failed, or the client reset the connection first), which
// cancelled nothing (cancel). That connection was made to the session
// before the older will's delay passed, so the older will is not sent
// [MQTT-3.1.3-9] (Mosquitto drops it too, when the CONNECT takes the
// session): the newer connection's replaces it (due). Before, each such
// CONNECT left one more will and timer beside the others, without bound,
// each found by a scan. The wills waiting are thus at most the sessions
// mochi keeps (a will's delay ends no later than its session's expiry);
// those are bounded by Options.MaxClients only while connected: there is
// no bound on offline sessions.
type wills struct {
	b       *Broker
	mu      sync.Mutex
	delayed map[string]*will // by client id: the will of its session, waiting out its delay (see below)
	closed  bool             // the broker is stopping (close): a will due is published at once
	seq     atomic.Uint64    // the last will.seq given (stamp)
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
	// the will is either published by end or here. A broker stopping
	// (closed) ends every session.
	if ended() || w.ended || ws.closed {
		ws.mu.Unlock()
		ws.publish(w)
		return
	}
	if ws.reconnected(w) {
		ws.mu.Unlock()
		return
	}
	// One will waits per id (see wills): of two, the newer connection's.
	old := ws.delayed[cl.ID]
	if old != nil && old.seq > w.seq {
		ws.mu.Unlock()
		ws.b.log.Debug().Str("client", cl.ID).Msg("will dropped: a newer connection to its session left one")
		return
	}
	if old != nil {
		old.timer.Stop()
	}
	w.timer = time.AfterFunc(delay, func() { ws.fire(w) })
	ws.delayed[cl.ID] = w
	ws.mu.Unlock()
	switch {
	case old == nil:
	case old.p.User != w.p.User:
		// Not the same session (another user's CONNECT ends it, and
		// end takes its will first): published, never lost.
		ws.publish(old)
	default:
		ws.b.log.Debug().Str("client", cl.ID).Msg("will dropped: a newer connection to its session left one")
	}
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
	if ws.delayed[w.cl.ID] != w {
		return false
	}
	delete(ws.delayed, w.cl.ID)
	return true
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
	w := ws.delayed[id]
	if w == nil {
		return nil
	}
	w.timer.Stop()
	delete(ws.delayed, id)
	return []*will{w}
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

// publishAll publishes every will waiting out its delay, now: the
// broker is stopping, which ends every session (Mote keeps them in
// memory only), and a will waits until its delay passes or its session
// ends, whichever is first [MQTT-3.1.3-9] (Mosquitto: will_delay__send_all
// at shutdown). wait bounds, for all of them, how long a publish waits
// for a subscriber's queue room (waitNone: a stalled subscriber holds
// each PublishWait at most).
// It returns how many it published.
func (ws *wills) publishAll(wait time.Duration) int {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	ws.mu.Lock()
	var all []*will
	for id, w := range ws.delayed {
		w.timer.Stop()
		delete(ws.delayed, id)
		all = append(all, w)
	}
	ws.mu.Unlock()
	for _, w := range all {
		if err := ws.b.publish(ctx, w.p, w.m, waitNone); err != nil {
			ws.b.log.Debug().Err(err).Str("client", w.p.ClientID).Msg("will refused")
		}
	}
	return len(all)
}

// close publishes every will still waiting (publishAll), and from now on
// every will as soon as it is due: the broker is stopping.
func (ws *wills) close(wait time.Duration) {
	ws.mu.Lock()
	ws.closed = true
	ws.mu.Unlock()
	ws.publishAll(wait)
}
