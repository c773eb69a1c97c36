// Package retain persists retained rows: a bbolt store, and the retainer
// goroutine that commits the message loop's row changes to it in batches,
// so delivery never waits on the disk.
//
// # Format
//
// One bbolt file, four buckets. A row value is one flags byte, the row's
// revision (8 bytes, big-endian), the time of its last change (Unix ms, 8
// bytes, big-endian), then the payload, byte for byte. The flags byte's
// low 4 bits are the row's type: 1 string, 2 bytes, 3 JSON (number,
// boolean, JSON string or array), 4 object (0: deleted, in "hist" only);
// bits 4–5 its QoS (0–2); bits 6–7 are zero. These numbers are the format,
// named by this package's type constants and mapped to wire.Kind both
// ways, never stored as a wire.Kind.
//
// "rows" holds the rows by parent. A row's parent is its topic up to and
// including its last '/' ("a/b/c" → "a/b/", "x" → ""); its leaf is the
// rest. No topic holds a 0 byte (MQTT forbids U+0000, and Commit refuses
// one), so the keys that hold one are the store's own. The rows of a
// parent are in one of two modes, known from one cursor seek:
//   - grouped: one key, the parent, a 0 byte and 'g', whose value is the
//     parent's rows sorted by leaf, each as the leaf's length (uvarint),
//     the leaf, the row value's length (uvarint) and the row value;
//   - single: a flag key, the parent, a 0 byte and 's' (empty value), and
//     one key a row: key = topic, value = the row value.
//
// A parent with rows has exactly one of its two keys. A new parent is
// grouped. A group holds at most groupMaxRows (64) rows and groupMaxBytes
// (2 KiB) of value: a commit that would take it past either turns the
// parent single (the group key deleted, its rows written as keys, the
// flag set, in that commit). A single parent stays single while it has
// rows; a commit that deletes rows of a single parent then looks for a
// row left (reading at most 64 keys under the parent, its flag among
// them, past the keys of parents under it) and deletes the flag if it
// finds none: the parent is new again. Only a parent with many keys of
// deeper parents after its flag can so keep an empty flag, until a later
// deletion of a row of its own decides. A group whose rows are all
// deleted is deleted. A commit visits each parent it changes once: one
// seek for the group or flag, then one Put of the merged group (the
// updates, inserts and deletions of its rows) or, for a single parent,
// one Put or Delete a row. Load hands the rows out in key order: a
// group's rows at once, at its group key (so not in topic order). A row
// key whose parent is grouped or has no flag is a damaged file's.
//
// "dead": the deletion markers of SPEC §8, key = revision (8 bytes,
// big-endian) then the topic, empty value: a range of revisions is a key
// range. Markers at or below the floor are compacted away.
//
// "hist": the past values of rows under a history rule (SPEC §9), written
// in the transaction of the rows, key = epoch (8 bytes, big-endian),
// topic, a 0 byte, the revision of the change (8 bytes), its sequence in
// the commit (4 bytes); value = flags byte, time (Unix ms, 8 bytes),
// payload. The retainer starts a new epoch every EpochBytes of values: a
// commit writes only into the current epoch, which stays small, so the
// pages it changes do not grow with the history kept; a topic's values
// are one key range per epoch, oldest epoch first.
//
// "meta": "format" = the format version: 3 for a store made by this
// build. A format 2 store (one key a row, no groups, no flag keys: main's
// before format 3) keeps its layout: Open writes nothing into it, Commit
// writes one key a row and Load reads every key as a row, as main did, so
// main's build still opens it after this one used it (Meta.Format says
// which; review h-rv10 RV10-5, -3, -8: migrating it rewrote every page of
// the rows at open). A format 2 row whose topic holds a 0 byte (main
// checked only bbolt's key limits) loads, and a deletion of it, or a set
// of it (refused), deletes its key, as on main (review h-rv11 RV11-1). Format 1 (row values were the flags byte and the
// payload) is migrated to 2 in the transaction that opens it (revision and
// time 0), as main did, and stays 2. To get groups, dump the rows and load
// them into a new store: not offered as a command. An unknown format is
// refused. "rev"
// = the store revision (8 bytes), "floor" = the revision at or below which
// markers were compacted, "clean" = 0 while a retainer runs on the store,
// 1 once it stopped cleanly (tools that only read leave it alone).
//
// bbolt cannot keep every row: a topic must be 1 to MaxTopic bytes (and
// hold no 0 byte) and a payload at most MaxPayload, and a key of the file that holds a nested
// bucket (this package never makes one; a foreign or old file may hold
// one) takes no value. Store.Commit stores the rows it can and returns the
// others as Rejected (see ErrUnstorable), and so for a deletion marker or
// a history value under such a key, and for every row of a parent whose
// group or flag key is a nested bucket or whose group value does not
// decode; they are never retried. Compaction and pruning leave such a
// key alone, and Open refuses a file whose meta keys are buckets.
//
// # Durability
//
// Every commit is one bbolt transaction, fsynced. The retainer commits at
// most every Options.Interval or Options.MaxBatch rows: after a crash at
// most the rows of the last unfinished interval are lost, and bbolt's
// copy-on-write pages mean the file always opens clean. bbolt's freelist
// is written at every commit: without it (NoFreelistSync) bbolt rebuilds
// it at open by walking every page, 14 ms → 0.4–0.6 s for a store of 1M
// rows (BenchmarkOpen), and a boot storm's CPU did not measurably drop.
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
//
// bbolt panics on some damaged pages. Every transaction of the store
// recovers such a panic as an error wrapping ErrCorrupt. After a write's,
// the store is broken: bbolt promises nothing of its state after a panic,
// and the damaged page would make the same write panic again, so no later
// write is tried (and if the panic left bbolt's writer lock held, Close
// leaves the file open rather than wait for it). The retainer then stops
// committing: it logs the damage once, says so in Health, and from then
// on answers each commit's rows at once as lost (Lost, OnReject, an error
// for their waiters); Close reports ErrLost and leaves the store marked
// unclean. A read's panic is its error only, unless it came as the read
// began (both meta pages invalid): bbolt's meta lock then stays held and
// every later transaction would wait for it, so none is tried (the
// store is wedged) and Close leaves the file open.
//
// # Concurrency
//
// The retainer's goroutine owns the store's transactions. The changes
// waiting for a commit (a rowSet: the newest change per topic) belong to
// the retainer and are guarded by its mutex: the message loop adds to
// them (Add), the goroutine swaps them out for a commit and keeps the
// emptied set of the previous commit for the next changes (a storm's
// larger set only while commits fill it, spareFits; an idle retainer
// drops it, and makes a storm's emptied pending set anew). Add copies the
// caller's slice, and Store.Commit gives the batch's slices back when it
// returns, so the loop and the goroutine each reuse their own. The
// Store's commit scratch (its values' arena and its sort's slices, kept
// from one commit to the next within keepScratch rows and keepArena
// bytes, and given back after a commit much smaller than them or when
// the idle retainer calls Store.Trim) is guarded by the Store's mutex,
// which every write transaction holds. So is the store's broken state
// (broken, locked). wedged is an atomic that any transaction's goroutine
// may set, once; it is never cleared. The retainer's broken error is
// guarded by its mutex and set by its goroutine (damaged). The marker
// floor is an atomic only that goroutine writes (maintain, and unmarked
// for a deletion not persisted), read by resumes and re-checked after
// Deleted.
//
// The sizes of the stored history (histSizes, for the HTTP answers'
// estimates, R3-hist) are written under the Store's mutex as each write
// transaction commits, and read by estimates from other goroutines. They
// are kept in topic order (a B-tree, github.com/tidwall/btree: ordered
// rows, by value, cheap to resume a walk from a key and to range over a
// literal prefix), so an estimate of a wildcard filter walks only the
// rows under its literal prefix, histChunk rows per hold of their lock,
// resuming past the last topic it saw, and calls back without the lock;
// between chunks it yields, and a write waiting for the lock has it
// before the walk takes it again. So no commit waits for more than one
// chunk of a walk (a median 8-20 µs, 99% under 75 µs), whatever the
// filter or the number of rows: with one walk under the lock, 1,000,000
// rows held commits 70-290 ms an estimate (review h-rv7).
// A per-level index with per-subtree totals would answer `+/zz` without
// visiting every row, but costs a node a level a row and its upkeep on
// every commit and prune; the chunked walk bounds the lock hold, which
// is what commits need, and leaves an estimate's own time to the
// estimate slots (broker.EstimateSlots). The walk's figures are of one
// chunk's instant each, not of one instant: Store.HistorySizes says why
// they still bound an answer.
package retain

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/mote-mqtt/mote/wire"
)

