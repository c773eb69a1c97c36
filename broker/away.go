package broker

import (
	"container/heap"
	"container/list"
	"sync"
	"sync/atomic"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
)

// awaySessions keeps the persistent sessions whose clients are away, per
// user in the order they left, so that a disconnect that leaves more than
// Options.MaxSessions of them ends one (endAway): the one away longest of
// the user with the most sessions away; among users with as many, of the
// user whose oldest session left first. Options.MaxClients bounds
// connected clients only: without this bound a client connecting with
// ever new ids, Clean Start 0 and a long expiry left sessions (and their
// subscriptions in mochi's index) without end. Before the bound was per
// user, one user (one username, or the anonymous clients) leaving ever
// new ids ended every other user's sessions away; now it ends its own
// first, and another user's sessions are kept while it has fewer away.
// With every user at one session it is the one away longest of all.
//
// A user is who the client authenticated as (Broker.awayUserOf): its
// username when the broker has a password file; the anonymous clients
// are one user, and so are all clients without a password file, whose
// usernames are taken as given (a client could name a new user for each
// id and have the sessions of a user with two away ended before its own).
//
// Filing, taking out and ending one is O(log users): each user's
// sessions are a list, and the users a heap by how many they have away
// (byCount).
//
// An entry is added and removed only under its client id's takeover lock
// (mochi's WhileFiled, OnSessionEstablish, OnClientExpired,
// RemoveSessionWith), so it names exactly the sessions mochi keeps whose
// client is away: a CONNECT resuming one takes it out before its client
// is filed.
//
// Owner: mu guards everything; the connection hooks take it.
type awaySessions struct {
	mu    sync.Mutex
	n     int                      // sessions away, all users
	seq   uint64                   // stamps each filing: lower left earlier
	at    map[string]*list.Element // by client id: its entry (*awayEntry) in its user's list
	users map[string]*awayUser     // by user: those with a session away
	heap  byCount                  // the users in users, the one to end a session of first
}

// awayEntry is one session away.
type awayEntry struct {
	cl  *mqtt.Client
	seq uint64 // when it was filed (awaySessions.seq)
	u   *awayUser
}

// awayUser is one user's sessions away, longest away first.
type awayUser struct {
	name     string
	sessions list.List // of *awayEntry
	oldest   uint64    // the first's seq: the heap compares it without reaching into the list
	index    int       // in awaySessions.heap
}

// byCount is a heap (container/heap) of users, first the one with the
// most sessions away; among as many, the one whose oldest left first.
type byCount []*awayUser

func (h byCount) Len() int { return len(h) }
func (h byCount) Less(i, j int) bool {
	ni, nj := h[i].sessions.Len(), h[j].sessions.Len()
	return ni > nj || ni == nj && h[i].oldest < h[j].oldest
}
func (h byCount) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *byCount) Push(x any) {
	u := x.(*awayUser)
	u.index = len(*h)
	*h = append(*h, u)
}
func (h *byCount) Pop() any {
	old := *h
	u := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return u
}

// leftLocked files cl, whose connection ended and whose session outlives
// it, as user's newest away (its id's takeover lock held).
func (a *awaySessions) leftLocked(cl *mqtt.Client, user string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.at == nil {
		a.at = map[string]*list.Element{}
		a.users = map[string]*awayUser{}
	}
	if e, ok := a.at[cl.ID]; ok {
		a.removeLocked(e)
	}
	u, had := a.users[user]
	a.seq++
	if !had {
		u = &awayUser{name: user, oldest: a.seq}
		a.users[user] = u
	}
	a.at[cl.ID] = u.sessions.PushBack(&awayEntry{cl: cl, seq: a.seq, u: u})
	a.n++
	if had {
		heap.Fix(&a.heap, u.index)
	} else {
		heap.Push(&a.heap, u)
	}
}

// removeLocked takes e out (a.mu held): of its user's list, of the
// heap's order, and its user out of both if it has no session left.
func (a *awaySessions) removeLocked(e *list.Element) {
	en := e.Value.(*awayEntry)
	u := en.u
	u.sessions.Remove(e)
	delete(a.at, en.cl.ID)
	a.n--
	if u.sessions.Len() == 0 {
		heap.Remove(&a.heap, u.index)
		delete(a.users, u.name)
		return
	}
	u.oldest = u.sessions.Front().Value.(*awayEntry).seq
	heap.Fix(&a.heap, u.index)
}

// backLocked takes the session of id out: a CONNECT takes it (its id's
// takeover lock held).
func (a *awaySessions) backLocked(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.at[id]; ok {
		a.removeLocked(e)
	}
}

// goneLocked takes cl's session out if it is there: it expired or was
// removed (its id's takeover lock held).
func (a *awaySessions) goneLocked(cl *mqtt.Client) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.at[cl.ID]; ok && e.Value.(*awayEntry).cl == cl {
		a.removeLocked(e)
	}
}

