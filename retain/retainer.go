package retain

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/wire"
)

// Options tune a Retainer. Zero values mean the defaults.
type Options struct {
	Interval   time.Duration // commit at most this long after a change; default 50ms
	MaxBatch   int           // commit at once when this many rows are pending; default 10,000
	MaxPending int           // rows pending before Wait makes publishers wait; default 1,000,000

	// ResumeWindow is how many revisions deletion markers are kept for
	// (SPEC §8); default 1,000,000. MaxMarkers bounds how many are kept
	// at all (default 10,000,000, about 0.5 GB on disk): past it the
	// oldest go, and resumes from before them get full snapshots.
	ResumeWindow uint64
	MaxMarkers   int
	// History names the rows whose past values are kept (SPEC §9);
	// Retainer.SetHistory replaces the rules at run time.
	History []HistoryRule
	// PruneEvery is how often history is pruned by keep and max_age;
	// default 10 s.
	PruneEvery time.Duration
	// Rev and Floor are the revision and marker floor the broker starts
	// from; New records them in the store when they are above what it
	// holds (after an unclean stop the broker skips ahead).
	Rev, Floor uint64

	// OnReject, if set, is told of every row the store refuses (after it is
	// logged and counted in Lost), of every history value it refuses
	// (Rejected.History), and of every row and history value a damaged
	// store could not take (see ErrCorrupt). It is called on the
	// retainer's own goroutine, never the message loop's, also from within
	// Close, and must return quickly: hand the report off, never wait on
	// the broker.
	OnReject func(Rejected)
	// OnCommit, if set, is told of every commit the retainer tries: how
	// long the store took, how many rows it was handed (changes and
	// history values), and the error of a commit that failed whole. It is
	// called on the retainer's goroutine after the commit, once Health
	// shows it, also from within Close, and must return quickly (observe
	// a metric, no more).
	OnCommit func(took time.Duration, rows int, err error)
}

// committingLen is the number of rows being committed. r.mu must be held.
func (r *Retainer) committingLen() int {
	if r.committing == nil {
		return 0
	}
	return r.committing.len()
}

// spareRows bounds the set kept for the next commit once the storm that
// made it larger is over: one made for or grown to more rows
// (rowSet.size) is kept only while commits fill at least a quarter of it
// (a storm's, one after another: each would otherwise make a set of
// hundreds of thousands of rows anew), and left to the GC at the first
// commit that does not, or when the retainer has nothing to commit: then
// the empty pending set, if a storm's, is made anew too (64k rows: 4 MiB
// of slice, and its index).
const spareRows = 1 << 16

// spareFits reports whether a spare set of size rows is kept for, or
// used by, the changes after a commit of n rows: it has room for twice
// n, or maxHint (as a set made anew would), and is not made for a storm
// that is over.
func spareFits(size, n int) bool {
	return size >= min(2*n, maxHint) && (size <= spareRows || size <= 4*n)
}

// MaxBackoff bounds the wait between retries of a commit that failed
// whole. The first retry waits Options.Interval, each next one twice as
// long, up to MaxBackoff (or Interval, if that is longer).
const MaxBackoff = time.Second

func (o Options) withDefaults() Options {
	if o.Interval <= 0 {
		o.Interval = 50 * time.Millisecond
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 10_000
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 1_000_000
	}
	if o.ResumeWindow == 0 {
		o.ResumeWindow = 1_000_000
	}
	if o.MaxMarkers <= 0 {
		o.MaxMarkers = 10_000_000
	}
	if o.PruneEvery <= 0 {
		o.PruneEvery = 10 * time.Second
	}
	return o
}

var (
	// ErrClosed answers waiters of changes that came after Close, or that
	// could not be committed at close.
	ErrClosed = errors.New("retain: retainer closed")
	// ErrCommit answers waiters of a commit that failed whole; their rows
	// stay pending and are retried.
	ErrCommit = errors.New("retain: commit failed")
	// ErrLost is Close's error when rows were not persisted: refused by the
	// store during the run, or not committed at close.
	ErrLost = errors.New("retain: rows lost")
)

// waiting is the waiters handed in with one Add, and the topics of its
// changes: a waiter is refused if the store refuses one of them.
type waiting struct {
	chans  []chan error
	topics []string
}

