package httpapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/broker"
)

// Options configure a Server. The zero value of a field means its default.
type Options struct {
	// Metrics serves GET /metrics (Prometheus text format); nil: 404.
	Metrics http.Handler
	// Health answers GET /healthz: nil is healthy (200 "ok"), an error
	// unhealthy (503 with its text). Default: the message loop answers a
	// barrier (Broker.Sync) within HealthTimeout.
	Health func(context.Context) error
	// Web serves every path outside /api, /metrics and /healthz (the web
	// view); nil: a page saying the web view is not built in.
	Web http.Handler

	// MaxBody bounds a request body in bytes; a larger one is refused with
	// 413 before it is read. Default: the broker's largest payload
	// (Broker.MaxPayload).
	MaxBody int64
	// MaxStreams bounds the event streams open at once; past it a stream
	// is refused with 503. Default 10,000.
	MaxStreams int
	// MaxStreamsPerUser bounds the event streams one caller may have open
	// at once: one user of the password file, or, for anonymous callers
	// and without a password file (where a username is not proven), one
	// remote host. Past it a stream is refused with 429. Default
	// MaxStreams/8 (1,250), at least 1.
	MaxStreamsPerUser int

	// MaxAnswerBytes bounds the bytes of tree and history answers (GET),
	// and of events of 64 KiB or more of event streams, held at once while
	// they are written to slow clients: past it an answer is refused with
	// 503 and Retry-After, a stream ends with an "error" event (one answer
	// is always let through, however large). Default 256 MiB.
	MaxAnswerBytes int64
	// MaxStreamBacklog bounds the bytes of events one event stream holds
	// for its client while the client does not read them (one event
	// always fits an empty backlog): past it the stream's session waits
	// (the broker folds its deltas meanwhile), and a client that makes no
	// room within StreamStall has fallen behind: its stream ends with an
	// "error" event, a log line and a count
	// (mote_http_streams_behind_total). Default 256 KiB.
	MaxStreamBacklog int64
	// StreamStall is how long an event stream's full backlog may wait for
	// its client to read before the stream ends as fallen behind; default
	// 10s.
	StreamStall time.Duration
	// MaxStreamsBacklog bounds the bytes of events below 64 KiB held for
	// every event stream together: an event past it ends its stream as
	// fallen behind. Default 64 MiB.
	MaxStreamsBacklog int64
	// MaxConns bounds the connections open at once (each costs some 20
	// KiB however little its client sends); past it a new connection is
	// closed as soon as it is accepted. Default MaxStreams + 1,000 (11,000).
	MaxConns int
	// MaxConnsPerHost bounds the connections open at once from one remote
	// host (an IPv6 /64 as one), so that one host cannot take them all;
	// loopback peers (a reverse proxy on the broker's machine) have no
	// bound of their own. Default MaxConns/4 (2,750).
	MaxConnsPerHost int

	// ReadHeaderTimeout bounds reading a request's headers (default 10s),
	// ReadTimeout the whole request with its body (default 60s),
	// WriteTimeout writing a response, or one event of a stream (default
	// 60s), and IdleTimeout how long a kept-alive connection waits for its
	// next request (default 120s).
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	// KeepAlive is how often an idle event stream gets a comment line, so
	// proxies keep it and a vanished client is noticed; default 20s.
	KeepAlive time.Duration
	// HealthTimeout bounds the default health check; default 2s.
	HealthTimeout time.Duration

	Log zerolog.Logger // default: discarded
}

// Defaults.
const (
	// DefaultAddr is where `mote broker` serves the API and the web view.
	DefaultAddr              = ":1885"
	DefaultMaxStreams        = 10_000
	DefaultMaxAnswerBytes    = 256 << 20
	DefaultMaxStreamBacklog  = 256 << 10
	DefaultMaxStreamsBacklog = 64 << 20
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultReadTimeout       = 60 * time.Second
	DefaultWriteTimeout      = 60 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultKeepAlive         = 20 * time.Second
	DefaultStreamStall       = 10 * time.Second
	DefaultHealthTimeout     = 2 * time.Second
	// ClientID is the client id of every HTTP request in ACL patterns (%c).
	ClientID = "http"
	// maxHeaderBytes bounds a request's headers.
	maxHeaderBytes = 64 << 10
	// maxTreeReads bounds the GETs whose tree the message loop makes at once.
	maxTreeReads = 4
)

