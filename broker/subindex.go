package broker

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// subIndex is the broker's index of plain subscriptions, the one that
// delivery reads (deliverPlain, deliverRow): a filter trie whose readers
// take no lock and allocate nothing. It mirrors what is filed in mochi's
// TopicsIndex (mochi's SUBSCRIBE, UNSUBSCRIBE and session-ending handling
// reach it through the hooks OnSubscribed and OnUnsubscribed, a session
// expiring while away through OnClientExpired; the broker's own filings
// through fileSub and unfileSub). Nothing of the broker reads
// mochi's index any more (delivery, retained replay and $SYS are the
// broker's); mochi's SUBSCRIBE handling still writes it, which costs a
// little at SUBSCRIBE and nothing per message.
//
// Neither tree's index (the loop's alone, unlocked, grouped by codec) nor
// wire.Match (one filter at a time) could serve concurrent publishers, so
// this trie walks topics as tree's index does (matchFrom), and its tests
// hold it to wire.Match.
//
// Matching follows wire.Match, the project's one reading of filters ('+',
// '#' also matching its parent, '$' topics not matched by a leading
// wildcard, in shared filters too); the result per client merges its
// overlapping subscriptions as mochi's Subscribers did: the highest QoS,
// Retain As Published if any has it, every subscription identifier; No
// Local only if every one has it, and if only some do, the client's own
// publishes get the merge of the others alone (subMatch.own; mochi's No
// Local if any had it hid them from every subscription [MQTT-3.3.4-2]);
// a shared subscription group ($share/G/F, grouped by the whole filter)
// contributes one member, picked at random.
//
// Concurrency: writers (subscribe, unsubscribe) take mu and replace what
// they change copy-on-write: a node's plain subscriptions, its shared
// groups and each group's members are immutable lists (plist: a change
// copies O(log N)) behind atomic pointers; its children are a sync.Map
// (lock-free reads). A reader sees each list as it was at some moment: a
// SUBSCRIBE is visible to every publish that starts after it returned.
type subIndex struct {
	mu      sync.Mutex // writers
	root    snode
	scratch sync.Pool // *subScratch
}

// snode is one level of the trie; literal levels, "+" and "#" are
// children by name.
type snode struct {
	// few holds the literal and wildcard children while there are at
	// most fewKids of them (nil: none); past that it is manyKids for
	// the node's life, and kids holds them (level → *snode). A node
	// with few children holds a small list, not a sync.Map's trie (210
	// bytes for one child), and a publish finds a child with a scan of
	// it: two sync.Map loads were 1,000 instructions and 46 L1
	// instruction misses of a plain message (bench/README.md, branch
	// h-fast).
	few    atomic.Pointer[kidSet]
	kids   sync.Map                           // level → *snode, once few is manyKids
	hash   atomic.Pointer[snode]              // kids["#"], or nil: walk asks at every level of a topic
	plus   atomic.Pointer[snode]              // kids["+"], or nil
	nkids  int                                // children; under mu
	subs   atomic.Pointer[plist[subEntry]]    // plain subscriptions ending here; never changed once stored
	pos    map[string]int                     // client → its index in subs, from posAt entries (nil: scanned); under mu
	shared atomic.Pointer[plist[*shareGroup]] // shared groups whose filter ends here; never changed once stored
	gpos   map[string]int                     // group filter ($share/G/F) → its index in shared; under mu
}

// subEntry is one client's subscription, as filed.
type subEntry struct {
	client  string
	filter  string // as subscribed ($share/G/F for a shared one)
	id      int    // subscription identifier; 0 for none
	qos     byte
	noLocal bool
	rap     bool // Retain As Published
}

// shareGroup is a shared subscription group ($share/G/F, grouped by the
// whole filter). It is stored once, when its first member joins, and
// dropped from its node's list when its last leaves; a change of members
// stores a new list in members, never an empty one.
type shareGroup struct {
	filter  string                          // $share/G/F
	members atomic.Pointer[plist[subEntry]] // never changed once stored
	pos     map[string]int                  // client → its index in members, from posAt entries (nil: scanned); under mu
}

