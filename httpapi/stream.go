package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/wire"
)

// subscription is a broker session subscribed to one tree filter, whose
// messages reach the request's goroutine through a channel: the session's
// writer waits while the request handles one (the session's queue, bounded
// by the broker's slow-client policy, holds the rest). A history query
// uses one; an event stream writes from the session's writer instead
// (streamState).
type subscription struct {
	sess *broker.Session
	msgs chan broker.Delivery
	stop chan struct{} // closed by close: a waiting delivery returns
}

// subscribe opens a session acting as p and subscribes it to topic.
func (s *Server) subscribe(p broker.Principal, topic string, o broker.SubscribeOptions) (*subscription, error) {
	sub := &subscription{msgs: make(chan broker.Delivery), stop: make(chan struct{})}
	sub.sess = s.b.Open(p, func(d broker.Delivery) {
		select {
		case sub.msgs <- d:
		case <-sub.stop:
		}
	})
	if err := sub.sess.SubscribeWith(topic, 0, o); err != nil {
		sub.close()
		return nil, err
	}
	return sub, nil
}

// close ends the session; a delivery in progress returns at once.
func (sub *subscription) close() {
	close(sub.stop)
	sub.sess.Close()
}

// history answers GET /api/tree/F?history=1: the first message of a
// $hist/F subscription (SPEC §9) and its mote-rev.
func (s *Server) history(ctx context.Context, p broker.Principal, filter string, c wire.Codec, o broker.SubscribeOptions) ([]byte, uint64, error) {
	verb := "$hist/"
	if c != wire.CodecJSON {
		verb = "$hist." + c.String() + "/"
	}
	sub, err := s.subscribe(p, verb+filter, o)
	if err != nil {
		return nil, 0, err
	}
	defer sub.close()
	for {
		select {
		case d := <-sub.msgs:
			if d.Err != nil {
				// A row's history alone is larger than a part may be.
				return nil, 0, &httpError{status: http.StatusInternalServerError, code: d.Err.Code,
					msg: fmt.Sprintf("the history answer cannot be sent, a row's history is larger than the broker's maximum packet size (%v): narrow the filter, or pass from, to or limit", d.Err.Err)}
			}
			if d.Seq() != 0 {
				continue
			}
			if part := prop(&d, "mote-part"); part != "" {
				// A session has no packet size of its own: only an answer
				// over the broker's maximum packet size is cut in parts.
				return nil, 0, &httpError{status: http.StatusInternalServerError,
					msg: fmt.Sprintf("the history answer is larger than the broker's maximum packet size (in %s parts): narrow the filter, or pass from, to or limit", part[strings.IndexByte(part, '/')+1:])}
			}
			rev, _ := strconv.ParseUint(prop(&d, "mote-rev"), 10, 64)
			return d.Payload, rev, nil
		case <-sub.sess.Done():
			return nil, 0, &httpError{status: http.StatusServiceUnavailable, msg: "the broker ended the request's session (shutting down?)"}
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

// streamKey is who an event stream counts against (MaxStreamsPerUser):
// its user when the broker has a password file (the user proved who it
// is), else its remote host as the guess throttle counts it
// (broker.ClientHost: an IPv6 address as its /64, whose 2^64 addresses
// one machine may hold).
func (s *Server) streamKey(r *http.Request, p broker.Principal) string {
	if p.User != "" && s.b.HasUsers() {
		return "user " + p.User
	}
	return "host " + broker.ClientHost(r.RemoteAddr)
}

// openStream counts one more stream of key; false (not counted) past
// MaxStreamsPerUser.
func (s *Server) openStream(key string) bool {
	s.callersMu.Lock()
	defer s.callersMu.Unlock()
	if s.callers[key] >= s.opts.MaxStreamsPerUser {
		return false
	}
	s.callers[key]++
	return true
}

// closeStream counts one stream of key less.
func (s *Server) closeStream(key string) {
	s.callersMu.Lock()
	defer s.callersMu.Unlock()
	if s.callers[key]--; s.callers[key] <= 0 {
		delete(s.callers, key)
	}
}

// stream answers GET /api/tree/F with Accept: text/event-stream (SPEC §10):
// a $sync/F subscription ($hist/F with history=1) as Server-Sent Events.
// The first message is event "snapshot" ("resume" for a resume delta,
// after Last-Event-ID), then "delta"s; each id is the revision the tree
// reflects once the event is applied. A snapshot the broker cut in parts
// goes out as its first part, then the others as deltas, the id on the
// last only. A gap in the subscription's mote-seq (the client could not
// keep up and the broker dropped a delta) ends the stream: the client
// reconnects with its Last-Event-ID and resumes.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, p broker.Principal, filter string, hist *broker.SubscribeOptions) {
	if r.ContentLength != 0 {
		// net/http reads what is left of a small body before it writes
		// the headers: with the read deadline lifted below, a body never
		// sent would hold the stream before it starts, for ever.
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusBadRequest, "an event stream request has no body", "")
		return
	}
	if n := s.streams.Add(1); n > int64(s.opts.MaxStreams) {
		s.streams.Add(-1)
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("too many event streams (%d at most); try again later", s.opts.MaxStreams), "")
		return
	}
	defer s.streams.Add(-1)
	key := s.streamKey(r, p)
	if !s.openStream(key) {
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusTooManyRequests, fmt.Sprintf("too many event streams of one caller (%d at most); try again later", s.opts.MaxStreamsPerUser), "")
		return
	}
	defer s.closeStream(key)
	topic, o := "$sync/"+filter, broker.SubscribeOptions{}
	if hist != nil {
		topic, o = "$hist/"+filter, *hist // a history starts over on reconnecting
	} else if id := strings.TrimSpace(r.Header.Get("Last-Event-ID")); id != "" {
		if rev, err := strconv.ParseUint(id, 10, 64); err == nil {
			o.Since = &rev
		} else {
			s.log.Debug().Str("last_event_id", id).Msg("http: Last-Event-ID is not a revision; sending a snapshot")
		}
	}
	// A snapshot of 64 KiB or more counts against the answer budget by
	// its estimate before the broker makes it, as a GET's answer: a
	// stream refused for want of room costs no snapshot.
	est, ok := s.estimate(w, r, p, filter, hist)
	if !ok {
		return
	}
	if est < bigEvent {
		est = 0
	} else if !s.answers.take(est, false) {
		s.busy(w, r, filter, est)
		return
	}
	shrinkSendBuffer(r)
	rc := http.NewResponseController(w)
	st := &streamState{ev: eventWriter{w: w, rc: rc, timeout: s.opts.WriteTimeout}, end: make(chan struct{}), wake: make(chan struct{}, 1), room: make(chan struct{}, 1), stall: s.opts.StreamStall, reserved: est,
		log: s.log, filter: filter, answers: &s.answers, maxAnswer: s.opts.MaxAnswerBytes,
		maxBacklog: s.opts.MaxStreamBacklog, total: &s.backlog, maxTotal: s.opts.MaxStreamsBacklog, behindCount: &s.behind}
	// The session's writer queues each event (deliver); this goroutine
	// writes them, once the headers are out.
	sess := s.b.Open(p, st.deliver)
	defer sess.Close()
	defer st.finish() // nothing more is queued; what is queued is given back
	if err := sess.SubscribeWith(topic, 0, o); err != nil {
		st.finish()
		s.fail(w, r, err)
		return
	}
	// The server's read and write timeouts bound a request, not a stream:
	// lift them (an expired read deadline would end the stream), and bound
	// each write instead.
	rc.SetReadDeadline(time.Time{})  //nolint:errcheck // not every ResponseWriter has deadlines
	rc.SetWriteDeadline(time.Time{}) //nolint:errcheck
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	if err := st.ev.flush(); err != nil {
		return
	}
	tick := time.NewTicker(s.opts.KeepAlive)
	defer tick.Stop()
	for {
		select {
		case <-st.wake:
			if !st.writeQueued() {
				return
			}
			tick.Reset(s.opts.KeepAlive)
		case <-tick.C:
			if err := st.ev.comment("keep-alive"); err != nil {
				return
			}
		case <-st.end:
			st.writeEnd()
			return
		case <-r.Context().Done():
			return
		case <-sess.Done(): // the slow-client policy, or the broker stopping
			return
		case <-s.closing:
			return
		}
	}
}