// Server is the HTTP API of one broker (SPEC §10).
type Server struct {
	b    *broker.Broker
	opts Options
	log  zerolog.Logger
	srv  *http.Server

	streams atomic.Int64 // event streams open
	// callers counts the event streams open per caller (streamKey): a
	// key is there while its count is above 0, so it holds at most
	// MaxStreams keys.
	callersMu sync.Mutex
	callers   map[string]int
	// trees is a semaphore: trees being read off the message loop for
	// GETs, a few at a time, so publishes are never queued behind many.
	trees chan struct{}
	// smallTrees is trees' twin for answers of at most smallAnswer bytes.
	smallTrees chan struct{}
	// estimates is the broker's semaphore for the estimate walks
	// (Broker.EstimateSlots), which AnswerSize takes for Server.estimate
	// and the $sync SUBSCRIBEs' estimates for theirs: each walks the
	// matching rows on the message loop before any slot above is taken,
	// and clients looping refused GETs of a large filter queued walks
	// there without bound (64 of them: 47 ms of loop latency).
	estimates chan struct{}
	answers   answerBudget  // bytes of GET answers being built or written
	backlog   atomic.Int64  // bytes of events below bigEvent queued over every stream
	behind    atomic.Int64  // event streams ended as their client fell behind
	conns     *connCount    // connections open over every listener (MaxConns)
	closing   chan struct{} // closed by Close: event streams end
	once      sync.Once
}

// New builds the HTTP API of b; Serve serves it, Handler is it.
func New(b *broker.Broker, o Options) *Server {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if o.MaxBody <= 0 {
		o.MaxBody = int64(b.MaxPayload())
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	if o.MaxStreamsPerUser <= 0 {
		o.MaxStreamsPerUser = max(1, o.MaxStreams/8)
	}
	if o.MaxAnswerBytes <= 0 {
		o.MaxAnswerBytes = DefaultMaxAnswerBytes
	}
	if o.MaxStreamBacklog <= 0 {
		o.MaxStreamBacklog = DefaultMaxStreamBacklog
	}
	if o.MaxStreamsBacklog <= 0 {
		o.MaxStreamsBacklog = DefaultMaxStreamsBacklog
	}
	if o.MaxConns <= 0 {
		o.MaxConns = o.MaxStreams + 1_000
	}
	if o.MaxConnsPerHost <= 0 {
		o.MaxConnsPerHost = max(1, o.MaxConns/4)
	}
	def(&o.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&o.ReadTimeout, DefaultReadTimeout)
	def(&o.WriteTimeout, DefaultWriteTimeout)
	def(&o.IdleTimeout, DefaultIdleTimeout)
	def(&o.KeepAlive, DefaultKeepAlive)
	def(&o.StreamStall, DefaultStreamStall)
	def(&o.HealthTimeout, DefaultHealthTimeout)
	if o.Web == nil {
		o.Web = http.HandlerFunc(noWeb)
	}
	s := &Server{b: b, opts: o, log: o.Log, closing: make(chan struct{}), trees: make(chan struct{}, maxTreeReads), smallTrees: make(chan struct{}, maxTreeReads), estimates: b.EstimateSlots(), callers: map[string]int{}, answers: answerBudget{broker.NewBudget(o.MaxAnswerBytes, o.MaxAnswerBytes/16)},
		conns: newConnCount(o.MaxConns, o.MaxConnsPerHost)}
	if s.opts.Health == nil {
		s.opts.Health = s.loopHealth
	}
	s.registerMetrics()
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		ReadTimeout:       o.ReadTimeout,
		WriteTimeout:      o.WriteTimeout, // event streams lift it, and bound each event instead
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          log.New(logWriter{o.Log}, "", 0),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
	}
	return s
}

// registerMetrics adds the API's figures to the broker's (docs/metrics.md).
// A second Server of one broker serves the first one's.
func (s *Server) registerMetrics() {
	gauge := func(name, help string, fn func() int64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(fn()) })
	}
	counter := func(name, help string, fn func() int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(fn()) })
	}
	err := s.b.RegisterMetrics(
		gauge("mote_http_answer_bytes", "Bytes of HTTP tree and history answers (by their estimate until built) and of event stream events of 64 KiB or more held at once (bounded by the API's MaxAnswerBytes).",
			func() int64 { h, _, _ := s.answers.stats(); return h }),
		counter("mote_http_answers_refused_total", "HTTP answers refused (503), and event streams ended, because the answer budget (MaxAnswerBytes) was spent.",
			func() int64 { _, _, r := s.answers.stats(); return r }),
		gauge("mote_http_stream_backlog_bytes", "Bytes of events below 64 KiB queued for event stream clients (bounded by MaxStreamsBacklog).",
			func() int64 { return s.backlog.Load() }),
		counter("mote_http_streams_behind_total", "Event streams ended because their client fell behind (its backlog full for StreamStall, every stream's past MaxStreamsBacklog, or a delta dropped).",
			func() int64 { return s.behind.Load() }),
	)
	if err != nil {
		s.log.Debug().Err(err).Msg("http: the API's metrics are another Server's")
	}
}