// subMatch is one client's delivery of a topic: its subscriptions that
// match, merged.
type subMatch struct {
	client  string
	qos     byte
	noLocal bool // every matching subscription has No Local
	rap     bool
	ids     []int // positive subscription identifiers, sorted; shared scratch: read only
	// own is, for the publishing client when some but not all of its
	// matching subscriptions have No Local, the merge of those without
	// it: the delivery of its own publish [MQTT-3.8.3-3]. Allocated,
	// rare; nil otherwise.
	own *subMatch
}

// subScratch is one match's working memory, pooled: out is what the
// deliverer reads until it hands the scratch back (release).
type subScratch struct {
	raw  []*subEntry
	ids  []int
	out  []subMatch
	x    *subIndex
	from int // lists raw's entries came from (a node's plain subscriptions, a shared group)
}

// ownMatch merges a client's matching subscriptions without No Local:
// what its own publish is delivered with.
func ownMatch(entries []*subEntry) *subMatch {
	own := &subMatch{client: entries[0].client}
	for _, r := range entries {
		if r.noLocal {
			continue
		}
		own.qos = max(own.qos, r.qos)
		own.rap = own.rap || r.rap
		if r.id > 0 {
			own.ids = append(own.ids, r.id)
		}
	}
	slices.Sort(own.ids)
	return own
}

// release hands sc back for another match; out must not be read after.
func (sc *subScratch) release() {
	clear(sc.raw) // no references kept to entries a writer replaced
	sc.raw = sc.raw[:0]
	sc.ids = sc.ids[:0]
	for i := range sc.out {
		sc.out[i] = subMatch{}
	}
	sc.out = sc.out[:0]
	sc.from = 0
	sc.x.scratch.Put(sc)
}

// splitShared splits a shared filter $share/G/F into G and F; ok is false
// for a filter that is not shared. The prefix is told apart as mochi does
// (any case).
func splitShared(filter string) (group, rest string, ok bool) {
	if !mqtt.IsSharedFilter(filter) {
		return "", "", false
	}
	_, after, _ := strings.Cut(filter, "/")
	group, rest, _ = strings.Cut(after, "/")
	return group, rest, true
}

