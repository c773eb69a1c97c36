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
)

// Options tune a Retainer. Zero values mean the defaults.
type Options struct {
	Interval   time.Duration // commit at most this long after a change; default 50ms
	MaxBatch   int           // commit at once when this many rows are pending; default 10,000
	MaxPending int           // rows pending before Wait makes publishers wait; default 1,000,000

	// OnReject, if set, is told of every row the store refuses (after it is
	// logged and counted in Lost). It is called on the retainer's own
	// goroutine, never the message loop's, also from within Close, and
	// must return quickly: hand the report off, never wait on the broker.
	OnReject func(Rejected)
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

	mu       sync.Mutex // guards pending, waiters, closed, err, lastLost
	pending  map[string]Change
	waiters  []waiting // answered by the commit holding what was pending when they came
	closed   bool
	err      error     // the last commit's error, nil once one succeeds
	lastLost error     // the last row the store refused, named
	room     sync.Cond // signalled after a commit, for Wait

	streak int // failed commits in a row; owned by the goroutine

	wake chan struct{} // one slot: there are changes
	done chan struct{} // closed when the goroutine has stopped

	Committed atomic.Int64 // rows committed
	Commits   atomic.Int64 // transactions committed
	Failures  atomic.Int64 // failed commits (retried)
	Lost      atomic.Int64 // rows the store refused (not retried)
}

// New starts a retainer writing to store.
func New(store RowStore, opts Options, log zerolog.Logger) *Retainer {
	r := &Retainer{
		store:   store,
		opts:    opts.withDefaults(),
		log:     log,
		pending: map[string]Change{},
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	r.room.L = &r.mu
	go r.run()
	return r
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
	for _, c := range changes {
		r.pending[c.Topic] = c
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

// Pending is the number of rows waiting for a commit.
func (r *Retainer) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}

// Wait blocks while more than MaxPending rows wait for the disk: publishers
// call it before handing in more, so a disk that cannot keep up slows them
// instead of growing memory without bound. It reports whether it waited.
func (r *Retainer) Wait() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	waited := false
	for len(r.pending) > r.opts.MaxPending && !r.closed {
		if !waited {
			r.log.Warn().Int("pending", len(r.pending)).Msg("disk behind: publishers wait for the retainer")
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
		n, waiting, closed := len(r.pending), len(r.waiters) > 0, r.closed
		r.mu.Unlock()
		if closed {
			r.final()
			return
		}
		if n == 0 && !waiting {
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
		if r.commit(false) != nil {
			backoff = min(max(2*backoff, r.opts.Interval), max(MaxBackoff, r.opts.Interval))
			retry = time.Now().Add(backoff)
		} else {
			backoff, retry = 0, time.Time{}
		}
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
	batch, waiters := r.pending, r.waiters
	r.pending, r.waiters = make(map[string]Change, len(batch)), nil
	r.mu.Unlock()
	if len(batch) == 0 && len(waiters) == 0 {
		return nil
	}
	changes := make([]Change, 0, len(batch))
	for _, c := range batch {
		changes = append(changes, c)
	}
	start := time.Now()
	rejected, err := r.store.Commit(changes)
	if err != nil {
		r.failed(batch, waiters, err, closing)
		return err
	}
	r.mu.Lock()
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
	r.Committed.Add(int64(len(changes) - len(rejected)))
	r.Commits.Add(1)
	r.Lost.Add(int64(len(rejected)))
	for _, rej := range rejected {
		r.log.Error().Str("topic", shorten(rej.Topic)).Int("topic_bytes", len(rej.Topic)).
			Int("payload_bytes", len(rej.Value.Data)).Err(rej.Err).Msg("the store refused a row; it is not persisted")
		if r.opts.OnReject != nil {
			r.opts.OnReject(rej)
		}
	}
	answer(waiters, rejected)
	r.log.Debug().Int("rows", len(changes)).Dur("took", time.Since(start)).Msg("retainer committed")
	return nil
}

// failed puts a failed commit's changes back (unless newer ones came) and
// refuses its waiters. It logs the first failure of a streak only.
func (r *Retainer) failed(batch map[string]Change, waiters []waiting, err error, closing bool) {
	r.Failures.Add(1)
	r.mu.Lock()
	for t, c := range batch {
		if _, newer := r.pending[t]; !newer {
			r.pending[t] = c
		}
	}
	r.err = err
	r.mu.Unlock()
	if r.streak == 0 {
		r.log.Error().Err(err).Int("rows", len(batch)).Msg("retainer commit failed; retrying with backoff")
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

// answer tells each waiter whether the store kept all its rows.
func answer(waiters []waiting, rejected []Rejected) {
	var refused map[string]*Rejected
	if len(rejected) > 0 && len(waiters) > 0 {
		refused = make(map[string]*Rejected, len(rejected))
		for i := range rejected {
			refused[rejected[i].Topic] = &rejected[i]
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
		errs = append(errs, fmt.Errorf("%w: the store refused %d rows during the run, the last %w", ErrLost, n, r.lastLost))
	}
	if len(r.pending) > 0 {
		errs = append(errs, fmt.Errorf("%w: %d rows not committed at close: %w", ErrLost, len(r.pending), r.err))
	}
	return errors.Join(errs...)
}
