package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/mote-mqtt/mote/retain"
)

// LogOptions configure the replicated row log. Zero values are defaults.
type LogOptions struct {
	Stream  string // default "MOTE_ROWS"
	Subject string // default "mote.rows"
	// Replicas of the stream: min(3, nodes) in a cluster; default 1.
	Replicas int
	// MaxAge and MaxBytes, if set, let JetStream drop the oldest batches;
	// a node further behind cannot catch up (ErrBehind). Default: keep all.
	MaxAge   time.Duration
	MaxBytes int64
	// Timeout bounds an Append that gets no acknowledgement from a quorum
	// (a partition, an election); default 5 s.
	Timeout time.Duration
	// Ready bounds how long OpenLog waits for the stream (a new cluster
	// elects its JetStream leader first); default 30 s.
	Ready time.Duration
	// OnRetry, if set, is told why Follow starts again (to log it).
	OnRetry func(error)
}

func (o LogOptions) withDefaults() LogOptions {
	if o.Stream == "" {
		o.Stream = "MOTE_ROWS"
	}
	if o.Subject == "" {
		o.Subject = "mote.rows"
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.Ready <= 0 {
		o.Ready = 30 * time.Second
	}
	return o
}

var (
	// ErrUnreplicated is an Append no quorum of the stream's replicas
	// acknowledged in time: refuse the write. Its outcome is unknown (an
	// acknowledgement may have been lost): it may still appear in the log.
	ErrUnreplicated = errors.New("cluster: cannot replicate")
	// ErrTooLarge is a batch larger than one message may be.
	ErrTooLarge = errors.New("cluster: batch too large")
	// ErrBehind is a follower whose next sequence the log no longer holds.
	ErrBehind = errors.New("cluster: the log no longer holds the node's next batch")
	// ErrAhead is a follower past the log's end: its data directory belongs
	// to another (or a wiped) cluster log.
	ErrAhead = errors.New("cluster: the node's revision is past the log's end")
	// ErrCorrupt is a log message that is not a batch.
	ErrCorrupt = errors.New("cluster: malformed batch in the log")
)

// tryTimeout bounds one JetStream API request of a follower: a node just
// restarted sees its requests go unanswered until it is current with the
// JetStream meta group, and a short try retried soon beats a long wait.
const tryTimeout = time.Second

// stallCheck is how long a follower waits for the next batch before it
// asks whether the log holds one (and, if so, follows again).
const stallCheck = time.Second

// batchVersion is the first byte of every batch message.
const batchVersion = 1

// Log is the replicated row log: one JetStream stream whose messages are
// batches of row changes. A batch's stream sequence is the cluster
// revision of its rows.
type Log struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	opts LogOptions
}

// OpenLog creates the stream, or updates its configuration, waiting up
// to LogOptions.Ready for the cluster to elect a leader.
func OpenLog(ctx context.Context, nc *nats.Conn, o LogOptions) (*Log, error) {
	o = o.withDefaults()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("cluster: jetstream: %w", err)
	}
	cfg := jetstream.StreamConfig{
		Name:       o.Stream,
		Subjects:   []string{o.Subject},
		Storage:    jetstream.FileStorage,
		Retention:  jetstream.LimitsPolicy,
		Discard:    jetstream.DiscardOld,
		Replicas:   o.Replicas,
		MaxAge:     o.MaxAge,
		MaxBytes:   o.MaxBytes,
		Duplicates: 2 * time.Minute,
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = -1
	}
	ctx, cancel := context.WithTimeout(ctx, o.Ready)
	defer cancel()
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		// Each try is bounded: before a leader is elected, requests go
		// unanswered rather than refused.
		try, cancelTry := context.WithTimeout(ctx, 2*time.Second)
		_, err = js.CreateOrUpdateStream(try, cfg)
		cancelTry()
		if err == nil {
			return &Log{nc: nc, js: js, opts: o}, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster: create stream %s (replicas %d) within %v: %w", o.Stream, o.Replicas, o.Ready, err)
		case <-time.After(wait):
		}
	}
}