// streamState is an event stream's state. The session's writer goroutine
// queues the events (deliver) and never waits for the client; the
// request's goroutine writes them, the headers and the keep-alive
// comments. The queue is bounded: past maxBacklog bytes of the stream, or
// maxTotal of every stream together, the client has fallen behind and
// the stream ends, with an "error" event saying so (if it can still be
// written), a log line and a count (Server.behind). mu guards what is
// below it.
type streamState struct {
	ev          eventWriter   // the request's goroutine's only
	end         chan struct{} // closed when the stream is to end (stop)
	wake        chan struct{} // an event is queued
	room        chan struct{} // an event is written: a deliver waiting for room looks again
	stall       time.Duration // how long a full backlog may make no room before the stream ends
	log         zerolog.Logger
	filter      string
	answers     *answerBudget // the Server's: large events count while held
	maxAnswer   int64
	maxBacklog  int64
	total       *atomic.Int64 // the Server's: bytes queued over every stream
	maxTotal    int64
	behindCount *atomic.Int64 // the Server's: streams ended as fallen behind

	mu       sync.Mutex
	reserved int64    // the first message's estimate, taken from answers until it comes
	ended    bool     // queue nothing more
	stopped  bool     // end is closed
	next     uint64   // mote-seq of the next message after the first
	queue    []queued // events not yet written
	queued   int64    // bytes of queue and of the events being written, counted in total
	last     []byte   // an event to write before ending (the reason), or nil
	lastOnly bool     // end once queue is written (after an error event)
}

