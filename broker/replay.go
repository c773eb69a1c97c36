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
	sweepAt  int // the number of filters at which listing a new one sweeps first
	visited  int // entries the sweeps looked at, in all (tests)
}

// sweepMin is the fewest filters that a sweep waits for.
const sweepMin = 64

// list is the list of filter's rows now: shared if one was made since the
// last row was added or deleted, and still read by a replay.
//
// Listing a new filter first forgets those whose lists are gone or stale
// once there are sweepAt, and the next sweep waits until there are twice
// as many as the sweep kept: what a sweep looks at is paid for by the
// filters listed since the last, two entries each at most. A weak pointer
// reads nil only once the garbage collector ran: a sweep at each new
// filter past a fixed 64 looked at every list made since the last
// collection, n²/2 for n devices subscribing to filters of their own
// between two (BenchmarkReconnect subs=10/fresh-persistent: half the
// cycle's CPU).
func (ls *replayLists) list(s *tree.Store, filter string) *replayList {
	gen := s.Gen()
	if l := ls.byFilter[filter].Value(); l != nil && l.gen == gen {
		return l
	}
	if ls.byFilter == nil {
		ls.byFilter = map[string]weak.Pointer[replayList]{}
	}
	if len(ls.byFilter) >= max(ls.sweepAt, sweepMin) {
		for f, p := range ls.byFilter {
			ls.visited++
			if l := p.Value(); l == nil || l.gen != gen {
				delete(ls.byFilter, f)
			}
		}
		ls.sweepAt = 2 * len(ls.byFilter)
	}
	l := &replayList{gen: gen, refs: s.Refs(filter, nil)}
	ls.byFilter[filter] = weak.Make(l)
	return l
}
