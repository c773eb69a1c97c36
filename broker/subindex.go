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
// No Local if any has it, Retain As Published if any has it, every
// subscription identifier; a shared subscription group ($share/G/F,
// grouped by the whole filter) contributes one member, picked at random.
//
// Concurrency: writers (subscribe, unsubscribe) take mu and replace what
// they change copy-on-write: a node's subscription lists are immutable
// lists behind atomic pointers (plain ones in chunks, entryList); its
// children are a sync.Map (lock-free reads). A reader sees each node as it
// was at some moment: a SUBSCRIBE is visible to every publish that starts
// after it returned.
type subIndex struct {
	mu      sync.Mutex // writers
	root    snode
	scratch sync.Pool // *subScratch
}

// snode is one level of the trie; literal levels, "+" and "#" are
// children by name.
type snode struct {
	kids   sync.Map                      // level → *snode
	nkids  int                           // children; under mu
	subs   atomic.Pointer[entryList]     // plain subscriptions ending here; never changed once stored
	pos    map[string]int                // client → its index in subs; under mu
	shared atomic.Pointer[[]*shareGroup] // shared groups whose filter ends here; never changed once stored
}

// listChunk is how many subscriptions an entryList chunk holds.
const listChunk = 32

// entryList is an immutable list of subscriptions, in chunks of listChunk
// (every one full but the last): a change copies a chunk or two and the
// chunk pointers, not the whole list, so N clients subscribing to one
// filter cost O(N²/listChunk) copies, not O(N²). A nil list is empty.
type entryList struct {
	chunks [][]subEntry
	n      int
}

func (l *entryList) len() int {
	if l == nil {
		return 0
	}
	return l.n
}

func (l *entryList) at(i int) *subEntry { return &l.chunks[i/listChunk][i%listChunk] }

// with is l and e after it.
func (l *entryList) with(e subEntry) *entryList {
	if l == nil {
		return &entryList{chunks: [][]subEntry{{e}}, n: 1}
	}
	chunks := make([][]subEntry, len(l.chunks), len(l.chunks)+1)
	copy(chunks, l.chunks)
	if l.n%listChunk == 0 {
		chunks = append(chunks, []subEntry{e})
	} else {
		last := len(chunks) - 1
		chunks[last] = append(slices.Clip(slices.Clone(chunks[last])), e)
	}
	return &entryList{chunks: chunks, n: l.n + 1}
}

// set is l with e at i.
func (l *entryList) set(i int, e subEntry) *entryList {
	chunks := slices.Clone(l.chunks)
	c := slices.Clone(chunks[i/listChunk])
	c[i%listChunk] = e
	chunks[i/listChunk] = c
	return &entryList{chunks: chunks, n: l.n}
}