// oldestOver takes a session out if more than max are away, nil if not:
// the one away longest of the user with the most away (the heap's
// first), and how many that user had away.
func (a *awaySessions) oldestOver(max int) (cl *mqtt.Client, had int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n <= max {
		return nil, 0
	}
	u := a.heap[0]
	had = u.sessions.Len()
	e := u.sessions.Front()
	cl = e.Value.(*awayEntry).cl
	a.removeLocked(e)
	return cl, had
}

// filedUser is the user cl's session was filed away with (leftLocked),
// if it is filed.
func (a *awaySessions) filedUser(cl *mqtt.Client) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.at[cl.ID]; ok && e.Value.(*awayEntry).cl == cl {
		return e.Value.(*awayEntry).u.name, true
	}
	return "", false
}

// len is how many sessions are away.
func (a *awaySessions) len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n
}

// awayUserOf is the user whose sessions away cl's counts with
// (awaySessions): its username if the broker checks usernames against a
// password file, else "" (anonymous clients, and every client when
// usernames are taken as given). Asked as the session is filed: after a
// Reload that adds or removes the password file, sessions filed before
// keep the user they were filed with.
func (b *Broker) awayUserOf(cl *mqtt.Client) string {
	if b.access.load().users == nil {
		return ""
	}
	return userOf(cl)
}

// heldUserOf is the user what is held for cl, a session's client away,
// counts for (offlineHeld): the user its session was filed away with,
// else (not filed yet) awayUserOf. Asked per message, awayUserOf named,
// after a Reload that adds or removes the password file, a user other
// than the one the session's held messages count for, and a message for
// it made room by dropping what its own session held.
func (b *Broker) heldUserOf(cl *mqtt.Client) string {
	if user, ok := b.away.filedUser(cl); ok {
		return user
	}
	return b.awayUserOf(cl)
}

// sessionLeft is called once cl's connection ended and its session
// outlives it (OnDisconnect): the session is filed as away, what its
// connection left in flight counted against MaxOfflineBytes with it
// (countLeft, which drops held messages past the bound), and while
// more than Options.MaxSessions are (negative: no bound) one is ended:
// the one away longest of the user with the most away (awaySessions).
// Filed only while cl is still its id's session: a CONNECT that took the
// id over meanwhile holds it.
func (b *Broker) sessionLeft(cl *mqtt.Client) {
	user := b.awayUserOf(cl)
	b.server.WhileFiled(cl, func() {
		b.away.leftLocked(cl, user)
		b.countLeft(cl, user)
	})
	if b.opts.MaxSessions < 0 {
		return
	}
	for {
		old, had := b.away.oldestOver(b.opts.MaxSessions)
		if old == nil {
			return
		}
		b.endAway(old, had)
	}
}

// endAway ends the session of old, a client away, now, as if it had
// expired: its subscriptions leave the index, what is held for it is
// dropped and counted, and its delayed will is published
// (§3.1.3.2.2: a will waits until its Will Delay Interval passes or its
// session ends, whichever is first [MQTT-3.1.3-9]). All of it under the
// id's takeover lock (RemoveSessionWith): a CONNECT resuming the session
// meanwhile either took it whole first (then nothing is ended) or comes
// after and starts clean (Session Present 0). had is how many sessions
// its user had away, old's included (the log line says it).
func (b *Broker) endAway(old *mqtt.Client, had int) {
	var w *will
	var held int64
	ended := b.server.RemoveSessionWith(old, func() {
		b.arriving.end(b, old) // nothing more held for it: held is final
		w = b.wills.takeEnded(old.ID)
		held = heldPublishes(old)
		b.offline.forget(old.ID)
		b.forgetTrees(old.ID)
	})
	if !ended {
		return // a CONNECT took the session meanwhile
	}
	b.stats.SessionsEnded.Add(1)
	b.drop(dropSessionEnded, held)
	if b.logs.allow(nil, old.ID, kindSessionEnded) { // a client can end one a connection
		b.log.Warn().Str("client", truncate(old.ID, 200)).Str("user", truncate(userOf(old), 200)).Int("user_sessions_away", had).
			Int("max_sessions", b.opts.MaxSessions).Int64("dropped", held).Bool("will", w != nil).
			Msg("session ended: more than max_sessions persistent sessions of clients away; this one was away longest of the user with the most away")
	}
	if w != nil {
		b.wills.publish(w)
	}
}

// awayTrees keeps, for each session whose connection ended and which
// stays (MQTT 5 Session Expiry, 3.1.1 Clean Session 0), the mark of each
// of its $tree subscriptions (treeMark: the mote-seq and mote-rev of the
// last message its client was written), by the subscription's outgoing
// topic. When the session resumes, each $tree subscription filed again
// takes its mark (resumeTrees) and starts with a resume delta since it
// (SPEC §8), its mote-seq going on from the mark's.
//
// An entry is made by the detach of a connection whose session stays
// (reqDetach with keep, keepTrees: it replaces what the id had, but a
// connection taken over keeps nothing), taken whole when the session
// resumes, and dropped when it ends: expired (OnClientExpired), ended for
// a newer one (endAway), replaced by a clean start or another user's
// (OnSessionEstablish: any fresh start, after the connection it replaces
// knows it, conn.expect), removed (dropSession).
// It holds one mark, 16 bytes and a map entry, per $tree subscription of
// the session: bounded by what the session may subscribe to.
//
// Owner: the message loop (the connection hooks hand it calls); n, the
// marks kept, and pending, the detaches that may keep some and that the
// loop has not run yet, are atomics, read at scrape and by forgetTrees.
type awayTrees struct {
	byID    map[string]map[string]*treeMark // client id → outgoing topic → mark
	n       atomic.Int64
	pending atomic.Int64
}