// Retainer is the goroutine that persists row changes. The message loop
// hands it each batch's changes with Add, which never waits on the disk:
// changes to the same topic coalesce in memory until the next commit, so
// what is pending is bounded by the number of distinct rows changed.
type Retainer struct {
	store RowStore
	opts  Options
	log   zerolog.Logger

	mu         sync.Mutex // guards pending, hist, rules, rulesSet, seqRev, seq, committing, committingHist, waiters, closed, err, lastLost, broken, and the times below
	pending    *rowSet
	hist       []Change      // every change of rows under a history rule, in order
	rules      []HistoryRule // the history rules now (Options.History, then SetHistory's); never changed in place
	rulesSet   bool          // SetHistory handed in rules no commit has started since
	seqRev     uint64        // the revision of the last history value, and its Seq
	seq        uint32
	committing *rowSet   // the batch being committed, until it is
	waiters    []waiting // answered by the commit holding what was pending when they came
	closed     bool
	err        error     // the last commit's error, nil once one succeeds
	lastLost   error     // the last row the store refused, named
	broken     error     // the store is damaged (a commit's error wrapping ErrCorrupt): nothing more is written to it
	room       sync.Cond // signalled after a commit, for Wait

	// committingHist is the history values being committed, until they
	// are (guarded by mu; read by HistorySizes).
	committingHist []Change

	waitingSince time.Time // when rows or waiters came to an idle retainer; zero once a commit takes them
	commitSince  time.Time // when the running commit started; zero between commits
	lastCommit   time.Time // when a commit last succeeded

	streak      int       // failed commits in a row; owned by the goroutine
	pruned      time.Time // last history prune; owned by the goroutine
	histAdded   int       // history values committed since; owned by the goroutine
	pruneMore   bool      // the last prune or compaction stopped at its bound; owned by the goroutine
	compactMore bool

	// spare is the set of the last commit, emptied, for the next changes
	// to wait in (guarded by mu). Reusing it spares a boot storm an
	// allocation and its index's growth per commit.
	spare *rowSet

	markers    int    // deletion markers in the store (about); owned by the goroutine
	compacted  uint64 // markers at or below it are dropped; owned by the goroutine
	epoch      uint64 // history values go to this epoch; owned by the goroutine
	epochBytes int    // bytes of history values in it; owned by the goroutine

	rev atomic.Uint64 // the newest revision handed in
	// committed is the revision of the last commit (the retainer's
	// goroutine's).
	committed uint64
	floor     atomic.Uint64 // deletion markers at or below it may be gone

	wake chan struct{} // one slot: there are changes
	done chan struct{} // closed when the goroutine has stopped

	Committed atomic.Int64 // rows committed
	Commits   atomic.Int64 // transactions committed
	Failures  atomic.Int64 // failed commits (retried)
	Lost      atomic.Int64 // rows and history values the store refused, or a damaged store could not take (not retried)
}

// New starts a retainer writing to store, first recording opts.Rev and
// opts.Floor in it if they are above what it holds.
func New(store RowStore, opts Options, log zerolog.Logger) (*Retainer, error) {
	r := &Retainer{
		store:   store,
		opts:    opts.withDefaults(),
		log:     log,
		pending: newRowSet(opts.withDefaults().MaxBatch),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		pruned:  time.Now(),
	}
	r.rules = r.opts.History
	m := store.Meta()
	if err := store.MarkRunning(); err != nil {
		return nil, err
	}
	r.rev.Store(max(m.Rev, opts.Rev))
	r.epoch = m.Epoch + 1 // a fresh epoch for every run
	n, _, err := store.Markers(0)
	if err != nil {
		return nil, err
	}
	r.markers, r.compacted = n, max(m.Floor, opts.Floor)
	r.floor.Store(max(m.Floor, opts.Floor))
	// A fresh store records the revision with its first commit (or at a
	// clean close): until then a crash leaves it unclean, and the next
	// start skips ahead all the same.
	if opts.Rev > m.Rev && !m.Fresh {
		if _, err := store.Commit(Batch{Rev: opts.Rev}); err != nil {
			return nil, err
		}
	}
	if opts.Floor > m.Floor {
		for more := true; more; {
			var err error
			if more, err = store.Compact(opts.Floor, 100_000); err != nil {
				return nil, err
			}
		}
	}
	r.room.L = &r.mu
	go r.run()
	return r, nil
}

