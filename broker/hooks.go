package broker

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// hook is the MQTT front end: mochi's hooks, turned into calls of the
// broker's door. mochi parses packets, keeps sessions, subscriptions and
// in-flight state, and writes acks; everything else is the door's.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "mote" }

// Provides names the mochi hook methods the broker implements. A switch,
// not a search of a slice: mochi asks it once per hook method it calls,
// several times for every packet read (issue 15, bench/README.md "mochi's
// read path").
func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck,
		mqtt.OnSessionEstablish, mqtt.OnSessionEstablished, mqtt.OnDisconnect,
		mqtt.OnPacketRead, mqtt.OnPublish, mqtt.OnPacketProcessed,
		mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnUnsubscribe, mqtt.OnUnsubscribed,
		mqtt.OnWill, mqtt.OnPacketEncode, mqtt.OnRetainMessage,
		mqtt.OnQosComplete, mqtt.OnQosDropped, mqtt.OnClientExpired, mqtt.OnAuthPacket:
		return true
	}
	return false
}

// OnAuthPacket refuses every AUTH packet: Mote has no enhanced
// authentication, so OnConnect refuses an Authentication Method and no
// client has one, and a client without one MUST NOT send AUTH (§4.12): a
// Protocol Error, DISCONNECT 0x82 (mochi ignored it).
func (h *hook) OnAuthPacket(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if h.b.logs.allow(h.quota(cl), cl.ID, codeKind(packets.ErrProtocolViolation)) {
		h.b.log.Warn().Str("client", truncate(cl.ID, 200)).Str("remote", cl.Net.Remote).Msg("AUTH packet refused: no enhanced authentication")
	}
	return pk, packets.ErrProtocolViolation
}

// mqttPrincipal is who an MQTT client acts as.
func mqttPrincipal(cl *mqtt.Client) Principal {
	return Principal{User: string(cl.Properties.Username), ClientID: cl.ID, mqtt: true, original: isOriginal(cl.Net.Listener)}
}

// quota is the log slot (quota) of cl's connection (logBudget), nil while it
// has none.
func (h *hook) quota(cl *mqtt.Client) *logSlot {
	if c := h.conn(cl); c != nil {
		return c.p.logs
	}
	return nil
}

// conn is cl's connection while it is filed (Broker.conns), else nil. The
// hooks ask it several times a packet: a client on one of the broker's
// listeners has it on its netConn (netConn.filed), kept with the map.
func (h *hook) conn(cl *mqtt.Client) *conn {
	if nc, ok := cl.Net.Conn.(*netConn); ok {
		return nc.filed.Load()
	}
	c, _ := h.b.conns.load(cl)
	return c
}

// OnConnect decides whether a client may connect, before mochi answers:
// its credentials, its keep-alive, its will (a publish of the client's,
// with the same checks), and whose session its client id names. A refusal
// is written here, with the reason code; mochi then closes the connection.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	b := h.b
	p := mqttPrincipal(cl)
	v5 := cl.Properties.ProtocolVersion == 5
	refuse := func(code packets.Code, why string) error {
		if b.logs.allow(nil, cl.ID, codeKind(code)) {
			b.log.Warn().Str("client", truncate(cl.ID, 200)).Str("user", truncate(p.User, 200)).Str("remote", cl.Net.Remote).Str("reason", why).Msg("connection refused")
		}
		if !v5 {
			code = v3Connack(code)
		}
		b.server.SendConnack(cl, code, false, nil) //nolint:errcheck // the connection closes either way
		return code
	}
	if p.original && v5 {
		// The dialect has no properties to carry Mote's MQTT 5 forms, and
		// its subscriptions would answer on topics an MQTT 5 client does
		// not expect: it belongs on the other listeners.
		b.countRefusal(refusedOther)
		return refuse(packets.ErrUnsupportedProtocolVersion, "MQTT 5 on the original-dialect listener (it speaks MQTT 3.1.1 only; use the MQTT listener)")
	}
	if v5 && pk.Properties.AuthenticationMethod != "" {
		// Mote has no enhanced authentication (§4.12), only user names
		// and passwords: a method it does not support is refused and
		// the connection closed [MQTT-4.12.0-1].
		b.countRefusal(refusedOther)
		return refuse(packets.ErrBadAuthenticationMethod, fmt.Sprintf("authentication method %q not supported (user name and password only)", truncate(pk.Properties.AuthenticationMethod, 64)))
	}
	if v5 && len(pk.Properties.AuthenticationData) > 0 {
		// Authentication Data without a method: a Protocol Error (§3.1.2.11.10).
		b.countRefusal(refusedOther)
		return refuse(packets.ErrProtocolViolation, "authentication data without an authentication method")
	}
	if err := b.login(cl.Net.Remote, p.User, pk.Connect.Password, pk.Connect.UsernameFlag); err != nil {
		if errors.Is(err, ErrThrottled) {
			b.log.Debug().Str("client", truncate(cl.ID, 200)).Str("user", truncate(p.User, 200)).Str("remote", cl.Net.Remote).Err(err).Msg("connection refused")
			code := packets.ErrConnectionRateExceeded
			if !v5 {
				code = v3Connack(code)
			}
			b.server.SendConnack(cl, code, false, nil) //nolint:errcheck // the connection closes either way
			return code
		}
		return refuse(packets.ErrBadUsernameOrPassword, "authentication failed")
	}
	if p.original {
		cl.State.Keepalive = originalKeepalive(cl)
	}
	if max := b.opts.MaxKeepAlive; max > 0 {
		switch {
		case v5 && (cl.State.Keepalive > max || cl.State.Keepalive == 0):
			cl.State.ServerKeepalive, cl.State.Keepalive = true, max // told in CONNACK [MQTT-3.1.2-21]
		case !v5 && cl.State.Keepalive > max: // MQTT 3.1.1 cannot be told (Mosquitto's rule; 0 is let through)
			b.countRefusal(refusedClientID)
			return refuse(packets.ErrClientIdentifierNotValid, "keep-alive above the broker's maximum")
		}
	}
	if w := willOf(p, &pk); w != nil {
		if _, err := b.prepare(p, &w.m); err != nil {
			code := b.refuse(p, "will", w.m.Topic, err)
			return refuse(code, "will refused: "+err.Error())
		}
	}
	if old, ok := b.server.Clients.Get(cl.ID); ok && userOf(old) != p.User {
		// Another user's session: refused, or (TakeoverFresh) dropped if
		// nobody is connected on it — a live connection of another user is
		// never cut off. The fast path: takeoverCheck decides again under
		// the id's takeover lock, about the client the id has then.
		if b.takeoverRefused(old) {
			b.countRefusal(refusedClientID)
			return refuse(packets.ErrClientIdentifierNotValid, "client id in use by another user's session")
		}
		b.dropSession(old)
	}
	return nil
}

// takeoverRefused reports whether a client of another user than old's
// may not take old's client id: the policy refuses it, or old is
// connected (a live connection of another user is never cut off).
func (b *Broker) takeoverRefused(old *mqtt.Client) bool {
	return b.opts.Takeover == TakeoverRefuse || !old.Closed()
}