// Format is the format of a store this package makes; it also reads and
// writes format 2 stores, in their own layout (see the package doc).
const Format = 3

var (
	bucketRows = []byte("rows")
	bucketMeta = []byte("meta")
	bucketDead = []byte("dead")
	bucketHist = []byte("hist")
	keyFormat  = []byte("format")
	keyRev     = []byte("rev")
	keyFloor   = []byte("floor")
	keyClean   = []byte("clean")
)

// rowHead is the bytes of a stored row value before its payload: flags,
// revision, time.
const rowHead = 1 + 8 + 8

// ErrCorrupt is a store file that cannot be read, or is found damaged
// while written: a write that made bbolt panic, after which the store
// takes no more writes (see Store.Commit).
var ErrCorrupt = errors.New("retain: store unreadable")

// ErrUnstorable is a row the store cannot keep: its topic is empty,
// longer than MaxTopic bytes or holds a 0 byte, its payload is longer
// than MaxPayload bytes, its type or QoS has no flags byte, or the file
// holds a nested bucket under its key or its parent's group or flag key,
// or a group value that does not decode (a foreign or damaged file's).
// For a size it also wraps bbolt's error (berrors.ErrKeyRequired, ErrKeyTooLarge or ErrValueTooLarge), for
// a nested bucket berrors.ErrIncompatibleValue.
var ErrUnstorable = errors.New("retain: row cannot be stored")