// SetRev hands in the store's revision after a batch that changed only
// rows that are not persisted ($SYS): it is committed all the same.
func (r *Retainer) SetRev(rev uint64) {
	for {
		old := r.rev.Load()
		if rev <= old || r.rev.CompareAndSwap(old, rev) {
			return
		}
	}
}

// Floor is the revision at or below which deletion markers may be gone:
// a resume from an older revision cannot be answered.
func (r *Retainer) Floor() uint64 { return r.floor.Load() }

// Deleted calls fn for every row deleted at a revision in (since, upto]
// that is not set again in what is pending: from the changes not yet
// committed and from the store's markers. A topic may come more than
// once.
func (r *Retainer) Deleted(since, upto uint64, fn func(topic string, rev uint64) bool) error {
	r.mu.Lock()
	for _, m := range []*rowSet{r.pending, r.committing} {
		if m == nil {
			continue
		}
		stop := false
		m.each(func(c *Change) {
			if !stop && c.Value.Kind == 0 && c.Rev > since && c.Rev <= upto && !fn(c.Topic, c.Rev) {
				stop = true
			}
		})
		if stop {
			r.mu.Unlock()
			return nil
		}
	}
	r.mu.Unlock()
	return r.store.Deleted(since, upto, fn)
}

// History calls fn with the committed values of every topic matching
// filter (see RowStore.History). Flush first to see every change handed
// in.
func (r *Retainer) History(filter string, max int, fn func(topic string, pairs []Pair) bool) error {
	return r.store.History(filter, max, fn)
}

// Add queues changes (all rows of one batch: they commit together). Each
// waiter (a channel with room for one value) receives the outcome of the
// commit that holds them: nil; an error wrapping ErrUnstorable naming a
// row of changes the store refused (the others are committed); one
// wrapping ErrCommit if the commit failed whole (the rows stay pending and
// are retried); or one wrapping ErrClosed.
func (r *Retainer) Add(changes []Change, waiters ...chan error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		for _, w := range waiters {
			w <- ErrClosed
		}
		return
	}
	if r.waitingSince.IsZero() && (len(changes) > 0 || len(waiters) > 0) {
		r.waitingSince = time.Now()
	}
	for _, c := range changes {
		r.pending.put(c)
		if len(r.rules) > 0 && !c.QoSOnly && RuleFor(r.rules, c.Topic) != nil {
			if c.Rev != r.seqRev { // one revision may come in several Adds, and commits
				r.seqRev, r.seq = c.Rev, 0
			}
			r.seq++
			c.Seq = r.seq
			r.hist = append(r.hist, c)
		}
		if c.Rev > r.rev.Load() {
			r.SetRev(c.Rev)
		}
	}
	if len(waiters) > 0 {
		w := waiting{chans: slices.Clone(waiters), topics: make([]string, len(changes))}
		for i, c := range changes {
			w.topics[i] = c.Topic
		}
		r.waiters = append(r.waiters, w)
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// SetHistory hands the retainer new history rules (checked with
// HistoryRule.Validate), as a configuration reload does. Every change Add
// takes from then on is kept by the new rules; values already stored, or
// handed in before, stay as they are until the next prune, which follows
// the next commit and applies the new rules to them as a restart with
// them would: keep and max_age as the new rules say, and the values of
// rows no rule names any more dropped (with no rules at all, nothing is
// pruned: what is stored stays, as at a start without rules).
func (r *Retainer) SetHistory(rules []HistoryRule) {
	rules = slices.Clone(rules)
	r.mu.Lock()
	r.rules, r.rulesSet = rules, true
	r.mu.Unlock()
}

// HistoryRules are the history rules now. The caller must not change the
// slice.
func (r *Retainer) HistoryRules() []HistoryRule {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rules
}

// Pending is the number of rows waiting for a commit.
func (r *Retainer) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pending.len() + len(r.hist)
}