// subscribe files sub for client, replacing the client's subscription to
// the same filter [MQTT-3.8.4-3]. It reports whether it was new.
func (x *subIndex) subscribe(client string, sub packets.Subscription) bool {
	e := subEntry{client: client, filter: sub.Filter, id: sub.Identifier, qos: sub.Qos, noLocal: sub.NoLocal, rap: sub.RetainAsPublished}
	_, path, shared := splitShared(sub.Filter)
	if !shared {
		path = sub.Filter
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	n := &x.root
	for i := 0; i <= len(path); {
		var level string
		level, i = nextTopicLevel(path, i)
		k, ok := n.child(level)
		if !ok {
			k = new(snode)
			n.addChild(strings.Clone(level), k)
			n.setWild(level, k)
			n.nkids++
		}
		n = k
	}
	if !shared {
		return fileEntry(&n.subs, &n.pos, client, e)
	}
	groups := n.shared.Load()
	if g, ok := n.gpos[sub.Filter]; ok {
		grp := *groups.at(g)
		return fileEntry(&grp.members, &grp.pos, client, e)
	}
	grp := &shareGroup{filter: sub.Filter}
	fileEntry(&grp.members, &grp.pos, client, e)
	if n.gpos == nil {
		n.gpos = map[string]int{}
	}
	n.gpos[sub.Filter] = groups.len()
	n.shared.Store(groups.with(grp))
	return true
}

// posAt is the length from which a list's positions are kept in a map
// (snode.pos, shareGroup.pos); a shorter list is scanned for a client. A
// map costs 256 bytes at least (its header and a group of eight slots),
// and most filters have one subscriber: a subscribed idle connection with
// a filter of its own paid it.
const posAt = 8

// indexOf is client's index in l, whose positions are pos (nil: l is
// scanned). Under mu.
func indexOf(l *plist[subEntry], pos map[string]int, client string) (int, bool) {
	if pos != nil {
		i, ok := pos[client]
		return i, ok
	}
	for i := range l.len() {
		if l.at(i).client == client {
			return i, true
		}
	}
	return 0, false
}

// fileEntry files e in the list *list, whose positions are *pos (a map
// made once the list has posAt entries), replacing the entry of its
// client if there is one; it reports whether it was new. Under mu.
func fileEntry(list *atomic.Pointer[plist[subEntry]], pos *map[string]int, client string, e subEntry) bool {
	l := list.Load()
	if i, ok := indexOf(l, *pos, client); ok {
		list.Store(l.set(i, e))
		return false
	}
	n := l.len()
	if *pos == nil && n+1 >= posAt {
		*pos = make(map[string]int, n+1)
		for i := range n {
			(*pos)[l.at(i).client] = i
		}
	}
	if *pos != nil {
		(*pos)[client] = n
	}
	list.Store(l.with(e))
	return true
}

// unfileEntry removes client's entry from the list *list, whose positions
// are *pos, moving the last entry into its place; found reports whether
// there was one, and last whether it was the list's only one. An entry
// left alone is not removed when keepLast: the caller drops the whole
// list. The positions' map goes once the list is empty. Under mu.
func unfileEntry(list *atomic.Pointer[plist[subEntry]], pos *map[string]int, client string, keepLast bool) (found, last bool) {
	l := list.Load()
	i, ok := indexOf(l, *pos, client)
	if !ok {
		return false, false
	}
	if *pos != nil {
		delete(*pos, client)
	}
	if l.len() == 1 {
		*pos = nil
		if keepLast {
			return true, true
		}
	}
	if end := l.len() - 1; i != end && *pos != nil {
		(*pos)[l.at(end).client] = i
	}
	list.Store(l.without(i))
	return true, l.len() == 1
}

// unsubscribe removes client's subscription to filter; it reports whether
// there was one. Nodes left empty are pruned.
func (x *subIndex) unsubscribe(filter, client string) bool {
	return x.unsubscribeUnless(filter, client, nil)
}

// unsubscribeUnless is unsubscribe, but leaves the subscription if kept,
// asked under the writers' lock, reports true.
func (x *subIndex) unsubscribeUnless(filter, client string, kept func() bool) bool {
	_, path, shared := splitShared(filter)
	if !shared {
		path = filter
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if kept != nil && kept() {
		return false
	}
	type step struct {
		parent *snode
		level  string
	}
	var steps [16]step // enough for most filters without allocating
	trail := steps[:0]
	n := &x.root
	for i := 0; i <= len(path); {
		var level string
		level, i = nextTopicLevel(path, i)
		k, ok := n.child(level)
		if !ok {
			return false
		}
		trail = append(trail, step{n, level})
		n = k
	}
	found := false
	if !shared {
		found, _ = unfileEntry(&n.subs, &n.pos, client, false)
	} else if g, ok := n.gpos[filter]; ok {
		groups := n.shared.Load()
		grp := *groups.at(g)
		// A group's members list is never emptied (readers pick one of
		// them): a group losing its last member leaves the node's list.
		var last bool
		found, last = unfileEntry(&grp.members, &grp.pos, client, true)
		if found && last {
			delete(n.gpos, filter)
			if last := groups.len() - 1; g != last {
				n.gpos[(*groups.at(last)).filter] = g
			}
			n.shared.Store(groups.without(g))
		}
	}
	for j := len(trail) - 1; j >= 0 && n.empty(); j-- { // prune
		s := trail[j]
		s.parent.delChild(s.level)
		s.parent.setWild(s.level, nil)
		s.parent.nkids--
		n = s.parent
	}
	return found
}

// empty reports whether n holds nothing; under mu.
func (n *snode) empty() bool {
	return n.nkids == 0 && n.subs.Load().len() == 0 && n.shared.Load().len() == 0
}

// occupied reports whether n holds a subscription or a child; unlike
// empty it reads only what readers may (nkids is under mu), so it serves
// mayMatchBelow, which runs beside SUBSCRIBE and UNSUBSCRIBE.
func (n *snode) occupied() bool {
	if n.subs.Load().len() > 0 || n.shared.Load().len() > 0 {
		return true
	}
	switch s := n.few.Load(); {
	case s == nil:
		return false
	case !s.many:
		return len(s.kids) > 0
	}
	kids := false
	n.kids.Range(func(_, _ any) bool { kids = true; return false })
	return kids
}

// fewKids is how many children a node lists in few before its kids map
// holds them.
const fewKids = 4

// kidSet is a node's children while they are few (snode.few): never
// changed once stored; a writer stores a new one.
type kidSet struct {
	many bool // manyKids: the node's kids map holds its children
	kids []kidEntry
}

// kidEntry is a child and its level.
type kidEntry struct {
	level string
	n     *snode
}

// manyKids is the few of a node whose children are in its kids map.
// Never changed.
var manyKids = &kidSet{many: true}

// child is n's child named level, and whether it has one. Readers (a
// publish's walk) and writers (under mu) alike.
func (n *snode) child(level string) (*snode, bool) {
	s := n.few.Load()
	if s == nil {
		return nil, false
	}
	if !s.many {
		for i := range s.kids {
			if s.kids[i].level == level {
				return s.kids[i].n, true
			}
		}
		return nil, false
	}
	v, ok := n.kids.Load(level)
	if !ok {
		return nil, false
	}
	return v.(*snode), true
}

// addChild makes k n's child named level, which n has not; under mu. A
// child past fewKids moves them all to the kids map first, then sends
// readers there (manyKids): a reader that loaded the list before finds
// what it held, as it would have a moment before.
func (n *snode) addChild(level string, k *snode) {
	s := n.few.Load()
	switch {
	case s != nil && s.many:
		n.kids.Store(level, k)
	case s == nil || len(s.kids) < fewKids:
		var kids []kidEntry
		if s != nil {
			kids = make([]kidEntry, len(s.kids), len(s.kids)+1)
			copy(kids, s.kids)
		}
		n.few.Store(&kidSet{kids: append(kids, kidEntry{level, k})})
	default:
		for _, e := range s.kids {
			n.kids.Store(e.level, e.n)
		}
		n.kids.Store(level, k)
		n.few.Store(manyKids)
	}
}

// delChild removes n's child named level; under mu. A node whose
// children went to its kids map keeps them there: one that went back to
// a list would have to empty the map, and a reader sent there before
// would miss children that never left.
func (n *snode) delChild(level string) {
	s := n.few.Load()
	switch {
	case s == nil:
	case s.many:
		n.kids.Delete(level)
	default:
		kids := make([]kidEntry, 0, len(s.kids))
		for _, e := range s.kids {
			if e.level != level {
				kids = append(kids, e)
			}
		}
		if len(kids) == 0 {
			n.few.Store(nil)
		} else {
			n.few.Store(&kidSet{kids: kids})
		}
	}
}

// kid is n's child named level, or nil.
func (n *snode) kid(level string) *snode {
	switch level {
	case "#":
		return n.hash.Load()
	case "+":
		return n.plus.Load()
	}
	k, _ := n.child(level)
	return k
}

// setWild keeps n's "#" and "+" children (hash, plus) with kids: k is
// the child at level now, nil when it was deleted; under mu. A publish
// asks n for both at every level of its topic (walk): two atomic loads,
// not two sync.Map lookups.
func (n *snode) setWild(level string, k *snode) {
	switch level {
	case "#":
		n.hash.Store(k)
	case "+":
		n.plus.Store(k)
	}
}

// nextTopicLevel is the level of s starting at i and where the next one
// starts (len(s)+1 after the last).
func nextTopicLevel(s string, i int) (string, int) {
	if j := strings.IndexByte(s[i:], '/'); j >= 0 {
		return s[i : i+j], i + j + 1
	}
	return s[i:], len(s) + 1
}

// match returns the clients whose plain subscriptions match topic, one
// subMatch each, in the scratch's out; the caller reads it, then calls
// release. origin is the publishing client's id ("" for none): only its
// match may need own. It allocates nothing once the pool holds a scratch
// as large as the match needs.
func (x *subIndex) match(topic, origin string) *subScratch {
	sc, _ := x.scratch.Get().(*subScratch)
	if sc == nil {
		sc = &subScratch{x: x}
	}
	x.walk(&x.root, topic, 0, sc)
	raw := sc.raw
	if len(raw) == 0 {
		return sc
	}
	// A client's entries are merged once sorted together. A list holds
	// one entry a client: those from one list (a topic matched by # alone,
	// say) are not sorted, which was most of a match's cost.
	if len(raw) > 1 && sc.from > 1 {
		slices.SortFunc(raw, func(a, b *subEntry) int { return cmp.Compare(a.client, b.client) })
	}
	for i := 0; i < len(raw); {
		e := raw[i]
		m := subMatch{client: e.client, noLocal: true}
		start, some := len(sc.ids), false
		j := i
		for ; i < len(raw) && raw[i].client == e.client; i++ {
			r := raw[i]
			m.qos = max(m.qos, r.qos)
			m.noLocal = m.noLocal && r.noLocal
			some = some || r.noLocal
			m.rap = m.rap || r.rap
			if r.id > 0 {
				sc.ids = append(sc.ids, r.id)
			}
		}
		if some && !m.noLocal && e.client == origin {
			m.own = ownMatch(raw[j:i])
		}
		if len(sc.ids)-start > 1 {
			slices.Sort(sc.ids[start:])
		}
		m.ids = sc.ids[start:len(sc.ids):len(sc.ids)]
		sc.out = append(sc.out, m)
	}
	// sc.ids may have grown (moved) while appending: point the matches at
	// its final array.
	k := 0
	for i := range sc.out {
		n := len(sc.out[i].ids)
		sc.out[i].ids = sc.ids[k : k+n : k+n]
		k += n
	}
	return sc
}

// mayMatchBelow reports whether a subscription might match a topic
// below prefix (prefix/…): false means none can, true that one may. It
// walks prefix's levels as walk does, without collecting: a tree publish
// asks it once for all its rows.
func (x *subIndex) mayMatchBelow(prefix string) bool {
	return x.mayWalk(&x.root, prefix, 0)
}

func (x *subIndex) mayWalk(n *snode, prefix string, i int) bool {
	if i > len(prefix) {
		return n.occupied() // conservative: anything left in the subtree
	}
	if n.kid("#") != nil {
		return true
	}
	level, next := nextTopicLevel(prefix, i)
	if p := n.kid("+"); p != nil && x.mayWalk(p, prefix, next) {
		return true
	}
	if c := n.kid(level); c != nil && x.mayWalk(c, prefix, next) {
		return true
	}
	return false
}

// walk collects the entries of n's subtree that match topic from offset
// i (len(topic)+1 once used up), as tree's index does (matchFrom).
func (x *subIndex) walk(n *snode, topic string, i int, sc *subScratch) {
	if i > len(topic) {
		sc.collect(n)
		if h := n.kid("#"); h != nil { // "a/#" matches "a" itself
			sc.collect(h)
		}
		return
	}
	wild := i > 0 || !strings.HasPrefix(topic, "$") // [MQTT-4.7.2-1]
	if wild {
		if h := n.kid("#"); h != nil {
			sc.collect(h)
		}
	}
	level, next := nextTopicLevel(topic, i)
	if wild {
		if p := n.kid("+"); p != nil {
			x.walk(p, topic, next, sc)
		}
	}
	if c := n.kid(level); c != nil {
		x.walk(c, topic, next, sc)
	}
}

// collect adds n's subscriptions and one member of each of its shared
// groups.
func (sc *subScratch) collect(n *snode) {
	if subs := n.subs.Load(); subs.len() > 0 {
		sc.raw = subs.appendPtrs(sc.raw)
		sc.from++
	}
	if groups := n.shared.Load(); groups != nil {
		for i := range groups.len() {
			m := (*groups.at(i)).members.Load()
			sc.raw = append(sc.raw, m.at(rand.IntN(m.len())))
			sc.from++
		}
	}
}

// fileSub files a plain subscription of client in mochi's index and the
// broker's; it reports whether it was new to mochi.
func (b *Broker) fileSub(client string, sub packets.Subscription) bool {
	isNew := b.server.Topics.Subscribe(client, sub)
	b.plainIdx.subscribe(client, sub)
	return isNew
}

// unfileSub removes client's subscription to filter from mochi's index
// and the broker's; it reports whether mochi had it.
func (b *Broker) unfileSub(filter, client string) bool {
	had := b.server.Topics.Unsubscribe(filter, client)
	b.plainIdx.unsubscribe(filter, client)
	return had
}

// mirrorSubscribed files in the broker's index what mochi filed for a
// SUBSCRIBE (OnSubscribed): every plain filter it granted (a code below
// 0x80), as mochi filed it (the QoS as asked). Tree filters ($sync/F,
// $tree.cbor/F, the property form's $sync.prop.json/F) are the loop's
// (subscribeTree): no plain delivery may reach them, so they are not
// filed here (unfiling one that is not filed does nothing).
func (b *Broker) mirrorSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] < 0x80 && !isTreeFilter(f.Filter) {
			b.plainIdx.subscribe(cl.ID, f)
		}
	}
}