// takeoverCheck is mochi's Options.TakeoverCheck: it decides, under the
// client id's takeover lock, whether cl takes the id over from old, the
// client filed for it now. OnConnect's check came before the lock: a
// client of another user could file itself under the id between the two,
// and the takeover then cut off that user's live connection and, for a
// CONNECT resuming its session, copied that user's subscriptions and
// in-flight messages to cl. Old's own user takes the id over as MQTT
// says; another user is refused (CONNACK 0x85, 3.1.1 0x02) or, with
// TakeoverFresh and old offline, starts a session of its own, old's
// ended.
func (b *Broker) takeoverCheck(old, cl *mqtt.Client, _ packets.Packet) mqtt.Takeover {
	if userOf(old) == userOf(cl) {
		return mqtt.Takeover{}
	}
	if b.takeoverRefused(old) {
		b.countRefusal(refusedClientID)
		if b.logs.allow(nil, cl.ID, codeKind(packets.ErrClientIdentifierNotValid)) {
			b.log.Warn().Str("client", truncate(cl.ID, 200)).Str("user", truncate(userOf(cl), 200)).Str("remote", cl.Net.Remote).Str("reason", "client id in use by another user's session").Msg("connection refused")
		}
		return mqtt.Takeover{Refuse: true, Code: packets.ErrClientIdentifierNotValid}
	}
	return mqtt.Takeover{Fresh: true}
}

// v3Connack is the MQTT 3.1.1 CONNACK return code for an MQTT 5 reason.
func v3Connack(code packets.Code) packets.Code {
	if c, ok := packets.V5CodesToV3[code]; ok {
		return c
	}
	return packets.Err3NotAuthorized
}

// dropSession ends another user's offline session on a client id that a
// new client takes (TakeoverFresh): the new client starts clean. Under
// the id's takeover lock, and only while old is still the id's session
// (mochi's RemoveSession): removed by id, a session that a CONNECT had
// taken over meanwhile lost the new client's filing and subscriptions.
// What mochi held for old (in flight) is counted as dropped.
func (b *Broker) dropSession(old *mqtt.Client) {
	var n int64
	if b.server.RemoveSessionWith(old, func() {
		b.arriving.end(b, old) // nothing more held for it: n is final
		n = heldPublishes(old)
		b.away.goneLocked(old)
		b.offline.forget(old.ID)
		b.forgetTrees(old.ID)
	}) {
		b.drop(dropSessionEnded, n)
	}
}

// heldPublishes counts the deliveries in flight on cl, a session's mochi
// client: what a session that is replaced (a clean start, another user's
// client) or dropped loses of them.
func heldPublishes(cl *mqtt.Client) int64 {
	n := int64(0)
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type == packets.Publish {
			n++
		}
	}
	return n
}

// OnConnectAuthenticate lets through what OnConnect accepted.
func (h *hook) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

// OnACLCheck answers mochi's checks. Publishes are the door's to check
// (per row for trees), so mochi lets them through; subscriptions to plain
// filters are checked here, tree filters per row by the tree core.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	// (mochi asks no more of a publish: PublishesChecked)
	if write || cl.Net.Inline {
		return true
	}
	if isTreeFilter(topic) {
		return true
	}
	return h.b.access.canSubscribe(mqttPrincipal(cl), topic)
}

// OnSessionEstablish runs before mochi moves the session of cl's client
// id to cl (copies the old client's in-flight messages, files cl), under
// the id's takeover lock and after takeoverCheck let cl take the id: from
// now on what is held for the session waits for cl's connection
// (arriving.register), and the connection the session had (live, or
// handing its queued messages on) keeps them for cl's (conn.expect).
//
// It also keeps the client's will (connWills) until its connection holds
// it: mochi establishes the session before it writes the CONNACK, and a
// connection that ends then, its CONNACK not written, publishes its will
// as any connection closed without DISCONNECT [MQTT-3.1.2-8] (OnWill).
func (h *hook) OnSessionEstablish(cl *mqtt.Client, pk packets.Packet) {
	if w := willOf(mqttPrincipal(cl), &pk); w != nil {
		w.seq = h.b.wills.seq.Add(1) // under the id's takeover lock: in the order the session changes hands
		h.b.connWills.Store(cl, w)
	}
	existing, _ := h.b.server.Clients.Get(cl.ID)
	h.b.away.backLocked(cl.ID) // cl takes the session, or ends it
	// The session cl's CONNECT names ended: Clean Start [MQTT-3.1.2-4],
	// another user's, or one that lasted only as long as its live
	// connection, which cl cuts off (MQTT 3.1.1 CleanSession 1, MQTT 5
	// Session Expiry 0: mochi change 51); cl starts afresh.
	ended := pk.Connect.Clean || existing != nil && string(existing.Properties.Username) != string(cl.Properties.Username)
	fresh := ended || existing != nil && existing.SessionEndsWithConnection()
	var left map[uint16]packets.Packet
	var late []*lateRec
	old := h.b.arriving.register(h.b, cl, fresh)
	// What was counted held for the session away goes: cl gets it (mochi
	// copies it, and resends it) or it ends with the old session. Here,
	// under the id's takeover lock and after register (nothing is held for
	// the old client after it), not in OnSessionEstablished: that may come
	// after a later CONNECT took the session over and left it away again,
	// counted (countLeft), and forgot that count.
	h.b.offline.forget(cl.ID)
	if old != nil {
		if o, ok := old.outOf(); ok && o.cl != cl {
			afresh := fresh || old.p.User != string(cl.Properties.Username)
			left, late = o.ids.surrender(o.cl, afresh) // before mochi copies its in-flight map
			old.expect(cl, afresh)
		}
	}
	if fresh {
		// The marks of the $tree subscriptions of the session cl replaces,
		// if any, and any left behind: after expect, so that a detach of
		// its connection that the loop runs after this keeps none
		// (keepTrees).
		h.b.forgetTrees(cl.ID)
	}
	// existing's connection, cut off now, has its will due now; with the
	// id's delayed wills it is published (ended: once the lock is let go,
	// OnSessionEstablished, or OnDisconnect if the CONNACK fails) or set
	// aside until cl's CONNACK cancels it (wills.takeover).
	h.b.wills.takeover(cl, existing, func() *will { return h.b.takenWill(existing) }, ended, fresh)
	if fresh && existing != nil {
		// mochi drops what existing holds in flight (after register: no
		// more is held for it), counted here.
		h.b.drop(dropSessionEnded, heldPublishes(existing))
	}
	h.b.keptIn.handOver(&h.b.server.Info.Inflight, existing, cl, fresh, left, late)
}

// takenWill is the will of existing, a client whose id a CONNECT takes
// over (its connection cut off now), nil if it has none or left with
// DISCONNECT: its CONNECT's (connWills) or its connection's.
// OnSessionEstablished puts it in the connection before it takes it out
// of connWills, so one of the two holds it.
func (b *Broker) takenWill(existing *mqtt.Client) *will {
	if existing == nil {
		return nil
	}
	if c, ok := existing.StopCause().(packets.Code); ok && c == packets.CodeDisconnect {
		return nil // [MQTT-3.1.2-10]
	}
	if w, ok := b.connWills.Load(existing); ok {
		return w.(*will)
	}
	if c, ok := b.conns.load(existing); ok {
		return c.will.Load()
	}
	return nil
}

