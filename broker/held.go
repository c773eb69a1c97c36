package broker

import (
	"container/heap"
	"sync"
	"sync/atomic"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// heldCost is what a held message costs beyond its topic, payload and
// properties: mochi's 800-byte packet in an 896-byte allocation, and its
// share of the in-flight map's room, measured (TestHeldCostHonest) from
// 929 bytes (a session holding 1,024) to 1,131 (holding one: the map's
// first group is its alone), and 1,280 leaves room for a Go whose map or
// size classes differ. 1,024 let the heap hold up to 9% more than
// MaxOfflineBytes said.
const heldCost = 1280

// offlineHeld counts the bytes held for persistent sessions whose clients
// are away: the QoS 1/2 deliveries in their mochi clients' in-flight
// state (heldBytes: publishes, and PUBRELs of QoS 2 ones received),
// what their connections left there (sent, not acknowledged: countLeft)
// and what was held for them since (holdOffline), each heldCost plus its
// topic, payload and properties (heldCostOf). It keeps them per session and per user, the users in
// a heap by bytes and each user's sessions in one, so that past
// MaxOfflineBytes the held messages of the session holding the most of
// the user holding the most go first (Broker.roomLocked): a user leaving
// ever new ids, or a few sessions holding much, loses its own held
// messages, not another user's. A user is awaySessions' (awayUserOf).
//
// Owner: mu guards by, users and heap; bytes is their total, read without
// it (the gauge, holdOffline). Bytes are added, and messages dropped, only
// under arriving's mutex (holdOffline, countLeft, roomLocked), the point
// where the broker and mochi agree on which client holds a session:
// forget, prune and deleted take bytes off from anywhere (a resume, an
// expiry, an ended session, an expired message).
type offlineHeld struct {
	mu    sync.Mutex
	by    map[string]*heldSession // by client id
	users map[string]*heldUser
	heap  heldUsers
	bytes atomic.Int64
}

// heldSession is what is held for one session away, in its mochi client.
type heldSession struct {
	id    string
	cl    *mqtt.Client
	u     *heldUser
	bytes int64
	index int // in u.sessions
}

// heldUser is what is held for one user's sessions away.
type heldUser struct {
	name     string
	bytes    int64
	sessions heldSessions
	index    int // in offlineHeld.heap
}

// heldUsers is a heap (container/heap) of users, the one holding the most
// bytes first.
type heldUsers []*heldUser

func (h heldUsers) Len() int           { return len(h) }
func (h heldUsers) Less(i, j int) bool { return h[i].bytes > h[j].bytes }
func (h heldUsers) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *heldUsers) Push(x any) {
	u := x.(*heldUser)
	u.index = len(*h)
	*h = append(*h, u)
}
func (h *heldUsers) Pop() any {
	old := *h
	u := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return u
}

// heldSessions is a heap of one user's sessions, the one holding the most
// bytes first.
type heldSessions []*heldSession

func (h heldSessions) Len() int           { return len(h) }
func (h heldSessions) Less(i, j int) bool { return h[i].bytes > h[j].bytes }
func (h heldSessions) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *heldSessions) Push(x any) {
	s := x.(*heldSession)
	s.index = len(*h)
	*h = append(*h, s)
}
func (h *heldSessions) Pop() any {
	old := *h
	s := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return s
}

// add counts n more bytes held in cl, a session's client away, for user
// (a session counted already keeps the user it was counted for).
func (o *offlineHeld) add(cl *mqtt.Client, user string, n int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.by[cl.ID]
	if s != nil && s.cl != cl {
		o.removeLocked(s) // an older client's, left over: cl holds the session now
		s = nil
	}
	if s == nil {
		if o.by == nil {
			o.by, o.users = map[string]*heldSession{}, map[string]*heldUser{}
		}
		u := o.users[user]
		if u == nil {
			u = &heldUser{name: user}
			o.users[user] = u
			heap.Push(&o.heap, u)
		}
		s = &heldSession{id: cl.ID, cl: cl, u: u}
		o.by[cl.ID] = s
		heap.Push(&u.sessions, s)
	}
	s.bytes += n
	s.u.bytes += n
	heap.Fix(&s.u.sessions, s.index)
	heap.Fix(&o.heap, s.u.index)
	o.bytes.Add(n)
}