// Health reports whether the retainer works: nil, or why not — it has
// stopped, the store is damaged (a commit, compaction or prune made bbolt
// panic: nothing more is written to it, an error wrapping ErrCorrupt),
// its last commit failed (the rows stay pending and are retried), a
// commit has been running for longer than stuck, or rows have waited
// longer than stuck (past Options.Interval) without a commit taking them.
// It does not touch the store.
func (r *Retainer) Health(stuck time.Duration) error {
	select {
	case <-r.done:
		return errors.New("retain: the retainer has stopped")
	default:
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	switch {
	case r.closed:
		return ErrClosed
	case !r.commitSince.IsZero() && now.Sub(r.commitSince) > stuck:
		return fmt.Errorf("retain: a commit has been running for %v", now.Sub(r.commitSince).Round(time.Millisecond))
	case r.broken != nil:
		return fmt.Errorf("retain: the store is damaged, rows are not persisted: %w", r.broken)
	case r.err != nil:
		return fmt.Errorf("retain: last commit failed (%d rows pending, retried): %w", r.pending.len()+len(r.hist)+r.committingLen(), r.err)
	case !r.waitingSince.IsZero() && now.Sub(r.waitingSince) > stuck+r.opts.Interval:
		return fmt.Errorf("retain: %d rows have waited %v for a commit", r.pending.len()+len(r.hist), now.Sub(r.waitingSince).Round(time.Millisecond))
	}
	return nil
}

// LastCommit is when a commit last succeeded (zero: none yet).
func (r *Retainer) LastCommit() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastCommit
}

// Wait blocks while more than MaxPending rows wait for the disk: publishers
// call it before handing in more, so a disk that cannot keep up slows them
// instead of growing memory without bound. It reports whether it waited.
func (r *Retainer) Wait() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	waited := false
	for r.pending.len()+len(r.hist) > r.opts.MaxPending && !r.closed {
		if !waited {
			r.log.Warn().Int("pending", r.pending.len()).Msg("disk behind: publishers wait for the retainer")
		}
		waited = true
		r.room.Wait()
	}
	return waited
}

// run commits pending changes: at once when MaxBatch are pending or a
// publisher waits, else at most Interval after the first; after a failed
// commit, not before its backoff is over.
func (r *Retainer) run() {
	defer close(r.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var due time.Time   // when the oldest pending change must be committed
	var retry time.Time // in a failure streak: when to try again
	var backoff time.Duration
	for {
		r.mu.Lock()
		n, waiting, closed := r.pending.len(), len(r.waiters) > 0, r.closed
		r.mu.Unlock()
		if closed {
			r.final()
			return
		}
		if n == 0 && !waiting {
			r.mu.Lock()
			if r.spare != nil && r.spare.size() > spareRows {
				r.spare = nil // a storm's, and the storm is over
			}
			if r.pending.len() == 0 && r.pending.size() > spareRows {
				// The storm's other set, emptied, that the changes after
				// its last commit were to wait in: made anew (its slice
				// and index only at the first put), not kept idle.
				r.pending = newRowSet(r.opts.MaxBatch)
			}
			r.mu.Unlock()
			if t, ok := r.store.(trimmer); ok {
				t.Trim() // the store's commit scratch, if a storm's
			}
			<-r.wake
			continue
		}
		var at time.Time
		switch {
		case !retry.IsZero():
			at = retry // whatever comes meanwhile joins the retry
		case n >= r.opts.MaxBatch || waiting:
			// A full batch, or a publisher waiting for its ack (SyncRetain):
			// commit now; whatever arrives meanwhile joins the next commit.
		default:
			if due.IsZero() {
				due = time.Now().Add(r.opts.Interval)
			}
			at = due
		}
		if d := time.Until(at); !at.IsZero() && d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-r.wake:
				timer.Stop()
				continue
			}
		}
		due = time.Time{}
		// Rules handed in before this commit starts are pruned by after it
		// (SetHistory's promise); rules handed in while it runs wait for
		// the next one, so the values it writes are pruned by them too.
		r.mu.Lock()
		set := r.rulesSet
		r.rulesSet = false
		r.mu.Unlock()
		if r.commit(false) != nil {
			if set {
				r.mu.Lock()
				r.rulesSet = true
				r.mu.Unlock()
			}
			backoff = min(max(2*backoff, r.opts.Interval), max(MaxBackoff, r.opts.Interval))
			retry = time.Now().Add(backoff)
		} else {
			backoff, retry = 0, time.Time{}
			r.maintain(set)
		}
	}
}

// trimmer is a RowStore that keeps scratch from one commit to the next
// (Store): Trim leaves a storm's to the GC once the retainer is idle.
type trimmer interface{ Trim() }

// EpochBytes is the history values an epoch takes before the next one
// starts (see the store format): the most a commit's history rewrites of
// its epoch, against one key range per epoch for a read to seek.
const EpochBytes = 512 << 10