// MaxTopic is the longest topic the store keeps, in bytes: bbolt's key
// limit, less the 21 bytes a history key adds to a topic.
const MaxTopic = bolt.MaxKeySize - 21

// MaxPayload is the longest payload the store keeps, in bytes (bbolt's
// value limit, less the bytes before the payload).
const MaxPayload = bolt.MaxValueSize - rowHead

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
// deleted, at store revision Rev and broker time MS (Unix ms).
//
// Its fields are in the order that packs it in 64 bytes, not 72: a boot
// storm holds hundreds of thousands of them between two commits.
type Change struct {
	Topic string
	Value wire.Value
	Rev   uint64
	MS    int64
	// Seq orders the history values of one revision (the retainer sets it).
	Seq uint32
	QoS byte
	// QoSOnly: the row's value is the same, only its QoS changed; it is
	// not a new value for the row's history.
	QoSOnly bool
}

// Row is one stored row, with the revision and time of its last change.
type Row struct {
	Topic string
	Value wire.Value
	QoS   byte
	Rev   uint64
	MS    int64
}

// Batch is one commit: the newest change of each row, every change of
// the rows under a history rule (in order), and the store revision they
// bring it to.
type Batch struct {
	Changes []Change
	History []Change
	Rev     uint64
	Epoch   uint64 // of the history values
}

// Meta is what a store knew when it was opened.
type Meta struct {
	Rev   uint64 // the store revision
	Floor uint64 // deletion markers at or below it are gone
	// Clean is false when the last run did not stop cleanly: revisions
	// after Rev may have been handed out and lost.
	Clean bool
	Fresh bool   // the file was created by this Open
	Epoch uint64 // the newest epoch of history values
	// Format is the file's format: Format (3) for a store this build
	// made, 2 for an older one (format 1 is migrated to 2), which keeps
	// its layout, one key a row (see the package doc's Format).
	Format byte
}

// Pair is one value of a row's history: the revision and time of the
// change, and the value (kind None: deleted).
type Pair struct {
	Rev   uint64
	MS    int64
	Value wire.Value
}

// Rejected is a change the store refused, and why (an error wrapping
// ErrUnstorable).
type Rejected struct {
	Change
	Err error
	// History: the change is a value of the row's history (Batch.History)
	// that could not be kept; the row itself was stored, or refused on its
	// own.
	History bool
}

