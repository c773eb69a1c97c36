package tree

import (
	"errors"
	"fmt"
	"time"

	"github.com/mote-mqtt/mote/wire"
)

// ErrDenied is an op refused by its write check.
var ErrDenied = errors.New("tree: not authorized")

// Row is one row change of an incoming publish. A Value of kind None deletes
// the row (or, for an event, is delivered as null).
type Row struct {
	Topic  string
	Value  wire.Value
	Retain bool // sets or deletes the retained row; otherwise an event only
	// Same, set by Apply, says the store already held this: a retained
	// row set to its value, or deleted when it was not there. QoSOnly
	// says only the row's QoS changed (no new value for its history).
	Same    bool
	QoSOnly bool
}

// Op is one incoming publish in row form. All its rows are applied at once
// and reach each tree subscription in one delta.
type Op struct {
	Rows []Row
	QoS  byte

	// Origin is who published the op, opaque to the tree (the broker
	// gives its publisher's client id; "" for none). A subscription whose
	// Local it is gets no row whose newest change in a batch came from it
	// (MQTT 5 No Local).
	Origin string

	// SetFilter, when not empty, is a $set: every existing retained row
	// matching it takes SetValue (kind None deletes them all).
	SetFilter string
	SetValue  wire.Value

	// Replace, when not empty, is a filter whose retained rows that Rows
	// does not mention are deleted (.replace).
	Replace string

	// Allow, if not nil, is the write check: the op is refused whole if it
	// denies any row it would touch.
	Allow func(topic string) bool
	// Protect leaves the broker's own rows (Reserved) out of a $set or
	// .replace: set by the Parser for every client publish.
	Protect bool

	// MaxRows, if positive, bounds the rows a $set or .replace touches
	// (SPEC §5): past it the op is refused whole (ErrLimit).
	MaxRows int
	// MaxBytes, if positive, bounds the bytes a $set writes: its value's
	// size times the rows it sets, no more than a tree publish writing
	// those rows may carry (the payload limit). Past it the op is refused
	// whole (ErrLimit): a small payload over many rows would otherwise be
	// a delta and a disk write of their product.
	MaxBytes int

	// Visible, if not nil, is the publisher's read check. A row that a $set
	// or .replace would touch and that the publisher may neither write nor
	// read is left alone, as if it did not exist: refusing the op for it
	// would tell the publisher that the row exists.
	Visible func(topic string) bool
}

// Applied is what became of one Op.
type Applied struct {
	// Rows are the rows applied, with $set and .replace expanded; deliver
	// each to plain subscribers, and hand the retained ones to the retainer.
	Rows []Row
	// Err is why the op was refused; nothing of it was applied.
	Err error
}

// Clock is the broker's time in Unix milliseconds, stamped on every row
// change.
type Clock func() int64

// Delta is one encoded tree and the subscriptions that receive it.
type Delta struct {
	Payload []byte
	QoS     byte   // highest QoS among the folded rows; cap it by each Sub.QoS
	Subs    []*Sub // a copy: the receivers of Payload
	Rows    int    // rows Payload holds at most: the changed rows its filter matches
	// A Delta of one subscription with Local whose origin changed some of
	// its rows leaves those out; Payload is nil when they were all it had
	// (nothing to send, but AppendChanges lists them: a delta that folds,
	// or changes held, must take in that their newest change is its own).

	// What AppendChanges lists: the group whose rows it holds, the read
	// check of a private subscription's delta, and the batch (Tree.gen).
	g     *group
	allow func(string) bool
	gen   uint64
}

// Result is the outcome of Apply. Its lists (Applied, Deltas and each
// Delta's Subs) are the caller's, until it hands them back (Release).
type Result struct {
	Applied []Applied // one per op, in order
	Deltas  []Delta   // one per touched group (and per touched private subscription)
	// Rev is the store's revision after the batch: one more than before
	// if it changed any row (Changed), else the same (ApplyAt: its
	// stamp's revision if higher).
	Rev     uint64
	Changed bool
	MS      int64 // the time stamped on the rows it changed
}

