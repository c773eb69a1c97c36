package broker

import (
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// idSpaces keeps the packet ids a client gives its own packets apart from
// the ids the broker gives its deliveries to that client: they are
// separate spaces [MQTT-2.2.1-2], but mochi v2.7.9 keeps both directions
// in one in-flight map per client. There, a client's QoS 1/2 PUBLISH with
// the id of an unacknowledged delivery deletes the delivery (which a
// persistent session then never gets again), its PUBREL completes the
// delivery's flow, and its SUBSCRIBE or UNSUBSCRIBE is refused 0x91
// (packet identifier in use) — clients number from 1 as the broker does,
// so the ids collide all the time.
//
// At rest, mochi's map holds the broker's deliveries only; the client's
// QoS 2 publishes waiting for their PUBREL are kept here (inbound). While
// mochi processes a client packet that carries id X (on the connection's
// read goroutine, one packet at a time), X is reserved: a delivery in
// flight under X is taken out of mochi's map (displaced) and put back
// after, the writer takes no new delivery id X (takeInflight), and a
// client QoS 2 publish waiting under X is put in for its PUBREL.
//
// Across connections: a connection that ends puts its inbound back in
// mochi's map (session state), but for ids a delivery holds there, kept
// by keptInbound; a takeover has them put back before mochi copies the
// map (surrender); the next connection takes them all into inbound
// (adopt), each taking one of the receive quota, as it is filed and in
// the same step, under the id's takeover lock (OnSessionEstablished): a
// takeover's surrender finds them in the connection filed for the
// session, never in one not filed yet. A QoS 2 PUBLISH sent
// again before its PUBREL gets a PUBREC as the first did (resentAck).
// A QoS 2 PUBLISH the old connection is processing at the takeover gets
// its PUBREC after mochi's copy: the old reader hands it on (lateRec).
//
// Owner: the fields are guarded by mu; the read goroutine sets and clears
// the reservation, the writer asks it.
//
// Its small fields sit together after mu, so that they share a word:
// mqttOut, which holds it, stays in the 112-byte size class.
type idSpaces struct {
	mu        sync.Mutex
	reserved  uint16          // the id of the client packet being processed; 0: none
	kind      byte            // that packet's type
	gone      bool            // the session was taken over (surrender): mochi's map is left as mochi keeps it
	resent    bool            // the packet being processed is a QoS 2 PUBLISH whose id waits for its PUBREL: sent again
	qos2      bool            // the packet being processed is a QoS 2 PUBLISH
	displaced *packets.Packet // the delivery in flight under reserved, out of mochi's map meanwhile
	inbound   map[uint16]packets.Packet
	mine      *lateRec            // the QoS 2 PUBLISH being processed when the session was taken over (surrender)
	late      map[uint16]*lateRec // QoS 2 publishes a connection taken over was processing when it lost the session
	settled   chan struct{}       // closed when the packet being processed no longer holds a surrender; made by a surrender waiting for it (waitBusyLocked)
	acking    bool                // an acknowledgement of a delivery is being processed
	ackKind   byte                // its type
	phase     byte                // the PUBLISH being processed: before mochi's OnPublish (0), in it (1), after it (2)
	bounded   bool                // a waiting surrender bounded the connection's writes (relWait)
	taking    bool                // a surrender of the session to a client resuming it began: packets are refused as once it is done (gone)
}

// relWait bounds the write a takeover waits for on the old connection
// (waitBusyLocked): the PUBCOMP of the PUBREL being processed, the PUBREL
// of a delivery's PUBREC, the PUBREC of a displacing QoS 2 PUBLISH (a
// write deadline, lifted once the wait is over).
const relWait = 500 * time.Millisecond

// lateWait bounds how long a client packet with the id of a lateRec waits
// for the connection that lost the session to finish that publish.
const lateWait = 5 * time.Second

// lateRec is a client's QoS 2 PUBLISH that the connection's reader was
// processing (delivering, in OnPublish) when another connection took the
// session over: mochi puts its PUBREC in the old client's in-flight map
// after the takeover moved that map (mochi change 74; the old reader
// waits for the move, publishing), so the session's new connection
// would take the client's resend (DUP, same id) for a new message and
// deliver it again [MQTT-4.3.3-10]. The old reader resolves it when it
// has processed the publish: rec is its PUBREC, taken out of the old
// client's map (still counted in Info.Inflight, as an inbound PUBREC is),
// or nil if the publish was refused (not delivered). The session's later
// connections hold it (pending, then in inbound), or keptInbound between
// them; a packet with its id waits for it (lateWait).
//
// Owner: mu guards resolved, rec and dropped; done is closed once resolved.
type lateRec struct {
	id   uint16
	done chan struct{}

	mu       sync.Mutex
	resolved bool
	rec      *packets.Packet
	dropped  bool // the session ended: the old client's map keeps the PUBREC (mochi change 55 clears it)
}

func newLateRec(id uint16) *lateRec {
	return &lateRec{id: id, done: make(chan struct{})}
}

// resolve runs on the old client's reader once the publish is processed.
func (l *lateRec) resolve(old *mqtt.Client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.resolved {
		return
	}
	if !l.dropped {
		if pk, ok := old.State.Inflight.Get(l.id); ok && pk.FixedHeader.Type == packets.Pubrec {
			old.State.Inflight.Delete(l.id)
			l.rec = &pk
		}
	}
	l.resolved = true
	close(l.done)
}

// abandon gives up on l if it is still unresolved (a packet with its id
// waited lateWait): the old reader then leaves its PUBREC to the old
// client's map (as drop), so the client's packets with the id, answered
// as if the publish had been refused, do not meet it later (the client,
// told 0x92 for its PUBREL, may reuse the id for a new message). It says
// whether l was abandoned; a resolved l is absorbed as usual.
func (l *lateRec) abandon() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.resolved {
		return false
	}
	l.dropped = true
	return true
}