// RowStore is what the retainer writes to.
type RowStore interface {
	// Commit applies a batch in one transaction, except the changes it
	// cannot store at all, which it returns with the reason. A non-nil err
	// means the transaction failed and nothing was committed (retry),
	// unless it wraps ErrCorrupt: the store is damaged and no commit will
	// succeed (do not retry).
	// The batch's slices are the caller's again once Commit returns (the
	// retainer reuses them): keep copies, not the slices.
	Commit(b Batch) (rejected []Rejected, err error)
	// Load calls fn for every stored row once, in the store's key order
	// (see Store.Load): not topic order.
	Load(fn func(Row) error) error
	// Meta is what the store knew when it was opened.
	Meta() Meta
	// Deleted calls fn for every deletion marker with a revision in
	// (since, upto], in revision order, until fn returns false.
	Deleted(since, upto uint64, fn func(topic string, rev uint64) bool) error
	// Markers counts the deletion markers, and returns the revision of
	// the n-th oldest (0 if there are fewer).
	Markers(n int) (count int, nth uint64, err error)
	// Compact drops up to max markers at or below revision floor and
	// records the floor; more reports markers left to drop.
	Compact(floor uint64, max int) (more bool, err error)
	// History calls fn with the stored values of every topic matching
	// filter, oldest first, until fn returns false.
	// History reads at most max bytes of values (0: any), else it fails
	// with ErrTooMuch.
	History(filter string, max int, fn func(topic string, pairs []Pair) bool) error
	// Prune drops up to max history values that rules no longer keep at
	// time now (Unix ms); more reports values left to drop.
	Prune(rules []HistoryRule, now int64, max int) (more bool, err error)
	// HistorySizes calls fn with the HistSize of the stored history
	// values of every topic matching filter, until fn returns false,
	// without reading them (kept as they are written and dropped). false:
	// the sizes are not known (the history was unreadable at open).
	HistorySizes(filter string, fn func(topic string, size HistSize) bool) bool
	// MarkRunning records that revisions are being handed out: until
	// MarkClean, a crash may lose some.
	MarkRunning() error
	// MarkClean records that every revision handed out is committed.
	MarkClean(rev uint64) error
	// Close closes the store.
	Close() error
}

// Store is the bbolt row store.
type Store struct {
	db   *bolt.DB
	path string
	meta Meta

	// mu is held for every write transaction (update) and guards the
	// fields below: the broken state, and Commit's scratch.
	mu sync.Mutex
	// broken is the error of a write that panicked inside bbolt (wrapping
	// ErrCorrupt): every later write returns it untried. locked: that
	// panic left bbolt's writer lock held, so Close (which takes it) would
	// never return.
	broken error
	locked bool
	// wedged: a transaction panicked as it began, leaving bbolt's meta
	// lock held (see view): no transaction is tried, nor closing the file.
	wedged atomic.Bool

	// Commit's scratch, kept for the next commit: the values' arena and
	// the sort's slices, within keepScratch rows and keepArena bytes, and
	// left to the GC after a commit much smaller than them or when the
	// store is trimmed (shrinkScratchLocked). bbolt holds the values it is
	// handed only until its transaction ends (it copies them into the
	// pages it writes).
	arena []byte
	sort  sortBufs
	// entries and keyBuf are commitParent's: a group's merged rows, and
	// the key it seeks.
	entries []groupEntry
	keyBuf  []byte
	// failRows, set by tests only, fails a commit's transaction after
	// its rows are written (before history and revision): an I/O error.
	failRows func() error
	keep     int // the most rows a commit keeps its scratch for: keepScratch

	// hsizes are the sizes of the history values stored, a row at a
	// time (histsize.go).
	hsizes histSizes
}

// keepScratch bounds the rows Commit's scratch is kept for: a larger
// commit's (a storm's at its largest, 256k rows: about 9 MiB) is left to
// the GC.
const keepScratch = 1 << 18

// keepArena bounds the bytes of values Commit's arena is kept for: one
// commit of a few large payloads (16 MiB each by default) would otherwise
// hold that much for ever, long after the rows are gone.
const keepArena = 16 << 20