// maintainStep bounds the markers or history values one maintenance
// transaction drops, so a commit never waits long behind one.
const maintainStep = 50_000

// maintain compacts deletion markers older than the resume window and
// prunes history by keep and max_age, a bounded step at a time, after a
// commit (on the retainer's goroutine: never the message loop's). set
// says rules were handed in since the last commit: prune now.
func (r *Retainer) maintain(set bool) {
	r.mu.Lock()
	broken := r.broken != nil
	r.mu.Unlock()
	if broken {
		return
	}
	w := r.opts.ResumeWindow
	target, over := r.floor.Load(), false
	// The revision committed, not the newest handed in: a compaction up to
	// changes still pending would leave their markers below the floor.
	if rev := r.committed; rev > w {
		target = max(target, rev-w)
	}
	if r.markers > r.opts.MaxMarkers {
		// Too many markers: the oldest tenth goes, whatever the window.
		count, nth, err := r.store.Markers(r.markers - r.opts.MaxMarkers*9/10)
		r.markers = count
		if err == nil && count > r.opts.MaxMarkers {
			target, over = max(target, nth), true
		}
	}
	if target > r.compacted && (target-r.compacted >= max(w/16, 1) || r.compactMore || over) {
		r.floor.Store(target) // first: a resume from below it is refused before its markers go
		more, err := r.store.Compact(target, maintainStep)
		switch {
		case errors.Is(err, ErrCorrupt):
			r.damaged(err, 0)
			return
		case err != nil:
			r.log.Warn().Err(err).Msg("compacting deletion markers failed; retried later")
		case !more:
			r.compacted = target
			if n, _, err := r.store.Markers(0); err == nil {
				r.markers = n
			}
		}
		r.compactMore = more
	}
	r.mu.Lock()
	rules := r.rules
	r.mu.Unlock()
	if len(rules) == 0 {
		return // as at a start without rules: what is stored stays
	}
	if time.Since(r.pruned) < r.opts.PruneEvery && r.histAdded < 100_000 && !r.pruneMore && !set {
		return
	}
	more, err := r.store.Prune(rules, time.Now().UnixMilli(), maintainStep)
	switch {
	case errors.Is(err, ErrCorrupt):
		r.damaged(err, 0)
		return
	case err != nil:
		r.log.Warn().Err(err).Msg("pruning history failed; retried later")
	}
	r.pruneMore = more
	if !more {
		r.pruned, r.histAdded = time.Now(), 0
	}
}

// final commits what is left at close, trying a few times.
func (r *Retainer) final() {
	for i := range 3 {
		if i > 0 {
			time.Sleep(min(r.opts.Interval, MaxBackoff))
		}
		if r.commit(true) == nil {
			return
		}
	}
}

