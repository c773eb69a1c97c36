// Package retain persists retained rows: a bbolt store, and the retainer
// goroutine that commits the message loop's row changes to it in batches,
// so delivery never waits on the disk.
//
// # Format
//
// One bbolt file, two buckets. "rows": key = topic (UTF-8 bytes, so a
// topic prefix is a key range), value = one flags byte followed by the
// payload, byte for byte. The flags byte's low 4 bits are the row's type:
// 1 string, 2 bytes, 3 JSON (number, boolean, JSON string or array),
// 4 object; bits 4–5 its QoS (0–2); bits 6–7 are zero. These numbers are
// the format, named by this package's type constants and mapped to
// wire.Kind both ways, never stored as a wire.Kind. "meta": "format" = the
// format version (1), so a later format can migrate on open.
//
// bbolt cannot keep every row: a topic must be 1 to MaxTopic bytes and a
// payload at most MaxPayload. Store.Commit stores the rows it can and
// returns the others as Rejected (see ErrUnstorable); they are never
// retried.
//
// # Durability
//
// Every commit is one bbolt transaction, fsynced. The retainer commits at
// most every Options.Interval or Options.MaxBatch rows: after a crash at
// most the rows of the last unfinished interval are lost, and bbolt's
// copy-on-write pages mean the file always opens clean.
//
// A row the store refuses is logged, counted in Retainer.Lost, reported to
// Options.OnReject, and answered as an error naming it to the waiters
// handed in with it (Retainer.Add); every other row of its batch is
// committed as usual, and other waiters are answered nil. A commit
// that fails whole (I/O, disk full) is retried with a backoff of at most
// MaxBackoff, its waiting publishers refused at once. Retainer.Close
// commits everything first, and returns an error wrapping ErrLost if any
// row was refused during the run or could not be committed at close, so
// the broker can exit non-zero.
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

// ErrUnstorable is a row the store cannot keep: its topic is empty or
// longer than MaxTopic bytes, its payload longer than MaxPayload bytes, or
// its type or QoS has no flags byte. For a size it also wraps bbolt's error
// (berrors.ErrKeyRequired, ErrKeyTooLarge or ErrValueTooLarge).
var ErrUnstorable = errors.New("retain: row cannot be stored")

// MaxTopic is the longest topic the store keeps, in bytes (bbolt's key
// limit).
const MaxTopic = bolt.MaxKeySize

// MaxPayload is the longest payload the store keeps, in bytes (bbolt's
// value limit, less the flags byte).
const MaxPayload = bolt.MaxValueSize - 1

// Type bytes: the low 4 bits of a stored row's flags byte. They are the
// disk format; never renumber them.
const (
	typeString = 1
	typeBytes  = 2
	typeJSON   = 3
	typeObject = 4
)

// typeByte is the type byte stored for kind; false for a kind that is
// not stored (None, or one this format has no byte for).
func typeByte(kind wire.Kind) (byte, bool) {
	switch kind {
	case wire.String:
		return typeString, true
	case wire.Bytes:
		return typeBytes, true
	case wire.JSON:
		return typeJSON, true
	case wire.Object:
		return typeObject, true
	}
	return 0, false
}

// kindOf is the kind a stored type byte stands for; false for an unknown
// byte.
func kindOf(t byte) (wire.Kind, bool) {
	switch t {
	case typeString:
		return wire.String, true
	case typeBytes:
		return wire.Bytes, true
	case typeJSON:
		return wire.JSON, true
	case typeObject:
		return wire.Object, true
	}
	return wire.None, false
}

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

// Rejected is a change the store refused, and why (an error wrapping
// ErrUnstorable).
type Rejected struct {
	Change
	Err error
}

// RowStore is what the retainer writes to.
type RowStore interface {
	// Commit applies changes in one transaction, except those it cannot
	// store at all, which it returns with the reason. A non-nil err means
	// the transaction failed and nothing was committed (retry).
	Commit(changes []Change) (rejected []Rejected, err error)
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
// writes sorted keys fastest). It checks every set against bbolt's limits
// first and leaves out, returning them, the ones that cannot be stored; a
// refused row whose topic is a valid key is deleted in the same
// transaction, so a restart does not bring back an older value as current.
// Deletes are never refused (a key bbolt cannot hold is not stored). It
// sorts changes in place.
func (s *Store) Commit(changes []Change) ([]Rejected, error) {
	slices.SortFunc(changes, func(a, b Change) int { return strings.Compare(a.Topic, b.Topic) })
	var rejected []Rejected
	err := s.db.Update(func(tx *bolt.Tx) error {
		rejected = rejected[:0]
		rows := tx.Bucket(bucketRows)
		for _, c := range changes {
			if c.Value.Kind == wire.None {
				if err := rows.Delete([]byte(c.Topic)); err != nil {
					return err
				}
				continue
			}
			v, err := encodeRow(c)
			if err != nil {
				rejected = append(rejected, Rejected{Change: c, Err: err})
				if keyError(len(c.Topic)) == nil {
					if err := rows.Delete([]byte(c.Topic)); err != nil {
						return err
					}
				}
				continue
			}
			if err := rows.Put([]byte(c.Topic), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("retain: commit %d rows to %s: %w", len(changes), s.path, err)
	}
	return rejected, nil
}

// keyError is why bbolt cannot hold a key of n bytes, or nil.
func keyError(n int) error {
	switch {
	case n == 0:
		return fmt.Errorf("%w: empty topic: %w", ErrUnstorable, berrors.ErrKeyRequired)
	case n > MaxTopic:
		return fmt.Errorf("%w: topic of %d bytes, at most %d: %w", ErrUnstorable, n, MaxTopic, berrors.ErrKeyTooLarge)
	}
	return nil
}

// sizeError is why bbolt cannot hold a row of topicLen and payloadLen
// bytes, or nil.
func sizeError(topicLen, payloadLen int) error {
	if err := keyError(topicLen); err != nil {
		return err
	}
	if int64(payloadLen) > MaxPayload {
		return fmt.Errorf("%w: payload of %d bytes, at most %d: %w", ErrUnstorable, payloadLen, int64(MaxPayload), berrors.ErrValueTooLarge)
	}
	return nil
}

// encodeRow is the stored value of a set: flags byte, then the payload
// (a fresh slice: bbolt keeps it until the transaction commits).
func encodeRow(c Change) ([]byte, error) {
	if err := sizeError(len(c.Topic), len(c.Value.Data)); err != nil {
		return nil, err
	}
	t, ok := typeByte(c.Value.Kind)
	if !ok {
		return nil, fmt.Errorf("%w: value kind %v", ErrUnstorable, c.Value.Kind)
	}
	if c.QoS > 2 {
		return nil, fmt.Errorf("%w: QoS %d", ErrUnstorable, c.QoS)
	}
	v := make([]byte, 1+len(c.Value.Data))
	v[0] = t | c.QoS<<4
	copy(v[1:], c.Value.Data)
	return v, nil
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
	kind, ok := kindOf(v[0] & 0x0f)
	if qos := v[0] >> 4; !ok || qos > 2 {
		return Row{}, fmt.Errorf("row %q has flags %#x", k, v[0])
	}
	return Row{Topic: string(k), Value: wire.Value{Kind: kind, Data: string(v[1:])}, QoS: v[0] >> 4}, nil
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