// drop says the session that would have taken the PUBREC ended. A PUBREC
// already taken is returned: the caller disposes of it.
func (l *lateRec) drop() *packets.Packet {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropped = true
	rec := l.rec
	l.rec = nil
	return rec
}

// dropLate drops lates (see lateRec.drop): a PUBREC one took already is
// still counted in Info.Inflight, where no client holds it any more.
func dropLate(info *int64, lates []*lateRec) {
	for _, l := range lates {
		if l.drop() != nil && info != nil {
			atomic.AddInt64(info, -1)
		}
	}
}

// clientFlow says whether a packet from the client carries an id of the
// client's own space (its publishes and their PUBREL, its SUBSCRIBE and
// UNSUBSCRIBE) rather than one of the broker's (PUBACK, PUBREC, PUBCOMP).
func clientFlow(pk *packets.Packet) bool {
	switch pk.FixedHeader.Type {
	case packets.Publish:
		return pk.FixedHeader.Qos > 0
	case packets.Pubrel, packets.Subscribe, packets.Unsubscribe:
		return true
	}
	return false
}

// delivery says whether an in-flight entry is one of the broker's
// deliveries (a publish waiting for PUBACK or PUBREC, or its PUBREL
// waiting for PUBCOMP) rather than a client publish's acknowledgement.
func delivery(pk packets.Packet) bool {
	return pk.FixedHeader.Type == packets.Publish || pk.FixedHeader.Type == packets.Pubrel
}

