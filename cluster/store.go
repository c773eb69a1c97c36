package cluster

import (
	"fmt"
	"sync/atomic"

	"github.com/mote-mqtt/mote/retain"
)

// Store is a node's copy of the cluster's rows: the bbolt row store, fed
// with the log's batches in order, whose revision is the sequence of the
// last batch it committed (where the node's follower resumes). It is a
// retain.RowStore: markers, history and compaction are the bbolt store's,
// computed from the same batches on every node.
//
// What differs is Meta: the log, not the node, hands out revisions, so a
// node that stopped uncleanly lost none (it replays what it had not
// committed), and a new copy starts from revision 0 and replays the log.
// Meta reports both as clean, so the broker neither skips ahead nor
// starts past the log.
type Store struct {
	*retain.Store
	rev atomic.Uint64 // the revision committed: Meta's, then each Commit's
}

// OpenStore opens (creating if needed) the node's copy in dir.
func OpenStore(dir string) (*Store, error) {
	s, err := retain.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	c := &Store{Store: s}
	c.rev.Store(s.Meta().Rev)
	return c, nil
}

// Meta is the bbolt store's, always Clean and never Fresh (see Store).
func (s *Store) Meta() retain.Meta {
	m := s.Store.Meta()
	m.Clean, m.Fresh = true, false
	return m
}

// Next is the sequence the node's follower starts from: one past the
// last batch committed.
func (s *Store) Next() uint64 { return s.rev.Load() + 1 }

// Commit is the bbolt store's, and records the batch's revision for Next.
func (s *Store) Commit(b retain.Batch) ([]retain.Rejected, error) {
	rej, err := s.Store.Commit(b)
	if err == nil && b.Rev > s.rev.Load() {
		s.rev.Store(b.Rev) // one committer: the retainer, or Apply's caller
	}
	return rej, err
}

// Apply commits one batch of the log as it is, with revision seq: the
// way a node without a broker (a tool, a test) follows the log.
func (s *Store) Apply(seq uint64, changes []retain.Change) error {
	rej, err := s.Commit(retain.Batch{Changes: changes, Rev: seq})
	if err != nil {
		return err
	}
	if len(rej) > 0 {
		return fmt.Errorf("cluster: batch %d: row %.200q: %w", seq, rej[0].Topic, rej[0].Err)
	}
	return nil
}

var _ retain.RowStore = (*Store)(nil)
