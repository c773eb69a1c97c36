package cluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

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

// ErrOtherLog is a node's copy of another log than the cluster's: its
// data directory is from another cluster, or the stream was made anew.
var ErrOtherLog = errors.New("cluster: the node's rows are a copy of another log")

// bindFile, beside the store's file, holds the ID of the log the copy
// follows.
const bindFile = "cluster-log"

// Bind ties the copy to the log named id (Log.ID): the first time it
// records id; after, a different id is an error wrapping ErrOtherLog
// (wipe the data directory to join the new log).
func (s *Store) Bind(id string) error {
	p := filepath.Join(filepath.Dir(s.Path()), bindFile)
	b, err := os.ReadFile(p)
	switch {
	case err == nil && string(b) == id:
		return nil
	case err == nil:
		return fmt.Errorf("%w: %s follows %q, the cluster's is %q", ErrOtherLog, s.Path(), b, id)
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("cluster: read %s: %w", p, err)
	}
	if rev := s.rev.Load(); rev > 0 {
		return fmt.Errorf("%w: %s holds revision %d and names no log", ErrOtherLog, s.Path(), rev)
	}
	if err := writeSynced(p, []byte(id)); err != nil {
		return fmt.Errorf("cluster: record the log in %s: %w", p, err)
	}
	return nil
}

// writeSynced writes a file and syncs it and its directory.
func writeSynced(p string, b []byte) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(p))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Mirror follows the log into the store without a broker (a tool, a
// test): it commits the batches it reads, several in one transaction
// while the log holds more (at most 10,000 rows, as the retainer does),
// and calls applied, if set, with each batch once it is committed. It
// keeps no history (SPEC §9: that is the broker's retainer, by its rules).
// It binds the copy to the log first (Bind), and returns what Bind or
// Log.Follow returns, or the store's error (a row it cannot store stops
// it: the broker's door never lets one into the log).
func (s *Store) Mirror(ctx context.Context, l *Log, applied func(Entry)) error {
	var id string
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		try, cancel := context.WithTimeout(ctx, tryTimeout)
		var err error
		id, err = l.ID(try)
		cancel()
		if err == nil {
			break
		}
		if l.opts.OnRetry != nil {
			l.opts.OnRetry(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	if err := s.Bind(id); err != nil {
		return err
	}
	const maxBatch = 10_000
	pending := map[string]retain.Change{}
	var done []Entry
	return l.Follow(ctx, s.Next(), func(e Entry) error {
		for _, c := range e.Changes {
			pending[c.Topic] = c // the newest change of a row: what the retainer keeps too
		}
		done = append(done, e)
		if e.Pending > 0 && len(pending) < maxBatch {
			return nil
		}
		changes := make([]retain.Change, 0, len(pending))
		for _, c := range pending {
			changes = append(changes, c)
		}
		rej, err := s.Commit(retain.Batch{Changes: changes, Rev: e.Seq})
		if err != nil {
			return err
		}
		if len(rej) > 0 {
			return fmt.Errorf("cluster: batch %d: row %.200q: %w", rej[0].Rev, rej[0].Topic, rej[0].Err)
		}
		clear(pending)
		if applied != nil {
			for _, d := range done {
				applied(d)
			}
		}
		done = done[:0]
		return nil
	})
}

var _ retain.RowStore = (*Store)(nil)