// begin runs before mochi processes pk, a packet from cl, on its read
// goroutine. It says whether pk must be refused: a QoS 2 PUBLISH read
// once the session was taken over (surrender), possibly while it waited
// for a late of its id, belongs to the session's new connection, where
// the client, which gets no PUBREC here, sends it again; delivered here
// too, it would be delivered twice [MQTT-4.3.3-10]. So are a QoS 1
// PUBLISH, a PUBREL and a delivery's acknowledgement (see below): the
// client sends them again on its new connection, or answers the
// delivery resent there. An acknowledgement being processed is marked
// (acking) for a surrender to wait for (waitBusyLocked). A session taken
// over by a client starting afresh (surrender with fresh) is not copied:
// only a QoS 2 PUBLISH is refused then.
func (s *idSpaces) begin(cl *mqtt.Client, pk *packets.Packet) (refuse bool) {
	if deliveryAck(pk) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.taking {
			// The delivery it acknowledges was copied to the new
			// client, which resends it: changed here after the copy, it
			// was counted out of Info.Inflight twice.
			return true
		}
		s.acking, s.ackKind = !s.gone, pk.FixedHeader.Type
		return false
	}
	if !clientFlow(pk) || pk.PacketID == 0 {
		return false
	}
	id := pk.PacketID
	s.mu.Lock()
	if l := s.late[id]; l != nil {
		s.mu.Unlock()
		l.wait()
		s.mu.Lock()
		if !s.gone && s.late[id] == l && l.abandon() {
			// Given up on (lateWait): this packet goes on as if the
			// publish had been refused, and so do the id's next ones.
			delete(s.late, id)
		}
	}
	defer s.mu.Unlock()
	if s.taking {
		// A PUBLISH (QoS 1 or 2) or PUBREL is refused too: mochi would
		// look its id up in this client's map, which holds the session's
		// deliveries (being copied to the new client, or copied already):
		// it deleted the delivery of that id (a PUBLISH, as answered), or
		// completed it (a PUBREL, with a PUBCOMP written here), and the
		// client, which sends it again on its new connection, never got
		// that delivery's PUBREL, or lost it.
		return pk.FixedHeader.Type == packets.Publish || pk.FixedHeader.Type == packets.Pubrel
	}
	if s.gone {
		return pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 2
	}
	s.absorbLocked(cl)
	s.reserved, s.kind, s.phase = id, pk.FixedHeader.Type, 0
	s.qos2 = pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 2
	if cur, ok := cl.State.Inflight.Get(id); ok && delivery(cur) {
		cl.State.Inflight.Delete(id)
		// A copy made here only: were cur's address taken, cur would be
		// moved to the heap for every publish with an id (a packet, 900
		// bytes, allocated a QoS 1 publish), displaced or not.
		displaced := cur
		s.displaced = &displaced
	}
	if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos == 2 {
		_, s.resent = s.inbound[id]
		if cur, ok := cl.State.Inflight.Get(id); ok && cur.FixedHeader.Type == packets.Pubrec {
			s.resent = true
		}
	}
	if s.resent {
		// mochi refuses a publish when the receive quota is spent
		// before it finds the id waiting (and takes no quota for it):
		// the resend of one the quota counts is let through.
		cl.State.Inflight.IncreaseReceiveQuota()
	}
	if in, ok := s.inbound[id]; ok && (pk.FixedHeader.Type == packets.Pubrel || pk.FixedHeader.Type == packets.Publish) {
		// Its PUBREL completes it; a resent PUBLISH finds it in use.
		delete(s.inbound, id)
		cl.State.Inflight.Set(in)
	}
	return false
}

// end runs after mochi processed pk: a client QoS 2 publish now waiting
// for its PUBREL leaves mochi's map for inbound, and the displaced
// delivery goes back.
func (s *idSpaces) end(cl *mqtt.Client, pk *packets.Packet) {
	if deliveryAck(pk) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.acking = false
		s.settledLocked()
		return
	}
	if !clientFlow(pk) || pk.PacketID == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone {
		if s.mine != nil {
			s.mine.resolve(cl)
			s.mine = nil
		}
		return
	}
	s.settleLocked(cl)
}

func (s *idSpaces) settleLocked(cl *mqtt.Client) {
	id := s.reserved
	if id == 0 {
		s.settledLocked()
		return
	}
	if cur, ok := cl.State.Inflight.Get(id); ok && !delivery(cur) {
		cl.State.Inflight.Delete(id)
		// A PUBCOMP left there is one mochi could not write (the
		// connection ended): the flow is still open, counted in
		// Info.Inflight, and the client sends its PUBREL again; it is
		// kept as a PUBREC is, so the next connection answers it.
		if cur.FixedHeader.Type == packets.Pubrec || cur.FixedHeader.Type == packets.Pubcomp {
			if s.inbound == nil {
				s.inbound = map[uint16]packets.Packet{}
			}
			s.inbound[id] = cur
		}
	}
	if s.displaced != nil {
		cl.State.Inflight.Set(*s.displaced)
		s.displaced = nil
	}
	if s.resent {
		cl.State.Inflight.DecreaseReceiveQuota()
	}
	s.reserved, s.kind, s.resent, s.qos2, s.phase = 0, 0, false, false, 0
	s.settledLocked()
}