// deleted takes out of the count a delivery mochi deleted from cl's
// in-flight state (OnQosDropped): a held message whose Message Expiry
// Interval passed (clearExpiredInflights [MQTT-3.3.2-5]), or one taken
// away with its session. Counted only if cl is the client the count is
// for; never below zero.
func (o *offlineHeld) deleted(cl *mqtt.Client, pk *packets.Packet) {
	if !delivery(*pk) {
		return // the client's own QoS 2 publish (PUBREC), or only an id
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.by[cl.ID]
	if s == nil || s.cl != cl {
		return
	}
	n := min(heldCostOf(pk), s.bytes)
	s.bytes -= n
	s.u.bytes -= n
	o.bytes.Add(-n)
	if s.bytes == 0 {
		o.removeLocked(s)
		return
	}
	heap.Fix(&s.u.sessions, s.index)
	heap.Fix(&o.heap, s.u.index)
}

// set counts n bytes held in cl, for user, in place of what was counted
// for its client id.
func (o *offlineHeld) set(cl *mqtt.Client, user string, n int64) {
	o.forget(cl.ID)
	if n > 0 {
		o.add(cl, user, n)
	}
}

// removeLocked forgets s (mu held).
func (o *offlineHeld) removeLocked(s *heldSession) {
	u := s.u
	heap.Remove(&u.sessions, s.index)
	delete(o.by, s.id)
	u.bytes -= s.bytes
	o.bytes.Add(-s.bytes)
	if u.sessions.Len() == 0 {
		heap.Remove(&o.heap, u.index)
		delete(o.users, u.name)
		return
	}
	heap.Fix(&o.heap, u.index)
}

// forget lets go of what was held for id: the session came back (mochi
// resends the messages), or is gone.
func (o *offlineHeld) forget(id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if s := o.by[id]; s != nil {
		o.removeLocked(s)
	}
}

// victim takes out and returns the session holding the most of the user
// holding the most, to make room for n bytes more of user's (n 0: to
// bring the count back within the bound). Nil when nothing is held, or
// when making room for user would take from user itself, or from a user
// holding no more than user would with the n bytes: what does not fit
// then is user's own to lose.
func (o *offlineHeld) victim(user string, n int64) (s *heldSession, userBytes int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.heap) == 0 {
		return nil, 0
	}
	u := o.heap[0]
	if n > 0 {
		mine := int64(0)
		if m := o.users[user]; m != nil {
			mine = m.bytes
		}
		if u.name == user || u.bytes <= mine+n {
			return nil, 0
		}
	}
	s, userBytes = u.sessions[0], u.bytes
	o.removeLocked(s)
	return s, userBytes
}

// prune forgets the sessions whose client mochi no longer holds them
// (expired, or ended with their connection).
func (o *offlineHeld) prune(holds func(cl *mqtt.Client) bool) {
	o.mu.Lock()
	var gone []*heldSession
	for _, s := range o.by {
		if !holds(s.cl) {
			gone = append(gone, s)
		}
	}
	for _, s := range gone {
		if o.by[s.id] == s {
			o.removeLocked(s)
		}
	}
	o.mu.Unlock()
}

// heldBytes is what cl, a session's mochi client, holds in flight: its
// deliveries' bytes at holdOffline's cost, and how many. A delivery is a
// publish not acknowledged, or the PUBREL of a QoS 2 one the client
// received (PUBREC) and did not complete (PUBCOMP): mochi keeps an
// 800-byte packet for each.
func heldBytes(cl *mqtt.Client) (bytes, n int64) {
	b, m := cl.State.Inflight.DeliveryBytes(func(pk *packets.Packet) int { return int(heldCostOf(pk)) })
	return int64(b), int64(m)
}

// heldCostOf is what a delivery held in flight counts: heldCost, its topic,
// its payload and its MQTT 5 properties (a PUBREL has none of them).
func heldCostOf(pk *packets.Packet) int64 {
	return int64(heldCost + len(pk.TopicName) + len(pk.Payload) + propsBytes(&pk.Properties))
}

// propsBytes is what the variable parts of p hold beyond the packet: a
// publish held keeps its publisher's properties, up to MaxPacketSize
// (user properties, correlation data, response topic, content type), and
// counted as 1 KiB they let a message hold thousands of times its count.
func propsBytes(p *packets.Properties) int {
	n := len(p.CorrelationData) + len(p.ContentType) + len(p.ResponseTopic) + len(p.ReasonString) +
		8*len(p.SubscriptionIdentifier)
	for _, u := range p.User {
		n += 32 + len(u.Key) + len(u.Val) // the two string headers, and the strings
	}
	return n
}

