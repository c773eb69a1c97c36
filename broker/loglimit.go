package broker

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// logBudget bounds the log lines that clients can cause once a packet (a
// refused publish or subscription, a packet over the user property
// bounds, a refused CONNECT) or once a connection or session (a slow
// client's queue full, a session away ended past max_sessions, held
// messages dropped past max_offline_bytes), so that no client, nor all of them
// together, can fill the disk through the log. Each connection has a
// logQuota of perConn lines an interval, and all lines together (those
// of connections and of requests without one: HTTP, CONNECTs) take
// from total lines an interval. The first line of each kind (a reason
// code, logKind) is kept: once a connection, past its own quota, and once an
// interval broker-wide, past total. A line over the bounds is not
// written but counted: a connection's count is written in one line
// ("log lines suppressed", suppressed=K) when its interval ends (the
// broker's $SYS tick, each second, or its next line) or it closes; that
// line takes from total too, and past it its count joins the
// broker-wide one, written in one line when the broker-wide interval
// ends (the tick, or the broker's close). So an interval writes at most
// total lines, one a kind and one more.
type logBudget struct {
	log      zerolog.Logger
	interval time.Duration
	perConn  int
	total    int
	now      func() time.Time // time.Now; a test's clock

	// skipped counts the lines not written (mote_log_lines_suppressed_total).
	skipped atomic.Int64

	mu      sync.Mutex // guards the fields below and every logQuota's
	start   time.Time  // the broker-wide interval's
	used    int        // lines written in it
	kinds   kindSet    // kinds written in it
	dropped int64      // lines not written in it, or in connections' intervals that could not say so
	from    int        // connections whose count is in dropped
	// pending are the connections with a count not yet written, and
	// their client ids: the tick writes those whose interval ended.
	pending map[*logQuota]string
}

// logQuota is one connection's share of a logBudget: guarded by its mu.
type logQuota struct {
	start      time.Time // its interval's
	used       int       // lines written in it
	kinds      kindSet   // kinds it ever wrote
	suppressed int64     // lines not written since its last count
}

// logSlot is a connection's place in a logBudget, guarded by its mu: its
// logQuota is made when the budget first counts a line of the connection,
// so that an idle connection, which never has one, carries the slot only
// (80 bytes less a connection; bench/README.md, "Idle connections, cut
// again").
type logSlot struct {
	q      *logQuota // nil until the connection's first line
	closed bool      // its connection closed: only the broker-wide bound applies

	// refusals counts the connection's refused requests (atomic, not
	// under mu), not the messages skipped for it: its read turns look at
	// it (turns.go).
	refusals atomic.Uint32
}

// logKind is what a line is about: the reason code of the refusal
// (packets.Code's Code), 0 (CodeSuccess) for a notice. The first line of
// each is kept. Not a refusalReason, which lumps many codes into
// "other": a flood of one of them (or of notices) hid the first line of
// all the others.
type logKind uint8

// The kinds of Mote's own lines that clients can cause one a connection
// or a session, past the reason codes (0x00 to 0xA2).
const (
	kindSessionEnded logKind = 0xF0 + iota // a session away ended past max_sessions (away.go)
	kindHeldDropped                        // held messages dropped past max_offline_bytes (held.go)
	kindSlowClient                         // a slow client's queue full (conn.go)
)

// codeKind is the logKind of a line about a refusal with code.
func codeKind(code packets.Code) logKind { return logKind(code.Code) }

// kindSet is a set of logKinds.
type kindSet [4]uint64

// has reports whether k is in the set.
func (s *kindSet) has(k logKind) bool { return s[k/64]&(1<<(k%64)) != 0 }

// add puts k in the set.
func (s *kindSet) add(k logKind) { s[k/64] |= 1 << (k % 64) }

// newLogBudget is a logBudget writing its counts to log. perConn or total
// below 0: no bound.
func newLogBudget(log zerolog.Logger, opts LogLimit) *logBudget {
	return &logBudget{log: log, interval: opts.Interval, perConn: opts.PerClient, total: opts.Total, now: time.Now,
		pending: map[*logQuota]string{}}
}

