package broker

import (
	"context"
	"net"
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
	// seq orders the wills of a client id by their CONNECT's session
	// establishment (OnSessionEstablish, under the id's takeover lock):
	// of two wills of one session, the higher is the newer connection's.
	seq uint64
	// ended (wills.mu): a CONNECT ended its session while the will was
	// still its CONNECT's (connWills: the CONNACK not yet written or
	// failing): it is published when due (wills.takeover marks it).
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
//
// A client id has at most one will waiting out its delay (delayed): the
// will of its session. The Will Message is part of the session state and
// every CONNECT sets it (§3.1.2.5, §3.1.3.2), and a will's delay ends
// when a connection to its session is made [MQTT-3.1.3-9]; so of two
// wills of one session only the newer CONNECT's (will.seq) is the
// session's, and the older is dropped, never published (a debug log;
// Mosquitto drops it too, when the CONNECT takes the session). Two meet
// only when a CONNECT resuming the session had its CONNACK fail, or its
// client reset the connection first: it cancelled nothing, so the will
// it set aside is put back beside its own (settle, then due). The will
// of another user's connection under the same id is of a session that
// ended (that CONNECT started afresh): it is published, never dropped.
// delayLocked is the one way into delayed and applies this.
//
// takeover is the one way into resuming: one entry for each CONNECT
// that resumes the session, holding the id's delayed will (taken out of
// delayed; newer, the will of the connection it cut off, goes through
// delayed first) and what the CONNECT it took the id over from still
// holds set aside (will.holders): each will that entries share is one
// will, so the distinct wills set aside are at most one per CONNECT in
// its handshake. An entry
// lasts from its CONNECT's OnSessionEstablish until that CONNECT's own
// goroutine settles it (OnSessionEstablished, OnWill, OnDisconnect; a
// later CONNECT of the id cuts its connection off, so that is soon, and
// marks it ended if it ends the session): resuming is bounded by the
// connections in their handshake, not by the CONNECTs a client repeats,
// and a will put back goes through delayLocked. The first holder
// answered cancels a shared will (will.cancelled); it waits again only
// when the last holder fails, none answered: a holder failing after the
// one answered has left cannot ask whether the session is connected. A
// later CONNECT does
// not settle the entry itself: whether the earlier one's CONNACK was
// written is known (Client.Answered) only once mochi's SendConnack has
// returned, on that CONNECT's goroutine.
//
// Before the merge of h-willstorm and h-willcap, one branch kept one
// will per connection: a client repeating CONNECTs that reset before
// their CONNACK piled up wills and timers without bound. The wills
// waiting are now at most the sessions mochi keeps (a will's delay ends
// no later than its session's expiry); those are bounded by
// Options.MaxClients while connected and Options.MaxSessions while away
// (a session ended past it publishes its will: endAway).
//
// Stopping the broker ends every session (Mote keeps them in memory
// only): publishAll publishes the wills waiting, and close publishes
// those that came due meanwhile, those still set aside and those ended
// but not yet published; after close, a will due is published at once.
type wills struct {
	b       *Broker
	mu      sync.Mutex
	delayed map[string]*will // by client id: the will of its session, waiting out its delay
	// resuming (mu): the wills of the session that client's CONNECT
	// resumed (takeover), cancelled once its CONNACK is written, or
	// waiting again if it is not (settle); see above for its bound.
	resuming map[*mqtt.Client][]*will
	closed   bool          // the broker is stopping (close): a will due is published at once
	seq      atomic.Uint64 // the last will.seq given
	// ending: *mqtt.Client → []*will, the wills of the session that
	// client's CONNECT ended (takeover), published once the id's takeover
	// lock is let go (publishEnded): a publish may wait for a slow
	// subscriber.
	ending sync.Map
}

// due handles the will of a connection that ended without a normal
// DISCONNECT: published at once, or after its delay — the Will Delay
// Interval or the session's expiry, whichever is first [MQTT-3.1.3-9] —
// unless the client connects again to the session first. A session that
// a clean start (or another user) took over meanwhile has ended
// (ended): its will is published now; so has every session once the
// broker is stopping (closed).
//
// take gives the will (nil for none), called under ws.mu, as a takeover
// looks for it (takeover): the takeover either finds it or comes after it
// was delayed. Taken before the lock, a will between its connection and
// wills was in neither when a Clean Start CONNECT took the delayed will;
// its connection, filed after that CONNECT looked for it (not marked
// ended: conn.expect), dropped it as reconnected.
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
	// (conn.expect) before it publishes the id's delayed wills, so the
	// will is either published by the takeover or here.
	if ended() || w.ended {
		ws.mu.Unlock()
		ws.publish(w)
		return
	}
	if ws.reconnected(w) {
		ws.mu.Unlock()
		return
	}
	pub := ws.delayLocked(w)
	ws.mu.Unlock()
	if pub != nil {
		ws.publish(pub)
	}
}