// initialMmap is the address space bbolt maps at open (on 64-bit
// platforms): a store smaller than it is never remapped as it grows. A
// remap copies every key and value of the running transaction's changed
// nodes to the heap (bbolt's node.dereference): a fresh store filling up
// in a boot storm remapped a dozen times: 8% of the storm's CPU (15% once
// the rest was cheaper; BenchmarkBootStorm). It is
// address space, not memory: only the pages read or written are resident
// (not on Windows, where bbolt grows the file to the size it maps).
const initialMmap = (strconv.IntSize / 64) << 28 // 256 MiB; 0 (bbolt's default) on 32-bit

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
	bo := &bolt.Options{Timeout: time.Second, FreelistType: bolt.FreelistMapType}
	if runtime.GOOS != "windows" { // there bbolt grows the file to what it maps
		bo.InitialMmapSize = initialMmap
	}
	db, err := bolt.Open(path, 0o600, bo)
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("retain: open %s: in use by another process", path)
		}
		return nil, fmt.Errorf("%w: open %s: %w", ErrCorrupt, path, err)
	}
	var m Meta
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketRows, bucketDead, bucketHist} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		for _, k := range [][]byte{keyFormat, keyRev, keyFloor, keyClean} {
			if meta.Bucket(k) != nil { // every commit would fail writing it
				return fmt.Errorf("meta key %q is a nested bucket: a foreign file", k)
			}
		}
		switch v := meta.Get(keyFormat); {
		case v == nil:
			m.Fresh, m.Format = true, Format
			if err := meta.Put(keyFormat, []byte{Format}); err != nil {
				return err
			}
		case len(v) == 1 && v[0] == 1:
			if err := migrate1(tx); err != nil {
				return fmt.Errorf("migrating format 1: %w", err)
			}
			m.Format = 2   // and stays 2 (review h-rv10 RV10-5, -8)
			m.Clean = true // format 1 had no revisions to lose
		case len(v) == 1 && v[0] == 2:
			m.Format = 2 // kept as it is: no migration (review h-rv10 RV10-5, -3)
			m.Clean = bytes.Equal(meta.Get(keyClean), []byte{1})
		case len(v) != 1 || v[0] != Format:
			return fmt.Errorf("format %v, this build reads 1, 2 and %d", v, Format)
		default:
			m.Format = Format
			m.Clean = bytes.Equal(meta.Get(keyClean), []byte{1})
		}
		m.Rev, m.Floor = getUint(meta, keyRev), getUint(meta, keyFloor)
		if k, _ := tx.Bucket(bucketHist).Cursor().Last(); len(k) >= 8 {
			m.Epoch = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	s = &Store{db: db, path: path, meta: m, keep: keepScratch}
	s.countHistory()
	return s, nil
}

// migrate1 rewrites format 1 rows (flags byte, payload) as format 2, with
// revision and time 0 (unknown), as main did; the store then stays
// format 2.
func migrate1(tx *bolt.Tx) error {
	rows := tx.Bucket(bucketRows)
	var keys, vals [][]byte
	err := rows.ForEach(func(k, v []byte) error {
		if len(v) == 0 {
			return fmt.Errorf("row %q has no flags byte", k)
		}
		nv := make([]byte, rowHead+len(v)-1)
		nv[0] = v[0]
		copy(nv[rowHead:], v[1:])
		keys, vals = append(keys, slices.Clone(k)), append(vals, nv)
		return nil
	})
	if err != nil {
		return err
	}
	for i := range keys {
		if err := rows.Put(keys[i], vals[i]); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketMeta).Put(keyFormat, []byte{2})
}