// OnSessionEstablished starts the connection's state, cancels a will its
// client id left waiting (publishes it, another user's: its session
// ended), and re-registers the tree subscriptions of a
// resumed session: a $sync one with a fresh snapshot (deltas were missed
// while it was away), a $tree one with a resume delta of what changed
// since its client was last written (resumeTrees). The messages the
// session's previous connection did not write go first (conn.succeed). The connection takes the client's QoS 2 state and
// is filed under the id's takeover lock (mochi's WhileFiled), so it waits
// for a CONNECT of its id that holds it.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	b := h.b
	p := mqttPrincipal(cl)
	b.wills.publishEnded(cl)
	b.wills.settle(cl, true) // its CONNACK was written
	b.countResendDiscards(cl)
	b.releaseDropped(cl)
	out := &mqttOut{b: b, cl: cl}
	c := newConn(b, p, cl.ID, cl.Properties.ProtocolVersion == 5, out)
	out.q = c.q
	if nc, ok := cl.Net.Conn.(*netConn); ok && nc.raw != nil {
		c.q.acked = nc // plain TCP: the queue may look at what the client's stack took (outQueue.takingLocked)
	}
	if w, ok := b.connWills.Load(cl); ok {
		c.will.Store(w.(*will)) // left in connWills until c is in conns: a takeover finds it (takenWill)
	}
	old := b.connByID(cl.ID)
	if o, ok := old.outOf(); !ok || o.cl == cl {
		old = nil
	}
	if old != nil {
		c.prev = true // not yet shared
		c.q.hold()
	}
	b.conns.store(cl, c)
	b.connWills.Delete(cl)
	if nc, ok := cl.Net.Conn.(*netConn); ok {
		nc.filed.Store(c)
	}
	// The session's tree subscriptions, filed again once c is (below).
	syncs, trees := b.resumedTrees(cl, c)
	prior := ""
	if old != nil {
		prior = old.key()
	}
	if f := b.establishing.Load(); f != nil {
		(*f)(cl, false)
	}
	// The session's client QoS 2 state (keptInbound, the PUBRECs in
	// mochi's map) goes to c's idSpaces, and c is filed, in one step
	// under the id's takeover lock: a takeover's surrender finds that
	// state in the connection filed for the session. Taken before c was
	// filed, a CONNECT that came between found the previous connection
	// (or none), copied mochi's map without the PUBRECs, and the state
	// ended with c: the client's resend was delivered again
	// [MQTT-4.3.3-10] (TestQoS2StateQuickTakeover). Not filed (a CONNECT
	// took the session over first), c takes nothing: that CONNECT has it.
	//
	// The $tree subscriptions go to the loop in the same step, so the
	// loop files those of the connections of a session in the order the
	// connections took it (resumeTrees): each finds its predecessor's
	// filed, and its marks. Handed over after the lock, a quick
	// takeover's came first, found none, and counted from 0 again.
	var filed, fresh bool
	var next *mqtt.Client
	b.server.WhileFiled(cl, func() {
		kept, late := b.keptIn.take(cl)
		out.ids.adopt(cl, kept, late)
		if f := b.adopting.Load(); f != nil {
			(*f)(cl)
		}
		filed, next, fresh = b.arriving.adopt(b, cl, c) // files c under cl.ID
		if filed {
			b.pushResumeTrees(c, cl.ID, prior, trees)
		}
	})
	if f := b.establishing.Load(); f != nil {
		(*f)(cl, true)
	}
	switch {
	case !filed:
		// mochi gave the session to a newer client meanwhile: c ends,
		// and hands what reaches it to that client (arriving.handOn);
		// old's messages wait for that client's connection, which
		// cancels the will and takes the tree subscriptions.
		c.close()
		if old != nil {
			c.endMu.Lock()
			c.prev = false
			c.q.release()
			c.handOffLocked()
			c.endMu.Unlock()
		}
		return
	case next != nil: // a client registered after cl takes the session from c
		c.expect(next, fresh)
	}
	if old != nil {
		old.succeed(c)
	}
	b.wills.cancel(cl.ID, p.User)
	for _, st := range syncs {
		b.registerTree(st)
	}
}

// resumedTrees makes the state of the tree subscriptions of cl's session
// for c, its new connection, and counts their filter levels: the $sync
// and $hist ones (syncs) are registered as any; the $tree ones (trees)
// resume (resumeTrees). A $sync or $tree one holds no budget room for
// its first message (no SUBACK took it): its writer waits for room
// (awaitSnapshotRoom).
func (b *Broker) resumedTrees(cl *mqtt.Client, c *conn) (syncs, trees []*treeSub) {
	for filter, s := range cl.State.Subscriptions.GetAll() {
		c.levels += strings.Count(filter, "/") + 1
		sf, ok := parseInternal(filter)
		if !ok || sf.Mode == wire.Plain {
			continue
		}
		c.pacedProps = c.pacedProps || (sf.Interval > 0 && outgoingTopic(filter, sf) != filter)
		st := b.treeSubOf(c, filter, sf, s.Qos, s.Identifier, treeOpts{noLocal: s.NoLocal})
		st.resumed = sf.Mode == wire.Sync || sf.Mode == wire.Tree
		if sf.Mode != wire.Tree {
			syncs = append(syncs, st)
			continue
		}
		// Its first message is what changed while the session was away
		// (resumeTrees).
		st.away, st.await, st.mark = true, true, nil
		trees = append(trees, st)
	}
	return syncs, trees
}

// pushResumeTrees hands trees, the $tree subscriptions of c, the
// connection of a session that resumed, to the loop (resumeTrees): under
// id's takeover lock, as c is filed. prior is the key of the session's
// connection before c, if one is still filed.
func (b *Broker) pushResumeTrees(c *conn, id, prior string, trees []*treeSub) {
	if len(trees) == 0 {
		return
	}
	b.subsSent.Add(int64(len(trees)))
	if !b.reqs.push(request{kind: reqCall, call: func() { b.resumeTrees(id, prior, trees) }}) {
		b.subsSent.Add(-int64(len(trees)))
		for _, st := range trees {
			c.releaseSnapshot(st)
		}
	}
}

// countResendDiscards counts what mochi's resend discarded, too large for
// the client [MQTT-3.1.2-25] (mochi change 52), with what the writer
// discards for size ($SYS/mote/toolarge): once, when the session is
// established or, if the resend failed, when the connection ends.
func (b *Broker) countResendDiscards(cl *mqtt.Client) {
	b.stats.TooLarge.Add(int64(cl.State.TooLarge.Swap(0)))
}

// OnDisconnect ends the connection's deliveries and tree subscriptions.
// A session that outlives the connection (expire false) keeps the QoS 1/2
// messages the connection did not write.
func (h *hook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	h.b.wills.publishEnded(cl)          // its CONNACK failed: see OnSessionEstablish
	h.b.wills.settle(cl, cl.Answered()) // its CONNACK failed, or the resend after it
	h.b.countResendDiscards(cl)         // the resend failed after discarding some
	h.b.dropConn(cl, !expire)
	if !expire {
		h.b.sessionLeft(cl) // after its connection let go of it
	}
}

