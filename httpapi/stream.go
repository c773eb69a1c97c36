package httpapi

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/wire"
)

// subscription is a broker session subscribed to one tree filter, whose
// messages reach the request's goroutine through a channel: the session's
// writer waits while the request handles one (the session's queue, bounded
// by the broker's slow-client policy, holds the rest).
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
	if n := s.streams.Add(1); n > int64(s.opts.MaxStreams) {
		s.streams.Add(-1)
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("too many event streams (%d at most); try again later", s.opts.MaxStreams), "")
		return
	}
	defer s.streams.Add(-1)
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
	sub, err := s.subscribe(p, topic, o)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer sub.close()

	rc := http.NewResponseController(w)
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
	ev := eventWriter{w: w, rc: rc, timeout: s.opts.WriteTimeout}
	if err := ev.flush(); err != nil {
		return
	}
	tick := time.NewTicker(s.opts.KeepAlive)
	defer tick.Stop()
	var next uint64 // mote-seq of the next message after the first
	for {
		select {
		case d := <-sub.msgs:
			seq := d.Seq()
			part, n := parts(prop(&d, "mote-part"))
			name := "delta"
			switch {
			case seq < 0:
				continue // not a tree message
			case seq == 0 && part <= 1 && prop(&d, "mote-resume") == "1":
				name = "resume"
			case seq == 0 && part <= 1:
				name = "snapshot"
			case seq != 0 && uint64(seq) != next:
				// The broker dropped a message for this slow client: the
				// stream's tree is stale. The client reconnects and
				// resumes from the last id it got.
				s.log.Debug().Str("filter", filter).Int64("seq", seq).Uint64("want", next).Msg("http: event stream fell behind; ending it")
				ev.comment("fell behind: reconnect") //nolint:errcheck // ending either way
				return
			}
			id := ""
			if part == n {
				id = prop(&d, "mote-rev")
				next = uint64(seq) + 1
			}
			if err := ev.event(name, id, d.Payload); err != nil {
				s.log.Debug().Err(err).Str("filter", filter).Msg("http: event stream ended")
				return
			}
			tick.Reset(s.opts.KeepAlive)
		case <-tick.C:
			if err := ev.comment("keep-alive"); err != nil {
				return
			}
		case <-r.Context().Done():
			return
		case <-sub.sess.Done(): // the slow-client policy, or the broker stopping
			return
		case <-s.closing:
			return
		}
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

// eventWriter writes Server-Sent Events, each write bounded by timeout.
type eventWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	buf     []byte
}

// event writes one event: data is a JSON tree, put on one line (JSON
// text has raw line breaks only as whitespace between tokens).
func (e *eventWriter) event(name, id string, data []byte) error {
	b := append(e.buf[:0], "event: "...)
	b = append(b, name...)
	if id != "" {
		b = append(b, "\nid: "...)
		b = append(b, id...)
	}
	b = append(b, "\ndata: "...)
	e.buf = b
	if err := e.write(b); err != nil {
		return err
	}
	if bytes.ContainsAny(data, "\r\n") {
		data = bytes.Clone(data)
		for i, c := range data {
			if c == '\r' || c == '\n' {
				data[i] = ' '
			}
		}
	}
	if err := e.write(data); err != nil {
		return err
	}
	if err := e.write([]byte("\n\n")); err != nil {
		return err
	}
	return e.flush()
}

// comment writes a comment line, which clients ignore.
func (e *eventWriter) comment(text string) error {
	if err := e.write([]byte(": " + text + "\n\n")); err != nil {
		return err
	}
	return e.flush()
}

func (e *eventWriter) write(b []byte) error {
	e.rc.SetWriteDeadline(time.Now().Add(e.timeout)) //nolint:errcheck // not every ResponseWriter has deadlines
	_, err := e.w.Write(b)
	return err
}

func (e *eventWriter) flush() error {
	e.rc.SetWriteDeadline(time.Now().Add(e.timeout)) //nolint:errcheck
	return e.rc.Flush()
}
