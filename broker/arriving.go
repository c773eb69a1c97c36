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
// taken through lock and unlock only; a holder marks (mark) every id for
// which it changes what deliverTo reads without mu, and the shard of each
// id marked keeps a version (ver) and how many entries by holds in it
// (waiting), which let deliverTo see without mu that give would drop a
// QoS 0 message to a session away (arrivingShard.settled). A client
// arriving for one id, or a holder changing another's state, turns the
// shortcut off only for the ids of its shard (1/arrivingShards of them).
type arriving struct {
	mu     sync.Mutex
	by     map[string]*arrivingSession
	shards [arrivingShards]arrivingShard
	marked []uint16 // shards marked by mu's holder now (mu held)
}

// arrivingShards is how many shards arriving's ids are spread over; a
// power of two (shardOf masks).
const arrivingShards = 256

// arrivingShard is the version of what deliverTo reads without arriving's
// mutex for the ids of one shard: the connection filed for each (byID),
// mochi's client for it (Clients), whether it is closed, what it holds in
// flight, and whether by holds an entry for it. ver and waiting change
// only under the mutex; n and marked are the holder's. Padded to a cache
// line's size (64 bytes: TestArrivingShardSize), so a holder marking one
// shard makes readers of at most one neighbour miss.
type arrivingShard struct {
	ver     atomic.Uint64 // bumped as a holder marks the shard and as it lets the mutex go: odd while marked
	waiting atomic.Int64  // n as the mutex was last let go after a mark: clients arriving, and live clients without a connection until the sweep, of the shard's ids
	n       int           // by's entries of the shard's ids (mutex held)
	marked  bool          // in arriving.marked (mutex held)
	_       [39]byte
}

// shardOf is the shard of id.
func (a *arriving) shardOf(id string) *arrivingShard { return &a.shards[shardIndex(id)] }

// shardIndex is the index of id's shard (FNV-1a).
func shardIndex(id string) uint16 {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h ^= uint32(id[i])
		h *= 16777619
	}
	return uint16(h & (arrivingShards - 1))
}

// lock takes a's mutex; every holder takes it so (see unlock).
func (a *arriving) lock() { a.mu.Lock() }

// mark tells readers without the mutex (settled) that the holder changes
// what they read for id, and for the other ids of its shard: their
// shard's version is odd until unlock. Every holder calls it, mutex held,
// before it changes for id the connection filed (byID), by's entry, or
// what the session's mochi client holds in flight (holdOffline,
// dropHeldLocked); marking an id twice is free.
func (a *arriving) mark(id string) {
	i := shardIndex(id)
	s := &a.shards[i]
	if s.marked {
		return
	}
	s.marked = true
	s.ver.Add(1)
	a.marked = append(a.marked, i)
}

// setBy files s as the arriving session of id (mutex held; marks id).
func (a *arriving) setBy(id string, s *arrivingSession) {
	a.mark(id)
	if a.by == nil {
		a.by = map[string]*arrivingSession{}
	}
	if _, ok := a.by[id]; !ok {
		a.shardOf(id).n++
	}
	a.by[id] = s
}

// deleteBy takes id's arriving session out of by (mutex held; marks id).
func (a *arriving) deleteBy(id string) {
	a.mark(id)
	if _, ok := a.by[id]; ok {
		a.shardOf(id).n--
		delete(a.by, id)
	}
}

// unlock lets a's mutex go, with each shard marked telling readers
// without it (settled) how many of its ids are in by, then that its
// version changed.
func (a *arriving) unlock() {
	for _, i := range a.marked {
		s := &a.shards[i]
		s.waiting.Store(int64(s.n))
		s.marked = false
		s.ver.Add(1)
	}
	a.marked = a.marked[:0]
	a.mu.Unlock()
}

// stamp is the version of what the mutex guards for the ids of s, for
// settled.
func (s *arrivingShard) stamp() uint64 { return s.ver.Load() }

// settled reports whether no holder of arriving's mutex marked s since
// stamp v was read, and by held no entry for any of s's ids then (no
// client arriving, none live without its connection filed): what the
// caller read in between without the mutex for an id of s (the connection
// filed for it, mochi's client for it, whether it is closed, what it holds
// in flight) is what give would have read under it, and give would have
// found no entry for the id in by. It holds per id because every change
// to those made under the mutex marks its id first (mark: register, give,
// handOn, adopt, sweep and away through setBy, deleteBy and holdOffline;
// roomLocked through dropHeldLocked), and as the mutex is let go the
// shard's waiting is stored before its version is bumped even: a reader
// that reads the new version reads the new waiting.
func (s *arrivingShard) settled(v uint64) bool {
	return v%2 == 0 && s.waiting.Load() == 0 && s.ver.Load() == v
}