func (b *Broker) dropConn(cl *mqtt.Client, keep bool) {
	c, ok := b.conns.loadAndDelete(cl)
	if !ok {
		return
	}
	b.logs.closed(&c.logs, cl.ID) // the count of its log lines left out
	if nc, ok := cl.Net.Conn.(*netConn); ok {
		nc.filed.CompareAndSwap(c, nil)
	}
	if o, ok := c.outOf(); ok {
		// Closed and kept in one step under the id's takeover lock while
		// cl holds the session: a CONNECT that came between found the
		// client's QoS 2 state in neither (surrender found it closed,
		// handOver found nothing kept), and the state kept after it was
		// kept for cl, not the session's new client: the client's resends
		// were delivered again [MQTT-4.3.3-10] and their PUBRECs stayed
		// counted in Info.Inflight. Taken over first, the takeover had it
		// (surrender): close has nothing left to hand on.
		var left map[uint16]packets.Packet
		var late []*lateRec
		o.ids.stop(cl)
		kept := keep && b.server.WhileFiled(cl, func() {
			left, late = o.ids.close(cl) // before the session's messages are handed on
			b.keptIn.put(cl, left, late)
		})
		if !kept {
			left, late = o.ids.close(cl)
			if keep {
				b.keptIn.put(cl, left, late)
			} else {
				dropLate(&b.server.Info.Inflight, late)
			}
		}
	}
	if !keep { // a kept session's connection stays its route until it hands its messages on (finish)
		b.byID.compareAndDelete(cl.ID, c)
	}
	c.close()
	c.releaseSnapshots() // what its snapshots not yet written held of the budget
	// Detached before the hand-off ends (finish) takes the connection off
	// byID: a CONNECT resuming the session that finds no connection there
	// files its $tree subscriptions after the detach kept their marks
	// (keepTrees, resumeTrees). A session replaced by a clean start keeps
	// none.
	det := request{kind: reqDetach, owner: c.key(), keep: keep && !c.endedByTakeover()}
	if det.keep {
		b.awayTrees.pending.Add(1) // before the session can end: see forgetTrees
	}
	if !b.reqs.push(det) && det.keep {
		b.awayTrees.pending.Add(-1)
	}
	c.finish(true, keep)
}

// OnPacketRead takes a Mote publish (or one to a reserved topic) out of
// mochi's way before it validates the topic, which holds wildcards in
// $tree/a/+ and $set/a/+/b: the topic waits in the connection for
// OnPublish, and mochi sees the internal topic.
//
// It also keeps the client's packet ids apart from the deliveries'
// (idSpaces), until OnPacketProcessed; a PUBLISH (QoS 1 or 2), PUBREL,
// PUBACK, PUBREC or PUBCOMP read by a connection taken over is refused
// (idSpaces.begin), which ends it.
//
// mochi lends pk for the call (its change 25): it changes in place.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk *packets.Packet) error {
	c := h.conn(cl)
	if c == nil {
		return nil
	}
	if o, ok := c.outOf(); ok && o.ids.begin(cl, pk) {
		return packets.ErrRejectPacket // the connection was taken over: ends its read loop
	}
	if pk.Properties.UserOverLimit && (pk.FixedHeader.Type == packets.Publish || pk.FixedHeader.Type == packets.Subscribe) {
		h.b.countRefusal(refusedQuota) // mochi refuses it (PUBACK, SUBACK 0x97): refuseUserOver
	}
	if pk.FixedHeader.Type != packets.Publish {
		return nil
	}
	c.pendingTopic = ""
	alias, aliased := pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag && validAlias(pk.Properties.TopicAlias)
	if aliased && len(pk.TopicName) > h.b.opts.MaxTopicLen+maxPrefixLen {
		// The door refuses the topic; its alias is set all the same
		// [MQTT-3.3.2-12], to a cut topic, refused so too (aliasTopic).
		cl.InboundAliases().Set(alias, aliasTopic(pk.TopicName, h.b.opts.MaxTopicLen))
		pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false
		aliased = false
	}
	topic := pk.TopicName
	if topic == "" && aliased {
		// Alias only: the topic is the alias's. One never set is left to
		// mochi, which refuses it (DISCONNECT 0x82).
		t, ok := cl.State.TopicAliases.Inbound.Get(alias)
		if !ok {
			return nil
		}
		topic = t
	}
	if _, isMote := userProp(pk.Properties.User, "mote"); isMote || reserved(topic) || (c.p.original && wire.HasWildcard(topic)) {
		if aliased {
			// Set here, as mochi would set it, whatever becomes of the
			// publish: a topic the door refuses is refused again by its
			// alias (§3.3.2.3.4: the receiver records the mapping of every
			// PUBLISH with a Topic Alias and a topic).
			if pk.TopicName != "" {
				cl.InboundAliases().Set(alias, topic)
			}
			pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false
		}
		c.pendingTopic = topic
		pk.TopicName = internalPublish
	}
	return nil
}

// validAlias reports whether a PUBLISH's Topic Alias is one a client may
// set (1 to maxTopicAliases); mochi refuses any other (DISCONNECT 0x94,
// PublishValidate) after OnPacketRead.
func validAlias(a uint16) bool { return a > 0 && a <= maxTopicAliases }

// maxPrefixLen is more than the longest prefix of a Mote publish
// ("$tree.msgpack.replace/"): the door bounds a Mote topic's length
// without it.
const maxPrefixLen = 64

// aliasTopic is what an inbound topic alias keeps of a topic longer than
// maxLen+maxPrefixLen bytes, which the door refuses (over
// max_topic_length with any prefix): its first maxLen+maxPrefixLen+1
// bytes, to the end of a rune, still refused for its length, and never
// more than a topic the door accepts could hold (a topic may be as
// long as a packet).
func aliasTopic(topic string, maxLen int) string {
	n := maxLen + maxPrefixLen + 1
	for n < len(topic) && !utf8.RuneStart(topic[n]) {
		n++
	}
	return topic[:n]
}

// levelsPerSubscription is the filter levels a client may have on average
// per subscription of its quota.
const levelsPerSubscription = 4

// maxTopicAliases is how many topic aliases a client may set (each holds
// a topic of up to max_topic_length bytes). Like mochi, the broker does not
// announce it in CONNACK (a compliant client then sets none): announcing
// it changed how the Paho suite's client behaves and cost
// test_client_topic_alias.
const maxTopicAliases = 256

// internalPublish is the topic mochi sees for a publish OnPacketRead took
// aside.
const internalPublish = "$mote/publish"

