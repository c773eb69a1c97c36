package retain

import (
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// update runs fn in one write transaction (bbolt's Update), holding
// s.mu. bbolt panics on some damaged pages (an invalid page type, a page
// freed twice); such a panic is returned as an error wrapping ErrCorrupt,
// and the store is broken from then on: every later write returns that
// error without touching the file. bbolt documents nothing of its state
// after a panic. Its Update rolls the transaction back (reloading the
// freelist from the file) and releases the writer lock, unless the
// rollback panics too; either way the damaged page is still there and the
// same write would panic again, so retrying cannot help. A panic as the
// transaction began (its meta pages invalid) wedges the store too (see
// view).
func (s *Store) update(fn func(*bolt.Tx) error) (err error) {
	return s.updateThen(fn, nil)
}

// updateThen is update, and runs then, if not nil, once fn's transaction
// committed, still holding s.mu: what it records of the write (the
// history sizes, histsize.go) is in step with the writes, in their order,
// however many goroutines write.
func (s *Store) updateThen(fn func(*bolt.Tx) error, then func()) (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil {
		return s.broken
	}
	if s.wedged.Load() {
		s.broken = s.wedgedError()
		return s.broken
	}
	var tx *bolt.Tx
	defer func() {
		if r := recover(); r != nil {
			if tx == nil { // bbolt's meta pages are invalid: no transaction can begin
				s.wedged.Store(true)
			}
			// A transaction bbolt closed has no DB: its writer lock is free.
			s.locked = tx == nil || tx.DB() != nil
			s.broken = fmt.Errorf("%w: bbolt panicked in a write (%v): the file is damaged, no more writes are tried", ErrCorrupt, r)
			err = s.broken
		}
	}()
	err = s.db.Update(func(t *bolt.Tx) error {
		tx = t
		return fn(t)
	})
	if err == nil && then != nil {
		then()
	}
	return err
}

// view runs fn in a read transaction (bbolt's View). A panic inside it
// (a damaged page) is an error wrapping ErrCorrupt; a read leaves nothing
// behind, so the store still takes writes. A panic of fn (a caller's
// callback) is reported the same way: it too must not take the broker
// down.
//
// A panic as the transaction began is bbolt finding both meta pages
// invalid, in a read holding its meta and mmap locks, which stay held:
// every later transaction, and closing the file, would wait for them for
// ever. The store is wedged then: no later read or write is tried, and
// Close leaves the file open. (A write that began in the instant between
// that panic and the store being marked can still wait: bbolt offers no
// way to free its lock.)
func (s *Store) view(fn func(*bolt.Tx) error) (err error) {
	if s.wedged.Load() {
		return s.wedgedError()
	}
	began := false
	defer func() {
		if r := recover(); r != nil {
			if !began {
				s.wedged.Store(true)
			}
			err = fmt.Errorf("%w: bbolt panicked in a read (%v)", ErrCorrupt, r)
		}
	}()
	return s.db.View(func(tx *bolt.Tx) error {
		began = true
		return fn(tx)
	})
}

// wedgedError is the error of every transaction of a wedged store.
func (s *Store) wedgedError() error {
	return fmt.Errorf("%w: %s: bbolt panicked as a transaction began (its meta pages are invalid): no more reads or writes are tried", ErrCorrupt, s.path)
}

// nested reports whether err is bbolt's refusal to write or delete a key
// that holds a nested bucket: a foreign or damaged file's, as this
// package never makes one inside its buckets. It costs only the change
// that met it (bbolt checks before it changes anything), never the
// transaction.
func nested(err error) bool { return errors.Is(err, berrors.ErrIncompatibleValue) }

// nestedError is why a change whose key (what: "row", "deletion marker",
// "history value") holds a nested bucket cannot be stored.
func nestedError(what string, err error) error {
	return fmt.Errorf("%w: the file holds a nested bucket under its %s key (a foreign or damaged file): %w", ErrUnstorable, what, err)
}

// idleArena and idleRows bound the commit scratch an idle store keeps: a
// storm's commits of up to 64k rows of 60-byte values each reuse the last
// one's. Past them, scratch more than shrinkRatio times what a commit
// needs is left to the GC (the storm that grew it is over), and so is all
// of it when the store is trimmed (Trim, the retainer once idle).
const (
	idleArena   = 4 << 20
	idleRows    = spareRows
	shrinkRatio = 8
)

// shrinkScratchLocked leaves to the GC the parts of Commit's scratch that
// are larger than a commit of rows changes and size bytes of values
// needs, by more than shrinkRatio and past what an idle store keeps. The
// commit running keeps the slices it took. s.mu must be held.
func (s *Store) shrinkScratchLocked(rows, size int) {
	if cap(s.arena) > max(idleArena, shrinkRatio*size) {
		s.arena = nil
	}
	if cap(s.sort.es) > max(idleRows, shrinkRatio*rows) {
		s.sort = sortBufs{}
	}
}

// Trim leaves Commit's scratch to the GC if it is a storm's (past
// idleArena bytes or idleRows rows). The retainer calls it when it has
// nothing to commit, as it drops a storm's row sets then.
func (s *Store) Trim() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shrinkScratchLocked(0, 0)
}
