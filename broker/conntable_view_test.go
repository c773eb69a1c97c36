package broker

// The tests' view of a connTable: the methods of the sync.Map it
// replaced, so tests written against b.conns and b.byID as sync.Maps read
// them the same way.

// ranger is a sync.Map or a connTable, for tests that range over either.
type ranger interface {
	Range(f func(k, v any) bool)
}

// Load is load, its connection as an any.
func (t *connTable[K]) Load(k K) (any, bool) {
	c, ok := t.load(k)
	if !ok {
		return nil, false
	}
	return c, true
}

// Range calls f for each entry filed now (a copy), until f returns false.
func (t *connTable[K]) Range(f func(k, v any) bool) {
	t.mu.RLock()
	type kv struct {
		k K
		c *conn
	}
	all := make([]kv, 0, len(t.m))
	for k, c := range t.m {
		all = append(all, kv{k, c})
	}
	t.mu.RUnlock()
	for _, e := range all {
		if !f(e.k, e.c) {
			return
		}
	}
}

// CompareAndDelete is compareAndDelete.
func (t *connTable[K]) CompareAndDelete(k K, c *conn) bool { return t.compareAndDelete(k, c) }