func getUint(b *bolt.Bucket, k []byte) uint64 {
	if v := b.Get(k); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func putUint(b *bolt.Bucket, k []byte, n uint64) error {
	return b.Put(k, binary.BigEndian.AppendUint64(nil, n))
}

// Meta is what the store knew when it was opened.
func (s *Store) Meta() Meta { return s.meta }

// Path is the store file.
func (s *Store) Path() string { return s.path }

// Commit applies changes in one fsynced transaction, parent by parent in
// the order of their keys (bbolt writes sorted keys fastest): a grouped
// parent's changes merged into its group, one Put (see the package doc's
// Format); in a format 2 store, one Put or Delete a change. It checks every set against bbolt's limits
// first and leaves out, returning them, the ones that cannot be stored; a
// refused row whose topic is a valid key is deleted in the same
// transaction, so a restart does not bring back an older value as current.
// Deletes are never refused (a key bbolt cannot hold is not stored). It
// leaves the changes as they are. A deletion leaves a marker (SPEC §8); the
// history values go in the same transaction, and so does the revision.
//
// A key of a foreign or damaged file that holds a nested bucket costs
// only the change that meets it (a group or flag key: the changes of its
// parent; so does a group value that does not decode): it is returned as Rejected (an error
// wrapping ErrUnstorable and bbolt's ErrIncompatibleValue), the rest of
// the batch is committed. A panic inside bbolt is an error wrapping
// ErrCorrupt, and no later write is tried (see update).
func (s *Store) Commit(b Batch) ([]Rejected, error) {
	changes := b.Changes
	var rejected []Rejected
	var written []sized // the history values written, once committed
	// Every value of the rows lives in one arena (bbolt keeps them until
	// the transaction ends), the last commit's if it is large enough: a
	// boot storm's commit of 10,000 rows makes no allocation here instead
	// of 10,000. The keys are the topics' own bytes (keyOf). A row of a
	// group is in it twice: its value, then the group's (leaf and two
	// lengths); a group's other rows, already stored, are not counted.
	size := 0
	grouped := s.meta.Format == Format // a format 2 store keeps one key a row
	for i := range changes {
		if c := &changes[i]; sizeError(len(c.Topic), len(c.Value.Data)) == nil {
			size += rowHead + len(c.Value.Data)
			if grouped && rowHead+len(c.Value.Data) <= groupMaxBytes { // else never in a group (review h-rv10 RV10-9)
				size += rowHead + len(c.Value.Data) + len(c.Topic) - parentLen(c.Topic) + 2*binary.MaxVarintLen16
			}
		}
	}
	err := s.updateThen(func(tx *bolt.Tx) error {
		rejected = rejected[:0]
		order := s.sort.sorted(changes)
		if cap(s.arena) < size {
			s.arena = make([]byte, 0, size)
		}
		a := arena(s.arena[:0])
		if len(changes) > s.keep { // this transaction has them; the next gets its own
			s.arena, s.sort = nil, sortBufs{}
		}
		if cap(s.arena) > keepArena { // a few large values: not held for ever
			s.arena = nil
		}
		s.shrinkScratchLocked(len(changes), size) // a storm's, after it
		rows, dead, hist, meta := tx.Bucket(bucketRows), tx.Bucket(bucketDead), tx.Bucket(bucketHist), tx.Bucket(bucketMeta)
		rows.FillPercent = fillFor(rows, changes, order)
		dead.FillPercent = appendFill // keys are revisions: always past the last
		var refused map[string]bool
		refuse := func(c *Change, err error) {
			rejected = append(rejected, Rejected{Change: *c, Err: err})
			if refused == nil {
				refused = map[string]bool{}
			}
			refused[c.Topic] = true
		}
		cur := rows.Cursor()
		// commitParent's entries point into this commit's arena and its
		// pages: not kept past it (a large value's arena would stay
		// pinned, review h-rv10 RV10-1).
		defer func() { clear(s.entries[:cap(s.entries)]) }()
		for i := 0; i < len(order) && !grouped; i++ { // format 2: one key a row, as main wrote it
			if err := s.commitSingle(rows, dead, &changes[order[i]], &a, refuse, true); err != nil {
				return err
			}
		}
		for i := 0; i < len(order) && grouped; {
			t := changes[order[i]].Topic
			parent := t[:parentLen(t)]
			j := i + 1
			for j < len(order) {
				u := changes[order[j]].Topic
				if parentLen(u) != len(parent) || u[:len(parent)] != parent {
					break
				}
				j++
			}
			if err := s.commitParent(rows, dead, cur, changes, order[i:j], parent, &a, refuse); err != nil {
				return err
			}
			i = j
		}
		if s.failRows != nil {
			if err := s.failRows(); err != nil {
				return err
			}
		}
		type kv struct {
			k, v []byte
			i    int // in b.History
		}
		hs := make([]kv, 0, len(b.History))
		for i, c := range b.History {
			if refused[c.Topic] || topicError(c.Topic) != nil || int64(len(c.Value.Data)) > MaxPayload {
				continue
			}
			hs = append(hs, kv{histKey(b.Epoch, c.Topic, c.Rev, c.Seq), histValue(c), i})
		}
		slices.SortFunc(hs, func(a, b kv) int { return bytes.Compare(a.k, b.k) }) // bbolt writes sorted keys fastest
		written = slices.Grow(written[:0], len(hs))
		for _, h := range hs {
			if err := hist.Put(h.k, h.v); err != nil {
				if !nested(err) {
					return err
				}
				rejected = append(rejected, Rejected{Change: b.History[h.i], Err: nestedError("history value", err), History: true})
				continue
			}
			c := &b.History[h.i]
			written = append(written, sized{c.Topic, ValueBound(c.Value)})
		}
		if b.Rev > getUint(meta, keyRev) {
			return putUint(meta, keyRev, b.Rev)
		}
		return nil
	}, func() { s.hsizes.count(written, true) })
	if err != nil {
		return nil, fmt.Errorf("retain: commit %d rows to %s: %w", len(changes), s.path, err)
	}
	return rejected, nil
}

// appendFill is how full bbolt fills the pages it splits when keys are
// appended past a bucket's last key: full, as the keys that follow are
// likely to come after them too. bbolt's default (half) suits keys that
// land anywhere; for appends it leaves every page half empty, and a
// commit writes and splits twice the pages (a boot storm's rows come
// almost in key order; BenchmarkRetainerStorm, TestAppendsFillPages). A
// full page that a later key does land in splits in two, as bbolt's
// pages always do.
const appendFill = 1.0

// fillFor is the FillPercent for the rows bucket in a commit of changes
// (order: their indexes in sort-key order, sortedOrder): appendFill when
// at least half of them come after the bucket's last key (a group key is
// parent, 0, 'g': compared with sort keys, parent, 0, leaf, byte by
// byte), else bbolt's default. It is not part of the format: a page
// filled either way reads the same.
func fillFor(rows *bolt.Bucket, changes []Change, order []int32) float64 {
	if len(order) == 0 {
		return appendFill
	}
	last, _ := rows.Cursor().Last()
	if last == nil {
		return appendFill
	}
	// The first change past the last key, by binary search over order.
	i, _ := slices.BinarySearchFunc(order, last, func(j int32, k []byte) int {
		if t := changes[j].Topic; compareKeyBytes(t, parentLen(t), k) <= 0 {
			return -1
		}
		return 1
	})
	if 2*(len(order)-i) >= len(order) {
		return appendFill
	}
	return bolt.DefaultFillPercent
}

// keyOf is the bytes of topic as a bbolt key, without a copy: bbolt's
// Put copies the key it keeps, and Put, Delete and Get only read it (the
// bytes are a string's: never written). Copying every topic into the
// commit's arena first was a second copy of each key.
func keyOf(topic string) []byte {
	return unsafe.Slice(unsafe.StringData(topic), len(topic))
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

// arena hands out byte slices from one allocation, for the keys and
// values of one transaction (bbolt keeps them until it commits).
type arena []byte

// take returns n bytes of the arena, or of a fresh slice once it is used up.
func (a *arena) take(n int) []byte {
	b := *a
	if len(b)+n > cap(b) {
		return make([]byte, n)
	}
	*a = b[:len(b)+n]
	return b[len(b) : len(b)+n : len(b)+n]
}

// encodeRow is the stored value of a set, taken from a: flags byte,
// revision, time, then the payload.
func encodeRow(c *Change, a *arena) ([]byte, error) {
	if err := sizeError(len(c.Topic), len(c.Value.Data)); err != nil {
		return nil, err
	}
	if err := topicError(c.Topic); err != nil {
		return nil, err
	}
	return appendRow(a.take(rowHead + len(c.Value.Data))[:0], *c, false)
}

// appendRow appends the row value of c to dst: flags byte, revision, time,
// payload. A deletion (kind None) has type 0, and only where deletions
// may be written (the log, AppendChange: del true); the flags byte's bit 6
// is QoSOnly there, never on disk.
func appendRow(dst []byte, c Change, del bool) ([]byte, error) {
	t, ok := typeByte(c.Value.Kind)
	switch {
	case !ok && !(del && c.Value.Kind == wire.None):
		return nil, fmt.Errorf("%w: value kind %v", ErrUnstorable, c.Value.Kind)
	case c.QoS > 2:
		return nil, fmt.Errorf("%w: QoS %d", ErrUnstorable, c.QoS)
	}
	f := t | c.QoS<<4
	if del && c.QoSOnly {
		f |= flagQoSOnly
	}
	dst = append(dst, f)
	dst = binary.BigEndian.AppendUint64(dst, c.Rev)
	dst = binary.BigEndian.AppendUint64(dst, uint64(c.MS))
	return append(dst, c.Value.Data...), nil
}

// flagQoSOnly is the bit of a logged change's flags byte (AppendChange)
// that says its value did not change, only its QoS; zero on disk.
const flagQoSOnly = 1 << 6

// deadKey is the key of a deletion marker: revision, then topic.
func deadKey(rev uint64, topic string) []byte {
	return append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(topic)), rev), topic...)
}

