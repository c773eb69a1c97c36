package broker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/wire"
)

// Metrics (docs/metrics.md lists them). Every figure is an atomic counter
// the event's own goroutine adds to — the broker's Stats, mochi's
// server.Info, the retainer's counters, and the arrays of meters below,
// indexed by a label from a fixed set — read only when Prometheus scrapes;
// histograms are observed once per loop batch and per commit. The
// registry is the broker's own: two brokers in one process never share a
// figure.

// inKind is the kind of a publish accepted at the door.
type inKind uint8

const (
	inPlain inKind = iota // a plain publish: an event or a retained row
	inTree                // a tree publish ($tree/…, or mote=tree)
	inSet                 // a $set
	inKinds
)

var inKindNames = [inKinds]string{"plain", "tree", "set"}

// outKind is the kind of a message written to a client.
type outKind uint8

const (
	outPlain    outKind = iota // a plain publish (and the broker's error reports)
	outRetained                // a retained row replayed to a new plain subscription
	outSnapshot                // a $sync snapshot, or a part of one
	outResume                  // the first message of a resumed $sync subscription (SPEC §8)
	outHistory                 // a $hist answer (SPEC §9)
	outDelta                   // a tree delta
	outKinds
)

var outKindNames = [outKinds]string{"plain", "retained", "snapshot", "resume", "history", "delta"}

// refusalReason is why a request was refused, from its MQTT 5 reason code
// (reasonCode) and, for 0x80, the error.
type refusalReason uint8

const (
	refusedOther refusalReason = iota
	refusedNotAuthorized
	refusedBadCredentials
	refusedClientID
	refusedTopic
	refusedFilter
	refusedPayload
	refusedTooLarge
	refusedQuota
	refusedUnstorable
	refusedStoreFailed
	refusedCanceled
	refusedShutdown
	refusedRate
	refusalReasons
)

var refusalReasonNames = [refusalReasons]string{
	"other", "not_authorized", "bad_credentials", "client_id_invalid", "topic_invalid", "filter_invalid",
	"payload_invalid", "too_large", "quota", "unstorable", "store_failed", "canceled", "shutting_down",
	"connection_rate",
}

// refusalReasonOf is the metrics label of a refusal answered with code.
func refusalReasonOf(code packets.Code, err error) refusalReason {
	switch code.Code {
	case packets.ErrNotAuthorized.Code:
		return refusedNotAuthorized
	case packets.ErrBadUsernameOrPassword.Code:
		return refusedBadCredentials
	case packets.ErrClientIdentifierNotValid.Code:
		return refusedClientID
	case packets.ErrTopicNameInvalid.Code:
		return refusedTopic
	case packets.ErrTopicFilterInvalid.Code:
		return refusedFilter
	case packets.ErrPayloadFormatInvalid.Code:
		return refusedPayload
	case packets.ErrPacketTooLarge.Code:
		return refusedTooLarge
	case packets.ErrQuotaExceeded.Code:
		return refusedQuota
	case packets.ErrImplementationSpecificError.Code:
		return refusedUnstorable
	case packets.ErrServerShuttingDown.Code:
		return refusedShutdown
	case packets.ErrConnectionRateExceeded.Code:
		return refusedRate
	case packets.ErrUnspecifiedError.Code:
		switch {
		case errors.Is(err, retain.ErrCommit):
			return refusedStoreFailed
		case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
			return refusedCanceled
		}
	}
	return refusedOther
}

// dropReason is why a message was dropped on its way to a client. A
// message over the client's Maximum Packet Size (Stats.TooLarge) is
// dropped too, under "too_large".
type dropReason uint8

const (
	dropQueueFull    dropReason = iota // the client's queue was full (slow-client policy)
	dropInflightFull                   // every packet id was in flight: the client does not acknowledge
	dropSessionEnded                   // the connection ended and its session did not outlive it
	dropOfflineFull                    // held for an offline session past MaxInflight or MaxOfflineBytes, or dropped from those held past MaxOfflineBytes
	dropReasons
)

