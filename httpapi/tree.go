package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/wire"
)

// get answers GET /api/tree/F: the tree of a $sync/F snapshot, its
// history ($hist/F, with history=1), or an event stream of it.
func (s *Server) get(w http.ResponseWriter, r *http.Request, p broker.Principal, filter string, q url.Values) {
	hist, err := histOptions(q)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), "")
		return
	}
	rep, err := negotiate(r.Header.Get("Accept"), r.Method == http.MethodGet)
	if err != nil {
		writeError(w, http.StatusNotAcceptable, err.Error(), "")
		return
	}
	if rep == repStream {
		s.stream(w, r, p, filter, hist)
		return
	}
	codec := rep.codec()
	// The answer counts against the budget by its estimate before it is
	// built: a GET refused for want of room costs a walk of the rows, not
	// a tree. Small answers have slots of their own, so that they never
	// wait for large ones being built.
	est, ok := s.estimate(w, r, p, filter, hist)
	if !ok {
		return
	}
	// A history's answer is read from disk, two at a time broker-wide:
	// it is never small, so that small answers never wait behind it, and
	// takes neither the small slots nor the reserve. (Its estimate
	// bounds it, stored values and deleted rows included: R3-hist.)
	small := est <= smallAnswer && hist == nil
	if !s.answers.take(est, small) {
		s.busy(w, r, filter, est)
		return
	}
	held := est
	defer func() { s.answers.give(held) }()
	slots := s.trees
	if small {
		slots = s.smallTrees
	}
	var payload []byte
	var rev uint64
	select {
	case slots <- struct{}{}:
	case <-r.Context().Done():
		return // the client went away
	}
	if hist != nil {
		payload, rev, err = s.history(r.Context(), p, filter, codec, *hist)
	} else {
		payload, rev, err = s.b.Tree(r.Context(), p, filter, codec)
	}
	<-slots
	if r.Context().Err() != nil {
		return // the client went away
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// The answer is held until the client has read it (WriteTimeout at
	// most): counted by its size from now on, the memory it holds (a
	// buffer grown by appending holds more than its length).
	n := int64(cap(payload))
	if !s.answers.resize(held, n, small) {
		payload = nil
		s.busy(w, r, filter, n)
		return
	}
	held = n
	h := w.Header()
	h.Set("Content-Type", codec.ContentType())
	h.Set("Content-Length", strconv.Itoa(len(payload)))
	h.Set("Mote-Rev", strconv.FormatUint(rev, 10))
	h.Set("Cache-Control", "no-store")
	h.Set("Vary", "Accept")
	w.Write(payload) //nolint:errcheck // a client that went away has nothing to be told
}

// estimate is what the answer to a GET of filter (hist: its history) is
// guessed to weigh (Broker.AnswerSize); false: there is none to count,
// the client went away or was answered the error. A few walk at once
// (the broker's estimates, which AnswerSize takes); the others wait
// there, not on the message loop.
func (s *Server) estimate(w http.ResponseWriter, r *http.Request, p broker.Principal, filter string, hist *broker.SubscribeOptions) (int64, bool) {
	est, err := s.b.AnswerSize(r.Context(), p, filter, hist)
	if r.Context().Err() != nil {
		return 0, false // the client went away
	}
	if err != nil {
		s.fail(w, r, err)
		return 0, false
	}
	return est, true
}

// smallAnswer is the estimate up to which a GET's answer is small: built
// in slots of its own (Server.smallTrees), and let into the last part of
// the answer budget.
const smallAnswer = 1 << 20

// busy answers 503 to a GET whose answer, of about n bytes, does not fit
// the answer budget now. The answer tells the client nothing of n: the
// estimate is made before the client's read check, so it would tell the
// size of rows it may not read (n is logged).
func (s *Server) busy(w http.ResponseWriter, r *http.Request, filter string, n int64) {
	s.log.Debug().Str("filter", filter).Int64("bytes", n).Str("remote", r.RemoteAddr).Msg("http: answer refused: answer budget spent")
	w.Header().Set("Retry-After", "5")
	writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("the broker is busy writing other large answers (%d MiB at most at once): try again later, or narrow the filter", s.opts.MaxAnswerBytes>>20), "")
}

// params are the query parameters the API reads.
var params = []string{"history", "from", "to", "limit", "replace"}

// parseQuery reads a request's query: malformed, or with a parameter of
// the API's given twice (which would be read as one of them), it is an
// error.
func parseQuery(raw string) (url.Values, error) {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	for _, k := range params {
		if len(q[k]) > 1 {
			return nil, fmt.Errorf("query: %s given twice", k)
		}
	}
	return q, nil
}

