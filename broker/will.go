package broker

import (
	"context"
	"slices"
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
	// delay and v5, from its CONNECT: read by a takeover too, while the
	// old client's reader may clear mochi's copy (a DISCONNECT).
	delay uint32
	v5    bool
	// taken (under wills.mu): the will was made due, by its connection's
	// end (OnWill) or by the CONNECT that cut its connection off
	// (wills.takeover), whichever came first; the other leaves it.
	taken atomic.Bool
	// ended (wills.mu): a CONNECT ended its session while the will was
	// still its CONNECT's (connWills: the CONNACK not yet written or
	// failing): it is published when due (wills.end).
	ended bool
	// sent and revoked (wills.mu): the will was published (publish), or
	// its connection left with a normal DISCONNECT first (revoke); a
	// revoked will is neither published nor left waiting.
	sent, revoked bool
	// holders and cancelled (wills.mu): how many resuming CONNECTs hold
	// the will set aside (wills.resuming: a CONNECT taking the id over
	// from one that holds it holds it too), and whether one of them was
	// answered (settle): it is cancelled then, and waits again only if
	// every holder failed.
	holders   int
	cancelled bool
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
	return &will{p: p, m: m, delay: wp.WillDelayInterval, v5: pk.ProtocolVersion == 5}
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
	// resuming: *mqtt.Client → []*will, the wills of the session that
	// client's CONNECT resumed (takeover), cancelled once its CONNACK is
	// written, or waiting again if it is not (settle).
	resuming sync.Map
}

// due handles the will of a connection that ended without a normal
// DISCONNECT: published at once, or after its delay — the Will Delay
// Interval or the session's expiry, whichever is first [MQTT-3.1.3-9] —
// unless the client connects again to the session first. A session that
// a clean start (or another user) took over meanwhile has ended
// (ended): its will is published now.
//
// take gives the will (nil for none), called under ws.mu, as a takeover
// looks for it (takeover): the takeover either finds it or comes after it
// was delayed. Taken before the lock, a will between its connection and
// wills was in neither when a Clean Start CONNECT took the delayed wills
// (end); its connection, filed after that CONNECT looked for it (not
// marked ended: conn.expect), dropped it as reconnected.
func (ws *wills) due(take func() *will, cl *mqtt.Client, ended func() bool) {
	ws.mu.Lock()
	w := take()
	if w == nil || w.taken.Swap(true) { // the CONNECT that took cl's id over has it
		ws.mu.Unlock()
		return
	}
	w.cl = cl
	if ws.delayOf(w) <= 0 {
		ws.mu.Unlock()
		ws.publish(w)
		return
	}
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
	ws.delayLocked(w)
}

// delayOf is how long w waits once due: its Will Delay Interval or its
// session's expiry, whichever is shorter [MQTT-3.1.3-9]; MQTT 3.1.1 has
// no delay.
func (ws *wills) delayOf(w *will) time.Duration {
	if !w.v5 {
		return 0
	}
	return time.Duration(min(w.delay, w.cl.Properties.Props.SessionExpiryInterval)) * time.Second
}

// delayLocked starts w's wait (ws.mu held), unless it was revoked.
func (ws *wills) delayLocked(w *will) {
	if w.revoked {
		return
	}
	w.timer = time.AfterFunc(ws.delayOf(w), func() { ws.fire(w) })
	ws.delayed[w.cl.ID] = append(ws.delayed[w.cl.ID], w)
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

// publish makes the will's publish, as its client, through the door,
// unless it was revoked or published already (two resuming CONNECTs may
// hold it: settle). ws.mu is not held.
func (ws *wills) publish(w *will) {
	ws.mu.Lock()
	skip := w.revoked || w.sent
	w.sent = true
	ws.mu.Unlock()
	if skip {
		return
	}
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
		if d, ok := ws.resuming.Load(existing); ok { // its CONNACK still to be written, or failing
			for _, w := range d.([]*will) {
				w.ended = true
			}
		}
	}
	ws.mu.Unlock()
	if len(d) > 0 {
		ws.ending.Store(cl, d)
	}
}

