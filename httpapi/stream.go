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
	rc := http.NewResponseController(w)
	st := &streamState{ev: eventWriter{w: w, rc: rc, timeout: s.opts.WriteTimeout}, end: make(chan struct{}),
		log: s.log, filter: filter, keepAlive: s.opts.KeepAlive, answers: &s.answers, maxAnswer: s.opts.MaxAnswerBytes}
	// The session's writer writes each event itself (deliver), under st.mu:
	// until the headers are out, it waits.
	st.mu.Lock()
	sess := s.b.Open(p, st.deliver)
	defer sess.Close()
	if err := sess.SubscribeWith(topic, 0, o); err != nil {
		st.ended = true
		st.mu.Unlock()
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
		st.ended = true
		st.mu.Unlock()
		return
	}
	st.tick = time.NewTicker(s.opts.KeepAlive)
	defer st.tick.Stop()
	st.mu.Unlock()
	defer func() { // nothing is written once the handler has returned
		st.mu.Lock()
		st.ended = true
		st.mu.Unlock()
	}()
	for {
		select {
		case <-st.tick.C:
			if !st.keepAliveComment() {
				return
			}
		case <-st.end:
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

// streamState is an event stream's state, guarded by mu: the session's
// writer goroutine writes the events (deliver), the request's goroutine
// the headers and the keep-alive comments, never both at once, and nobody
// once ended is set.
type streamState struct {
	mu        sync.Mutex
	ev        eventWriter
	ended     bool          // the stream is over: write nothing more
	next      uint64        // mote-seq of the next message after the first
	end       chan struct{} // closed when deliver ends the stream
	tick      *time.Ticker  // keep-alive comments; reset by each event
	keepAlive time.Duration
	log       zerolog.Logger
	filter    string
	answers   *answerBudget // the Server's: large events count while written
	maxAnswer int64
}

// bigEvent is the size from which an event's data counts against the
// answer budget while it is written: a snapshot, or a large delta, that a
// client not reading would have the broker hold (a copy per stream). The
// many small deltas of a fan-out take no lock for it.
const bigEvent = 64 << 10

// deliver writes one message of the session as an event. It runs on the
// session's writer goroutine, which waits meanwhile (the session's queue,
// bounded by the broker's slow-client policy, holds what follows). A gap
// in mote-seq, a failed write or a panic ends the stream.
func (st *streamState) deliver(d broker.Delivery) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.ended {
		return
	}
	defer func() {
		if v := recover(); v != nil {
			st.log.Error().Interface("panic", v).Str("filter", st.filter).Msg("http: event stream panicked; ending it")
			st.stop()
		}
	}()
	if d.Err != nil {
		// The broker refused the first message (a row larger than the
		// maximum packet size): the stream says why, and ends.
		st.log.Debug().Err(d.Err).Str("filter", st.filter).Msg("http: event stream refused")
		// (strings only: Marshal cannot fail; ending either way: a failed
		// write needs no answer)
		reason := fmt.Sprintf("the first message cannot be sent, a row is larger than the broker's maximum packet size (%v)", d.Err.Err)
		b, _ := json.Marshal(errorBody{Error: reason, Code: fmt.Sprintf("0x%02X", d.Err.Code.Code)})
		st.ev.event("error", "", b) //nolint:errcheck
		st.stop()
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
		st.log.Debug().Str("filter", st.filter).Int64("seq", seq).Uint64("want", st.next).Msg("http: event stream fell behind; ending it")
		st.ev.comment("fell behind: reconnect") //nolint:errcheck // ending either way
		st.stop()
		return
	}
	if len(d.Payload) >= bigEvent {
		if !st.answers.take(len(d.Payload)) {
			// As a GET's answer would get 503: the EventSource reconnects,
			// and resumes from the last id it got.
			st.log.Debug().Str("filter", st.filter).Int("bytes", len(d.Payload)).Msg("http: event stream ended: answer budget spent")
			reason := fmt.Sprintf("the broker is busy writing other large answers (%d MiB at most at once): try again later, or narrow the filter", st.maxAnswer>>20)
			b, _ := json.Marshal(errorBody{Error: reason}) // a string: cannot fail
			st.ev.event("error", "", b)                    //nolint:errcheck // ending either way
			st.stop()
			return
		}
		defer st.answers.give(len(d.Payload))
	}
	id := ""
	if part == n {
		id = prop(&d, "mote-rev")
		st.next = uint64(seq) + 1
	}
	if err := st.ev.event(name, id, d.Payload); err != nil {
		st.log.Debug().Err(err).Str("filter", st.filter).Msg("http: event stream ended")
		st.stop()
		return
	}
	st.tick.Reset(st.keepAlive)
}

// keepAliveComment writes a keep-alive comment; false: the stream is over.
func (st *streamState) keepAliveComment() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.ended {
		return false
	}
	if err := st.ev.comment("keep-alive"); err != nil {
		st.stop()
		return false
	}
	return true
}

// stop ends the stream: the request returns. st.mu is held.
func (st *streamState) stop() {
	if !st.ended {
		st.ended = true
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
	buf     []byte
}

// event writes one event: data is a JSON tree, put on one line (JSON
// text has raw line breaks only as whitespace between tokens).
func (e *eventWriter) event(name, id string, data []byte) error {
	e.deadline()
	b := append(e.buf[:0], "event: "...)
	b = append(b, name...)
	if id != "" {
		b = append(b, "\nid: "...)
		b = append(b, id...)
	}
	b = append(b, "\ndata: "...)
	e.buf = b
	if _, err := e.w.Write(b); err != nil {
		return err
	}
	if bytes.IndexByte(data, '\n') >= 0 || bytes.IndexByte(data, '\r') >= 0 {
		data = bytes.Clone(data)
		for i, c := range data {
			if c == '\r' || c == '\n' {
				data[i] = ' '
			}
		}
	}
	if _, err := e.w.Write(data); err != nil {
		return err
	}
	if _, err := e.w.Write([]byte("\n\n")); err != nil {
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