// Append writes changes as one batch and returns its sequence, once a
// quorum of the stream's replicas has it. It retries (with one message id,
// so JetStream keeps one copy) until LogOptions.Timeout, then fails with
// ErrUnreplicated. The changes' Rev is not sent: a batch's revision is its
// sequence.
func (l *Log) Append(ctx context.Context, changes []retain.Change) (uint64, error) {
	return l.AppendID(ctx, nuid.Next(), changes)
}

// AppendID is Append with the batch's id given: unique per batch (nuid),
// handed back in its Entry, so the node that appended it knows it when
// its follower reads it, which may be before AppendID returns.
func (l *Log) AppendID(ctx context.Context, id string, changes []retain.Change) (uint64, error) {
	data, err := encodeBatch(changes, l.nc.MaxPayload())
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, l.opts.Timeout)
	defer cancel()
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		ack, err := l.js.Publish(ctx, l.opts.Subject, data, jetstream.WithMsgID(id), jetstream.WithExpectStream(l.opts.Stream))
		if err == nil {
			return ack.Sequence, nil
		}
		if errors.Is(err, nats.ErrMaxPayload) {
			return 0, fmt.Errorf("%w: %w", ErrTooLarge, err)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w: %d rows within %v: %w", ErrUnreplicated, len(changes), l.opts.Timeout, err)
		case <-time.After(wait):
		}
	}
}

// MaxBatch is the most bytes one batch may take (the NATS connection's
// max payload).
func (l *Log) MaxBatch() int64 { return l.nc.MaxPayload() }

// Bounds are the log's first and last sequence (first is last+1, or 0,
// when it holds none).
func (l *Log) Bounds(ctx context.Context) (first, last uint64, err error) {
	s, err := l.js.Stream(ctx, l.opts.Stream)
	if err != nil {
		return 0, 0, fmt.Errorf("cluster: stream %s: %w", l.opts.Stream, err)
	}
	st := s.CachedInfo().State
	return st.FirstSeq, st.LastSeq, nil
}

// Entry is one batch of the log.
type Entry struct {
	Seq     uint64          // its sequence: the cluster revision of its rows
	ID      string          // the id it was appended with (AppendID)
	Changes []retain.Change // each with Rev = Seq
	// Pending is how many batches the log held after this one when it was
	// read: 0 means the follower has caught up (for now).
	Pending uint64
}