// OnPublish hands a publish to the door; mochi only acknowledges it (with
// the door's reason code, for MQTT 5 at QoS 1 and 2). pk is lent for the
// call and changed in place (mochi's change 25); on an error it is left
// as it came.
func (h *hook) OnPublish(cl *mqtt.Client, pk *packets.Packet) error {
	if cl.Net.Inline {
		return nil
	}
	c := h.conn(cl)
	if c == nil {
		return packets.CodeSuccessIgnore
	}
	if o, ok := c.outOf(); ok && pk.FixedHeader.Qos > 0 && pk.PacketID != 0 { // (publishing does nothing else)
		// mochi has looked pk's id up: a takeover waits no more for it.
		if refuse, _ := o.ids.publishing(cl, pk, true); refuse {
			return packets.ErrRejectPacket // a resend the session's new connection answers
		}
		defer func() {
			if _, wait := o.ids.publishing(cl, pk, false); wait {
				// The id's takeover lock: the takeover that took the
				// session holds it till it moved the map.
				h.b.server.WhileFiled(cl, func() {})
			}
		}()
	}
	// Field by field: the composite literal was built aside and copied
	// into m, 320 bytes zeroed and moved twice (~70 instructions a
	// publish; bench/README.md, branch h-lat3).
	var m Message
	m.Topic, m.Payload, m.QoS, m.Retain, m.props = pk.TopicName, pk.Payload, pk.FixedHeader.Qos, pk.FixedHeader.Retain, &pk.Properties
	// The topic as read is a valid topic name: mochi decoded it as a
	// UTF-8 string with no NUL (decodeString: DISCONNECT 0x81 if not),
	// of at most 65,535 bytes (its length is two bytes), and refused it
	// empty without an alias, or with a wildcard (PublishValidate:
	// DISCONNECT 0x82), before OnPublish; the door need not check it
	// again. Not so a topic an alias gave (the alias may have been set
	// by a publish OnPacketRead took aside, whose topic mochi never saw)
	// nor one taken aside (internalPublish): the door checks those.
	m.topicValid = pk.TopicName != internalPublish && !pk.Properties.TopicAliasFlag
	if nc, ok := cl.Net.Conn.(*netConn); ok {
		m.pre = nc.takeMessage(pk.TopicName)
	}
	var err error
	if pk.TopicName == internalPublish {
		m.Topic = c.pendingTopic
		c.pendingTopic = ""
		if m.Topic == "" {
			err = wire.ErrReservedf("%q is the broker's own topic", internalPublish)
			m.Topic = internalPublish
		}
	}
	if err != nil {
		err = h.b.refusal(c.p, "publish", m.Topic, err)
	} else {
		wait := waitNone
		if m.QoS > 0 {
			wait = waitAck
		}
		if c.pub == nil {
			c.pub = &mqttPublisher{flush: func() { _ = cl.FlushHeld() }}
		}
		err = h.b.publishInline(c.p, &m, wait, c.pub)
	}
	if err == nil {
		// Ignore tells mochi not to deliver or retain it, as
		// CodeSuccessIgnore would, without the two allocations a struct
		// error costs each time mochi compares it (errors.Is), twice.
		pk.Ignore = true
		return nil
	}
	return h.b.refusePublish(c, pk, err)
}

// refusePublish answers a refused publish: an MQTT 5 client sending at QoS
// 1 or 2 gets the reason code in its PUBACK or PUBREC, with a Reason
// String unless it is 0x87 for a plain publish; everyone else an
// ordinary ack (the report on its error topic says why). Nothing is
// retained or delivered either way.
func (b *Broker) refusePublish(c *conn, pk *packets.Packet, err error) error {
	r, _ := err.(*Refusal)
	if r == nil || !c.v5 || pk.FixedHeader.Qos == 0 {
		return packets.CodeSuccessIgnore
	}
	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Puback},
		PacketID:    pk.PacketID,
		ReasonCode:  r.Code.Code,
	}
	if r.Code != packets.ErrNotAuthorized || isTreeWrite(r.Topic, &pk.Properties) {
		// Why a tree did not decode, or which of its rows the client may
		// not write, is worth saying (SPEC §5: 0x99 or 0x87 "with a Reason
		// String"); a plain publish refused by the ACL is told by its code
		// alone (as Mosquitto does; the Paho interop suite's client refuses
		// such an ack with properties; the report on the error topic has
		// the rest).
		ack.Properties.ReasonString = truncate(r.Err.Error(), maxReason)
	}
	if pk.FixedHeader.Qos == 2 {
		ack.FixedHeader.Type = packets.Pubrec // a PUBREC >= 0x80 ends the QoS 2 flow
	}
	// Held with the acks of the packets before it while more input waits
	// (mochi change 73): a client flooding refused publishes gets their
	// acks in one write per read, not a write each.
	cl := c.out.(*mqttOut).cl
	if err := cl.WriteAck(ack); err != nil {
		// The connection is gone: its read loop ends at the next packet.
		// The error, returned, had mochi log an Error line for each
		// refused publish left in the read buffer, outside refusal_log,
		// and go on with the publish as if it were taken.
		cl.Stop(fmt.Errorf("broker: writing the ack of a refused publish: %w", err))
	}
	return packets.ErrRejectPacket
}

// isTreeWrite reports whether a publish to topic with props is a tree
// publish or a $set (SPEC §4), in either form.
func isTreeWrite(topic string, props *packets.Properties) bool {
	p, _, err := parsePublish(topic, props)
	return err == nil && p.Op != wire.PubPlain
}

// OnSubscribe checks each filter of a SUBSCRIBE before mochi files it: a
// malformed filter, a filter over the topic limits, a filter past the
// client's subscription quota, is made invalid for mochi, which refuses
// it in the SUBACK; OnSubscribed turns a quota refusal into 0x97. The
// MQTT 5 user property mote=sync|tree turns every filter into a tree
// subscription, filed under an internal filter (one no client can send);
// Retain Handling 1 on an existing subscription becomes 2. The writer is
// held until the SUBACK is out (OnPacketProcessed). A SUBSCRIBE with a
// plain filter waits, before mochi files it, for the rows other clients
// had acknowledged and the loop had not yet applied (afterAcked).
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	c := h.conn(cl)
	if c == nil {
		return pk
	}
	c.q.hold()
	b := h.b
	propMode, propErr := subscribeProps(pk)
	topts, toptsErr := readTreeOpts(pk.Properties.User)
	filters := make([]packets.Subscription, len(pk.Filters))
	copy(filters, pk.Filters)
	count := cl.State.Subscriptions.Len()
	maxLevels := levelsPerSubscription * b.opts.MaxSubscriptions
	plain := false  // a plain filter is filed: it waits for rows acknowledged before it
	filing := false // a filter may be filed
	c.replaced = nil
	for i := range filters {
		f := &filters[i]
		asSent := f.Filter
		var sf wire.Subscription
		var err error
		switch {
		case i >= b.opts.MaxSubscriptionsPerPacket:
			err = errQuotaf("more than %d filters in one SUBSCRIBE", b.opts.MaxSubscriptionsPerPacket)
		case propErr != nil:
			err = propErr
		case c.p.original:
			sf, err = originalFilter(f.Filter)
		default:
			sf, err = parseFilter(f.Filter, propMode)
		}
		if err == nil {
			err = b.opts.Limits.CheckTopic(sf.Filter)
		}
		if err == nil && sf.Mode != wire.Plain { // plain subscriptions ignore Mote's properties
			err = toptsErr
		}
		if err == nil {
			err = topts.check(sf.Mode)
		}
		if err == nil {
			// A copy: the decoded filter is a string over the SUBSCRIBE's
			// body, which a filed filter would keep whole (user properties
			// and all) for the subscription's life.
			f.Filter = strings.Clone(internalFilter(f.Filter, sf, propMode.Mode != wire.Plain || c.p.original))
			c.pacedProps = c.pacedProps || (propMode.Mode != wire.Plain && sf.Interval > 0)
		}
		prior, existed := cl.State.Subscriptions.Get(f.Filter)
		levels := strings.Count(f.Filter, "/") + 1
		switch {
		case err != nil || existed:
		case count >= b.opts.MaxSubscriptions:
			err = errQuotaf("more than %d subscriptions", b.opts.MaxSubscriptions)
		case c.levels+levels > maxLevels:
			err = errQuotaf("more than %d filter levels in all", maxLevels)
		}
		if err != nil {
			b.refuse(c.p, "subscribe", asSent, err)
			markRefused(f, err)
			continue
		}
		if !existed {
			count++
			c.levels += levels
		}
		if existed {
			c.noteReplaced(i, prior) // for refuseFiled
		}
		if existed && f.RetainHandling == 1 {
			f.RetainHandling = 2 // [MQTT-3.3.1-10]: no retained rows for an existing subscription
		}
		plain = plain || sf.Mode == wire.Plain
		filing = true
	}
	pk.Filters = filters
	if filing {
		// The acks mochi holds for the packets before this one go out
		// before anything here may wait (afterAcked, the loop registering
		// a tree subscription); a SUBSCRIBE refused whole waits for
		// nothing, and its SUBACK joins them (mochi change 73).
		_ = cl.FlushHeld()
	}
	if plain {
		b.afterAcked(c.q.done.wait())
	}
	return pk
}