// commit writes what is pending in one transaction and answers its
// waiters. Rows the store refuses are logged, counted, reported and
// dropped. A failed commit keeps the changes pending (newer changes to the
// same rows win) and refuses its waiters at once.
func (r *Retainer) commit(closing bool) error {
	r.mu.Lock()
	batch, hist, waiters := r.pending, r.hist, r.waiters
	next := r.spare
	if next == nil || !spareFits(next.size(), batch.len()) {
		// The first commit, one that outgrew the spare or left a storm's
		// spare too large: a set made for twice as many, rather than the
		// spare grown (copied) as the rows come, or kept at a storm's size.
		next = newRowSet(max(r.opts.MaxBatch, 2*batch.len()))
	}
	r.pending, r.hist, r.waiters, r.spare = next, nil, nil, nil
	r.committing, r.committingHist = batch, hist
	start := time.Now()
	r.waitingSince, r.commitSince = time.Time{}, start
	// Under the lock Add takes: rev is that of the batch's newest change,
	// never one still pending (maintain compacts below what it commits).
	rev := r.rev.Load()
	broken := r.broken
	r.mu.Unlock()
	if broken != nil {
		r.discard(batch, hist, waiters, broken)
		return nil
	}
	if batch.len() == 0 && len(waiters) == 0 && !closing {
		r.mu.Lock()
		r.committing, r.committingHist, r.commitSince = nil, nil, time.Time{}
		r.mu.Unlock()
		return nil
	}
	// The set's own slice: Deleted reads batch meanwhile, no one writes it
	// until the commit is over (then, reset, it may serve the next one).
	changes := batch.rows()
	if r.epochBytes >= EpochBytes {
		r.epoch, r.epochBytes = r.epoch+1, 0
	}
	for _, c := range hist {
		r.epochBytes += len(c.Topic) + len(c.Value.Data) + 30
	}
	rejected, err := r.store.Commit(Batch{Changes: changes, History: hist, Rev: rev, Epoch: r.epoch})
	took := time.Since(start)
	if r.opts.OnCommit != nil { // once the retainer's state (Health) shows the commit
		defer r.opts.OnCommit(took, len(changes)+len(hist), err)
	}
	if errors.Is(err, ErrCorrupt) { // retrying cannot help: stop writing
		r.damaged(err, batch.len())
		r.discard(batch, hist, waiters, err)
		return nil
	}
	if err != nil {
		r.failed(batch, hist, waiters, err, closing)
		return err
	}
	r.histAdded += len(hist)
	r.committed = rev
	for _, c := range changes {
		if c.Value.Kind == wire.None {
			r.markers++
		}
	}
	for i := range rejected {
		if rej := &rejected[i]; !rej.History {
			r.unmarked(&rej.Change)
		}
	}
	r.mu.Lock()
	r.committing, r.committingHist, r.commitSince, r.lastCommit = nil, nil, time.Time{}, time.Now()
	if size := batch.size(); size <= spareRows || size <= 4*batch.len() {
		batch.reset()
		r.spare = batch
	}
	r.err = nil
	if n := len(rejected); n > 0 {
		r.lastLost = fmt.Errorf("%s: %w", describe(rejected[n-1].Topic), rejected[n-1].Err)
	}
	r.room.Broadcast()
	r.mu.Unlock()
	if r.streak > 0 {
		r.log.Warn().Int("failures", r.streak).Msg("retainer commits again")
		r.streak = 0
	}
	rows := len(rejected) // refused rows, not history values
	for _, rej := range rejected {
		if rej.History {
			rows--
		}
	}
	r.Committed.Add(int64(len(changes) - rows))
	r.Commits.Add(1)
	r.Lost.Add(int64(len(rejected)))
	for _, rej := range rejected {
		msg := "the store refused a row; it is not persisted"
		if rej.History {
			msg = "the store refused a history value of a row; it is not kept"
		}
		r.log.Error().Str("topic", shorten(rej.Topic)).Int("topic_bytes", len(rej.Topic)).
			Int("payload_bytes", len(rej.Value.Data)).Err(rej.Err).Msg(msg)
		if r.opts.OnReject != nil {
			r.opts.OnReject(rej)
		}
	}
	answer(waiters, rejected)
	r.log.Debug().Int("rows", len(changes)).Dur("took", took).Msg("retainer committed")
	return nil
}

// damaged records that the store is damaged (err wraps ErrCorrupt: a
// commit, compaction or prune made bbolt panic; rows is how many rows
// that commit held, 0 for a compaction or prune): logged once, and from
// then on no commit is tried (commit discards); Health and Close say so.
func (r *Retainer) damaged(err error, rows int) {
	r.mu.Lock()
	r.broken = err
	r.mu.Unlock()
	r.log.Error().Err(err).Int("rows", rows).
		Msg("the store is damaged: no more commits are tried; rows live in memory only, until a restart on a repaired store")
}

// failed puts a failed commit's changes back (unless newer ones came) and
// refuses its waiters. It logs the first failure of a streak only.
func (r *Retainer) failed(batch *rowSet, hist []Change, waiters []waiting, err error, closing bool) {
	r.Failures.Add(1)
	r.mu.Lock()
	batch.each(func(c *Change) {
		if !r.pending.has(c.Topic) {
			r.pending.put(*c)
		}
	})
	r.hist = append(hist, r.hist...)
	r.committing, r.committingHist, r.commitSince = nil, nil, time.Time{}
	if r.waitingSince.IsZero() {
		r.waitingSince = time.Now() // its rows wait again
	}
	r.err = err
	r.mu.Unlock()
	if r.streak == 0 {
		r.log.Error().Err(err).Int("rows", batch.len()).Msg("retainer commit failed; retrying with backoff")
	}
	r.streak++
	werr := fmt.Errorf("%w; the rows stay pending: %w", ErrCommit, err)
	if closing {
		werr = fmt.Errorf("%w: not committed at close: %w", ErrClosed, err)
	}
	for _, w := range waiters {
		for _, c := range w.chans {
			c <- werr
		}
	}
}