var dropReasonNames = [dropReasons]string{"queue_full", "inflight_full", "session_ended", "offline_full"}

// fullWhy is why a message found its client's queue full and was dropped
// (a queue_full drop): the sender does not wait (the loop, the broker's
// own messages), the client is stalled (it used up its credit of time,
// or its queue was full a patience with nothing written: outQueue), or the publisher's wait ended unanswered (pushLate).
type fullWhy uint8

const (
	fullNoWait  fullWhy = iota // a sender that never waits found the queue full
	fullStalled                // the client was stalled: no publisher waits for it
	fullLate                   // the publisher waited publish_wait and the client read nothing meanwhile
	fullWhys
)

var fullWhyNames = [fullWhys]string{"no_wait", "stalled", "deadline"}

// meters are the broker's figures beyond Stats, and its Prometheus
// registry. The counters are written by whichever goroutine sees the
// event; subs only by the message loop; the histograms by the loop and
// the retainer.
type meters struct {
	reg     *prometheus.Registry
	handler http.Handler

	in              [inKinds]atomic.Int64
	out             [outKinds]atomic.Int64
	refused         [refusalReasons]atomic.Int64
	dropped         [dropReasons]atomic.Int64
	queueFull       [fullWhys]atomic.Int64 // the queue_full drops, by why
	slowDrops       atomic.Int64           // messages dropped for a slow client kept connected
	slowDisconnects atomic.Int64           // slow clients disconnected
	// subs counts the tree subscriptions registered, by mode (Sync, Tree,
	// Hist); subsFiled those of MQTT connections, which mochi's index
	// also counts (server.Info.Subscriptions).
	subs      [wire.Hist + 1]atomic.Int64
	subsFiled atomic.Int64

	batchSize     prometheus.Histogram
	batchSeconds  prometheus.Histogram
	commitSeconds prometheus.Histogram
}

// drop counts n messages dropped for reason (with Stats.Dropped).
func (b *Broker) drop(reason dropReason, n int64) {
	b.stats.Dropped.Add(n)
	b.meter.dropped[reason].Add(n)
}

// countSub counts a tree subscription registered (n = 1) or removed
// (n = -1) (loop only).
func (b *Broker) countSub(st *treeSub, n int64) {
	b.meter.subs[st.mode].Add(n)
	if _, ok := st.c.out.(*mqttOut); ok {
		b.meter.subsFiled.Add(n)
	}
}

// uncountSubs uncounts owner's tree subscriptions on topics (all of
// them, with all) before the tree core removes them (loop only).
func (b *Broker) uncountSubs(owner string, topics []string, all bool) {
	for _, s := range b.tree.Owned(owner) {
		if all {
			b.countSub(s.Data.(*treeSub), -1)
			continue
		}
		for _, t := range topics {
			if s.Topic == t {
				b.countSub(s.Data.(*treeSub), -1)
				break
			}
		}
	}
}