// queued is one event ready to be written: its head (event, id), its
// data (the delivery's payload, the session's own: not copied), and how
// its bytes are counted: in the answer budget (big), else in the
// streams' total.
type queued struct {
	head, data []byte
	big        bool
}

// size is the bytes an event counts for.
func (q queued) size() int64 { return int64(len(q.head) + len(q.data) + 2) }

// bigEvent is the size from which an event's data counts against the
// answer budget while it is queued and written: a snapshot, or a large
// delta, that a client not reading would have the broker hold (a copy per
// stream). The many small deltas of a fan-out take no lock for it.
const bigEvent = 64 << 10

// deliver queues one message of the session as an event. It runs on the
// session's writer goroutine, and does not wait for the client. A gap in
// mote-seq, a queue past its bounds or a panic ends the stream.
func (st *streamState) deliver(d broker.Delivery) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.ended {
		return
	}
	// The first message counts by its size from now on, its snapshot's
	// estimate until then: given back only once the size is counted (or
	// the message is not one that counts), so no other answer finds the
	// budget empty in between (it did: a second large stream got 200 while
	// the first still held its snapshot, TestStreamAnswerBudget under load).
	own := st.reserved
	st.reserved = 0
	defer func() {
		if own > 0 {
			st.answers.give(own)
		}
	}()
	defer func() {
		if v := recover(); v != nil {
			st.log.Error().Interface("panic", v).Str("filter", st.filter).Msg("http: event stream panicked; ending it")
			st.stop(nil)
		}
	}()
	if d.Err != nil {
		// The broker refused the first message (a row larger than the
		// maximum packet size): the stream says why, and ends.
		st.log.Debug().Err(d.Err).Str("filter", st.filter).Msg("http: event stream refused")
		reason := fmt.Sprintf("the first message cannot be sent, a row is larger than the broker's maximum packet size (%v)", d.Err.Err)
		b, _ := json.Marshal(errorBody{Error: reason, Code: fmt.Sprintf("0x%02X", d.Err.Code.Code)}) // strings only: cannot fail
		st.ended, st.lastOnly = true, true
		st.last = formatEvent(nil, "error", "", b)
		st.signal()
		return
	}
	seq := d.Seq()
	part, n := parts(prop(&d, "mote-part"))
	name := "delta"
	switch {
	case seq < 0:
		return // not a tree message
	case seq == 0 && part <= 1 && prop(&d, "mote-resume") == "1":
		name = "resume"
	case seq == 0 && part <= 1:
		name = "snapshot"
	case seq != 0 && uint64(seq) != st.next:
		// The broker dropped a message for this slow client: the stream's
		// tree is stale. The client reconnects and resumes from the last
		// id it got.
		st.behind(0, fmt.Sprintf("the client fell behind: the broker dropped a delta for it (mote-seq %d, want %d); reconnect (Last-Event-ID resumes)", seq, st.next))
		return
	}
	id := ""
	if part == n {
		id = prop(&d, "mote-rev")
		st.next = uint64(seq) + 1
	}
	ev := queued{head: eventHead(name, id), data: oneLine(d.Payload), big: len(d.Payload) >= bigEvent}
	size, big := ev.size(), ev.big
	if !st.waitRoom(size) {
		return
	}
	counted := false
	if big && own > 0 {
		counted = st.answers.resize(own, size, false)
		if !counted { // own still counted: given back, and the size asked for as any event's
			st.answers.give(own)
		}
		own = 0
	}
	switch {
	case big && !counted && !st.answers.take(size, false):
		// As a GET's answer would get 503: the EventSource reconnects,
		// and resumes from the last id it got.
		st.log.Debug().Str("filter", st.filter).Int64("bytes", size).Msg("http: event stream ended: answer budget spent")
		st.stop(errorEvent(fmt.Sprintf("the broker is busy writing other large answers (%d MiB at most at once): try again later, or narrow the filter", st.maxAnswer>>20)))
		return
	case !big && st.total.Add(size) > st.maxTotal:
		st.total.Add(-size)
		st.behind(size, fmt.Sprintf("the client fell behind: event streams have %d MiB of events waiting for their clients; reconnect (Last-Event-ID resumes)", st.maxTotal>>20))
		return
	}
	st.queue = append(st.queue, ev)
	st.queued += size
	st.signal()
}

