package broker

import "sync"

// connTable maps keys to connections under a read-write mutex: the
// broker's conns (by mochi client) and byID (by client id). They were
// sync.Maps, whose entry and share of trie nodes cost ~110 bytes a
// connection each; a map's slot costs ~20–40 (bench/README.md, "Idle
// connections: mochi's client, the maps, the size classes"). The mutex
// is a leaf: held only inside these methods, never while calling out.
// The zero value is empty and ready.
type connTable[K comparable] struct {
	mu   sync.RWMutex
	m    map[K]*conn
	peak int // the most entries m held since it was made: it is remade smaller once far below (shrinkLocked)
}

// load returns k's connection.
func (t *connTable[K]) load(k K) (*conn, bool) {
	t.mu.RLock()
	c, ok := t.m[k]
	t.mu.RUnlock()
	return c, ok
}

// store files c under k, in place of any before.
func (t *connTable[K]) store(k K, c *conn) {
	t.mu.Lock()
	if t.m == nil {
		t.m = make(map[K]*conn)
	}
	t.m[k] = c
	t.peak = max(t.peak, len(t.m))
	t.mu.Unlock()
}

// loadAndDelete removes k's connection and returns it.
func (t *connTable[K]) loadAndDelete(k K) (*conn, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.m[k]
	if ok {
		delete(t.m, k)
		t.shrinkLocked()
	}
	return c, ok
}

// compareAndDelete removes k's connection if it is c.
func (t *connTable[K]) compareAndDelete(k K, c *conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur, ok := t.m[k]; !ok || cur != c {
		return false
	}
	delete(t.m, k)
	t.shrinkLocked()
	return true
}

// shrinkLocked remakes m once it holds less than an eighth of its peak
// (of 1,024 or more): a Go map keeps the room of its most entries, a
// sync.Map gave each back as it went. Copying len(m) entries after at
// least 7 × len(m) deletions is O(1) a deletion.
func (t *connTable[K]) shrinkLocked() {
	if t.peak < 1024 || len(t.m) >= t.peak/8 {
		return
	}
	m := make(map[K]*conn, len(t.m))
	for k, c := range t.m {
		m[k] = c
	}
	t.m, t.peak = m, len(m)
}

// keys returns the keys filed now: a copy, to call out over.
func (t *connTable[K]) keys() []K {
	t.mu.RLock()
	defer t.mu.RUnlock()
	ks := make([]K, 0, len(t.m))
	for k := range t.m {
		ks = append(ks, k)
	}
	return ks
}

// conns returns the connections filed now: a copy, to call out over.
func (t *connTable[K]) conns() []*conn {
	t.mu.RLock()
	defer t.mu.RUnlock()
	cs := make([]*conn, 0, len(t.m))
	for _, c := range t.m {
		cs = append(cs, c)
	}
	return cs
}