// connKey is the context key of a request's connection (http.Server's
// ConnContext).
type connKey struct{}

// streamSendBuffer is the kernel send buffer of an event stream's
// connection: what a client that does not read holds in the kernel
// before its stream's backlog (MaxStreamBacklog) starts to fill. The
// kernel's own may grow to megabytes, which a stream nobody reads would
// fill at the broker's expense before it is seen to be behind.
const streamSendBuffer = 64 << 10

// shrinkSendBuffer bounds the kernel send buffer of r's TCP connection
// (streamSendBuffer); a connection of another kind is left as it is.
func shrinkSendBuffer(r *http.Request) {
	c, _ := r.Context().Value(connKey{}).(net.Conn)
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if lc, ok := c.(*limitedConn); ok {
		c = lc.Conn
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(streamSendBuffer) //nolint:errcheck // a bound only: the stream goes on without it
	}
}

// Handler is the API as an http.Handler, for a server of the caller's.
func (s *Server) Handler() http.Handler { return s }

// Listen binds addr for the API. When the broker serves loopback clients
// only (Broker.LocalOnly: no password file, no anonymous access), the
// address is bound to loopback, as the broker's own listeners are.
func (s *Server) Listen(addr string) (net.Listener, error) {
	if s.b.LocalOnly() {
		addr = broker.LoopbackAddr(addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("httpapi: listen %s: %w", addr, err)
	}
	return l, nil
}

// Serve serves the API on l until Close; it refuses a listener that is
// not on loopback when the broker serves loopback clients only. It keeps
// the connections within MaxConns and MaxConnsPerHost. It returns nil
// after Close.
func (s *Server) Serve(l net.Listener) error { return s.serve(l, nil) }

// ServeTLS serves the API over TLS (HTTPS, HTTP/1.1) on l, as Serve does,
// with conf (e.g. Broker.ServerTLS, which follows reloads of the
// certificate). A Server may serve several listeners at once (HTTP and
// HTTPS): MaxConns and MaxConnsPerHost bound their connections together.
func (s *Server) ServeTLS(l net.Listener, conf *tls.Config) error {
	if conf == nil {
		return errors.New("httpapi: HTTPS without a TLS configuration (a certificate and its key)")
	}
	return s.serve(l, conf)
}

func (s *Server) serve(l net.Listener, conf *tls.Config) error {
	if s.b.LocalOnly() && !isLoopback(l.Addr()) {
		return fmt.Errorf("httpapi: %s is not a loopback address: without a password file and without anonymous access the broker serves loopback only", l.Addr())
	}
	l = limitBy(l, s.conns, s.log)
	if conf != nil {
		// Inside the limit, so the server sees *tls.Conn: r.TLS is set
		// (the origin rule wants https pages) and the handshake has the
		// server's deadline.
		l = tls.NewListener(l, conf)
	}
	if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("httpapi: serve: %w", err)
	}
	return nil
}

// Close ends every event stream, then stops serving: requests in progress
// get up to 5 s to finish before their connections are closed.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		close(s.closing)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err = s.srv.Shutdown(ctx); err != nil {
			err = s.srv.Close()
		}
	})
	return err
}

// ServeHTTP routes a request (SPEC §10). Routes match the path as written
// (rawPath), so that an escaped '/' inside a level stays inside it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			s.log.Error().Interface("panic", v).Str("method", r.Method).Str("path", r.URL.EscapedPath()).Msg("http: handler panicked")
			writeError(w, http.StatusInternalServerError, "internal error", "")
		}
	}()
	// No answer of this server is to be read as another type than it
	// says (a tree whose string looks like HTML, shown as a page).
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if reason := s.reachable(r); reason != "" {
		writeError(w, http.StatusForbidden, reason, "")
		return
	}
	path := rawPath(r.URL)
	switch {
	case path == "/metrics":
		if !allow(w, r, "GET, HEAD") {
			return
		}
		// The figures are the broker's, for its users (Prometheus:
		// basic_auth): the API's credentials rule, without an ACL.
		w.Header().Set("Cache-Control", "no-store")
		if p, ok := s.authenticate(w, r); !ok || !s.hostAllowed(w, r, p) {
			return
		}
		if s.opts.Metrics == nil {
			writeError(w, http.StatusNotFound, "metrics are not built in", "")
			return
		}
		s.opts.Metrics.ServeHTTP(w, r)
	case path == "/healthz":
		if allow(w, r, "GET, HEAD") {
			s.health(w, r)
		}
	case path == "/api" || strings.HasPrefix(path, "/api/"):
		// Every answer depends on the caller's credentials and rights: no
		// cache may keep one for another caller.
		w.Header().Set("Cache-Control", "no-store")
		s.api(w, r, path)
	default:
		s.opts.Web.ServeHTTP(w, r)
	}
}