// without is l without its entry at i, its last entry moved there; nil if
// nothing is left.
func (l *entryList) without(i int) *entryList {
	if l.n == 1 {
		return nil
	}
	moved := *l.at(l.n - 1)
	chunks := slices.Clone(l.chunks)
	last := len(chunks) - 1
	if len(chunks[last]) == 1 {
		chunks = chunks[:last]
	} else {
		chunks[last] = slices.Clip(chunks[last][:len(chunks[last])-1]) // shared, never written
	}
	if i != l.n-1 {
		c := slices.Clone(chunks[i/listChunk])
		c[i%listChunk] = moved
		chunks[i/listChunk] = c
	}
	return &entryList{chunks: chunks, n: l.n - 1}
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

// shareGroup is a shared subscription group: its members are never
// changed once stored (a change stores a new group).
type shareGroup struct {
	filter  string // $share/G/F
	members []subEntry
}

// subMatch is one client's delivery of a topic: its subscriptions that
// match, merged.
type subMatch struct {
	client  string
	qos     byte
	noLocal bool
	rap     bool
	ids     []int // positive subscription identifiers, sorted; shared scratch: read only
}

// subScratch is one match's working memory, pooled: out is what the
// deliverer reads until it hands the scratch back (release).
type subScratch struct {
	raw []*subEntry
	ids []int
	out []subMatch
	x   *subIndex
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
		v, ok := n.kids.Load(level)
		if !ok {
			v = new(snode)
			n.kids.Store(strings.Clone(level), v)
			n.nkids++
		}
		n = v.(*snode)
	}
	if !shared {
		l := n.subs.Load()
		if i, ok := n.pos[client]; ok {
			n.subs.Store(l.set(i, e))
			return false
		}
		if n.pos == nil {
			n.pos = map[string]int{}
		}
		n.pos[client] = l.len()
		n.subs.Store(l.with(e))
		return true
	}
	old := loadList(&n.shared)
	groups := slices.Clone(old)
	g := slices.IndexFunc(groups, func(s *shareGroup) bool { return s.filter == sub.Filter })
	if g < 0 {
		groups = append(groups, &shareGroup{filter: sub.Filter, members: []subEntry{e}})
		n.shared.Store(&groups)
		return true
	}
	members := slices.Clone(groups[g].members)
	i := slices.IndexFunc(members, func(s subEntry) bool { return s.client == client })
	if i >= 0 {
		members[i] = e
	} else {
		members = append(members, e)
	}
	groups[g] = &shareGroup{filter: sub.Filter, members: members}
	n.shared.Store(&groups)
	return i < 0
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
		v, ok := n.kids.Load(level)
		if !ok {
			return false
		}
		trail = append(trail, step{n, level})
		n = v.(*snode)
	}
	found := false
	if !shared {
		if i, ok := n.pos[client]; ok {
			found = true
			l := n.subs.Load()
			if last := l.n - 1; i != last {
				n.pos[l.at(last).client] = i
			}
			delete(n.pos, client)
			n.subs.Store(l.without(i))
		}
	} else {
		old := loadList(&n.shared)
		if g := slices.IndexFunc(old, func(s *shareGroup) bool { return s.filter == filter }); g >= 0 {
			if i := slices.IndexFunc(old[g].members, func(s subEntry) bool { return s.client == client }); i >= 0 {
				found = true
				groups := slices.Clone(old)
				members := slices.Delete(slices.Clone(old[g].members), i, i+1)
				if len(members) == 0 {
					groups = slices.Delete(groups, g, g+1)
				} else {
					groups[g] = &shareGroup{filter: filter, members: members}
				}
				if len(groups) == 0 {
					n.shared.Store(nil)
				} else {
					n.shared.Store(&groups)
				}
			}
		}
	}
	for j := len(trail) - 1; j >= 0 && n.empty(); j-- { // prune
		s := trail[j]
		s.parent.kids.Delete(s.level)
		s.parent.nkids--
		n = s.parent
	}
	return found
}

// empty reports whether n holds nothing; under mu.
func (n *snode) empty() bool {
	return n.nkids == 0 && n.subs.Load().len() == 0 && len(loadList(&n.shared)) == 0
}

func loadList[T any](p *atomic.Pointer[[]T]) []T {
	if l := p.Load(); l != nil {
		return *l
	}
	return nil
}

// kid is n's child named level, or nil.
func (n *snode) kid(level string) *snode {
	if v, ok := n.kids.Load(level); ok {
		return v.(*snode)
	}
	return nil
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
// release. It allocates nothing once the pool holds a scratch as large as
// the match needs.
func (x *subIndex) match(topic string) *subScratch {
	sc, _ := x.scratch.Get().(*subScratch)
	if sc == nil {
		sc = &subScratch{x: x}
	}
	x.walk(&x.root, topic, 0, sc)
	raw := sc.raw
	if len(raw) == 0 {
		return sc
	}
	if len(raw) > 1 {
		slices.SortFunc(raw, func(a, b *subEntry) int { return cmp.Compare(a.client, b.client) })
	}
	for i := 0; i < len(raw); {
		e := raw[i]
		m := subMatch{client: e.client}
		start := len(sc.ids)
		for ; i < len(raw) && raw[i].client == e.client; i++ {
			r := raw[i]
			m.qos = max(m.qos, r.qos)
			m.noLocal = m.noLocal || r.noLocal
			m.rap = m.rap || r.rap
			if r.id > 0 {
				sc.ids = append(sc.ids, r.id)
			}
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
	if l := n.subs.Load(); l != nil {
		for _, c := range l.chunks {
			for i := range c {
				sc.raw = append(sc.raw, &c[i])
			}
		}
	}
	for _, g := range loadList(&n.shared) {
		sc.raw = append(sc.raw, &g.members[rand.IntN(len(g.members))])
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
func (h *hook) OnClientExpired(cl *mqtt.Client) {
	h.b.server.UnsubscribeClient(cl)
}