// settledLocked tells a surrender waiting for the packet being processed
// that it no longer holds it (busyLocked; mu held).
func (s *idSpaces) settledLocked() {
	if s.settled != nil && !s.busyLocked() {
		close(s.settled)
		s.settled = nil
	}
}

// busyLocked says whether the packet cl's reader is processing changes
// cl's map in a way mochi's copy to the client taking the session over
// must not miss or overlap (mu held): a delivery's acknowledgement, a
// PUBREL (mochi completes the flow of its PUBREC, which begin put in the
// map), a QoS 1 PUBLISH until mochi's OnPublish (before it, mochi looks
// its id up and deletes a delivery there: the displaced one, put back by
// the surrender), a QoS 2 PUBLISH that displaced a delivery until it is
// settled (mochi sets its PUBREC under the delivery's id after
// OnPublish). A SUBSCRIBE or UNSUBSCRIBE only reads the map, a QoS 1
// PUBLISH in or after OnPublish (blocked on a full subscriber queue, say)
// leaves it alone, and a QoS 2 PUBLISH without a displaced delivery is
// handed on (lateRec): none holds the takeover. Nor does a QoS 2 PUBLISH
// that displaced a delivery while it is in OnPublish (blocked there as
// well): mochi has looked its id up, the delivery goes back to the map
// mochi moves, and its PUBREC waits for the move (publishing).
func (s *idSpaces) busyLocked() bool {
	switch {
	case s.acking:
		return true
	case s.reserved == 0:
		return false
	case s.kind == packets.Pubrel:
		return true
	case s.kind != packets.Publish:
		return false
	case s.qos2:
		return s.displaced != nil && s.phase != 1
	}
	return s.phase == 0
}

// writesLocked says whether the packet a surrender waits for has mochi
// write to the client before it is settled (mu held): a PUBREL's
// PUBCOMP, a delivery's PUBREC's PUBREL, a QoS 2 PUBLISH's PUBREC once
// OnPublish returned. A client that stopped reading holds that write,
// and the surrender, up to WriteTimeout: it is bounded by relWait.
func (s *idSpaces) writesLocked() bool {
	switch {
	case s.acking:
		return s.ackKind == packets.Pubrec
	case s.kind == packets.Pubrel:
		return true
	}
	return s.qos2 && s.phase == 2
}

// boundLocked bounds cl's writes by relWait for a waiting surrender
// (mu held), once.
func (s *idSpaces) boundLocked(cl *mqtt.Client) {
	s.boundAtLocked(cl, time.Now().Add(relWait))
}

// boundAtLocked bounds cl's writes at t for a waiting surrender (mu
// held), unless they are bounded already.
func (s *idSpaces) boundAtLocked(cl *mqtt.Client, t time.Time) {
	if s.bounded || cl.Net.Conn == nil {
		return
	}
	s.bounded = true
	_ = cl.Net.Conn.SetWriteDeadline(t)
}