// rawPath is u's path as the request wrote it, escapes as they were.
// EscapedPath is not: when the path holds a character it would escape (raw
// UTF-8, '"'), it escapes the decoded path afresh, and an escaped '/'
// inside a level (%2F) comes back as a separator.
func rawPath(u *url.URL) string {
	if u.RawPath != "" {
		return u.RawPath // set whenever the path as written differs from EscapedPath's own escaping
	}
	return u.EscapedPath()
}

// reachable says why r may not reach the broker at all ("" if it may).
// A broker serving loopback only (Broker.LocalOnly) answers loopback
// peers only (a RemoteAddr that is not an IP address and port is not
// one), and only under a loopback host name: a page whose own name
// an attacker points at 127.0.0.1 (DNS rebinding) sends its name as Host.
func (s *Server) reachable(r *http.Request) string {
	if !s.b.LocalOnly() {
		return ""
	}
	// What does not read as an IP address (a zone, another network's
	// address) is not loopback either: refused.
	peer, _, err := net.SplitHostPort(r.RemoteAddr)
	if a, perr := netip.ParseAddr(peer); err != nil || perr != nil || !a.WithZone("").Unmap().IsLoopback() {
		return "the broker serves loopback clients only (no password file, no anonymous access)"
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if ip := net.ParseIP(host); !strings.EqualFold(host, "localhost") && (ip == nil || !ip.IsLoopback()) {
		return fmt.Sprintf("host %.100q is not a loopback name: without a password file the broker answers http://localhost or http://127.0.0.1 only", r.Host)
	}
	return ""
}

// api serves /api/…: the tree routes, after the method, the origin and
// the credentials are checked.
func (s *Server) api(w http.ResponseWriter, r *http.Request, path string) {
	var topic string
	var ok bool
	switch {
	case strings.HasPrefix(path, "/api/tree/"):
		topic, ok = strings.CutPrefix(path, "/api/tree/")
		if !allow(w, r, "GET, HEAD, PUT, DELETE") {
			return
		}
	case strings.HasPrefix(path, "/api/set/"):
		topic, ok = strings.CutPrefix(path, "/api/set/")
		if !allow(w, r, "POST") {
			return
		}
	}
	if !ok {
		writeError(w, http.StatusNotFound, "no such API route: want /api/tree/<filter> or /api/set/<filter>", "")
		return
	}
	if !s.b.OriginAllowed(r) {
		writeError(w, http.StatusForbidden, fmt.Sprintf("origin %.100q may not use the API (allowed_origins)", r.Header.Get("Origin")), "")
		return
	}
	p, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	if !s.hostAllowed(w, r, p) {
		return
	}
	t, err := parseTopic(topic)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), "")
		return
	}
	q, err := parseQuery(r.URL.RawQuery)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), "")
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		s.get(w, r, p, t, q)
	case http.MethodPut:
		s.put(w, r, p, t, q)
	case http.MethodDelete:
		s.publish(w, r, p, broker.Message{Topic: "$tree.replace/" + t, Payload: []byte("{}"), QoS: 1, Retain: true})
	case http.MethodPost:
		s.set(w, r, p, t)
	}
}