// OnSubscribed registers the tree subscriptions mochi granted and queues
// the retained replays of plain ones, both behind the SUBACK that mochi
// writes next (the writer is held); a tree subscription is registered
// before the SUBACK is out, so no publish made after it is missed. What
// the broker refuses of what mochi granted is refused first (refuseGranted),
// before the broker's index mirrors mochi's.
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	c := h.conn(cl)
	if c != nil {
		h.b.refuseGranted(c, cl, pk.Filters, codes)
	}
	h.b.mirrorSubscribed(cl, pk, codes)
	if c == nil {
		return
	}
	topts, _ := readTreeOpts(pk.Properties.User) // checked in OnSubscribe
	pass := filedPass{c: c, cl: cl, filters: pk.Filters, codes: codes}
	var walked int64 // by the estimates of this SUBSCRIBE's $sync filters, together
	for i, f := range pk.Filters {
		if i >= len(codes) {
			break
		}
		if codes[i] >= 0x80 {
			if refusedForQuota(&f) && c.v5 {
				codes[i] = packets.ErrQuotaExceeded.Code
			}
			if f.Filter != "" && (codes[i] == packets.ErrNotAuthorized.Code || !c.v5) && !isTreeFilter(f.Filter) && !h.b.access.canSubscribe(c.p, f.Filter) {
				h.b.countRefusal(refusedNotAuthorized) // mochi asked OnACLCheck; OnSubscribe counted those it refused
			}
			continue
		}
		sf, ok := parseInternal(f.Filter)
		if !ok {
			continue
		}
		if sf.Mode != wire.Plain {
			o := topts
			o.noLocal = f.NoLocal
			st := h.b.treeSubOf(c, f.Filter, sf, codes[i], f.Identifier, o)
			if sf.Mode == wire.Sync {
				// Its snapshot's room in the broker's budget, before the
				// SUBACK grants it (Broker.snaps, snapbudget.go).
				guess, ok := h.b.sharedGuess(c.q.done.wait(), sf.Filter, &walked)
				if !ok || !c.holdSnapshot(st, guess) {
					h.b.refuse(c.p, "subscribe", f.Filter, h.b.errSnapshotsFull(guess))
					h.b.refuseFiled(&pass, i, packets.ErrQuotaExceeded) // what it replaced stays
					h.b.dropRefusedForm(cl, f.Filter, sf, pk.Filters, codes, i)
					continue
				}
			}
			h.b.dropOtherForms(c, cl, f.Filter, sf, pk.Filters[i+1:], codes[i+1:])
			h.b.registerTree(st)
			continue
		}
		// Retained rows for a plain subscription [MQTT-3.3.1-9..11]: none for
		// shared subscriptions or Retain Handling 2.
		if !mqtt.IsSharedFilter(f.Filter) && f.RetainHandling != 2 {
			// Rows changed after from come as live publishes (replayRows).
			c.enqueueToken(&replayItem{filter: f.Filter, qos: codes[i], subID: f.Identifier, from: h.b.applied.Load(), drops: c.dropped.Load()})
		}
	}
	c.replaced = nil // refuseFiled's, for this SUBSCRIBE only
}

// PublishesChecked tells mochi that OnACLCheck lets every publish
// through, the door checking it (mochi change 96): processPublish does not
// ask it.
func (h *hook) PublishesChecked() {}

// ProcessedHeaderOnly tells mochi that OnPacketProcessed reads only a
// packet's FixedHeader, PacketID and ReasonCode (mochi change 92): mochi
// keeps those of a PUBLISH as read, not a copy of the whole packet.
func (h *hook) ProcessedHeaderOnly() {}

// OnPacketProcessed lets the writer go once mochi has written the SUBACK,
// and removes the will of a connection that left with a normal
// DISCONNECT.
func (h *hook) OnPacketProcessed(cl *mqtt.Client, pk *packets.Packet, err error) {
	c := h.conn(cl)
	if c == nil {
		return
	}
	if o, ok := c.outOf(); ok {
		o.ids.end(cl, pk)
		if t := pk.FixedHeader.Type; t == packets.Pubrel || (t == packets.Publish && pk.FixedHeader.Qos == 2) {
			// The client's own QoS 2 flow left mochi's in-flight map (a
			// PUBREC its PUBREL completed, or that went on to wait apart),
			// which the writer counts against the Receive Maximum: no
			// delivery's acknowledgement may come to wake it. (A QoS 1
			// PUBACK never enters the map: mochi change 48.)
			c.wakeWriter()
		}
	}
	if pk.FixedHeader.Type == packets.Subscribe {
		c.q.release()
	}
	if pk.FixedHeader.Type == packets.Disconnect && pk.ReasonCode == packets.CodeSuccess.Code && err == nil {
		// A normal DISCONNECT, accepted: the connection's will is removed
		// [MQTT-3.1.2-10], even if a CONNECT taking the id over took it as
		// due before it cut the connection off (wills.revoke).
		h.b.wills.revoke(c.will.Swap(nil))
	}
}