// publishing runs as mochi hands pk, the PUBLISH being processed, to
// OnPublish (in true) and once OnPublish returns (in false): mochi has
// looked its id up, and a QoS 1 PUBLISH no longer holds a surrender; a
// QoS 2 PUBLISH's PUBREC is written next, bounded if a surrender waits.
//
// Once the session was taken over (gone) it says what the caller does:
// refuse, in OnPublish, a QoS 2 PUBLISH other than the one the surrender
// handed on (mine): it is a resend whose PUBREC moved with the session
// (begin put it in the map for mochi's lookup, which came after mochi
// moved it), sent again on the new connection and answered there;
// delivered here, it was delivered twice [MQTT-4.3.3-10]. And wait, as
// OnPublish returns mine, for the takeover to have moved the map (the
// id's takeover lock, which it holds till then): mochi sets mine's PUBREC
// next, and the delivery it displaced went back to the map for the move
// (surrender); set before, the PUBREC replaced it there.
func (s *idSpaces) publishing(cl *mqtt.Client, pk *packets.Packet, in bool) (refuse, wait bool) {
	if pk.FixedHeader.Qos == 0 || pk.PacketID == 0 {
		return false, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.publishingLocked(cl, pk, in)
}

// publishingLocked is publishing with mu held, for a QoS 1/2 PUBLISH.
func (s *idSpaces) publishingLocked(cl *mqtt.Client, pk *packets.Packet, in bool) (refuse, wait bool) {
	if s.gone && pk.FixedHeader.Qos == 2 {
		mine := s.mine != nil && s.mine.id == pk.PacketID
		return in && !mine, !in && mine
	}
	if s.reserved != pk.PacketID || s.kind != packets.Publish {
		return false, false
	}
	s.phase = 2
	if in {
		s.phase = 1
	}
	if s.settled != nil && s.writesLocked() {
		s.boundLocked(cl)
	}
	s.settledLocked()
	return false, false
}

// deliveryAck says whether pk acknowledges one of the broker's
// deliveries (PUBACK, PUBREC, PUBCOMP).
func deliveryAck(pk *packets.Packet) bool {
	switch pk.FixedHeader.Type {
	case packets.Puback, packets.Pubrec, packets.Pubcomp:
		return true
	}
	return false
}

// waitBusyLocked waits (mu held, let go meanwhile), at most lateWait,
// while the packet cl's reader is processing changes cl's map
// (busyLocked): till end settles it (or stop, if the connection ends),
// or a QoS 1 PUBLISH reaches OnPublish (publishing). A PUBREL's PUBREC,
// say, is in cl's map (begin put it there): copied to the client taking
// the session over, and completed by mochi on cl too, the flow was
// counted out of Info.Inflight twice (once per client), or, when cl
// could not write its PUBCOMP, the PUBCOMP left in cl's map was dropped
// uncounted by settle. Settled, the PUBREC is gone (completed) or a
// PUBCOMP waits in inbound, and goes to the session's next connection
// with the rest. The write such a packet makes is bounded by relWait
// (writesLocked), the bound lifted after the wait: writes after it, the
// takeover's DISCONNECT too, have theirs. A packet that still holds the
// surrender after relWait has the connection's writes bounded then (now):
// it may wait for a write writesLocked does not know of, mochi's refusal
// of a PUBLISH before OnPublish (a PUBACK 0x97 over max_user_properties,
// 0x87 by the ACL), behind a write to a client that stopped reading; the
// CONNACK waited lateWait (TestTakeoverNotHeldByRefusedPublishWrite).
//
// Woken, it asks again: the packet may be busy again by the time it has
// mu back. A QoS 2 PUBLISH that displaced a delivery wakes it as mochi
// hands it to OnPublish (not busy), but OnPublish may return and mochi
// set its PUBREC in the map under the delivery's id before the woken
// surrender runs (busy again): going on, the surrender put the delivery
// back over the PUBREC, which was lost (the client's resend on the new
// connection delivered a second time, the PUBREC still counted in
// Info.Inflight: TestSurrenderWaitsAgainForPubrec, TestQoS2ReconnectStorm
// about 1 run in 50 under -race). The bounds hold for the whole wait.
func (s *idSpaces) waitBusyLocked(cl *mqtt.Client) {
	if !s.busyLocked() {
		return
	}
	early := time.NewTimer(relWait)
	t := time.NewTimer(lateWait)
	defer early.Stop()
	defer t.Stop()
	for over := false; !over && s.busyLocked(); {
		if s.writesLocked() {
			s.boundLocked(cl)
		}
		ch := make(chan struct{})
		s.settled = ch
		s.mu.Unlock()
		select {
		case <-ch:
		case <-early.C:
			s.mu.Lock()
			s.boundAtLocked(cl, time.Now())
			s.mu.Unlock()
			select {
			case <-ch:
			case <-t.C:
				over = true
			}
		case <-t.C:
			over = true
		}
		s.mu.Lock()
		if s.settled == ch {
			s.settled = nil
		}
	}
	if s.bounded && cl.Net.Conn != nil {
		_ = cl.Net.Conn.SetWriteDeadline(time.Time{})
	}
	s.bounded = false
}

// wait waits, at most lateWait, for the connection that lost the
// session to finish the QoS 2 PUBLISH (resolve), so a resend of it (or
// its PUBREL) on the session's connection finds its PUBREC. Past the
// bound the packet goes on as if the publish had been refused (a resend
// is delivered again): the old reader is held by a hook; begin then
// abandons l, so no later packet waits for it again.
func (l *lateRec) wait() {
	t := time.NewTimer(lateWait)
	defer t.Stop()
	select {
	case <-l.done:
	case <-t.C:
	}
}

// absorbLocked takes the resolved lates' PUBRECs into inbound (mu held):
// each takes one of the receive quota, as adopt's.
func (s *idSpaces) absorbLocked(cl *mqtt.Client) {
	for id, l := range s.late {
		l.mu.Lock()
		resolved, rec := l.resolved, l.rec
		l.rec = nil
		l.mu.Unlock()
		if !resolved {
			continue
		}
		delete(s.late, id)
		if rec == nil {
			continue
		}
		if s.inbound == nil {
			s.inbound = map[uint16]packets.Packet{}
		}
		s.inbound[id] = *rec
		cl.State.Inflight.DecreaseReceiveQuota()
	}
}

// lateLocked returns the lates still unresolved (mu held), which are
// handed on with the session.
func (s *idSpaces) lateLocked() []*lateRec {
	var out []*lateRec
	for _, l := range s.late {
		out = append(out, l)
	}
	s.late = nil
	return out
}

// resentAck says whether a PUBREC with id answers a QoS 2 PUBLISH sent
// again before its PUBREL (the PUBREC was lost, say): mochi refuses it
// 0x91 (packet identifier in use), which ends the flow for an MQTT 5
// client, though the message was delivered and its PUBREC awaits a
// PUBREL; it is acknowledged as the first was [MQTT-4.3.3-10].
func (s *idSpaces) resentAck(id uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resent && id == s.reserved
}

// surrender runs when another client takes cl's session over, before
// mochi copies cl's in-flight map to it (inheritClientSession): what the
// map lacks goes back into it — the delivery displaced by a packet being
// processed, and the client's QoS 2 publishes waiting for PUBREL, or the
// new client would resend none of the first and take a resent PUBLISH of
// the second for a new message (delivered twice) [MQTT-4.3.3-10]. From
// then on cl's packets leave the map as mochi keeps it.
// It returns the publishes whose id a delivery holds in the map (for
// keptInbound), and the lates the session's next connection waits for:
// the QoS 2 PUBLISH being processed, if any (its PUBREC is set after
// mochi copies the map: end resolves it), and those cl itself waited for.
//
// fresh: the client taking over starts afresh, and mochi copies nothing
// (it clears cl's map): nothing is waited for, and cl's reader goes on
// as before, but for QoS 2 publishes (begin).
func (s *idSpaces) surrender(cl *mqtt.Client, fresh bool) (map[uint16]packets.Packet, []*lateRec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !fresh {
		s.taking = true // no packet begins while it waits
		s.waitBusyLocked(cl)
	}
	s.absorbLocked(cl)
	left := s.restoreLocked(cl)
	late := s.lateLocked()
	if s.qos2 && !s.resent && s.reserved != 0 {
		s.mine = newLateRec(s.reserved)
		late = append(late, s.mine)
	}
	s.reserved, s.kind, s.qos2, s.resent, s.phase = 0, 0, false, false, 0
	s.gone = true
	return left, late
}

// restoreLocked puts the displaced delivery and the inbound publishes
// back in cl's map (mu held). It returns the inbound publishes whose id a
// delivery holds there: they cannot go in, but are still session state (a
// resent PUBLISH with their id is not a new message).
func (s *idSpaces) restoreLocked(cl *mqtt.Client) map[uint16]packets.Packet {
	if s.displaced != nil {
		cl.State.Inflight.Set(*s.displaced)
		s.displaced = nil
	}
	var left map[uint16]packets.Packet
	for id, in := range s.inbound {
		if _, ok := cl.State.Inflight.Get(id); !ok {
			cl.State.Inflight.Set(in)
		} else {
			if left == nil {
				left = map[uint16]packets.Packet{}
			}
			left[id] = in
		}
	}
	s.inbound = nil
	return left
}

// adopt starts the connection of cl, resuming its session, with its
// client's QoS 2 publishes kept for it (keptInbound). Each of them, and
// of those in mochi's map, takes one of the receive quota the broker
// gives the client, as on the connection that received them (mochi gives
// a resumed session its whole quota: a client reconnecting could have the
// broker keep up to 65,535 of them).
//
// Those in mochi's map (put back when the last connection ended, and
// resent there as PUBRECs) leave it for inbound: at rest the map holds
// deliveries only, and the writer counts it against the client's Receive
// Maximum.
func (s *idSpaces) adopt(cl *mqtt.Client, kept map[uint16]packets.Packet, late []*lateRec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inbound = kept
	for _, l := range late {
		if s.late == nil {
			s.late = map[uint16]*lateRec{}
		}
		s.late[l.id] = l
	}
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type != packets.Pubrec {
			continue
		}
		if s.inbound == nil {
			s.inbound = map[uint16]packets.Packet{}
		}
		cl.State.Inflight.Delete(pk.PacketID)
		s.inbound[pk.PacketID] = pk
	}
	for range s.inbound {
		cl.State.Inflight.DecreaseReceiveQuota()
	}
}