// newMeters makes the broker's registry with every family but the
// retainer's, which registerRetainer adds once a store's retainer runs.
// Each family is registered once; the funcs read their figures at scrape.
func newMeters(b *Broker) *meters {
	m := &meters{reg: prometheus.NewRegistry()}
	r := m.reg
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	info := b.server.Info
	counter := func(name, help string, fn func() int64) {
		r.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(fn()) }))
	}
	gauge := func(name, help string, fn func() int64) {
		r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(fn()) }))
	}
	// labelled registers one counter of a family per label value.
	labelled := func(name, help, label string, values []string, fn func(i int) int64) {
		for i, v := range values {
			r.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: prometheus.Labels{label: v}},
				func() float64 { return float64(fn(i)) }))
		}
	}

	gauge("mote_connections", "MQTT connections open.", func() int64 { return atomic.LoadInt64(&info.ClientsConnected) })
	gauge("mote_sessions", "MQTT sessions kept, connected or not.", func() int64 { return int64(b.server.Clients.Len()) })
	gauge("mote_rows", "Retained rows.", func() int64 { return atomic.LoadInt64(&info.Retained) })
	gauge("mote_inflight_messages", "QoS 1/2 messages sent and not yet acknowledged, or held for offline sessions.",
		func() int64 { return atomic.LoadInt64(&info.Inflight) })
	gauge("mote_sessions_away", "Persistent sessions kept for clients that are away (bounded by MaxSessions).", func() int64 { return int64(b.away.len()) })
	gauge("mote_sessions_away_tree_subscriptions", "$tree subscriptions of sessions away whose last message written is kept, for a resume delta when the session resumes.", func() int64 { return b.awayTrees.n.Load() })
	counter("mote_sessions_ended_total", "Persistent sessions of clients away ended early: more than MaxSessions were kept.", func() int64 { return b.stats.SessionsEnded.Load() })
	gauge("mote_offline_held_bytes", "Bytes held for offline persistent sessions: their messages in flight, each 1.25 KiB plus topic, payload and properties.", func() int64 { return b.offline.bytes.Load() })
	gauge("mote_snapshot_bytes", "Bytes of $sync snapshots (by their estimate until built) held for MQTT clients until written (bounded by MaxSnapshotBytes).", func() int64 { held, _, _ := b.snaps.stats(); return held })
	counter("mote_snapshots_refused_total", "$sync SUBSCRIBEs refused (SUBACK 0x97) because their snapshot did not fit MaxSnapshotBytes.", func() int64 { _, _, refused := b.snaps.stats(); return refused })
	gauge("mote_snapshots_waiting", "$sync subscriptions of resumed sessions whose snapshot waits for room in MaxSnapshotBytes (they have no SUBACK to refuse).", func() int64 { now, _ := b.snaps.waits(); return int64(now) })
	counter("mote_snapshots_waited_total", "$sync subscriptions of resumed sessions whose snapshot waited for room in MaxSnapshotBytes.", func() int64 { _, all := b.snaps.waits(); return all })
	gauge("mote_readers_asleep", "Connections (plain TCP, Linux) whose client is idle and whose reader sleeps: no goroutine until input comes (Options.ReaderSleep).", func() int64 { return int64(b.sleepers.asleepNow()) })
	gauge("mote_loop_queue_requests", "Requests waiting for the message loop.", func() int64 { return int64(b.reqs.len()) })
	gauge("mote_loop_queue_limit", "Rows' worth of publishes waiting for the message loop past which publishers wait: about LoopBudget of its work, at what rows cost it lately (a publish weighs the rows it writes; a $set, what the $sets before it wrote).", func() int64 { return int64(b.reqs.limitNow()) })
	counter("mote_bytes_received_total", "Bytes read from MQTT connections.", func() int64 { return atomic.LoadInt64(&info.BytesReceived) })
	counter("mote_bytes_sent_total", "Bytes written to MQTT connections.", func() int64 { return atomic.LoadInt64(&info.BytesSent) })

	labelled("mote_messages_received_total", "Publishes accepted at the door (MQTT clients, wills, sessions, Publish), by kind.",
		"kind", inKindNames[:], func(i int) int64 { return m.in[i].Load() })
	labelled("mote_messages_sent_total", "Messages written to clients and sessions, by kind.",
		"kind", outKindNames[:], func(i int) int64 { return m.out[i].Load() })

	modes := []string{"plain", "sync", "tree", "hist"}
	for i, mode := range modes {
		fn := func() int64 { return m.subs[i].Load() }
		if i == int(wire.Plain) {
			// mochi counts every subscription it files: plain ones, and the
			// tree subscriptions of MQTT clients.
			fn = func() int64 { return max(0, atomic.LoadInt64(&info.Subscriptions)-m.subsFiled.Load()) }
		}
		r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mote_subscriptions", Help: "Subscriptions, by mode.",
			ConstLabels: prometheus.Labels{"mode": mode}}, func() float64 { return float64(fn()) }))
	}

	refusalHelp := "Refused publishes, subscriptions, wills, deliveries and connections, by reason."
	labelled("mote_refusals_total", refusalHelp, "reason", refusalReasonNames[:], func(i int) int64 { return m.refused[i].Load() })
	dropHelp := "Messages dropped on their way to a client, by reason."
	labelled("mote_dropped_messages_total", dropHelp, "reason", dropReasonNames[:], func(i int) int64 { return m.dropped[i].Load() })
	r.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mote_dropped_messages_total", Help: dropHelp,
		ConstLabels: prometheus.Labels{"reason": "too_large"}}, func() float64 { return float64(b.stats.TooLarge.Load()) }))
	labelled("mote_queue_full_drops_total", "Messages dropped because their client's queue was full (the queue_full drops), by why: no_wait (a sender that never waits: the message loop, the broker's own), stalled (the client used up its credit of publish_wait, or its queue was full publish_wait with nothing written), deadline (the publisher waited publish_wait and the client was written nothing meanwhile).",
		"why", fullWhyNames[:], func(i int) int64 { return m.queueFull[i].Load() })
	counter("mote_slow_client_drops_total", "Messages dropped for slow clients that stay connected (slow-client policy drop).",
		func() int64 { return m.slowDrops.Load() })
	counter("mote_slow_client_disconnects_total", "Slow clients disconnected (slow-client policy disconnect).",
		func() int64 { return m.slowDisconnects.Load() })
	counter("mote_panics_recovered_total", "Connections closed after a recovered panic.", func() int64 { return b.stats.Panics.Load() })
	counter("mote_publishes_applied_total", "Publishes applied by the message loop.", func() int64 { return b.stats.OpsApplied.Load() })
	counter("mote_publishes_throttled_total", "Publishes that waited for the disk.", func() int64 { return b.stats.Throttled.Load() })
	counter("mote_log_lines_suppressed_total", "Log lines of refused requests left out: past refusal_log's bounds.", b.logs.skipped.Load)
	counter("mote_deltas_folded_total", "Deltas folded into one still waiting for its client.", func() int64 { return b.stats.Folded.Load() })

	m.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mote_loop_batch_requests",
		Help:    "Requests the message loop took at once.",
		Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000}})
	m.batchSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mote_loop_batch_duration_seconds",
		Help:    "Time the message loop took to handle one batch of requests.",
		Buckets: []float64{.00001, .00003, .0001, .0003, .001, .003, .01, .03, .1, .3, 1, 3}})
	r.MustRegister(m.batchSize, m.batchSeconds)

	m.commitSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mote_retainer_commit_duration_seconds",
		Help:    "Time one store commit took (successful or not).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}})

	m.handler = promhttp.HandlerFor(r, promhttp.HandlerOpts{Registry: r, ErrorLog: promLog{b}})
	return m
}

