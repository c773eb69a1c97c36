package broker

import (
	"sync"
	"sync/atomic"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
)

// arriving is the one point where the broker and mochi agree on which
// mochi client holds a persistent session now, for every client id: the
// broker puts a message into a session's mochi client (holdOffline) or
// drops what it holds there (roomLocked), files
// a connection (adopt) and hands a connection's leftovers to the session
// (handOn) only under its mutex, and OnSessionEstablish registers the
// client mochi is about to move the session to (register) under it,
// before mochi copies the old client's in-flight messages to it and files
// it (inheritClientSession, Clients.Add). From then on, until that
// client's connection is filed, what is held for the session waits here
// for it (and goes ahead of its queue once filed): held in the old
// client's in-flight state, a message could come after mochi's copy and
// be cleared with the old client, or left on it. Held in the new client's,
// it would miss mochi's resend and wait there, unsent, until the next
// reconnect.
//
// Owner: mu guards by, and orders every change of a session's holder the
// broker makes or sees; a connection is filed under mu, so a publisher
// either finds it or leaves its message here before adopt takes them.
// Lock order: a connection's endMu, then mu (never the other way). mu is
// taken through lock and unlock only: they keep ver and waiting, which
// let deliverTo see without mu that give would drop a QoS 0 message to a
// session away (settled).
type arriving struct {
	mu sync.Mutex
	by map[string]*arrivingSession

	ver     atomic.Uint64 // bumped as mu is taken and as it is let go: odd while held
	waiting atomic.Int64  // len(by) as mu was last let go: clients arriving, and live clients without a connection until the sweep; any one turns settled off for every id
}

// lock takes a's mutex; every holder takes it so (see unlock).
func (a *arriving) lock() {
	a.mu.Lock()
	a.ver.Add(1)
}

// unlock lets a's mutex go, with waiting and ver telling readers without
// it (settled) what they may have missed.
func (a *arriving) unlock() {
	a.waiting.Store(int64(len(a.by)))
	a.ver.Add(1)
	a.mu.Unlock()
}

// stamp is the version of what a's mutex guards, for settled.
func (a *arriving) stamp() uint64 { return a.ver.Load() }

// settled reports whether nobody held a's mutex since stamp v was read,
// and by was empty then (no client arriving, none live without its
// connection filed: any entry, for any id, answers false): what the caller read
// in between without the mutex (the connection filed for an id, mochi's
// client for it and whether it is closed) is what give would have read
// under it, and give would have found no entry for the id in by.
func (a *arriving) settled(v uint64) bool {
	return v%2 == 0 && a.waiting.Load() == 0 && a.ver.Load() == v
}

type arrivingSession struct {
	cl    *mqtt.Client
	fresh bool // cl starts a new session (or is another user's): what is held for the old one goes
	msgs  []*plainItem
}

func userOf(cl *mqtt.Client) string { return string(cl.Properties.Username) }

// register makes cl, the client mochi is about to give the session of its
// id to, the session's arriving client (OnSessionEstablish): what is held
// for the session waits for cl's connection from now on. fresh: cl starts
// a new session, or is another user's; what waits for the old one is
// dropped, and counted. It returns the connection the session has now, if
// any, which is to hand its leftovers to cl's (conn.expect).
func (a *arriving) register(b *Broker, cl *mqtt.Client, fresh bool) *conn {
	a.lock()
	defer a.unlock()
	s := a.by[cl.ID]
	if s == nil {
		s = &arrivingSession{}
		if a.by == nil {
			a.by = map[string]*arrivingSession{}
		}
		a.by[cl.ID] = s
	}
	if fresh || (s.cl != nil && userOf(s.cl) != userOf(cl)) {
		b.drop(dropSessionEnded, int64(len(s.msgs)))
		s.msgs = nil
	}
	s.cl, s.fresh = cl, fresh
	return b.connByID(cl.ID)
}

// give finds where a message for the session of id, checked for user,
// goes now, and keeps it there unless that is a connection, which it
// returns (to queue the message to): the client coming back to the
// session (held here for its connection), or the session's mochi client,
// away (held in flight: holdOffline). It reports false, keeping nothing,
// when id has no session of user's (the subscriber list was older).
func (a *arriving) give(b *Broker, id, user string, m *plainItem) (*conn, bool) {
	a.lock()
	defer a.unlock()
	if c := b.connByID(id); c != nil {
		return c, c.p.User == user
	}
	if s := a.by[id]; s != nil {
		switch {
		case s.fresh || userOf(s.cl) != user:
			b.drop(dropSessionEnded, 1) // the session it was checked for is being replaced
		case len(s.msgs) >= int(b.opts.MaxInflight):
			b.drop(dropOfflineFull, 1)
		default:
			s.msgs = append(s.msgs, m)
		}
		return nil, true
	}
	cur, ok := b.server.Clients.Get(id)
	switch {
	case !ok || userOf(cur) != user:
		return nil, false
	case !cur.Closed(): // live, and its connection gone or not filed yet: sweep
		a.by[id] = &arrivingSession{cl: cur, msgs: []*plainItem{m}}
	default:
		b.holdOffline(cur, m)
	}
	return nil, true
}

// holdFor gives m to the session of id, which had no connection to queue
// it to (see give); a connection found meanwhile queues it.
func (b *Broker) holdFor(id, user string, m *plainItem, w pubWait) {
	for {
		c, ok := b.arriving.give(b, id, user, m)
		if c == nil || !ok || b.queuePlain(id, c, m, w) {
			return
		}
		// c handed its messages on meanwhile and left byID: again.
	}
}