// OnUnsubscribe removes tree subscriptions: a filter F also names the
// property-form tree subscriptions to F, under their internal filters. mochi
// answers one reason code per filter as sent, so the first internal filter
// found takes F's place and any other is removed here.
func (h *hook) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	c := h.conn(cl)
	if c == nil {
		return pk
	}
	var topics []string
	filters := make([]packets.Subscription, len(pk.Filters))
	copy(filters, pk.Filters)
	for i := range filters {
		f := &filters[i]
		asSent := f.Filter
		if sf, err := wire.ParseSubscribe(asSent); err == nil && sf.Mode != wire.Plain && !c.p.original {
			topics = append(topics, asSent)
			continue
		}
		_, replaced := cl.State.Subscriptions.Get(asSent) // a plain subscription to F keeps F's place
		for _, internal := range c.propFiled(cl, asSent) {
			if _, ok := cl.State.Subscriptions.Get(internal); !ok {
				continue
			}
			topics = append(topics, asSent)
			if !replaced {
				f.Filter, replaced = internal, true
				continue
			}
			h.b.unfile(cl, internal)
		}
	}
	for _, f := range filters {
		if _, ok := cl.State.Subscriptions.Get(f.Filter); ok {
			c.levels -= strings.Count(f.Filter, "/") + 1
		}
	}
	pk.Filters = filters
	if len(topics) > 0 {
		h.b.reqs.push(request{kind: reqUnsubscribe, owner: c.key(), topics: topics})
	}
	return pk
}

// OnUnsubscribed removes from the broker's index of plain subscriptions
// what mochi removed from its own (subindex.go).
func (h *hook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	h.b.mirrorUnsubscribed(cl, pk)
}

// OnWill takes a will from mochi: the door publishes it, as its client,
// when it is due (wills.due). mochi is left a will that reaches nobody.
// A client whose CONNACK could not be written has no connection yet: its
// will waits in connWills. Its CONNECT was accepted and its session
// established (mochi filed it, and took its client id over from any
// other), so the will is due as for any connection that closed without
// DISCONNECT [MQTT-3.1.2-7] [MQTT-3.1.2-8].
func (h *hook) OnWill(cl *mqtt.Client, w mqtt.Will) (mqtt.Will, error) {
	if c := h.conn(cl); c != nil && c.will.Load() != nil {
		h.b.wills.due(func() *will { return c.will.Swap(nil) }, cl, c.endedByTakeover)
	} else if _, ok := h.b.connWills.Load(cl); ok {
		h.b.wills.settle(cl, cl.Answered()) // what its CONNECT set aside waits again first
		h.b.wills.due(func() *will {
			if w, ok := h.b.connWills.LoadAndDelete(cl); ok {
				return w.(*will)
			}
			return nil
		}, cl, func() bool { return false })
	}
	return mqtt.Will{}, nil
}

// OnRetainMessage keeps mochi's retained index empty: retained rows live
// once, in the tree core, which serves them to plain subscribers (mochi
// would also copy its whole index every second to expire it).
func (h *hook) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, _ int64) {
	if len(pk.Payload) > 0 {
		h.b.server.Topics.RetainMessage(packets.Packet{TopicName: pk.TopicName}) // an empty payload deletes
	}
}

// OnPacketEncode keeps user properties on PUBLISH packets to clients that
// set Request Problem Information to 0 (that flag only covers packets other
// than PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29]: mote-seq and
// mote-part must reach the client), and tells MQTT 5 clients in CONNACK
// the largest packet the broker accepts [MQTT-3.2.2.3.6]. A QoS 2 PUBLISH
// sent again before its PUBREL is acknowledged as the first was, not
// refused 0x91 (idSpaces.resentAck).
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	switch pk.FixedHeader.Type {
	case packets.Pubrec:
		if pk.ReasonCode == packets.ErrPacketIdentifierInUse.Code {
			if c := h.conn(cl); c != nil {
				if o, ok := c.outOf(); ok && o.ids.resentAck(pk.PacketID) {
					pk.ReasonCode, pk.Properties.ReasonString = packets.CodeSuccess.Code, ""
				}
			}
		}
	case packets.Publish:
		pk.Mods.DisallowProblemInfo = false
	case packets.Connack:
		if pk.ReasonCode < 0x80 {
			pk.Properties.MaximumPacketSize = h.b.opts.MaxPacketSize
		}
	}
	return pk
}

// OnQosComplete and OnQosDropped free an in-flight slot: the writer may
// be waiting for one.
func (h *hook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if c := h.conn(cl); c != nil {
		if o, ok := c.outOf(); ok && o.ids.clientAck(pk.PacketID) {
			return // the client's own publish, not a delivery
		}
		c.inflightFreed(pk.PacketID)
	}
}

// OnQosDropped: see OnQosComplete. A delivery held for a session away
// that mochi deleted (its Message Expiry Interval passed) leaves the
// count of what is held (offlineHeld.deleted).
func (h *hook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	h.b.offline.deleted(cl, &pk)
	h.OnQosComplete(cl, pk)
}

// unfile removes a subscription mochi filed (one the broker refused after
// all).
func (b *Broker) unfile(cl *mqtt.Client, filter string) {
	if b.unfileSub(filter, cl.ID) {
		atomic.AddInt64(&b.server.Info.Subscriptions, -1)
	}
	if _, ok := cl.State.Subscriptions.Get(filter); ok {
		cl.State.Subscriptions.Delete(filter)
		if c, ok := b.conns.load(cl); ok {
			c.levels -= strings.Count(filter, "/") + 1
		}
	}
}

// dropOtherForms removes from mochi the other property-form tree
// subscriptions to the same filter: their messages go to the same topic,
// so the tree core keeps one subscription per topic, and the newest
// replaces the others — in mochi too, or a resumed session would bring
// them back. A form granted later in the same SUBSCRIBE (later, with its
// codes: a dialect client's "/F" then "F", original.go) stays: it is the
// newer, and drops this one when its turn comes (refused then, after
// mochi filed it, it is unfiled: dropRefusedForm). Dropped here, both
// forms left mochi while the loop kept the newest: UNSUBSCRIBE F ended
// nothing, and the subscription quota, counted from mochi's filters,
// never counted it (TestRTOriginalBothFormsInOnePacket).
func (b *Broker) dropOtherForms(c *conn, cl *mqtt.Client, internal string, sf wire.Subscription, later []packets.Subscription, codes []byte) {
	if outgoingTopic(internal, sf) == internal {
		return // prefix form: its own topic
	}
	for _, other := range c.propFiled(cl, sf.Filter) {
		if other != internal && !grantedIn(other, later, codes) {
			b.unfile(cl, other)
		}
	}
}

// dropRefusedForm unfiles internal, the property-form tree subscription
// at index i of a SUBSCRIBE that mochi filed and the broker refused after
// all (refuseFiled put back the subscription it replaced), when another
// form of the same filter was granted earlier in the packet, and none of
// its own since: the filters of a SUBSCRIBE are a sequence of SUBSCRIBEs
// [MQTT-3.8.4-5], so that form replaced the one put back — in the loop
// it did (registerTree), and dropOtherForms left this one filed as
// granted later (grantedIn). Kept, mochi held a form the loop did not: a
// dialect client holding /F that sent F and /F, the snapshot of /F over
// the budget, kept both in mochi, one in the loop. A grant of internal
// later in the packet decides for itself (refuseFiled).
func (b *Broker) dropRefusedForm(cl *mqtt.Client, internal string, sf wire.Subscription, filters []packets.Subscription, codes []byte, i int) {
	if outgoingTopic(internal, sf) == internal {
		return // prefix form: its own topic
	}
	if grantedIn(internal, filters[i+1:], codes[i+1:]) {
		return
	}
	for k := min(i, len(filters), len(codes)) - 1; k >= 0; k-- {
		if codes[k] >= 0x80 {
			continue
		}
		o, ok := parseInternal(filters[k].Filter)
		if !ok || o.Mode == wire.Plain || o.Filter != sf.Filter || outgoingTopic(filters[k].Filter, o) == filters[k].Filter {
			continue
		}
		if filters[k].Filter != internal {
			b.unfile(cl, internal)
		}
		return
	}
}