// histKey is the key of a history value: epoch, topic, 0, revision,
// sequence within the commit (one row may change twice in one batch).
func histKey(epoch uint64, topic string, rev uint64, seq uint32) []byte {
	k := binary.BigEndian.AppendUint64(make([]byte, 0, len(topic)+21), epoch)
	k = append(k, topic...)
	k = binary.BigEndian.AppendUint64(append(k, 0), rev)
	return binary.BigEndian.AppendUint32(k, seq)
}

// histValue is the stored value of a history value: flags (type 0 for a
// deletion), time, payload.
func histValue(c Change) []byte {
	t, _ := typeByte(c.Value.Kind)
	v := make([]byte, 9+len(c.Value.Data))
	v[0] = t
	binary.BigEndian.PutUint64(v[1:], uint64(c.MS))
	copy(v[9:], c.Value.Data)
	return v
}

// Load calls fn for every row once, in the store's key order: sorted by
// topic, except that a grouped parent's rows come together at its group
// key (after its parent's own key, before the rows of the parents under
// it and its rows' topics in between); a format 2 store's in topic order.
// It holds nothing from one key to the next but the parents above the key
// (review h-rv10 RV10-6). An unreadable row, or a file that breaks the
// format's layout, is an error naming the file.
func (s *Store) Load(fn func(Row) error) error {
	err := s.view(func(tx *bolt.Tx) error {
		var fnErr error // fn's, returned as it is
		err := loadRows(tx.Bucket(bucketRows), s.meta.Format == Format, func(r Row) error {
			fnErr = fn(r)
			return fnErr
		})
		if err != nil {
			if fnErr != nil {
				return err
			}
			return fmt.Errorf("%w: %s: %w", ErrCorrupt, s.path, err)
		}
		return nil
	})
	if errors.Is(err, ErrCorrupt) && !strings.Contains(err.Error(), s.path) { // a panic's
		err = fmt.Errorf("%s: %w", s.path, err)
	}
	return err
}

