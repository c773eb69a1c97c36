package retain

import (
	"bytes"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Deleted calls fn for every deletion marker with a revision in
// (since, upto], in revision order, until fn returns false.
func (s *Store) Deleted(since, upto uint64, fn func(topic string, rev uint64) bool) error {
	if since >= upto {
		return nil
	}
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketDead).Cursor()
		for k, _ := c.Seek(binary.BigEndian.AppendUint64(nil, since+1)); k != nil; k, _ = c.Next() {
			if len(k) < 8 {
				continue
			}
			rev := binary.BigEndian.Uint64(k)
			if rev > upto || !fn(string(k[8:]), rev) {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("retain: read deletion markers of %s: %w", s.path, err)
	}
	return nil
}

// Markers counts the deletion markers, and returns the revision of the
// n-th oldest (0 if there are fewer).
func (s *Store) Markers(n int) (count int, nth uint64, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDead)
		count = b.Stats().KeyN
		if n < 1 || n > count {
			return nil
		}
		c := b.Cursor()
		k, _ := c.First()
		for i := 1; i < n && k != nil; i++ {
			k, _ = c.Next()
		}
		if len(k) >= 8 {
			nth = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("retain: count deletion markers of %s: %w", s.path, err)
	}
	return count, nth, nil
}

// Compact drops up to max markers at or below revision floor, in one
// transaction that also records the floor; more reports markers left.
func (s *Store) Compact(floor uint64, max int) (more bool, err error) {
	err = s.update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if floor <= getUint(meta, keyFloor) {
			return nil
		}
		if err := putUint(meta, keyFloor, floor); err != nil {
			return err
		}
		var keys [][]byte
		c := tx.Bucket(bucketDead).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if len(k) >= 8 && binary.BigEndian.Uint64(k) > floor {
				break
			}
			if len(keys) == max {
				more = true
				break
			}
			keys = append(keys, bytes.Clone(k))
		}
		dead := tx.Bucket(bucketDead)
		for _, k := range keys {
			if err := dead.Delete(k); err != nil && !nested(err) { // a foreign file's bucket stays
				return err
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("retain: compact deletion markers of %s: %w", s.path, err)
	}
	return more, nil
}

// MarkRunning records that a retainer runs on the store: until MarkClean,
// revisions handed out may be lost in a crash.
func (s *Store) MarkRunning() error {
	err := s.update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyClean, []byte{0}) })
	if err != nil {
		return fmt.Errorf("retain: mark %s running: %w", s.path, err)
	}
	return nil
}

// MarkClean records the final revision and that the broker stopped
// cleanly: every revision it handed out is committed.
func (s *Store) MarkClean(rev uint64) error {
	err := s.update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if rev > getUint(meta, keyRev) {
			if err := putUint(meta, keyRev, rev); err != nil {
				return err
			}
		}
		return meta.Put(keyClean, []byte{1})
	})
	if err != nil {
		return fmt.Errorf("retain: mark %s clean: %w", s.path, err)
	}
	return nil
}