// discard drops a batch for a damaged store (see ErrCorrupt): its rows
// and history values are counted in Lost and reported to OnReject, its
// waiters refused with an error wrapping ErrUnstorable and err; nothing
// is retried, so nothing piles up and no loop spins on the store.
func (r *Retainer) discard(batch *rowSet, hist []Change, waiters []waiting, err error) {
	changes := batch.rows()
	for i := range changes {
		r.unmarked(&changes[i])
	}
	werr := fmt.Errorf("%w: the store is damaged, nothing more is persisted: %w", ErrUnstorable, err)
	r.Lost.Add(int64(len(changes) + len(hist)))
	if r.opts.OnReject != nil {
		for _, c := range changes {
			r.opts.OnReject(Rejected{Change: c, Err: werr})
		}
		for _, c := range hist {
			r.opts.OnReject(Rejected{Change: c, Err: werr, History: true})
		}
	}
	for _, w := range waiters {
		for _, c := range w.chans {
			c <- werr
		}
	}
	r.mu.Lock()
	if n := len(changes); n > 0 {
		r.lastLost = fmt.Errorf("%s: %w", describe(changes[n-1].Topic), werr)
	}
	r.committing, r.committingHist, r.commitSince = nil, nil, time.Time{}
	if size := batch.size(); size <= spareRows || size <= 4*batch.len() {
		batch.reset()
		r.spare = batch
	}
	r.room.Broadcast()
	r.mu.Unlock()
}

// unmarked raises the floor to the revision of c if it is a deletion
// whose marker is not on disk (the store refused it, or is damaged): a
// resume from before it then gets a full snapshot (SPEC §8), never a
// delta that leaves it out. Called while c is in r.committing, which
// Deleted reads, so no resume misses both. The floor is the goroutine's
// to write.
func (r *Retainer) unmarked(c *Change) {
	if c.Value.Kind == wire.None && c.Rev > r.floor.Load() {
		r.floor.Store(c.Rev)
	}
}

// answer tells each waiter whether the store kept all its rows (a history
// value refused is not its row refused).
func answer(waiters []waiting, rejected []Rejected) {
	var refused map[string]*Rejected
	if len(rejected) > 0 && len(waiters) > 0 {
		refused = make(map[string]*Rejected, len(rejected))
		for i := range rejected {
			if !rejected[i].History {
				refused[rejected[i].Topic] = &rejected[i]
			}
		}
	}
	for _, w := range waiters {
		var err error
		for _, t := range w.topics {
			if rej, ok := refused[t]; ok {
				err = fmt.Errorf("retain: row %s not stored: %w", describe(t), rej.Err)
				break
			}
		}
		for _, c := range w.chans {
			c <- err
		}
	}
}

// shorten cuts a topic to at most 200 bytes (at a character boundary) for
// logs and errors.
func shorten(t string) string {
	const most = 200
	if len(t) <= most {
		return t
	}
	cut := most
	for cut > 0 && !utf8.RuneStart(t[cut]) {
		cut--
	}
	return t[:cut] + "…"
}

// describe is a topic for an error message: quoted, shortened, with its
// length when shortened.
func describe(t string) string {
	s := strconv.Quote(shorten(t))
	if len(t) > 200 {
		s += " (" + strconv.Itoa(len(t)) + " bytes)"
	}
	return s
}

// Close commits everything pending and stops the goroutine. It does not
// close the store. Its error wraps ErrLost if any row was refused by the
// store during the run or could not be committed now.
func (r *Retainer) Close() error {
	r.mu.Lock()
	r.closed = true
	r.room.Broadcast()
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	if n := r.Lost.Load(); n > 0 {
		errs = append(errs, fmt.Errorf("%w: %d rows and history values were not persisted during the run (refused, or the store damaged), the last %w", ErrLost, n, r.lastLost))
	}
	switch {
	case r.broken != nil: // not marked clean: the next start skips ahead
		errs = append(errs, fmt.Errorf("%w: the store is damaged: %w", ErrLost, r.broken))
	case r.pending.len() > 0:
		errs = append(errs, fmt.Errorf("%w: %d rows not committed at close: %w", ErrLost, r.pending.len(), r.err))
	default:
		if err := r.store.MarkClean(r.rev.Load()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
