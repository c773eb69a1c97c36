package broker

import (
	"container/list"
	"sync"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
)

// awaySessions orders the persistent sessions whose clients are away,
// longest away first, so that a disconnect that leaves more than
// Options.MaxSessions of them ends the oldest (endAway) in O(1).
// Options.MaxClients bounds connected clients only: without this bound a
// client connecting with ever new ids, Clean Start 0 and a long expiry
// left sessions (and their subscriptions in mochi's index) without end.
//
// An entry is added and removed only under its client id's takeover lock
// (mochi's WhileFiled, OnSessionEstablish, OnClientExpired,
// RemoveSessionWith), so it names exactly the sessions mochi keeps whose
// client is away: a CONNECT resuming one takes it out of the order before
// its client is filed.
//
// Owner: mu guards order and at; the connection hooks take it.
type awaySessions struct {
	mu    sync.Mutex
	order list.List                // of *mqtt.Client, longest away first
	at    map[string]*list.Element // by client id: its entry in order
}

// leftLocked files cl, whose connection ended and whose session outlives
// it, as the newest away (its id's takeover lock held).
func (a *awaySessions) leftLocked(cl *mqtt.Client) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.at == nil {
		a.at = map[string]*list.Element{}
	}
	if e, ok := a.at[cl.ID]; ok {
		a.order.Remove(e)
	}
	a.at[cl.ID] = a.order.PushBack(cl)
}

// backLocked takes the session of id out of the order: a CONNECT takes
// it (its id's takeover lock held).
func (a *awaySessions) backLocked(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.at[id]; ok {
		a.order.Remove(e)
		delete(a.at, id)
	}
}

// goneLocked takes cl's session out of the order if it is there: it
// expired or was removed (its id's takeover lock held).
func (a *awaySessions) goneLocked(cl *mqtt.Client) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.at[cl.ID]; ok && e.Value.(*mqtt.Client) == cl {
		a.order.Remove(e)
		delete(a.at, cl.ID)
	}
}

// oldestOver takes the longest-away session out of the order if more
// than max are in it, nil if not.
func (a *awaySessions) oldestOver(max int) *mqtt.Client {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.order.Len() <= max {
		return nil
	}
	e := a.order.Front()
	a.order.Remove(e)
	cl := e.Value.(*mqtt.Client)
	delete(a.at, cl.ID)
	return cl
}

// len is how many sessions are away.
func (a *awaySessions) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.order.Len()
}

// sessionLeft is called once cl's connection ended and its session
// outlives it (OnDisconnect): the session is filed as away, and the
// sessions longest away are ended while more than Options.MaxSessions
// are (negative: no bound). Filed only while cl is still its id's
// session: a CONNECT that took the id over meanwhile holds it.
func (b *Broker) sessionLeft(cl *mqtt.Client) {
	b.server.WhileFiled(cl, func() { b.away.leftLocked(cl) })
	if b.opts.MaxSessions < 0 {
		return
	}
	for {
		old := b.away.oldestOver(b.opts.MaxSessions)
		if old == nil {
			return
		}
		b.endAway(old)
	}
}

// endAway ends the session of old, a client away, now, as if it had
// expired: its subscriptions leave the index, what is held for it is
// dropped and counted, and its delayed will is published
// (§3.1.3.2.2: a will waits until its Will Delay Interval passes or its
// session ends, whichever is first [MQTT-3.1.3-9]). All of it under the
// id's takeover lock (RemoveSessionWith): a CONNECT resuming the session
// meanwhile either took it whole first (then nothing is ended) or comes
// after and starts clean (Session Present 0).
func (b *Broker) endAway(old *mqtt.Client) {
	var w *will
	var held int64
	ended := b.server.RemoveSessionWith(old, func() {
		w = b.wills.takeEnded(old.ID)
		held = heldPublishes(old)
		b.offline.forget(old.ID)
	})
	if !ended {
		return // a CONNECT took the session meanwhile
	}
	b.stats.SessionsEnded.Add(1)
	b.drop(dropSessionEnded, held)
	b.log.Warn().Str("client", old.ID).Str("user", userOf(old)).Int("max_sessions", b.opts.MaxSessions).
		Int64("dropped", held).Bool("will", w != nil).
		Msg("session ended: more than max_sessions persistent sessions of clients away; this one was away longest")
	if w != nil {
		b.wills.publish(w)
	}
}