// ID names this log for good: its stream's name and creation time. A
// stream deleted and created again (a new cluster) has another ID, so a
// node's copy of the old one is not mistaken for it (Store.Bind).
//
// Just after OpenLog, on a cluster still forming, the stream may be
// unknown to the node asked or its request unanswered: ID asks again, a
// second at a time, for up to LogOptions.Ready.
func (l *Log) ID(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, l.opts.Ready)
	defer cancel()
	for {
		try, cancelTry := context.WithTimeout(ctx, tryTimeout)
		s, err := l.js.Stream(try, l.opts.Stream)
		cancelTry()
		if err == nil {
			return l.opts.Stream + " " + s.CachedInfo().Created.UTC().Format(time.RFC3339Nano), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("cluster: stream %s: %w", l.opts.Stream, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Follow calls fn with every batch from sequence from on, in order,
// until ctx ends (it then returns ctx's error) or fn fails (its error).
// It fails with ErrBehind if
// the log no longer holds from (or drops a batch before it is read),
// ErrAhead if from is past the log's end + 1, ErrCorrupt on a message
// that is not a batch. Other errors (no stream leader yet, a lost
// connection) are retried from the next batch, each told to
// LogOptions.OnRetry.
func (l *Log) Follow(ctx context.Context, from uint64, fn func(Entry) error) error {
	next := max(from, 1)
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		before := next
		err := l.follow(ctx, &next, fn)
		var fe fnError
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.As(err, &fe):
			return fe.err
		case errors.Is(err, ErrBehind), errors.Is(err, ErrAhead), errors.Is(err, ErrCorrupt):
			return err
		}
		if next > before {
			wait = 50 * time.Millisecond // it got somewhere: a new trouble
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
}

// fnError is the error of Follow's fn, which ends it.
type fnError struct{ err error }

func (e fnError) Error() string { return e.err.Error() }

// follow reads from *next on, once.
func (l *Log) follow(ctx context.Context, next *uint64, fn func(Entry) error) error {
	try, cancel := context.WithTimeout(ctx, tryTimeout)
	defer cancel()
	first, last, err := l.Bounds(try)
	if err != nil {
		return err
	}
	switch {
	case *next < first && *next <= last:
		return fmt.Errorf("%w: next %d, log %d–%d", ErrBehind, *next, first, last)
	case *next > last+1:
		return fmt.Errorf("%w: next %d, log ends at %d", ErrAhead, *next, last)
	}
	cons, err := l.js.OrderedConsumer(try, l.opts.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{l.opts.Subject},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    *next,
	})
	if err != nil {
		return fmt.Errorf("cluster: follow %s from %d: %w", l.opts.Stream, *next, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("cluster: follow %s from %d: %w", l.opts.Stream, *next, err)
	}
	defer it.Stop()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, err := it.Next(jetstream.NextMaxWait(stallCheck))
		if errors.Is(err, nats.ErrTimeout) {
			// Nothing came for a while. If the log holds the next batch,
			// the consumer is lost (its server killed, a stream leader
			// elected anew) and nats.go may take long to notice: start
			// again with a new one.
			try, cancel := context.WithTimeout(ctx, tryTimeout)
			_, last, berr := l.Bounds(try)
			cancel()
			if berr == nil && last >= *next {
				return fmt.Errorf("cluster: follow %s: nothing for %v at %d while the log ends at %d", l.opts.Stream, stallCheck, *next, last)
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("cluster: follow %s at %d: %w", l.opts.Stream, *next, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("%w: at %d: %w", ErrCorrupt, *next, err)
		}
		seq := md.Sequence.Stream
		switch {
		case seq < *next:
			continue // delivered again after a consumer reset
		case seq > *next:
			return fmt.Errorf("%w: next %d, the log gave %d", ErrBehind, *next, seq)
		}
		changes, err := decodeBatch(m.Data(), seq)
		if err != nil {
			return fmt.Errorf("%w: sequence %d: %w", ErrCorrupt, seq, err)
		}
		if err := fn(Entry{Seq: seq, ID: m.Headers().Get(jetstream.MsgIDHeader), Changes: changes, Pending: md.NumPending}); err != nil {
			return fnError{err}
		}
		*next = seq + 1
	}
}

// encodeBatch is a batch message: the version byte, then each change as
// retain.AppendChange writes it. A batch over max bytes is ErrTooLarge,
// found before it is encoded whole: rows sharing one payload (a $set)
// take little memory until they are written out one by one.
func encodeBatch(changes []retain.Change, max int64) ([]byte, error) {
	n := int64(1)
	for _, c := range changes {
		n += int64(len(c.Topic) + len(c.Value.Data) + 32)
	}
	b := append(make([]byte, 0, min(n, max)), batchVersion)
	for i, c := range changes {
		if int64(len(b)+len(c.Topic)+len(c.Value.Data)) > max { // its encoding is longer still
			return nil, fmt.Errorf("%w: %d rows, over %d bytes at row %d, at most %d", ErrTooLarge, len(changes), max, i, max)
		}
		c.Rev = 0
		var err error
		if b, err = retain.AppendChange(b, c); err != nil {
			return nil, fmt.Errorf("cluster: row %.200q: %w", c.Topic, err)
		}
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w: %d rows in %d bytes, at most %d", ErrTooLarge, len(changes), len(b), max)
	}
	return b, nil
}

// decodeBatch reads a batch message; every change gets revision rev.
func decodeBatch(b []byte, rev uint64) ([]retain.Change, error) {
	if len(b) == 0 || b[0] != batchVersion {
		return nil, fmt.Errorf("not a batch of version %d", batchVersion)
	}
	b = b[1:]
	var changes []retain.Change
	for len(b) > 0 {
		c, rest, err := retain.ReadChange(b)
		if err != nil {
			return nil, err
		}
		c.Rev = rev
		changes = append(changes, c)
		b = rest
	}
	return changes, nil
}