// allow reports whether a line of kind may be written for the connection
// whose slot is s (nil: a request without one); if not, it is counted.
// It first writes the counts of intervals that ended.
func (lb *logBudget) allow(s *logSlot, client string, kind logKind) bool {
	if lb == nil {
		return true
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	now := lb.now()
	lb.rollLocked(now)
	var q *logQuota
	if s != nil && !s.closed {
		if s.q == nil {
			s.q = &logQuota{start: now}
		}
		q = s.q
	}
	if q != nil && now.Sub(q.start) >= lb.interval {
		lb.countLocked(q, client)
		q.start, q.used = now, 0
	}
	firstHere := q != nil && !q.kinds.has(kind)
	if q != nil && lb.perConn >= 0 && q.used >= lb.perConn && !firstHere {
		lb.suppressLocked(q, client)
		return false
	}
	if !lb.takeLocked(kind) {
		if q != nil {
			lb.suppressLocked(q, client)
			return false
		}
		lb.dropped++
		lb.skipped.Add(1)
		return false
	}
	if q != nil {
		q.used++
		q.kinds.add(kind)
	}
	return true
}

// suppressLocked counts a line of q's connection not written.
func (lb *logBudget) suppressLocked(q *logQuota, client string) {
	if q.suppressed == 0 {
		lb.pending[q] = client
	}
	q.suppressed++
	lb.skipped.Add(1)
}

// tick writes the counts of the intervals that ended: the broker-wide
// one's, and those of connections with lines left out. The broker's
// $SYS ticker calls it each second.
func (lb *logBudget) tick() {
	if lb == nil {
		return
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	now := lb.now()
	lb.rollLocked(now)
	for q, client := range lb.pending {
		if now.Sub(q.start) >= lb.interval {
			lb.countLocked(q, client)
			q.start, q.used = now, 0
		}
	}
}

// closed writes the count of the connection whose slot is s, which
// closed; later lines of it (a will) take only from the broker-wide
// bound.
func (lb *logBudget) closed(s *logSlot, client string) {
	if lb == nil {
		return
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.rollLocked(lb.now())
	if s.q != nil {
		lb.countLocked(s.q, client)
	}
	s.q, s.closed = nil, true
}

// flush writes the broker-wide count, as if the interval had ended (the
// broker closes).
func (lb *logBudget) flush() {
	if lb == nil {
		return
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.rollLocked(lb.now().Add(lb.interval))
}

// takeLocked takes one line of the broker-wide bound for a line of the
// kind: within total, or the first of its kind this interval.
func (lb *logBudget) takeLocked(kind logKind) bool {
	if lb.total >= 0 && lb.used >= lb.total && lb.kinds.has(kind) {
		return false
	}
	lb.used++
	lb.kinds.add(kind)
	return true
}

// countLocked writes q's count of lines not written, if any, as a line
// of its own when the broker-wide bound has room for it; else the count
// joins the broker-wide one.
func (lb *logBudget) countLocked(q *logQuota, client string) {
	if q.suppressed == 0 {
		return
	}
	n := q.suppressed
	q.suppressed = 0
	delete(lb.pending, q)
	if lb.total >= 0 && lb.used >= lb.total {
		lb.dropped += n
		lb.from++
		return
	}
	lb.used++
	lb.log.Warn().Str("client", truncate(client, 200)).Int64("suppressed", n).Str("interval", lb.interval.String()).
		Int("per_client", lb.perConn).Msg("log lines suppressed: the client's refused packets passed refusal_log.per_client")
}

// rollLocked ends the broker-wide interval if it ended by now, writing
// its count.
func (lb *logBudget) rollLocked(now time.Time) {
	if now.Sub(lb.start) < lb.interval {
		return
	}
	if lb.dropped > 0 {
		lb.log.Warn().Int64("suppressed", lb.dropped).Int("clients", lb.from).Str("interval", lb.interval.String()).
			Int("total", lb.total).Msg("log lines suppressed: refused requests of all clients passed refusal_log.total")
	}
	lb.start, lb.used, lb.kinds, lb.dropped, lb.from = now, 0, kindSet{}, 0, 0
}

// logRefusal is mochi's Options.LogRefusal: a log line that one packet
// of cl can cause takes from its connection's quota.
func (b *Broker) logRefusal(cl *mqtt.Client, code packets.Code) bool {
	return b.logs.allow((&hook{b: b}).quota(cl), cl.ID, codeKind(code))
}