// registerRetainer adds the retainer's figures (a broker with a store).
func (m *meters) registerRetainer(ret *retain.Retainer) {
	r := m.reg
	counter := func(name, help string, v *atomic.Int64) {
		r.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v.Load()) }))
	}
	counter("mote_retainer_commits_total", "Store transactions committed.", &ret.Commits)
	counter("mote_retainer_commit_failures_total", "Commits that failed whole (their rows are retried).", &ret.Failures)
	counter("mote_retainer_rows_committed_total", "Row changes committed.", &ret.Committed)
	counter("mote_retainer_rows_lost_total", "Rows (and history values) the store refused, or a damaged store could not take: not persisted.", &ret.Lost)
	r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mote_retainer_pending_rows",
		Help: "Row changes and history values waiting for a commit."}, func() float64 { return float64(ret.Pending()) }))
	r.MustRegister(m.commitSeconds)
}

// onCommit is the retainer's Options.OnCommit: the commit latency, then
// next (the caller's own, if any).
func (m *meters) onCommit(next func(time.Duration, int, error)) func(time.Duration, int, error) {
	return func(took time.Duration, rows int, err error) {
		m.commitSeconds.Observe(took.Seconds())
		if next != nil {
			next(took, rows, err)
		}
	}
}

// promLog logs what the metrics handler could not serve.
type promLog struct{ b *Broker }