// set makes marks id's entry (none: id has none) (loop only).
func (a *awayTrees) set(id string, marks map[string]*treeMark) {
	a.take(id)
	if len(marks) == 0 {
		return
	}
	if a.byID == nil {
		a.byID = map[string]map[string]*treeMark{}
	}
	a.byID[id] = marks
	a.n.Add(int64(len(marks)))
}

// take takes id's entry out (loop only).
func (a *awayTrees) take(id string) map[string]*treeMark {
	marks, ok := a.byID[id]
	if !ok {
		return nil
	}
	delete(a.byID, id)
	a.n.Add(-int64(len(marks)))
	return marks
}

// keepTrees keeps the marks of owner's $tree subscriptions for the
// session of its client id, which stays after owner's connection ended:
// as it is detached (loop only). What the id kept before goes. It keeps
// nothing, and leaves what the id kept as it is, when the connection
//
//   - has no tree subscription filed: it was never filed (a CONNECT took
//     the session over first) or filed none; what the session's other
//     connections kept, before or since, stays;
//   - was taken over by a connection of the session that took its marks
//     (handed): that one keeps them when it ends, maybe already;
//   - was taken over by a CONNECT that started a new session (a clean
//     start, another user's): asked here, on the loop, not as the
//     detach was pushed, since the takeover's forgetTrees, pushed after
//     it marked the connection (conn.expect), may run before the detach.
func (b *Broker) keepTrees(owner string) {
	defer b.awayTrees.pending.Add(-1) // after set: forgetTrees sees one or the other
	subs := b.tree.Owned(owner)
	if len(subs) == 0 {
		return
	}
	c := subs[0].Data.(*treeSub).c
	if c.endedByTakeover() {
		return
	}
	var marks map[string]*treeMark
	for _, s := range subs {
		st := s.Data.(*treeSub)
		if st.handed {
			return
		}
		if st.mark == nil {
			continue
		}
		if marks == nil {
			marks = make(map[string]*treeMark, len(subs))
		}
		marks[s.Topic] = st.mark
	}
	b.awayTrees.set(c.id, marks)
}

// forgetTrees drops what is kept of id's $tree subscriptions: its session
// ended. A call to the loop, made only while something is kept, or may
// be by a detach not run yet (the session's own, pushed before its end).
func (b *Broker) forgetTrees(id string) {
	if b.awayTrees.n.Load() == 0 && b.awayTrees.pending.Load() == 0 {
		return
	}
	b.reqs.push(request{kind: reqCall, call: func() { b.awayTrees.take(id) }})
}

// resumeTrees files again sts, the $tree subscriptions of a session that
// resumed (OnSessionEstablished), on the loop: each takes the mark its
// session kept for it, or that of the subscription of the connection
// before (prior, the key of the session's connection it succeeds, if
// any), if that is still filed (a takeover: it is detached later, and
// keeps nothing then). Its first message is a resume delta since the
// mark's revision, its mote-seq the mark's + 1 (snapshotOf, awayFirst);
// without a mark (none was kept: its count is not known), a mote-seq
// gap from 0. What the session kept goes (loop only).
//
// The calls of a session's connections come in the order the connections
// took the session (pushResumeTrees pushes each under the id's takeover
// lock as its connection is filed), so the connection before is filed
// here already, unless its detach ran first, which kept its marks for
// this one. Pushed after the lock, a quick takeover's call came first,
// found neither, and counted from 0 again (TestRTX5TakeoverOrder).
func (b *Broker) resumeTrees(id, prior string, sts []*treeSub) {
	kept := b.awayTrees.take(id)
	// The marks of the connection before, by topic: one pass, not one a
	// resumed subscription (10,000 of them made a takeover 10^8 steps on
	// the loop).
	var live map[string]*treeSub
	if prior != "" {
		for _, s := range b.tree.Owned(prior) {
			if o := s.Data.(*treeSub); o.mark != nil && !o.handed {
				if live == nil {
					live = map[string]*treeSub{}
				}
				live[s.Topic] = o
			}
		}
	}
	for _, st := range sts {
		m := kept[st.ts.Topic]
		if o := live[st.ts.Topic]; m == nil && o != nil {
			m, o.handed = o.mark, true
		}
		if m == nil {
			st.mark = newTreeMark(0, 0) // its client's copy reflects no revision
		} else {
			// Read when its first message is made (snapshotOf): the writer of
			// the connection before may still note in it until then.
			st.mark, st.resume = m, true
		}
		b.handle(&request{kind: reqSubscribe, sub: st})
	}
}