// waitRoom waits, st.mu let go meanwhile, until an event of size bytes
// fits the stream's backlog (MaxStreamBacklog; one event always fits an
// empty one). The session's writer waits with it, and the broker folds
// the deltas that come meanwhile into one (its slow-client policy bounds
// the rest), so a client reading slowly gets fewer, larger deltas. One
// that lets stall pass without making room has fallen behind: its stream
// ends (false). st.mu is held.
func (st *streamState) waitRoom(size int64) bool {
	if len(st.queue) == 0 || st.queued+size <= st.maxBacklog {
		return true
	}
	timer := time.NewTimer(st.stall)
	defer timer.Stop()
	for len(st.queue) > 0 && st.queued+size > st.maxBacklog {
		st.mu.Unlock()
		select {
		case <-st.room:
		case <-st.end:
		case <-timer.C:
		}
		st.mu.Lock()
		switch {
		case st.ended:
			return false
		case len(st.queue) > 0 && st.queued+size > st.maxBacklog && !timer.Stop():
			st.behind(size, fmt.Sprintf("the client fell behind: %d KiB of events waited %s for it; reconnect (Last-Event-ID resumes)", st.queued>>10, st.stall))
			return false
		}
		timer.Reset(st.stall)
	}
	return true
}

// behind ends a stream whose client does not keep up. st.mu is held.
func (st *streamState) behind(size int64, reason string) {
	st.behindCount.Add(1)
	st.log.Info().Str("filter", st.filter).Int64("queued_bytes", st.queued).Int64("event_bytes", size).Msg("http: event stream ended: " + reason)
	st.stop(errorEvent(reason))
}

// errorEvent is an "error" event giving reason.
func errorEvent(reason string) []byte {
	b, _ := json.Marshal(errorBody{Error: reason}) // a string: cannot fail
	return formatEvent(nil, "error", "", b)
}

// signal wakes the request's goroutine. st.mu is held.
func (st *streamState) signal() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// stop ends the stream at once: what is queued is dropped, a write under
// way is cut short, last (if not nil) is written if it can be. st.mu is
// held.
func (st *streamState) stop(last []byte) {
	if st.stopped {
		return
	}
	st.stopped, st.ended, st.lastOnly = true, true, false
	st.last = last
	st.dropQueue()
	close(st.end)
	// A write the client does not read would hold its bytes for up to
	// WriteTimeout: it fails now (net.Conn deadlines may be moved from
	// any goroutine).
	st.ev.rc.SetWriteDeadline(time.Now()) //nolint:errcheck // not every ResponseWriter has deadlines
}

// dropQueue gives back the bytes of the events queued. st.mu is held.
func (st *streamState) dropQueue() {
	for _, q := range st.queue {
		st.give(q)
	}
	st.queue = nil
}

// give uncounts one event.
func (st *streamState) give(q queued) {
	n := q.size()
	if q.big {
		st.answers.give(n)
	} else {
		st.total.Add(-n)
	}
	st.queued -= n
}