func (l promLog) Println(v ...any) { l.b.log.Warn().Msg(fmt.Sprint(v...)) }

// Metrics serves the broker's figures in the Prometheus text format (and
// OpenMetrics, when asked), from the broker's own registry with the Go
// runtime's and the process's figures. docs/metrics.md lists them. It can
// be served before Start and after Close.
func (b *Broker) Metrics() http.Handler { return b.meter.handler }

// Health deadlines: how long the message loop and the store have to
// answer (Broker.healthWait, which tests shorten), and how long a commit
// may run (or rows wait for one) before the retainer is deemed stuck.
const (
	healthWait  = 2 * time.Second
	healthStuck = 10 * time.Second
)

// Health reports whether the broker works: nil, or what is wrong — the
// broker is closed, the message loop did not answer within 2 s, or (with
// a store) the retainer has stopped, its last commit failed, a commit is
// stuck, or the store did not take a commit within 2 s. With a store,
// when no commit succeeded in the last second, the check has the
// retainer commit (what is pending, or an empty transaction recording
// the revision), so an idle broker's disk is checked too; checks that
// come together share that commit. An HTTP front end answers 200 for
// nil, 503 with the error otherwise. Call it once Start has returned.
func (b *Broker) Health(ctx context.Context) error {
	select {
	case <-b.stop:
		return errors.New("broker: closed")
	default:
	}
	if b.cl != nil {
		if err := b.cl.health(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeoutCause(ctx, b.healthWait, errHealthWait)
	defer cancel()
	var probe chan error
	if b.ret != nil {
		if err := b.ret.Health(healthStuck); err != nil {
			return fmt.Errorf("broker: retainer: %w", err)
		}
		if time.Since(b.ret.LastCommit()) > time.Second {
			probe = make(chan error, 1)
		}
	}
	// The loop hands the probe to the retainer, as it hands it every
	// change: whatever it applied before is committed with it.
	if !b.onLoop(ctx.Done(), func() {
		if probe != nil {
			b.ret.Add(nil, probe)
		}
	}) {
		return b.healthErr(ctx, "the message loop")
	}
	if probe == nil {
		return nil
	}
	select {
	case err := <-probe:
		if errors.Is(err, retain.ErrClosed) {
			return errors.New("broker: closed")
		}
		if err != nil {
			return fmt.Errorf("broker: the store is not writable: %w", err)
		}
		return nil
	case <-ctx.Done():
		return b.healthErr(ctx, "the store")
	}
}

// healthErr says why what did not answer Health.
func (b *Broker) healthErr(ctx context.Context, what string) error {
	select {
	case <-b.stop:
		return errors.New("broker: closed")
	case <-b.loopDone:
		return errors.New("broker: the message loop has stopped")
	default:
	}
	if errors.Is(context.Cause(ctx), errHealthWait) {
		return fmt.Errorf("broker: %s did not answer within %v", what, b.healthWait)
	}
	return fmt.Errorf("broker: health check: %w", context.Cause(ctx))
}

var errHealthWait = errors.New("broker: health deadline")

// RegisterMetrics adds a front end's figures (the HTTP API's) to the
// broker's registry, which Metrics serves. A family already registered
// is an error (prometheus.AlreadyRegisteredError).
func (b *Broker) RegisterMetrics(cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := b.meter.reg.Register(c); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	return nil
}
