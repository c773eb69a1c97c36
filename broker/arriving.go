package broker

import (
	"sync"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
)

// arriving holds plain messages for a persistent session whose client is
// coming back: mochi has made the client the session's (Clients.Add),
// resent its in-flight messages and written the CONNACK, but the broker
// has not filed its connection yet (OnSessionEstablished). Held in the
// client's in-flight state then, as for a session that is away, a message
// missed mochi's resend and waited there, unsent, until the next
// reconnect. Here it waits for the connection instead, and goes ahead of
// what is queued to it once filed (adopt).
//
// Owner: mu guards by; the connection is filed under mu, so a publisher
// either finds it or leaves its message here before adopt takes them.
type arriving struct {
	mu sync.Mutex
	by map[string]*arrivingSession
}

type arrivingSession struct {
	cl   *mqtt.Client
	msgs []*plainItem
}

// hold keeps m for cl, the live client of session id that has no
// connection filed yet; it reports false when id has one now (c, to queue
// m to), or when cl is not live (the session is away: holdOffline).
func (a *arriving) hold(b *Broker, id string, cl *mqtt.Client, m *plainItem) (c *conn, held bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c := b.connByID(id); c != nil {
		return c, false
	}
	if cl.Closed() {
		return nil, false
	}
	s := a.by[id]
	if s == nil {
		s = &arrivingSession{cl: cl}
		if a.by == nil {
			a.by = map[string]*arrivingSession{}
		}
		a.by[id] = s
	} else if s.cl != cl {
		a.rebind(b, s, cl)
	}
	if len(s.msgs) >= int(b.opts.MaxInflight) {
		b.drop(dropOfflineFull, 1)
		return nil, true
	}
	s.msgs = append(s.msgs, m)
	return nil, true
}

// adopt files c, the connection of cl, under its client id, with the
// messages held for cl queued first.
func (a *arriving) adopt(b *Broker, cl *mqtt.Client, c *conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s := a.by[cl.ID]; s != nil {
		delete(a.by, cl.ID)
		if s.cl != cl {
			a.rebind(b, s, cl)
		}
		for _, m := range s.msgs {
			if why, full := c.q.put(m, pubWait{}).full(); full {
				c.slowFull(why)
			}
		}
	}
	b.byID.Store(cl.ID, c)
}

// rebind gives the messages held in s to cl, which took s's session
// over before s's client had its connection filed (mu held): cl's client
// has them first, before what is published after (they were checked for
// s's user: another user's client, TakeoverFresh, gets none).
func (a *arriving) rebind(b *Broker, s *arrivingSession, cl *mqtt.Client) {
	if string(s.cl.Properties.Username) != string(cl.Properties.Username) {
		b.drop(dropSessionEnded, int64(len(s.msgs)))
		s.msgs = nil
	}
	s.cl = cl
}

// sweep hands the messages held for clients that stopped before their
// connection was filed (a CONNACK that could not be written, say) to their
// sessions, as held for any session that is away, or to the client coming
// back to it meanwhile. The $SYS ticker calls it.
func (a *arriving) sweep(b *Broker) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, s := range a.by {
		if !s.cl.Closed() {
			continue
		}
		if cur, ok := b.server.Clients.Get(id); ok && cur != s.cl && !cur.Closed() {
			// Another client is coming back to the session: its
			// connection, not filed yet (adopt takes the entry), gets
			// them.
			a.rebind(b, s, cur)
			continue
		}
		delete(a.by, id)
		a.away(b, id, s)
	}
}

// away holds s's messages for session id, away now (mu held).
func (a *arriving) away(b *Broker, id string, s *arrivingSession) {
	cur, ok := b.server.Clients.Get(id)
	if !ok || string(cur.Properties.Username) != string(s.cl.Properties.Username) {
		b.drop(dropSessionEnded, int64(len(s.msgs)))
		return
	}
	for _, m := range s.msgs {
		b.holdOffline(cur, m.packet())
	}
}