// stop settles the packet cl's reader was processing when the
// connection ended (its reader has stopped), as end would have: a
// surrender waiting for it goes on. dropConn calls it before it waits
// for the id's takeover lock, which that surrender holds.
func (s *idSpaces) stop(cl *mqtt.Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acking = false
	if !s.gone {
		s.settleLocked(cl)
	}
	s.settledLocked()
}

// close runs when cl's connection ends, before its session's messages
// are handed on: a delivery still displaced (mochi stopped in the middle
// of a packet) goes back, and the client's QoS 2 publishes waiting for
// PUBREL go back to mochi's map where no delivery holds their id, so a
// resumed session still knows them (where one does, the PUBREL is
// answered 0x92 and the publish, already delivered, stays delivered).
//
// It returns the publishes whose id a delivery holds (for keptInbound),
// and the lates still unresolved (kept for the session too, or dropped).
// A connection taken over resolves its own late (end, had mochi stopped
// before it).
func (s *idSpaces) close(cl *mqtt.Client) (map[uint16]packets.Packet, []*lateRec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.acking = false
	if s.gone {
		if s.mine != nil {
			s.mine.resolve(cl)
			s.mine = nil
		}
		return nil, nil
	}
	s.settleLocked(cl)
	s.absorbLocked(cl)
	return s.restoreLocked(cl), s.lateLocked()
}