// countLeft counts, once cl's connection ended and its session is filed
// away (its id's takeover lock held), what cl holds in flight: what the
// connection sent and was not acknowledged, and what was held for the
// session since (holdOffline: it replaces that count). Past
// MaxOfflineBytes, held messages are dropped until the count is back
// within it, from the user holding the most (roomLocked).
func (b *Broker) countLeft(cl *mqtt.Client, user string) {
	b.arriving.lock()
	defer b.arriving.unlock()
	n, _ := heldBytes(cl)
	b.offline.set(cl, user, n)
	b.roomLocked(user, 0)
}

// roomLocked makes room for n bytes more held for a session of user
// (arriving's mutex held; n 0: brings the count back within
// MaxOfflineBytes): while they do not fit, the session holding the most
// of the user holding the most has every message it holds dropped,
// counted (offline_full) and named in one Warn line. For n > 0 it takes
// nothing from user itself, nor from a user holding no more than user
// would (offlineHeld.victim). It reports whether n fits.
func (b *Broker) roomLocked(user string, n int64) bool {
	max := int64(b.opts.MaxOfflineBytes)
	for b.offline.bytes.Load()+n > max {
		s, userBytes := b.offline.victim(user, n)
		if s == nil {
			return false
		}
		b.dropHeldLocked(s, userBytes)
	}
	return true
}

// dropHeldLocked drops the messages held for s, taken out of the count
// (arriving's mutex held; its user held userBytes with them), if its
// client still holds the session away: a client registered to take the
// session over (arriving.register) gets them, as mochi copies them, and
// they are no longer held for a session away. PUBRELs go too, their
// packet ids kept (mochi change 64): no delivery takes one, and the client
// gets a PUBREL for each when it resumes (releaseDropped).
func (b *Broker) dropHeldLocked(s *heldSession, userBytes int64) {
	if cur, ok := b.server.Clients.Get(s.id); !ok || cur != s.cl || !s.cl.Closed() {
		return
	}
	if a := b.arriving.by[s.id]; a != nil && a.cl != s.cl {
		return
	}
	b.arriving.mark(s.id)                            // what s.cl holds in flight changes (arriving.settled)
	n := int64(s.cl.State.Inflight.DropDeliveries()) // and the map's room for them (mochi change 63)
	atomic.AddInt64(&b.server.Info.Inflight, -n)
	for range n {
		s.cl.State.Inflight.IncreaseSendQuota() // as dropInflight
	}
	b.drop(dropOfflineFull, n)
	if b.logs.allow(nil, s.id, kindHeldDropped) { // clients can cause one a session away
		b.log.Warn().Str("client", s.id).Str("user", s.u.name).Int64("dropped", n).Int64("bytes", s.bytes).
			Int64("user_bytes", userBytes).Int("max_offline_bytes", b.opts.MaxOfflineBytes).
			Msg("held messages dropped: more than max_offline_bytes held for sessions away; this session held the most of the user holding the most")
	}
}

// releaseDropped gives cl, a client that resumed its session (its CONNACK
// and mochi's resend written), a PUBREL for each QoS 2 delivery whose
// PUBREL was dropped while the session was away (dropHeldLocked; mochi
// change 64 kept their packet ids): the client holds each id until then,
// and would take a new PUBLISH with it for a duplicate. Each is in flight
// again, as mochi's own PUBREL is (until PUBCOMP); one not written (the
// connection ended) is resent with the session.
func (b *Broker) releaseDropped(cl *mqtt.Client) {
	ids := cl.State.Inflight.TakeReleased()
	rels := make([]packets.Packet, 0, len(ids))
	for _, id := range ids {
		rel := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: id, Created: int64(id)}
		if !cl.State.Inflight.Set(rel) {
			continue // in flight already: NextPacketID skipped the id
		}
		atomic.AddInt64(&b.server.Info.Inflight, 1)
		cl.State.Inflight.DecreaseSendQuota() // as the delivery had, and its PUBREC (mochi's processPubrec)
		cl.State.Inflight.DecreaseReceiveQuota()
		rels = append(rels, rel)
	}
	for _, rel := range rels {
		if err := cl.WritePacket(rel); err != nil {
			return // resent with the session
		}
	}
}