// writeQueued writes the events queued; false: the stream is over.
func (st *streamState) writeQueued() bool {
	for {
		st.mu.Lock()
		if len(st.queue) == 0 {
			done := st.lastOnly
			last := st.last
			st.mu.Unlock()
			if done {
				st.ev.raw(last) //nolint:errcheck // ending either way
				return false
			}
			return true
		}
		q := st.queue[0]
		st.queue[0] = queued{}
		st.queue = st.queue[1:]
		st.mu.Unlock()
		err := st.ev.event(q)
		st.mu.Lock()
		st.give(q)
		st.mu.Unlock()
		select { // a deliver waiting for room looks again
		case st.room <- struct{}{}:
		default:
		}
		if err != nil {
			st.log.Debug().Err(err).Str("filter", st.filter).Msg("http: event stream ended")
			return false
		}
	}
}

// writeEnd writes the reason the stream ends, if there is one and the
// client can still take it: within a second.
func (st *streamState) writeEnd() {
	st.mu.Lock()
	last := st.last
	st.mu.Unlock()
	if last == nil {
		return
	}
	st.ev.until = time.Time{}
	st.ev.timeout = time.Second
	st.ev.raw(last) //nolint:errcheck // ending either way
}

// finish ends the queueing: deliver queues nothing more (one waiting for
// room returns), and what is queued is given back.
func (st *streamState) finish() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.ended = true
	st.lastOnly = false
	st.dropQueue()
	st.answers.give(st.reserved)
	st.reserved = 0
	if !st.stopped { // a deliver waiting for room returns
		st.stopped = true
		close(st.end)
	}
}

// parts reads mote-part "i/n"; a message not in parts is part 1 of 1.
func parts(v string) (i, n int) {
	a, b, ok := strings.Cut(v, "/")
	if !ok {
		return 1, 1
	}
	i, err1 := strconv.Atoi(a)
	n, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil {
		return 1, 1
	}
	return i, n
}

// prop is a delivery's user property key ("" if absent).
func prop(d *broker.Delivery, key string) string {
	for _, u := range d.Properties.User {
		if u.Key == key {
			return u.Val
		}
	}
	return ""
}

// eventWriter writes Server-Sent Events, each bounded by timeout.
type eventWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	until   time.Time // the write deadline set last
}

// formatEvent is one event as it is written: data is a JSON tree, put on
// one line.
func formatEvent(b []byte, name, id string, data []byte) []byte {
	b = append(b, eventHead(name, id)...)
	b = append(b, oneLine(data)...)
	return append(b, "\n\n"...)
}

// eventHead is an event's lines before its data.
func eventHead(name, id string) []byte {
	b := append([]byte("event: "), name...)
	if id != "" {
		b = append(b, "\nid: "...)
		b = append(b, id...)
	}
	return append(b, "\ndata: "...)
}

// oneLine puts data, a JSON tree, on one line (JSON text has raw line
// breaks only as whitespace between tokens): data itself when it has
// none, else a copy.
func oneLine(data []byte) []byte {
	if bytes.IndexByte(data, '\n') < 0 && bytes.IndexByte(data, '\r') < 0 {
		return data
	}
	data = bytes.Clone(data)
	for i, c := range data {
		if c == '\r' || c == '\n' {
			data[i] = ' '
		}
	}
	return data
}

// event writes one queued event and flushes it.
func (e *eventWriter) event(q queued) error {
	e.deadline()
	for _, b := range [][]byte{q.head, q.data, []byte("\n\n")} {
		if _, err := e.w.Write(b); err != nil {
			return err
		}
	}
	return e.rc.Flush()
}

// raw writes a formatted event and flushes it.
func (e *eventWriter) raw(b []byte) error {
	e.deadline()
	if _, err := e.w.Write(b); err != nil {
		return err
	}
	return e.rc.Flush()
}

// comment writes a comment line, which clients ignore.
func (e *eventWriter) comment(text string) error {
	e.deadline()
	if _, err := e.w.Write([]byte(": " + text + "\n\n")); err != nil {
		return err
	}
	return e.rc.Flush()
}

// flush sends what is written (the headers at first).
func (e *eventWriter) flush() error {
	e.deadline()
	return e.rc.Flush()
}

// deadline bounds the writes of the next event: by timeout from now,
// less a tenth of it (a second at most). Moving a connection's deadline
// changes a timer in the runtime's poller, 7% of the CPU of a fan-out
// when done for every event: it is moved when it has come that close.
func (e *eventWriter) deadline() {
	now := time.Now()
	if e.until.Sub(now) > e.timeout-min(e.timeout/10, time.Second) {
		return
	}
	e.until = now.Add(e.timeout)
	e.rc.SetWriteDeadline(e.until) //nolint:errcheck // not every ResponseWriter has deadlines
}