// histOptions reads history=1 and its from, to and limit (SPEC §9); nil
// without history.
func histOptions(q url.Values) (*broker.SubscribeOptions, error) {
	on, err := flag(q, "history")
	if err != nil {
		return nil, err
	}
	if !on {
		for _, k := range []string{"from", "to", "limit"} {
			if q.Has(k) {
				return nil, fmt.Errorf("%s is a history query's: add history=1", k)
			}
		}
		return nil, nil
	}
	var o broker.SubscribeOptions
	for _, k := range []string{"from", "to"} {
		v := q.Get(k)
		if v == "" {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%s=%.40q: want a time in Unix milliseconds", k, v)
		}
		if k == "from" {
			o.From = &n
		} else {
			o.To = &n
		}
	}
	if o.From != nil && o.To != nil && *o.From > *o.To {
		return nil, fmt.Errorf("from %d is after to %d", *o.From, *o.To)
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("limit=%.40q: want at least 1 pair per row", v)
		}
		o.Limit = n // the broker checks its upper bound
	}
	return &o, nil
}

// flag reads a boolean query parameter: absent, 0 or false; 1 or true.
func flag(q url.Values, key string) (bool, error) {
	switch v := q.Get(key); v {
	case "", "0", "false":
		return false, nil
	case "1", "true":
		return true, nil
	default:
		return false, fmt.Errorf("%s=%.40q: want 1 or 0", key, v)
	}
}

// put answers PUT /api/tree/T: a retained tree publish at QoS 1 ($tree/T,
// with replace=1 $tree.replace/T, a CBOR body $tree.cbor/T, a MessagePack
// body $tree.msgpack/T).
func (s *Server) put(w http.ResponseWriter, r *http.Request, p broker.Principal, topic string, q url.Values) {
	replace, err := flag(q, "replace")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), "")
		return
	}
	verb := "$tree"
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		switch {
		case err != nil:
			writeError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type %.100q: %v", ct, err), "")
			return
		case mt == "application/cbor":
			verb += ".cbor"
		case mt == "application/msgpack" || mt == "application/x-msgpack": // the name it had before RFC 9110's registry
			verb += ".msgpack"
		}
	}
	if replace {
		verb += ".replace"
	}
	body, ok := s.body(w, r)
	if !ok {
		return
	}
	s.publish(w, r, p, broker.Message{Topic: verb + "/" + topic, Payload: body, QoS: 1, Retain: true})
}

// set answers POST /api/set/F: $set/F with the body as the payload.
func (s *Server) set(w http.ResponseWriter, r *http.Request, p broker.Principal, filter string) {
	body, ok := s.body(w, r)
	if !ok {
		return
	}
	s.publish(w, r, p, broker.Message{Topic: "$set/" + filter, Payload: body, QoS: 1, Retain: true})
}

// publish publishes m through the broker's door and answers 204 once it
// is applied (with SyncRetain, committed).
// A translation of it the broker refused (broker.TranslationRefused) is
// said in the header Mote-Refused: the write stands.
func (s *Server) publish(w http.ResponseWriter, r *http.Request, p broker.Principal, m broker.Message) {
	err := s.b.Publish(r.Context(), p, m)
	var tr *broker.TranslationRefused
	if errors.As(err, &tr) {
		// ASCII, quoted: a header value carries no line break nor raw UTF-8.
		w.Header().Set("Mote-Refused", strconv.QuoteToASCII(truncate(tr.Refusal.Error(), 1000)))
		err = nil
	}
	var ref *broker.Refusal
	if p.User == "" && errors.As(err, &ref) && ref.Code.Code == packets.ErrNotAuthorized.Code {
		// SPEC §10: 401 without valid credentials. An anonymous caller
		// the ACL refuses may log in (RFC 9110 §15.5.2): challenged, not
		// 403, which tells a client that credentials will not help.
		w.Header().Set("WWW-Authenticate", `Basic realm="mote", charset="UTF-8"`)
		writeError(w, http.StatusUnauthorized, ref.Err.Error()+" (log in: HTTP Basic, a user of the password file)", fmt.Sprintf("0x%02X", ref.Code.Code))
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// truncate cuts s to at most n bytes, on a UTF-8 boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// body reads a request body of at most MaxBody bytes. A larger one is
// refused with 413: by its Content-Length before anything is read, or once
// MaxBody bytes are read.
func (s *Server) body(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	tooLarge := func() ([]byte, bool) {
		w.Header().Set("Connection", "close") // what is left unread is not read
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes", s.opts.MaxBody), "")
		return nil, false
	}
	if r.ContentLength > s.opts.MaxBody {
		return tooLarge()
	}
	// Read as it comes (no buffer sized by what the client claims).
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.opts.MaxBody))
	var mb *http.MaxBytesError
	switch {
	case errors.As(err, &mb):
		return tooLarge()
	case err != nil:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("reading the body: %v", err), "")
		return nil, false
	}
	return b, true
}