func decodeRow(k, v []byte) (Row, error) {
	return rowOf(string(k), v)
}

// rowOf decodes the row value v of topic.
func rowOf(topic string, v []byte) (Row, error) {
	c, err := readRow(topic, v, false)
	if err != nil {
		return Row{}, err
	}
	return Row{Topic: c.Topic, Value: c.Value, QoS: c.QoS, Rev: c.Rev, MS: c.MS}, nil
}

// readRow decodes a row value of topic written by appendRow (with del, a
// logged change: type 0 is a deletion and bit 6 QoSOnly). The payload is
// copied.
func readRow(topic string, v []byte, del bool) (Change, error) {
	if len(v) < rowHead {
		return Change{}, fmt.Errorf("row %q has %d bytes, less than its %d-byte head", topic, len(v), rowHead)
	}
	f := v[0]
	c := Change{Topic: topic, QoS: f >> 4 & 3, Rev: binary.BigEndian.Uint64(v[1:]), MS: int64(binary.BigEndian.Uint64(v[9:]))}
	if del {
		c.QoSOnly = f&flagQoSOnly != 0
		f &^= flagQoSOnly
	}
	kind, ok := kindOf(f & 0x0f)
	if del && f&0x0f == 0 {
		kind, ok = wire.None, len(v) == rowHead
	}
	if !ok || f>>4 > 2 {
		return Change{}, fmt.Errorf("row %q has flags %#x", topic, v[0])
	}
	c.Value = wire.Value{Kind: kind, Data: string(v[rowHead:])}
	return c, nil
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

// Close closes the file. If a panic inside bbolt left its writer lock
// held (see update), Close would wait for it for ever: it leaves the file
// open instead, and says so.
func (s *Store) Close() error {
	if s.wedged.Load() {
		return fmt.Errorf("retain: close %s: left open, as bbolt's meta lock stayed held after it panicked (the process exit frees it): %w", s.path, s.wedgedError())
	}
	s.mu.Lock()
	broken, locked := s.broken, s.locked
	s.mu.Unlock()
	if locked {
		return fmt.Errorf("retain: close %s: left open, as bbolt's writer lock stayed held after it panicked (the process exit frees it): %w", s.path, broken)
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("retain: close %s: %w", s.path, err)
	}
	return nil
}
