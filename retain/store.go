// Package retain persists retained rows: a bbolt store, and the retainer
// goroutine that commits the message loop's row changes to it in batches,
// so delivery never waits on the disk.
//
// # Format
//
// One bbolt file, two buckets. "rows": key = topic (UTF-8 bytes, so a
// topic prefix is a key range), value = one flags byte (low 4 bits the
// row's wire.Kind, bits 4–5 its QoS) followed by the payload, byte for
// byte. "meta": "format" = the format version (1), so a later format can
// migrate on open.
//
// # Durability
//
// Every commit is one bbolt transaction, fsynced. The retainer commits at
// most every Options.Interval or Options.MaxBatch rows: after a crash at
// most the rows of the last unfinished interval are lost, and bbolt's
// copy-on-write pages mean the file always opens clean. Close commits
// everything first.
package retain

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/mote-mqtt/mote/wire"
)

// Format is the store format this package writes.
const Format = 1

var (
	bucketRows = []byte("rows")
	bucketMeta = []byte("meta")
	keyFormat  = []byte("format")
)

// ErrCorrupt is a store file that cannot be read.
var ErrCorrupt = errors.New("retain: store unreadable")

// Change is one row change to persist: a row set, or (Value.Kind None)
// deleted.
type Change struct {
	Topic string
	Value wire.Value
	QoS   byte
}

// Row is one stored row.
type Row struct {
	Topic string
	Value wire.Value
	QoS   byte
}

// RowStore is what the retainer writes to.
type RowStore interface {
	// Commit applies changes in one transaction.
	Commit(changes []Change) error
	// Load calls fn for every stored row, in topic order.
	Load(fn func(Row) error) error
	// Close closes the store.
	Close() error
}

// Store is the bbolt row store.
type Store struct {
	db   *bolt.DB
	path string
}

// FileName is the store's file inside the data directory.
const FileName = "mote.db"

// Open opens (creating if needed) the store in dir. A file that is not a
// valid store, or of another format, is an error naming it; a store held by
// another process is an error after a second.
func Open(dir string) (s *Store, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("retain: data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, FileName)
	defer func() { // bbolt panics on some damaged pages: never take the broker down for it
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, r)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, FreelistType: bolt.FreelistMapType})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("retain: open %s: in use by another process", path)
		}
		return nil, fmt.Errorf("%w: open %s: %w", ErrCorrupt, path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(bucketRows); err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		switch v := meta.Get(keyFormat); {
		case v == nil:
			return meta.Put(keyFormat, []byte{Format})
		case len(v) != 1 || v[0] != Format:
			return fmt.Errorf("format %v, this build reads %d", v, Format)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	return &Store{db: db, path: path}, nil
}

// Path is the store file.
func (s *Store) Path() string { return s.path }

// Commit applies changes in one fsynced transaction, keys in order (bbolt
// writes sorted keys fastest).
func (s *Store) Commit(changes []Change) error {
	slices.SortFunc(changes, func(a, b Change) int { return strings.Compare(a.Topic, b.Topic) })
	err := s.db.Update(func(tx *bolt.Tx) error {
		rows := tx.Bucket(bucketRows)
		for _, c := range changes {
			if c.Value.Kind == wire.None {
				if err := rows.Delete([]byte(c.Topic)); err != nil {
					return err
				}
				continue
			}
			// bbolt keeps the slice until the transaction commits: one per row.
			v := make([]byte, 1+len(c.Value.Data))
			v[0] = byte(c.Value.Kind) | c.QoS<<4
			copy(v[1:], c.Value.Data)
			if err := rows.Put([]byte(c.Topic), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("retain: commit %d rows to %s: %w", len(changes), s.path, err)
	}
	return nil
}

// Load calls fn for every row in topic order; an unreadable row is an
// error naming the file and the topic.
func (s *Store) Load(fn func(Row) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s: %v", ErrCorrupt, s.path, r)
		}
	}()
	return s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRows).ForEach(func(k, v []byte) error {
			r, err := decodeRow(k, v)
			if err != nil {
				return fmt.Errorf("%w: %s: %w", ErrCorrupt, s.path, err)
			}
			return fn(r)
		})
	})
}

func decodeRow(k, v []byte) (Row, error) {
	if len(v) == 0 {
		return Row{}, fmt.Errorf("row %q has no flags byte", k)
	}
	kind, qos := wire.Kind(v[0]&0x0f), v[0]>>4
	if kind == wire.None || kind > wire.Object || qos > 2 {
		return Row{}, fmt.Errorf("row %q has flags %#x", k, v[0])
	}
	return Row{Topic: string(k), Value: wire.Value{Kind: kind, Data: string(v[1:])}, QoS: qos}, nil
}

// Stats describe a store.
type Stats struct {
	Path     string
	Rows     int
	FileSize int64
	Bytes    int64 // topics plus payloads
	TopLevel map[string]int
}

// Stats counts rows, bytes and rows per first topic level.
func (s *Store) Stats() (Stats, error) {
	st := Stats{Path: s.path, TopLevel: map[string]int{}}
	if fi, err := os.Stat(s.path); err == nil {
		st.FileSize = fi.Size()
	}
	err := s.Load(func(r Row) error {
		st.Rows++
		st.Bytes += int64(len(r.Topic) + len(r.Value.Data))
		first, _, _ := strings.Cut(r.Topic, "/")
		st.TopLevel[first]++
		return nil
	})
	return st, err
}

// Close closes the file.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("retain: close %s: %w", s.path, err)
	}
	return nil
}