// fail answers a request the broker refused, or that failed.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ref *broker.Refusal
	if !errors.As(err, &ref) {
		var he *httpError
		if errors.As(err, &he) {
			code := ""
			if he.code.Code != 0 {
				code = fmt.Sprintf("0x%02X", he.code.Code)
			}
			writeError(w, he.status, he.msg, code)
			return
		}
		s.log.Error().Err(err).Str("method", r.Method).Str("path", r.URL.EscapedPath()).Msg("http: request failed")
		writeError(w, http.StatusInternalServerError, err.Error(), "")
		return
	}
	code := fmt.Sprintf("0x%02X", ref.Code.Code)
	status := http.StatusInternalServerError
	switch ref.Code.Code {
	case packets.ErrNotAuthorized.Code:
		status = http.StatusForbidden
	case packets.ErrPayloadFormatInvalid.Code, packets.ErrTopicFilterInvalid.Code, packets.ErrTopicNameInvalid.Code:
		status = http.StatusBadRequest
	case packets.ErrPacketTooLarge.Code:
		status = http.StatusRequestEntityTooLarge
	case packets.ErrServerShuttingDown.Code:
		status = http.StatusServiceUnavailable
	}
	if status == http.StatusInternalServerError {
		s.log.Error().Err(err).Str("method", r.Method).Str("path", r.URL.EscapedPath()).Msg("http: request failed")
	}
	writeError(w, status, ref.Err.Error(), code)
}

// httpError is a failure with its own HTTP status.
type httpError struct {
	status int
	msg    string
	code   packets.Code // the broker's reason code, if it refused
}

func (e *httpError) Error() string { return e.msg }

// errorBody is the JSON body of every error answer.
type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"` // the MQTT 5 reason code ("0x87") when the broker refused
}

// writeError answers with status and a JSON body giving the reason.
func writeError(w http.ResponseWriter, status int, reason, code string) {
	b, _ := json.Marshal(errorBody{Error: reason, Code: code})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n')) //nolint:errcheck // a client that went away has nothing to be told
}

// rep is a representation of a tree that a client may ask for.
type rep uint8

const (
	repJSON rep = iota
	repCBOR
	repMsgPack
	repStream // text/event-stream
)

// codec is the tree codec of a representation other than repStream.
func (r rep) codec() wire.Codec {
	switch r {
	case repCBOR:
		return wire.CodecCBOR
	case repMsgPack:
		return wire.CodecMsgPack
	}
	return wire.CodecJSON
}

// negotiate picks what to answer with from an Accept header (RFC 9110
// §12.5.1): the acceptable representation with the highest q, a type
// named exactly before one matched by a wildcard, then JSON, CBOR,
// MessagePack, event stream in that order. No header: JSON. An event stream only for GET.
func negotiate(accept string, streams bool) (rep, error) {
	if strings.TrimSpace(accept) == "" {
		return repJSON, nil
	}
	types := []struct {
		mt  string
		rep rep
	}{{"application/json", repJSON}, {"application/cbor", repCBOR}, {"application/msgpack", repMsgPack}, {"text/event-stream", repStream}}
	if !streams {
		types = types[:3]
	}
	best, bestQ, bestSpec := repJSON, 0.0, -1
	for _, t := range types {
		q, spec := -1.0, -1 // the most specific range that matches t decides its q
		for r := range strings.SplitSeq(accept, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(r))
			if err != nil {
				continue
			}
			rq := 1.0
			if v, ok := params["q"]; ok {
				if rq, err = strconv.ParseFloat(v, 64); err != nil || !(rq >= 0 && rq <= 1) { // NaN too
					continue
				}
			}
			sp := match(mt, t.mt)
			if sp > spec {
				q, spec = rq, sp
			}
		}
		if q > bestQ || (q == bestQ && q > 0 && spec > bestSpec) {
			best, bestQ, bestSpec = t.rep, q, spec
		}
	}
	if bestQ > 0 {
		return best, nil
	}
	return 0, fmt.Errorf("Accept %.100q: want application/json, application/cbor, application/msgpack or text/event-stream", accept)
}

// match says how specifically media range rng matches type mt: 2 exactly,
// 1 by type/*, 0 by */*, -1 not at all.
func match(rng, mt string) int {
	switch {
	case rng == mt:
		return 2
	case rng == "*/*":
		return 0
	case strings.HasSuffix(rng, "/*") && strings.HasPrefix(mt, rng[:len(rng)-1]):
		return 1
	}
	return -1
}
