package broker

import (
	"weak"

	"github.com/mote-mqtt/mote/tree"
)

// replayList is the rows a filter matched when a retained replay listed
// them (8 bytes a row): immutable once made, and shared by every replay
// of the same filter that starts while the store holds the same rows
// (tree.Store.Gen), so 500 subscribers of dev/+/state replaying 10,000
// rows at once hold one list, not 500. A replay reads each row's current
// value through it, on the loop.
type replayList struct {
	gen  uint64
	refs []tree.Ref
}

// replayLists finds the list a replay of a filter shares (owned by the
// loop). It keeps them weakly: a list lives as long as a replay reads it.
// The zero value is ready.
type replayLists struct {
	byFilter map[string]weak.Pointer[replayList]
}

// sweepAt is the number of filters past which listing a new one first
// forgets those whose lists are gone or stale.
const sweepAt = 64

// list is the list of filter's rows now: shared if one was made since the
// last row was added or deleted, and still read by a replay.
func (ls *replayLists) list(s *tree.Store, filter string) *replayList {
	gen := s.Gen()
	if l := ls.byFilter[filter].Value(); l != nil && l.gen == gen {
		return l
	}
	if ls.byFilter == nil {
		ls.byFilter = map[string]weak.Pointer[replayList]{}
	}
	if len(ls.byFilter) >= sweepAt {
		for f, p := range ls.byFilter {
			if l := p.Value(); l == nil || l.gen != gen {
				delete(ls.byFilter, f)
			}
		}
	}
	l := &replayList{gen: gen, refs: s.Refs(filter, nil)}
	ls.byFilter[filter] = weak.Make(l)
	return l
}