// grantedIn reports whether filters (with their SUBACK codes) grant
// filter.
func grantedIn(filter string, filters []packets.Subscription, codes []byte) bool {
	for k := range min(len(filters), len(codes)) {
		if codes[k] < 0x80 && filters[k].Filter == filter {
			return true
		}
	}
	return false
}

// subscribeTree hands a tree subscription mochi granted to the loop.
func (b *Broker) subscribeTree(c *conn, filter string, sf wire.Subscription, qos byte, id int, o treeOpts) {
	b.registerTree(b.treeSubOf(c, filter, sf, qos, id, o))
}

// treeSubOf is the state of a tree subscription mochi granted, for
// registerTree.
func (b *Broker) treeSubOf(c *conn, filter string, sf wire.Subscription, qos byte, id int, o treeOpts) *treeSub {
	st := &treeSub{c: c, mode: sf.Mode, id: id, await: sf.Mode == wire.Sync || sf.Mode == wire.Hist, interval: sf.Interval}
	if _, ok := c.out.(*mqttOut); ok && sf.Mode == wire.Tree {
		st.mark = new(treeMark) // its revision is set as it is registered
	}
	switch sf.Mode {
	case wire.Sync:
		st.since, st.resume = o.since, o.resume
	case wire.Hist:
		q := o.hist
		if !o.histSet { // a zero treeOpts (a resumed session's) selects no times at all
			q = histQuery{from: math.MinInt64, to: math.MaxInt64}
		}
		st.hist = &q
	}
	// Its read check (Allow) is the loop's to set, from the rules current
	// when it registers (handle).
	st.ts = &tree.Sub{Owner: c.key(), Topic: outgoingTopic(filter, sf), Filter: sf.Filter, Codec: sf.Codec, QoS: qos, Data: st}
	if o.noLocal { // [MQTT-3.8.3-3]: "own" as for plain subscriptions (deliverTo), the client id
		st.ts.Local = c.p.ClientID
	}
	return st
}

// registerTree hands a tree subscription to the loop.
func (b *Broker) registerTree(st *treeSub) {
	b.subsSent.Add(1)
	if !b.reqs.push(request{kind: reqSubscribe, sub: st}) {
		b.subsSent.Add(-1)
		st.c.releaseSnapshot(st) // no snapshot follows
	}
}

// isTreeFilter reports whether a filter as mochi knows it is a tree
// subscription.
func isTreeFilter(f string) bool {
	sf, ok := parseInternal(f)
	return ok && sf.Mode != wire.Plain
}

// subscribeProps reads the MQTT 5 user properties mote, mote-codec and
// mote-interval of a SUBSCRIBE.
func subscribeProps(pk packets.Packet) (wire.Subscription, error) {
	var s wire.Subscription
	mode, ok, err := moteProp(pk.Properties.User, "mote")
	if err != nil {
		return s, err
	}
	interval, paced, err := moteProp(pk.Properties.User, "mote-interval")
	if err != nil {
		return s, err
	}
	if !ok {
		if paced {
			return s, wire.ErrPrefixf("user property mote-interval without mote=sync or mote=tree")
		}
		return s, nil
	}
	switch mode {
	case "sync":
		s.Mode = wire.Sync
	case "tree":
		s.Mode = wire.Tree
	case "hist":
		s.Mode = wire.Hist
	default:
		return s, wire.ErrPrefixf("user property mote=%.40q: want sync, tree or hist", mode)
	}
	v, ok, err := moteProp(pk.Properties.User, "mote-codec")
	if err != nil {
		return s, err
	}
	if ok {
		c, err := wire.ParseCodec(v)
		if err != nil {
			return s, err
		}
		s.Codec = c
	}
	if paced {
		d, err := wire.ParseInterval(interval)
		if err != nil {
			return s, fmt.Errorf("user property mote-interval: %w", err)
		}
		s.Interval = d
	}
	return s, nil
}

// parseFilter reads a SUBSCRIBE filter: a Mote prefix, a plain filter made a
// tree subscription by the packet's user properties, or a plain filter
// (valid per MQTT; $share included). A tree subscription whose filter
// begins with one of Mote's verbs or $share ($sync/$tree/x, or $sync/x
// with mote=sync) is refused: no row has such a topic, so it was granted
// an empty tree that never changed.
func parseFilter(f string, prop wire.Subscription) (wire.Subscription, error) {
	sf, err := parseFilterOnly(f, prop)
	if err != nil || sf.Mode == wire.Plain {
		return sf, err
	}
	first, _, _ := strings.Cut(sf.Filter, "/")
	if wire.IsMote(sf.Filter) || strings.EqualFold(first, "$share") {
		return wire.Subscription{}, wire.ErrPrefixf("%.200q: a tree subscription's filter cannot begin with %.40q, which no row does", f, first)
	}
	return sf, nil
}

// parseFilterOnly is parseFilter without the check of a tree
// subscription's first level.
func parseFilterOnly(f string, prop wire.Subscription) (wire.Subscription, error) {
	if prop.Mode != wire.Plain {
		if err := wire.ValidateFilter(f); err != nil {
			return wire.Subscription{}, err
		}
		if _, _, shared := cutShare(f); shared {
			return wire.Subscription{}, wire.ErrPrefixf("%.200q: a tree subscription cannot be shared", f)
		}
		return wire.Subscription{Mode: prop.Mode, Codec: prop.Codec, Filter: f, Interval: prop.Interval}, nil
	}
	if group, rest, shared := cutShare(f); shared {
		if wire.IsMote(rest) {
			return wire.Subscription{}, wire.ErrPrefixf("%.200q: a tree subscription cannot be shared", f)
		}
		if group == "" || rest == "" || strings.ContainsAny(group, "+#") {
			// [MQTT-4.8.2-1] [MQTT-4.8.2-2]: refused as malformed (0x8F), not by the ACL (0x87).
			return wire.Subscription{}, fmt.Errorf("%w: %.200q: a shared subscription needs a share name without wildcards and a filter", wire.ErrFilter, f)
		}
	}
	return wire.ParseSubscribe(f)
}

// markRefused makes a filter invalid for mochi (it answers 0x8F, 0x80 for
// MQTT 3.1.1); a quota refusal is marked for OnSubscribed to answer 0x97.
func markRefused(f *packets.Subscription, err error) {
	f.Filter = ""
	f.Identifier = 0
	if isQuota(err) {
		f.Identifier = -1
	}
}

func refusedForQuota(f *packets.Subscription) bool { return f.Filter == "" && f.Identifier == -1 }