// allow answers 405 with the Allow header unless r's method is one of
// methods ("GET, HEAD"); it reports whether it is.
func allow(w http.ResponseWriter, r *http.Request, methods string) bool {
	for m := range strings.SplitSeq(methods, ", ") {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", methods)
	writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %.20s: want %s", r.Method, methods), "")
	return false
}

// authenticate reads r's HTTP Basic credentials and checks them as an MQTT
// CONNECT's, through the same door (Broker.Authenticate: counted, and
// throttled per host, as a CONNECT's): it answers 401 (429 with
// Retry-After for a host that made too many failed guesses) and reports
// false when they are missing or wrong.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (broker.Principal, bool) {
	user, password, hasUser := r.BasicAuth()
	if !hasUser && r.Header.Get("Authorization") != "" {
		s.log.Debug().Str("remote", r.RemoteAddr).Msg("http: the Authorization header is not HTTP Basic")
		w.Header().Set("WWW-Authenticate", `Basic realm="mote", charset="UTF-8"`)
		writeError(w, http.StatusUnauthorized, "the Authorization header is not HTTP Basic", "")
		return broker.Principal{}, false
	}
	err := s.b.Authenticate(r.RemoteAddr, user, password, hasUser)
	var te *broker.ThrottleError
	switch {
	case err == nil:
		return broker.Principal{User: user, ClientID: ClientID, Answered: true}, true
	case errors.As(err, &te):
		s.log.Debug().Str("remote", r.RemoteAddr).Str("user", user[:min(len(user), 200)]).Err(err).Msg("http: request refused")
		w.Header().Set("Retry-After", strconv.Itoa(int((te.RetryAfter+time.Second-1)/time.Second)))
		writeError(w, http.StatusTooManyRequests, fmt.Sprintf("too many failed logins from %s: try again in %s", te.Host, te.RetryAfter.Round(time.Second)), "")
		return broker.Principal{}, false
	}
	reason := "wrong username or password"
	if !hasUser || user == "" {
		// A browser's first request, before it asks for a password: not
		// worth a warning.
		reason = "credentials required (HTTP Basic, a user of the password file)"
		s.log.Debug().Str("remote", r.RemoteAddr).Str("path", r.URL.EscapedPath()).Msg("http: " + reason)
	} else {
		s.log.Warn().Str("remote", r.RemoteAddr).Str("user", user[:min(len(user), 200)]).Str("path", r.URL.EscapedPath()).Msg("http: authentication failed")
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="mote", charset="UTF-8"`)
	writeError(w, http.StatusUnauthorized, reason, "")
	return broker.Principal{}, false
}

// hostAllowed answers 403 and reports false when r, made as p, may not
// be served under its Host (Broker.HostAllowed: a caller that proves no
// user must name the broker by an address, a loopback name or a host of
// allowed_origins, against DNS rebinding).
func (s *Server) hostAllowed(w http.ResponseWriter, r *http.Request, p broker.Principal) bool {
	if s.b.HostAllowed(r, s.b.HasUsers() && p.User != "") {
		return true
	}
	s.log.Debug().Str("remote", r.RemoteAddr).Str("host", r.Host[:min(len(r.Host), 200)]).Msg("http: anonymous request under a host name refused")
	writeError(w, http.StatusForbidden, fmt.Sprintf("host %.100q is not served to a browser (an Origin, Sec-Fetch-* or Mozilla/ User-Agent header) without credentials: name the broker by an IP address or localhost, list its origin (http://%.100s) in allowed_origins, or log in (DNS rebinding)", r.Host, r.Host), "")
	return false
}

// health answers /healthz.
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := s.opts.Health(r.Context()); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, err)
		return
	}
	fmt.Fprintln(w, "ok")
}

// loopHealth is the default health check: the message loop answers a
// barrier in time.
func (s *Server) loopHealth(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.HealthTimeout)
	defer cancel()
	if err := s.b.Sync(ctx); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("the message loop did not answer within %s", s.opts.HealthTimeout)
		}
		return fmt.Errorf("the message loop is stopped: %w", err)
	}
	return nil
}

// noWeb is the page served when the web view is not built in.
func noWeb(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprint(w, `<!doctype html><meta charset="utf-8"><title>Mote</title>
<p>This Mote broker has no web view built in.
<p>Its HTTP API is here: <code>GET /api/tree/&lt;filter&gt;</code> (try <a href="/api/tree/%23">/api/tree/%23</a>),
<code>/metrics</code>, <code>/healthz</code>.
`)
}

// isLoopback reports whether a listener's address is on loopback.
func isLoopback(a net.Addr) bool {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.IsLoopback()
	}
	host, _, err := net.SplitHostPort(a.String())
	ip := net.ParseIP(host)
	return err == nil && ip != nil && ip.IsLoopback()
}

// logWriter turns net/http's own log lines (TLS handshake errors, panics)
// into debug log entries.
type logWriter struct{ log zerolog.Logger }

func (l logWriter) Write(p []byte) (int, error) {
	l.log.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