// delayOf is how long w waits once due: its Will Delay Interval or its
// session's expiry, whichever is shorter [MQTT-3.1.3-9]; MQTT 3.1.1 has
// no delay.
func (ws *wills) delayOf(w *will) time.Duration {
	if !w.v5 {
		return 0
	}
	return time.Duration(min(w.delay, w.cl.Properties.SessionExpiryInterval())) * time.Second
}

// delayLocked makes w its client id's one delayed will and starts its
// wait (ws.mu held), unless the will waiting is a newer CONNECT's (see
// wills). It returns a will for the caller to publish once ws.mu is let
// go, nil for none: w itself if the broker is stopping (closed), or the
// one of the two not kept if it is another user's. A will revoked or
// published already (revoke, publish) is left out.
func (ws *wills) delayLocked(w *will) *will {
	if w.revoked || w.sent {
		return nil
	}
	if ws.closed {
		return w
	}
	id := w.cl.ID
	old := ws.delayed[id]
	keep, pub := ws.newer(old, w)
	if keep == w {
		if old != nil {
			old.timer.Stop() // fire finds it gone
		}
		w.timer = time.AfterFunc(ws.delayOf(w), func() { ws.fire(w) })
		ws.delayed[id] = w
	}
	return pub
}

// newer decides between two wills of one client id, either nil: it keeps
// the newer CONNECT's (will.seq), the session's will [MQTT-3.1.3-9]
// (§3.1.2.5: each CONNECT sets it). The older is dropped if it is the
// same user's (the same session), or returned in pub, to be published,
// if another user's: its session ended.
func (ws *wills) newer(a, b *will) (keep, pub *will) {
	if a == nil {
		return b, nil
	}
	if b == nil {
		return a, nil
	}
	if a.seq > b.seq {
		a, b = b, a
	}
	if a.p.User != b.p.User {
		return b, a
	}
	ws.b.log.Debug().Str("client", truncate(a.p.ClientID, 200)).Msg("will dropped: a newer CONNECT to its session set the session's will")
	return b, nil
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

// takeEnded stops and removes the delayed will of a client id whose
// session ends now (endAway, under the id's takeover lock), nil if it has
// none: the caller publishes it once that lock is let go.
func (ws *wills) takeEnded(id string) *will {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.takeIDLocked(id)
}

// takeIDLocked stops and removes the delayed will of a client id, nil if
// it has none. ws.mu is held.
func (ws *wills) takeIDLocked(id string) *will {
	w := ws.delayed[id]
	if w == nil {
		return nil
	}
	w.timer.Stop()
	delete(ws.delayed, id)
	return w
}

// publish makes the will's publish, as its client, through the door.
func (ws *wills) publish(w *will) {
	ws.publishCtx(context.Background(), w)
}

// publishCtx is publish, waiting for subscribers' queues no longer than
// ctx allows. A will revoked or published already (two resuming CONNECTs
// may hold it: settle) is skipped. ws.mu is not held.
func (ws *wills) publishCtx(ctx context.Context, w *will) {
	ws.mu.Lock()
	skip := w.revoked || w.sent
	w.sent = true
	ws.mu.Unlock()
	if skip {
		return
	}
	if err := ws.b.publish(ctx, w.p, w.m, waitNone); err != nil {
		ws.b.log.Debug().Err(err).Str("client", truncate(w.p.ClientID, 200)).Msg("will refused")
	}
}

// takeover is called by cl's CONNECT, under the id's takeover lock, once
// it has taken the id over from existing (nil for none).
//
// existing's connection is cut off now (or is gone), so its will, ew
// (taken, under ws.mu as in due: nil for none, or if that connection's
// end made it due first), is due
// now [MQTT-3.1.4-3]: it is published if it
// has no delay or cl's CONNECT ended the session (ended: Clean Start 1,
// or another user's), else it waits as the id's delayed will.
//
// A CONNECT that ends the session takes the id's delayed will: a will's
// delay runs until the Will Delay Interval passes or the session ends,
// whichever is first [MQTT-3.1.3-9]. They are published once the lock is
// let go (publishEnded), whether cl's CONNACK is written or not (the new
// session's failing does not bring the old one back). existing's will
// still its CONNECT's (connWills: its CONNACK not written, or failing) is
// marked ended, and published when its connection's end makes it due
// (due) — marked under ws.mu, as due reads it: one or the other; so is
// the will existing's CONNECT set aside (resuming), which existing's
// settle then publishes unless existing's CONNACK was written (its
// connection was made to the session before it ended). That is left to
// existing's own hooks: its CONNACK may be on the wire now, and
// Client.Answered says so only once mochi's SendConnack has returned.
//
// A CONNECT that resumes the session (not fresh) sets its delayed will
// aside (resuming) before its CONNACK is written: a CONNECT of the id
// that came after that CONNACK had been read and ended the session, its
// resume not yet through OnSessionEstablished (the CONNECT's goroutine
// may run late), published a will that the resume had cancelled
// [MQTT-3.1.3-9]; and a will that became due only after the resume (the
// old reader ran late) waited out its delay. settle cancels it once the
// CONNACK is written, or lets it wait again if it could not be. If
// existing resumed the session too, its CONNACK not yet settled, cl holds
// what existing set aside as well (will.holders): whichever of the two is
// answered cancels it; it waits again only if both fail.
func (ws *wills) takeover(cl, existing *mqtt.Client, taken func() *will, ended, fresh bool) {
	var now []*will
	ws.mu.Lock()
	if ew := taken(); ew != nil && !ew.taken.Swap(true) {
		ew.cl = existing
		if ended || ws.delayOf(ew) <= 0 {
			now = append(now, ew)
		} else if pub := ws.delayLocked(ew); pub != nil {
			now = append(now, pub)
		}
	}
	switch {
	case ended:
		if w := ws.takeIDLocked(cl.ID); w != nil {
			now = append(now, w)
		}
		if existing != nil {
			if w, ok := ws.b.connWills.Load(existing); ok {
				w.(*will).ended = true
			}
			for _, w := range ws.resuming[existing] { // its CONNACK still to be written, or failing
				w.ended = true
			}
		}
	case !fresh:
		var d []*will
		if w := ws.takeIDLocked(cl.ID); w != nil {
			d = append(d, w)
		}
		d = append(d, ws.resuming[existing]...) // nil existing: none
		for _, w := range d {
			w.holders++
		}
		if len(d) > 0 {
			ws.resuming[cl] = d
		}
	}
	ws.mu.Unlock()
	if len(now) > 0 {
		ws.ending.Store(cl, now) // cl's CONNECT runs takeover once
	}
}

// settle decides the wills cl's CONNECT set aside when it resumed the
// session (takeover): cancelled if its CONNACK was written (connected),
// as if waiting then [MQTT-3.1.3-9]. Otherwise, once no other resuming
// CONNECT holds one (will.holders) and none of them was answered
// (will.cancelled), it is published if a later CONNECT ended the session
// (will.ended) or the broker is stopping; else it waits out its delay
// again, as the id's one delayed will (delayLocked): a newer CONNECT's
// will, due meanwhile or later, replaces it.
func (ws *wills) settle(cl *mqtt.Client, connected bool) {
	ws.mu.Lock()
	now := ws.settleLocked(cl, connected, nil)
	ws.mu.Unlock()
	for _, w := range now {
		ws.publish(w)
	}
}

// settleLocked is settle, ws.mu held: it appends the wills to publish to
// now.
func (ws *wills) settleLocked(cl *mqtt.Client, connected bool, now []*will) []*will {
	d, ok := ws.resuming[cl]
	if !ok {
		return now
	}
	delete(ws.resuming, cl)
	for _, w := range d {
		w.holders--
		switch {
		case connected && w.p.User == string(cl.Properties.Username):
			w.cancelled = true
		case connected: // not cl's session: it ended
			now = append(now, w)
		case w.holders > 0 || w.cancelled: // another holder decides, or did
		case w.ended: // a later CONNECT ended the session
			now = append(now, w)
		default:
			if pub := ws.delayLocked(w); pub != nil {
				now = append(now, pub)
			}
		}
	}
	return now
}

// settleOn settles what the CONNECTs read from nc set aside (settle):
// nc's reader panicked, so no hook of theirs runs again.
func (ws *wills) settleOn(nc net.Conn) {
	var now []*will
	ws.mu.Lock()
	for cl := range ws.resuming {
		if cl.Net.Conn == nc {
			now = ws.settleLocked(cl, cl.Answered(), now)
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

// publishEnded publishes the wills takeover took for cl.
func (ws *wills) publishEnded(cl *mqtt.Client) {
	if d, ok := ws.ending.LoadAndDelete(cl); ok {
		for _, w := range d.([]*will) {
			ws.publish(w)
		}
	}
}

// cancel drops the delayed will of a client id that user connected
// again to (its CONNACK written) [MQTT-3.1.3-9]. Another user's
// connection (TakeoverFresh) is not one to the will's session, which it
// ended: the will is published now. Dropping it let another user silence
// it.
func (ws *wills) cancel(id, user string) {
	ws.mu.Lock()
	w := ws.takeIDLocked(id)
	ws.mu.Unlock()
	if w != nil && w.p.User != user {
		ws.publish(w)
	}
}

// publishAll publishes every will waiting out its delay, now: the
// broker is stopping, which ends every session (Mote keeps them in
// memory only), and a will waits until its delay passes or its session
// ends, whichever is first [MQTT-3.1.3-9] (Mosquitto: will_delay__send_all
// at shutdown). wait bounds, for all of them, how long a publish waits
// for a subscriber's queue room (waitNone: a stalled subscriber holds
// each PublishWait at most). It returns how many it published.
//
// A will set aside by a CONNECT whose CONNACK is not yet decided
// (resuming) is left to that CONNECT's hooks, which run as Close stops
// it (settle), and to close after them.
func (ws *wills) publishAll(wait time.Duration) int {
	ws.mu.Lock()
	var all []*will
	for id := range ws.delayed {
		all = append(all, ws.takeIDLocked(id))
	}
	ws.mu.Unlock()
	ws.publishWithin(wait, all)
	return len(all)
}

// close makes every will due from now on published at once (closed),
// and publishes those still waiting, still set aside (settled as their
// CONNECT's end would: cancelled if its CONNACK was written, published
// if not) and ended but not yet published: the broker is stopping, and
// mochi has stopped its clients (or given up), whose hooks would have.
func (ws *wills) close(wait time.Duration) {
	var all []*will
	ws.mu.Lock()
	ws.closed = true
	for id := range ws.delayed {
		all = append(all, ws.takeIDLocked(id))
	}
	for cl := range ws.resuming {
		all = ws.settleLocked(cl, cl.Answered(), all) // closed: not cancelled is published
	}
	ws.mu.Unlock()
	ws.ending.Range(func(k, _ any) bool {
		if d, ok := ws.ending.LoadAndDelete(k); ok {
			all = append(all, d.([]*will)...)
		}
		return true
	})
	ws.publishWithin(wait, all)
}

// publishWithin publishes wills, waiting for subscribers' queues no
// longer than wait in all.
func (ws *wills) publishWithin(wait time.Duration, all []*will) {
	if len(all) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for _, w := range all {
		ws.publishCtx(ctx, w)
	}
}