// Tree is the tree core: the row store and the subscription index, with
// the operations that must see both at once.
//
// A Tree is not safe for concurrent use: one goroutine (the broker's message
// loop) owns it, which is what makes Subscribe atomic with respect to Apply.
type Tree struct {
	store Store
	index index
	rev   uint64 // the store's revision (SPEC §8)
	clock Clock

	gen     uint64
	stamp   Stamp            // of the batch being applied
	dirty   bool             // the batch changed a row
	track   bool             // the batch lists its changed rows (there are subscriptions to match them)
	changed []change         // this batch's changed rows, newest value per topic
	byTopic map[string]int32 // topic → index in changed, once a batch changed more than changedScan rows (empty between batches)
	touched []*group
	matched []*group
	enc     wire.Encoder
	encBuf  []byte   // a delta's encoding, copied out (encoded)
	open    []string // the keys of the objects a delta has open (encodeDelta)
	paths   []rowPath
	keys    []string // the paths' keys, cut from it (addPath)
	// origins is the distinct origins of the rows of the group being
	// folded, when it has more than scanLocal subscriptions with Local
	// (listOrigins); past originsMax of them, also in originSet (kept,
	// emptied key by key). scanRows: changedBy looks at the rows instead.
	origins   []string
	originSet map[string]struct{}
	scanRows  bool

	// subs holds the Subs of the last Result's deltas, cut from it
	// (subsOf); spare and spareSubs hold the lists of the Result last
	// released, for the next one (Release).
	subs      []*Sub
	spare     Result
	spareSubs []*Sub
}

// keepMax bounds the room a Tree keeps in its scratch lists from one
// batch to the next (a storm's largest batch is not kept for good).
const keepMax = 4096

// change is one changed topic in a batch.
type change struct {
	topic  string
	val    wire.Value
	origin string // the newest row's (Op.Origin)
	qos    byte
	retain bool // the newest row's
}

// New returns an empty Tree at revision 0, stamping changes with the
// system clock.
func New() *Tree {
	return &Tree{index: newIndex(), byTopic: map[string]int32{}, clock: func() int64 { return time.Now().UnixMilli() }}
}

// SetClock replaces the clock that stamps changes (tests).
func (t *Tree) SetClock(c Clock) { t.clock = c }

// Rev is the store's revision: it grows by one with every applied batch
// that changes at least one row.
func (t *Tree) Rev() uint64 { return t.rev }

// SetRev sets the revision, when the store is loaded at boot.
func (t *Tree) SetRev(rev uint64) { t.rev = rev }

// Store returns the row store. Reading it is safe only from the Tree's owner.
func (t *Tree) Store() *Store { return &t.store }

// Subscriptions is the number of tree subscriptions.
func (t *Tree) Subscriptions() int { return len(t.index.byKey) }

// Subscribe registers s, replacing the owner's subscription on s.Topic, and
// returns its snapshot: every retained row matching s.Filter as one tree in
// s.Codec. No batch can fall between the two.
func (t *Tree) Subscribe(s *Sub) ([]byte, error) {
	if err := wire.ValidateFilter(s.Filter); err != nil {
		return nil, fmt.Errorf("tree: subscribe %q: %w", s.Topic, err)
	}
	t.index.add(s)
	return t.Snapshot(s.Filter, s.Codec, s.Allow), nil
}

// Register registers s without a snapshot, replacing the owner's
// subscription on s.Topic, which it returns (nil if there was none). The
// owner takes the snapshot later, with Snapshot: deltas of the batches
// applied in between are its to hold back or fold.
func (t *Tree) Register(s *Sub) (replaced *Sub, err error) {
	if err := wire.ValidateFilter(s.Filter); err != nil {
		return nil, fmt.Errorf("tree: subscribe %q: %w", s.Topic, err)
	}
	return t.index.add(s), nil
}

// Active reports whether s is registered (not unsubscribed, replaced or
// removed with its owner).
func (s *Sub) Active() bool { return s.group != nil }

// Unsubscribe removes the owner's subscription on topic and reports whether
// there was one.
func (t *Tree) Unsubscribe(owner, topic string) bool { return t.index.remove(owner, topic) }

// Owned returns owner's subscriptions. The slice is the index's own: read
// it before the next change to the subscriptions, never write it.
func (t *Tree) Owned(owner string) []*Sub { return t.index.byOwner[owner] }

// RemoveOwner removes every subscription of owner (a disconnect or an
// expired session) and returns how many there were.
func (t *Tree) RemoveOwner(owner string) int { return t.index.removeOwner(owner) }

// SetAllow gives every registered subscription the read check allow
// returns for it (nil: every row), as when access rules are reloaded: the
// deltas and snapshots made from then on apply it. A subscription moves
// between its group's shared encoding and its own as its check comes or
// goes.
func (t *Tree) SetAllow(allow func(s *Sub) func(topic string) bool) {
	t.index.root.eachGroup(func(g *group) { g.setAllow(allow) })
}