// keptInbound keeps, by client id, a persistent session's client QoS 2
// publishes waiting for PUBREL that could not go back in mochi's in-flight
// map when its connection ended (a delivery held their ids) until a
// client resumes the session (its connection's idSpaces adopts them) —
// at most the broker's Receive Maximum a session. An entry is for the
// session of its client: a client that starts clean, or another user's,
// or the session's end (prune) discards it.
//
// Owner: mu guards by; the connection hooks and the $SYS ticker take it.
type keptInbound struct {
	mu sync.Mutex
	by map[string]keptIDs
}

type keptIDs struct {
	cl   *mqtt.Client // the session's client: the one that ended, then the one taking it
	pks  map[uint16]packets.Packet
	late []*lateRec // publishes a connection taken over was processing (lateRec)
}

// put keeps pks and late for the session of cl, whose connection ended.
func (k *keptInbound) put(cl *mqtt.Client, pks map[uint16]packets.Packet, late []*lateRec) {
	if len(pks) == 0 && len(late) == 0 {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.by == nil {
		k.by = map[string]keptIDs{}
	}
	k.by[cl.ID] = keptIDs{cl: cl, pks: pks, late: late}
}

// handOver runs when cl takes over the session of existing (before mochi
// moves it, OnSessionEstablish); fresh: cl starts a session of its own.
// What was kept for existing's session, or surrendered by its live
// connection (left, late), is kept for cl. What is not kept, its lates
// are dropped (info: Info.Inflight, for a PUBREC one took already).
func (k *keptInbound) handOver(info *int64, existing, cl *mqtt.Client, fresh bool, left map[uint16]packets.Packet, late []*lateRec) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e, ok := k.by[cl.ID]
	delete(k.by, cl.ID)
	if fresh || existing == nil {
		dropLate(info, e.late)
		dropLate(info, late)
		return
	}
	if !ok || e.cl != existing {
		dropLate(info, e.late)
		e = keptIDs{}
	}
	for id, pk := range left {
		if e.pks == nil {
			e.pks = map[uint16]packets.Packet{}
		}
		e.pks[id] = pk
	}
	e.late = append(e.late, late...)
	if len(e.pks) > 0 || len(e.late) > 0 {
		if k.by == nil {
			k.by = map[string]keptIDs{}
		}
		k.by[cl.ID] = keptIDs{cl: cl, pks: e.pks, late: e.late}
	}
}

