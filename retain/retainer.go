package retain

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Options tune a Retainer. Zero values mean the defaults.
type Options struct {
	Interval   time.Duration // commit at most this long after a change; default 50ms
	MaxBatch   int           // commit at once when this many rows are pending; default 10,000
	MaxPending int           // rows pending before Wait makes publishers wait; default 1,000,000
}

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

// Retainer is the goroutine that persists row changes. The message loop
// hands it each batch's changes with Add, which never waits on the disk:
// changes to the same topic coalesce in memory until the next commit, so
// what is pending is bounded by the number of distinct rows changed.
type Retainer struct {
	store RowStore
	opts  Options
	log   zerolog.Logger

	mu      sync.Mutex // guards pending, waiters, closed, err
	pending map[string]Change
	waiters []chan error // answered after the commit holding what was pending when they came
	closed  bool
	err     error     // the last commit's error, nil once one succeeds
	room    sync.Cond // signalled after a commit, for Wait

	wake chan struct{} // one slot: there are changes
	done chan struct{} // closed when the goroutine has stopped

	Committed atomic.Int64 // rows committed
	Commits   atomic.Int64 // transactions committed
	Failures  atomic.Int64 // failed commits (retried)
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
// commit that holds them.
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
	r.waiters = append(r.waiters, waiters...)
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

// run commits pending changes: at once when MaxBatch are pending, else at
// most Interval after the first.
func (r *Retainer) run() {
	defer close(r.done)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var due time.Time // when the oldest pending change must be committed
	for {
		r.mu.Lock()
		n, waiting, closed := len(r.pending), len(r.waiters) > 0, r.closed
		r.mu.Unlock()
		switch {
		case closed:
			r.final()
			return
		case n >= r.opts.MaxBatch || waiting:
			// A full batch, or a publisher waiting for its ack (SyncRetain):
			// commit now; whatever arrives meanwhile joins the next commit.
			r.commit() //nolint:errcheck // logged; the rows stay pending
			due = time.Time{}
			continue
		case n > 0:
			if due.IsZero() {
				due = time.Now().Add(r.opts.Interval)
			}
			d := time.Until(due)
			if d <= 0 {
				r.commit() //nolint:errcheck // logged; the rows stay pending
				due = time.Time{}
				continue
			}
			timer.Reset(d)
			select {
			case <-timer.C:
				r.commit() //nolint:errcheck // logged; the rows stay pending
				due = time.Time{}
			case <-r.wake:
				timer.Stop()
			}
			continue
		}
		<-r.wake
	}
}

// ErrClosed answers waiters of changes that came after Close.
var ErrClosed = errors.New("retain: retainer closed")

// final commits what is left at close, trying a few times, and answers
// every waiter.
func (r *Retainer) final() {
	for range 3 {
		if r.commit() == nil {
			break
		}
	}
	r.mu.Lock()
	waiters, err := r.waiters, r.err
	r.waiters = nil
	r.mu.Unlock()
	for _, w := range waiters {
		w <- fmt.Errorf("%w: not committed at close: %w", ErrClosed, err)
	}
}

// commit writes what is pending in one transaction. A failed commit keeps
// the changes pending (newer changes to the same rows win) and is retried.
func (r *Retainer) commit() error {
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
	err := r.store.Commit(changes)
	r.mu.Lock()
	if err != nil {
		r.Failures.Add(1)
		for t, c := range batch {
			if _, newer := r.pending[t]; !newer {
				r.pending[t] = c
			}
		}
		r.waiters = append(waiters, r.waiters...)
		r.err = err
		r.mu.Unlock()
		r.log.Error().Err(err).Int("rows", len(changes)).Msg("retainer commit failed; will retry")
		time.Sleep(r.opts.Interval)
		return err
	}
	r.err = nil
	r.room.Broadcast()
	r.mu.Unlock()
	r.Committed.Add(int64(len(changes)))
	r.Commits.Add(1)
	for _, w := range waiters {
		w <- nil
	}
	r.log.Debug().Int("rows", len(changes)).Dur("took", time.Since(start)).Msg("retainer committed")
	return nil
}

// Close commits everything pending and stops the goroutine. It does not
// close the store.
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
	if len(r.pending) > 0 {
		return fmt.Errorf("retain: %d rows not committed at close: %w", len(r.pending), r.err)
	}
	return nil
}