type arrivingSession struct {
	cl     *mqtt.Client
	fresh  bool // cl starts a new session (or is another user's): what is held for the old one goes
	ending bool // cl's session is being removed (end): fresh, and kept by the sweep while mochi files cl
	msgs   []*plainItem
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
	s := a.entryLocked(cl.ID)
	if fresh || (s.cl != nil && userOf(s.cl) != userOf(cl)) {
		b.drop(dropSessionEnded, int64(len(s.msgs)))
		s.msgs = nil
	}
	s.cl, s.fresh, s.ending = cl, fresh, false
	return b.connByID(cl.ID)
}

// entryLocked returns the entry of id, made if there is none (a's mutex
// held).
func (a *arriving) entryLocked(id string) *arrivingSession {
	s := a.by[id]
	if s == nil {
		s = &arrivingSession{}
		a.setBy(id, s)
	}
	return s
}

// end marks the session of cl, away, as being removed: its expiry or
// endAway, dropSession (under the id's takeover lock, cl filed and not
// taken over, before mochi clears its in-flight map or the caller counts
// it). From then on nothing is held for the session: give drops what
// comes for it, as for a session replaced, so what cl holds in flight is
// final. The removal clears cl's map without a's mutex, and holdOffline,
// under it, found cl still filed and put a message in the map after the
// clear, on a client nobody holds: it stayed in Info.Inflight for good
// (D2, TestInflightHeldForRemovedSession). The entry goes with the next
// CONNECT of the id (register) or, once mochi forgot cl, the sweep.
func (a *arriving) end(b *Broker, cl *mqtt.Client) {
	a.lock()
	defer a.unlock()
	s := a.entryLocked(cl.ID)
	b.drop(dropSessionEnded, int64(len(s.msgs)))
	s.msgs = nil
	s.cl, s.fresh, s.ending = cl, true, true
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
	return a.giveLocked(b, id, user, m)
}

// giveLocked is give with a's mutex held.
func (a *arriving) giveLocked(b *Broker, id, user string, m *plainItem) (*conn, bool) {
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
		a.setBy(id, &arrivingSession{cl: cur, msgs: []*plainItem{m}})
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
// (What mochi moved to that client is not among them: the writer left
// it out, takenBack.moved.) It returns how many it could not keep: the session was replaced by a new
// one, or ended.
func (a *arriving) handOn(b *Broker, c *conn, left []*plainItem) int {
	a.lock()
	defer a.unlock()
	a.mark(c.id)
	b.byID.compareAndDelete(c.id, c)
	if len(left) == 0 {
		return 0
	}
	if n := b.connByID(c.id); n != nil {
		if _, ok := n.outOf(); ok && n.p.User == c.p.User {
			return n.q.pushFront(left)
		}
		return len(left)
	}
	if s := a.by[c.id]; s != nil {
		if s.fresh || userOf(s.cl) != c.p.User {
			return len(left)
		}
		s.msgs = append(left, s.msgs...)
		return 0
	}
	cur, ok := b.server.Clients.Get(c.id)
	switch {
	case !ok || userOf(cur) != c.p.User:
		return len(left)
	case !cur.Closed():
		a.setBy(c.id, &arrivingSession{cl: cur, msgs: left})
	default:
		for _, m := range left {
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
			a.deleteBy(cl.ID)
			queueHeld(b, c, s.msgs)
		}
	}
	a.mark(cl.ID)
	b.byID.store(cl.ID, c)
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
	s.cl, s.fresh, s.ending = cl, false, false
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
		if s.ending && ok && cur == s.cl {
			continue // mochi is removing the session (end): nothing is held for it meanwhile
		}
		if ok && cur != s.cl {
			if !s.cl.IsTakenOver() && cur.Closed() {
				continue // mochi has not filed s.cl yet: the session is still moving to it
			}
			a.rebind(b, s, cur)
		}
		if n := b.connByID(id); n != nil {
			a.deleteBy(id)
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
		a.deleteBy(id)
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