// take returns what is kept for cl (its connection is being filed).
func (k *keptInbound) take(cl *mqtt.Client) (map[uint16]packets.Packet, []*lateRec) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e, ok := k.by[cl.ID]
	if !ok || e.cl != cl {
		return nil, nil
	}
	delete(k.by, cl.ID)
	return e.pks, e.late
}

// prune discards what is kept for sessions that ended: cur reports the
// session's client for a client id, if any (info: Info.Inflight, for a
// late's PUBREC, see dropLate).
func (k *keptInbound) prune(info *int64, cur func(id string) (*mqtt.Client, bool)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for id, e := range k.by {
		if cl, ok := cur(id); !ok || (cl != e.cl && e.cl.Closed()) {
			dropLate(info, e.late)
			delete(k.by, id)
		}
	}
}

// displacedN is the number of deliveries in flight that are out of
// mochi's map meanwhile (0 or 1): the writer counts them against the
// client's Receive Maximum with the map's [MQTT-3.3.4-9].
func (s *idSpaces) displacedN() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.displaced != nil {
		return 1
	}
	return 0
}

// clientAck says whether an acknowledgement mochi completed with id is
// of the client's own publish being processed (OnQosComplete is called
// for both directions).
func (s *idSpaces) clientAck(id uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return id != 0 && id == s.reserved && (s.kind == packets.Publish || s.kind == packets.Pubrel)
}

// holdsLocked says whether the client's packet being processed holds id
// (mu held): the one reserved, or the QoS 2 PUBLISH a surrender handed on
// (mine), whose PUBREC mochi sets in the map under id after the takeover.
func (s *idSpaces) holdsLocked(id uint16) bool {
	return id == s.reserved || s.mine != nil && id == s.mine.id
}

// take gives pk a delivery packet id that is free in mochi's map and not
// reserved (s nil: a session with no connection, nothing reserved), and
// records pk in flight, with Created set to the id (see takeInflight). It
// reports whether the map took it.
func (s *idSpaces) take(cl *mqtt.Client, pk *packets.Packet) (bool, error) {
	if s != nil {
		s.mu.Lock()
		defer s.mu.Unlock()
	}
	id, err := cl.NextPacketID()
	if err != nil {
		return false, err
	}
	for tries := 0; s != nil && s.holdsLocked(uint16(id)); tries++ {
		if tries == 2 { // the only ids left
			return false, packets.ErrQuotaExceeded
		}
		if id, err = cl.NextPacketID(); err != nil {
			return false, err
		}
	}
	pk.PacketID = uint16(id)
	pk.Created = int64(pk.PacketID)
	return cl.State.Inflight.Set(*pk), nil
}