// takeover is called by cl's CONNECT, under the id's takeover lock, once
// it has taken the id over from existing (nil for none). existing's
// connection is cut off now (or is gone), so its will, ew (taken: nil for none,
// or if that connection's end made it due first), is due now
// [MQTT-3.1.4-3]: it is published at once if it has no delay or cl's
// CONNECT ended the session (ended; see end), else it waits with the
// id's other delayed wills. A CONNECT that resumes the session (not
// fresh) sets all of them aside (resuming) before its CONNACK is
// written: a CONNECT of the id that came after that CONNACK had been
// read and ended the session, its will not due yet or its resume not yet
// through OnSessionEstablished (the CONNECT's goroutine may run late),
// published a will that the resume had cancelled [MQTT-3.1.3-9]; and a
// will that became due only after the resume (the old reader ran late)
// waited out its delay. settle cancels them once the CONNACK is written,
// or lets them wait again if it could not be.
func (ws *wills) takeover(cl, existing *mqtt.Client, taken func() *will, ended, fresh bool) {
	ws.mu.Lock()
	ew := taken() // under ws.mu: see due
	if ew != nil && ew.taken.Swap(true) {
		ew = nil
	}
	var now []*will
	if ew != nil {
		ew.cl = existing
		if ended || ws.delayOf(ew) <= 0 {
			now, ew = append(now, ew), nil
		}
	}
	if !ended && !fresh && !ws.closed {
		d := ws.takeAllLocked(cl.ID)
		if ew != nil {
			d = append(d, ew)
		}
		if p, ok := ws.resuming.Load(existing); ok {
			// existing resumed the session too, its CONNACK not settled:
			// whichever of the two is answered cancels them.
			d = append(d, p.([]*will)...)
		}
		for _, w := range d {
			w.holders++
		}
		if len(d) > 0 {
			ws.resuming.Store(cl, d)
		}
	} else if ew != nil && !ws.closed {
		ws.delayLocked(ew)
	}
	ws.mu.Unlock()
	if ended {
		ws.end(cl, existing)
	}
	if len(now) > 0 {
		if d, ok := ws.ending.Load(cl); ok {
			now = append(d.([]*will), now...)
		}
		ws.ending.Store(cl, now)
	}
}

// settle decides the wills cl's CONNECT set aside when it resumed the
// session (takeover): cancelled if its CONNACK was written (connected),
// as if waiting then [MQTT-3.1.3-9]; otherwise they wait out their delay
// again, or are published if a later CONNECT ended the session (end marks
// them), once no other resuming CONNECT holds them (will.holders) and none
// was answered. The entry is taken under ws.mu, as takeover reads it: a
// later CONNECT either holds the wills too or finds them waiting again.
func (ws *wills) settle(cl *mqtt.Client, connected bool) {
	var now []*will
	ws.mu.Lock()
	d, ok := ws.resuming.LoadAndDelete(cl)
	if !ok {
		ws.mu.Unlock()
		return
	}
	for _, w := range d.([]*will) {
		w.holders--
		switch {
		case connected && w.p.User == string(cl.Properties.Username):
			w.cancelled = true
		case connected:
			now = append(now, w)
		case w.holders > 0 || w.cancelled:
		case w.ended:
			now = append(now, w)
		case !ws.closed:
			ws.delayLocked(w)
		}
	}
	ws.mu.Unlock()
	for _, w := range now {
		ws.publish(w)
	}
}

// revoke removes w (nil for none), the will of a connection whose normal
// DISCONNECT (reason 0x00) was processed, unless it was published already
// [MQTT-3.1.2-10] [MQTT-3.14.4-3]. A CONNECT taking the id over makes the
// old connection's will due (takeover) in OnSessionEstablish, before mochi
// cuts that connection off (inheritSession): a DISCONNECT processed in
// between ended the connection normally, and its will, set aside, waiting
// or about to be published after the takeover lock (ending), is dropped.
func (ws *wills) revoke(w *will) {
	if w == nil {
		return
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if w.sent {
		return
	}
	w.revoked = true
	if w.timer != nil && ws.takeLocked(w) {
		w.timer.Stop()
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