// mirrorUnsubscribed removes from the broker's index what mochi removed
// (OnUnsubscribed: an UNSUBSCRIBE, or a session that ends): a filter the
// client's state no longer holds (mochi keeps it when it refused the
// UNSUBSCRIBE). A newer connection of the same client id that holds the
// filter keeps it: the session of the old one may end (and this hook run)
// after the new one subscribed again; asked under the index's writers'
// lock, after which that SUBSCRIBE's own filing (mirrorSubscribed, which
// comes after mochi's state has it) can only come later.
func (b *Broker) mirrorUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	for _, f := range pk.Filters {
		if _, ok := cl.State.Subscriptions.Get(f.Filter); ok {
			continue
		}
		b.plainIdx.unsubscribeUnless(f.Filter, cl.ID, func() bool {
			cur, ok := b.server.Clients.Get(cl.ID)
			if !ok || cur == cl {
				return false
			}
			_, has := cur.State.Subscriptions.Get(f.Filter)
			return has
		})
	}
}

// OnClientExpired unsubscribes a session whose Session Expiry Interval
// elapsed while its client was away [MQTT-3.1.2-23]: mochi forgets the
// client (clearExpiredClients) but leaves its subscriptions filed, and no
// OnUnsubscribed runs. UnsubscribeClient removes them from mochi's index
// and, through OnUnsubscribed, from the broker's; a session taken over
// meanwhile is left to its successor (mochi's IsTakenOver, and the newer
// connection's filings are kept: mirrorUnsubscribed).
//
// What the session held in flight (deliveries held for it, inbound QoS 2
// PUBRECs) leaves Info.Inflight with it: nothing holds it any more, and the
// count ($SYS/broker/messages/inflight, mote_inflight_messages) kept it
// for good (TestExpiredSessionInflightCounted). Nothing more is held for
// it (arriving.end) before its map is counted.
func (h *hook) OnClientExpired(cl *mqtt.Client) {
	h.b.away.goneLocked(cl) // under the id's takeover lock (mochi's expireClient)
	h.b.arriving.end(h.b, cl)
	h.b.offline.forget(cl.ID)
	h.b.forgetTrees(cl.ID)
	atomic.AddInt64(&h.b.server.Info.Inflight, -int64(cl.State.Inflight.Len()))
	h.b.server.UnsubscribeClient(cl)
}