// handOn gives the leftovers of c, an MQTT connection whose session
// outlives it and that has no successor (its endMu held), to the
// session's holder now, and files c off in the same step, so a message
// published afterwards is held after them: the connection filed for the
// session, ahead of its queue; the client coming back to it (held here);
// or its mochi client, away (held in flight). A client that took the
// session over without going through c (c was not filed when it came, or
// mochi filed it before OnSessionEstablished told c) gets them as well.
// What mochi copied to that client is not given twice (notCloned). It
// returns how many it could not keep: the session was replaced by a new
// one, or ended.
func (a *arriving) handOn(b *Broker, c *conn, left []*plainItem) int {
	a.lock()
	defer a.unlock()
	b.byID.CompareAndDelete(c.id, c)
	if len(left) == 0 {
		return 0
	}
	if n := b.connByID(c.id); n != nil {
		if o, ok := n.outOf(); ok && n.p.User == c.p.User {
			return n.q.pushFront(notCloned(left, inflightOf(o.cl)))
		}
		return len(left)
	}
	if s := a.by[c.id]; s != nil {
		if s.fresh || userOf(s.cl) != c.p.User {
			return len(left)
		}
		s.msgs = append(notCloned(left, inflightOf(s.cl)), s.msgs...)
		return 0
	}
	cur, ok := b.server.Clients.Get(c.id)
	switch {
	case !ok || userOf(cur) != c.p.User:
		return len(left)
	case !cur.Closed():
		a.by[c.id] = &arrivingSession{cl: cur, msgs: notCloned(left, inflightOf(cur))}
	default:
		for _, m := range notCloned(left, inflightOf(cur)) {
			b.holdOffline(cur, m)
		}
	}
	return 0
}

// adopt files c, the connection of cl, under its client id, with the
// messages held for cl queued first, unless mochi gave the session to a
// newer client meanwhile (superseded: c is then not filed, and ends). A
// client registered after cl and not filed by mochi yet (expect) takes the
// session from c: c hands its leftovers to it (conn.expect, by the
// caller, with fresh).
func (a *arriving) adopt(b *Broker, cl *mqtt.Client, c *conn) (filed bool, expect *mqtt.Client, fresh bool) {
	a.lock()
	defer a.unlock()
	if cur, ok := b.server.Clients.Get(cl.ID); ok && cur != cl || cl.IsTakenOver() {
		return false, nil, false
	}
	if s := a.by[cl.ID]; s != nil {
		if s.cl != cl { // registered after cl: the messages wait for it
			expect, fresh = s.cl, s.fresh
		} else {
			delete(a.by, cl.ID)
			queueHeld(b, c, s.msgs)
		}
	}
	b.byID.Store(cl.ID, c)
	return true, expect, fresh
}

// queueHeld queues the messages held for a session to its connection c
// (mu held); what c has no room for meets the slow-client policy, and
// what it can no longer take (it handed its messages on, the session
// replaced by a new one) is counted.
func queueHeld(b *Broker, c *conn, msgs []*plainItem) {
	for _, m := range msgs {
		r := c.q.put(m, pubWait{})
		if why, full := r.full(); full {
			c.slowFull(why)
		} else if r == pushGone {
			b.drop(dropSessionEnded, 1)
		}
	}
}

// rebind gives the messages held in s to cl, which took s's session
// over before s's client had its connection filed (mu held): cl's client
// has them first, before what is published after (they were checked for
// s's user: another user's client, TakeoverFresh, gets none).
func (a *arriving) rebind(b *Broker, s *arrivingSession, cl *mqtt.Client) {
	if userOf(s.cl) != userOf(cl) {
		b.drop(dropSessionEnded, int64(len(s.msgs)))
		s.msgs = nil
	}
	s.cl, s.fresh = cl, false
}

// sweep hands the messages held for clients that stopped before their
// connection was filed (a CONNACK that could not be written, say) to their
// sessions: to the connection filed for it, the client coming back to it,
// or, away, its mochi client. The $SYS ticker calls it.
func (a *arriving) sweep(b *Broker) {
	a.lock()
	defer a.unlock()
	for id, s := range a.by {
		if !s.cl.Closed() {
			continue
		}
		cur, ok := b.server.Clients.Get(id)
		if ok && cur != s.cl {
			if !s.cl.IsTakenOver() && cur.Closed() {
				continue // mochi has not filed s.cl yet: the session is still moving to it
			}
			a.rebind(b, s, cur)
		}
		if n := b.connByID(id); n != nil {
			delete(a.by, id)
			if _, ok := n.outOf(); !ok || n.p.User != userOf(s.cl) {
				b.drop(dropSessionEnded, int64(len(s.msgs)))
				continue
			}
			queueHeld(b, n, s.msgs)
			continue
		}
		if !s.cl.Closed() {
			continue // another client is coming back to the session: its connection, not filed yet, takes them (adopt)
		}
		delete(a.by, id)
		a.away(b, id, s)
	}
}

// away holds s's messages for session id, away now (mu held).
func (a *arriving) away(b *Broker, id string, s *arrivingSession) {
	cur, ok := b.server.Clients.Get(id)
	if !ok || userOf(cur) != userOf(s.cl) || s.fresh {
		b.drop(dropSessionEnded, int64(len(s.msgs)))
		return
	}
	for _, m := range s.msgs {
		b.holdOffline(cur, m)
	}
}
