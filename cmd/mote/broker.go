package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/httpapi"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/web"
)

// config is the YAML file of `mote broker --config`; flags override it.
type config struct {
	Listeners struct {
		TCP    string `yaml:"tcp"`
		WS     string `yaml:"ws"`
		WSPath string `yaml:"ws_path"`
		TLS    string `yaml:"tls"`
		WSS    string `yaml:"wss"`
		HTTP   string `yaml:"http"`  // the HTTP API and web view (SPEC §10)
		HTTPS  string `yaml:"https"` // the same over TLS (cert, key)
		// Original speaks the original Mote broker's dialect (SPEC §7).
		Original string `yaml:"original"`
		// OriginalWS is the same over WebSocket, path /mote/ (mote-native).
		OriginalWS string `yaml:"original_ws"`
	} `yaml:"listeners"`
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	Data     string `yaml:"data"`
	LogLevel string `yaml:"log_level"`
	Limits   struct {
		MaxPayload int `yaml:"max_payload"`
		MaxRows    int `yaml:"max_rows"`
		MaxDepth   int `yaml:"max_depth"`
		MaxNodes   int `yaml:"max_nodes"`
	} `yaml:"limits"`
	MaxPacketSize             uint32        `yaml:"max_packet_size"`
	MaxTopicLength            int           `yaml:"max_topic_length"`
	MaxTopicLevels            int           `yaml:"max_topic_levels"`
	MaxUserProperties         int           `yaml:"max_user_properties"`
	MaxUserPropertyBytes      int           `yaml:"max_user_property_bytes"`
	QueueBytes                int           `yaml:"queue_bytes"`
	MaxSnapshotBytes          int64         `yaml:"max_snapshot_bytes"`
	PublishWait               time.Duration `yaml:"publish_wait"`
	MaxClients                int64         `yaml:"max_clients"`
	MaxInflight               uint16        `yaml:"max_inflight"`
	MaxKeepAlive              uint16        `yaml:"max_keepalive"`
	ConnectTimeout            time.Duration `yaml:"connect_timeout"`
	MaxConnectSize            int           `yaml:"max_connect_size"`
	GuessLimit                int           `yaml:"guess_limit"`
	GuessWindow               time.Duration `yaml:"guess_window"`
	MaxSubscriptions          int           `yaml:"max_subscriptions"`
	MaxOfflineBytes           int           `yaml:"max_offline_bytes"`
	MaxSessions               int           `yaml:"max_sessions"`
	MaxSubscriptionsPerPacket int           `yaml:"max_subscriptions_per_packet"`
	ClientIDTakeover          string        `yaml:"client_id_takeover"`
	AllowedOrigins            []string      `yaml:"allowed_origins"`
	SlowClient                string        `yaml:"slow_client"`
	SyncRetain                bool          `yaml:"sync_retain"`
	PasswordFile              string        `yaml:"password_file"`
	ACLFile                   string        `yaml:"acl_file"`
	// RefusalLog bounds the log lines of refused requests
	// (broker.Options.RefusalLog); zero values are the defaults.
	RefusalLog struct {
		PerClient int           `yaml:"per_client"`
		Total     int           `yaml:"total"`
		Interval  time.Duration `yaml:"interval"`
	} `yaml:"refusal_log"`
	// HTTP bounds the HTTP API's use of the machine (docs/http.md); zero
	// values are httpapi's defaults.
	HTTP struct {
		MaxBody           int64 `yaml:"max_body"`
		MaxStreams        int   `yaml:"max_streams"`
		MaxStreamsPerUser int   `yaml:"max_streams_per_user"`
		MaxAnswerBytes    int64 `yaml:"max_answer_bytes"`
		MaxStreamBacklog  int64 `yaml:"max_stream_backlog"`
		MaxStreamsBacklog int64 `yaml:"max_streams_backlog"`
		MaxConns          int   `yaml:"max_conns"`
		MaxConnsPerHost   int   `yaml:"max_conns_per_host"`
	} `yaml:"http"`
	Cluster   clusterConfig `yaml:"cluster"`
	AllowAnon bool          `yaml:"allow_anonymous"`
	Retain    struct {
		Interval   time.Duration `yaml:"interval"`
		MaxBatch   int           `yaml:"max_batch"`
		MaxPending int           `yaml:"max_pending"`
	} `yaml:"retain"`
	// ResumeWindow is how many revisions deletion markers are kept for
	// (SPEC §8); History names the rows that keep past values (SPEC §9).
	ResumeWindow *int64 `yaml:"resume_window"`
	History      []struct {
		Filter string        `yaml:"filter"`
		Keep   *int          `yaml:"keep"`
		MaxAge time.Duration `yaml:"max_age"`
	} `yaml:"history"`
	// Translate keeps topic hierarchies in step (SPEC §11; translate.go).
	Translate []translateRule `yaml:"translate"`
}

// retainOptions are the retainer's options from the configuration; a bad
// value is an error naming its key.
func (c config) retainOptions() (retain.Options, error) {
	o := retain.Options{Interval: c.Retain.Interval, MaxBatch: c.Retain.MaxBatch, MaxPending: c.Retain.MaxPending}
	if w := c.ResumeWindow; w != nil {
		if *w < 1 {
			return o, fmt.Errorf("resume_window %d: want at least 1", *w)
		}
		o.ResumeWindow = uint64(*w)
	}
	for i, h := range c.History {
		if h.Keep == nil {
			return o, fmt.Errorf("history[%d] (%q): keep is missing", i, h.Filter)
		}
		r := retain.HistoryRule{Filter: h.Filter, Keep: *h.Keep, MaxAge: h.MaxAge}
		if err := r.Validate(); err != nil {
			return o, fmt.Errorf("history[%d]: %w", i, err)
		}
		o.History = append(o.History, r)
	}
	return o, nil
}

func loadConfig(path string) (config, error) {
	var c config
	if path == "" {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	dec := yaml.NewDecoder(bytesReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && err != io.EOF {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	h := c.HTTP
	for _, v := range []struct {
		key string
		n   int64
	}{{"max_body", h.MaxBody}, {"max_streams", int64(h.MaxStreams)}, {"max_streams_per_user", int64(h.MaxStreamsPerUser)},
		{"max_answer_bytes", h.MaxAnswerBytes}, {"max_stream_backlog", h.MaxStreamBacklog}, {"max_streams_backlog", h.MaxStreamsBacklog}, {"max_conns", int64(h.MaxConns)}, {"max_conns_per_host", int64(h.MaxConnsPerHost)}} {
		if v.n < 0 {
			return c, fmt.Errorf("config %s: http.%s %d: at least 1 (or left out for the default)", path, v.key, v.n)
		}
	}
	return c, nil
}

// offNone reads "off" as no listener, for listeners that are off by
// default.
func offNone(addr string) string {
	if addr == "off" {
		return ""
	}
	return addr
}

func runBroker(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("mote broker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tcp := fs.String("tcp", "", "TCP listener address, or off (default "+broker.DefaultTCP+")")
	ws := fs.String("ws", "", "WebSocket listener address, or off (default "+broker.DefaultWS+", path /mqtt)")
	httpAddr := fs.String("http", "", "HTTP API and web view address, or off (default "+httpapi.DefaultAddr+")")
	httpsAddr := fs.String("https", "", "HTTP API and web view over TLS (e.g. :8443); needs --cert and --key; default none")
	data := fs.String("data", "", "data directory (default ./data); off: retained rows in memory only, lost at exit")
	cfgPath := fs.String("config", "", "YAML config file; flags override it")
	level := fs.String("log-level", "", "debug, info, warn or error (default info)")
	syncRetain := fs.Bool("sync-retain", false, "ack QoS 1/2 publishes of retained rows only after their commit")
	tlsAddr := fs.String("tls", "", "MQTT over TLS listener address (e.g. :8883); needs --cert and --key")
	wssAddr := fs.String("wss", "", "WebSocket over TLS listener address; needs --cert and --key")
	origAddr := fs.String("original", "", "TCP listener speaking the original Mote broker's dialect (e.g. :1993; docs/protocol.md); default none")
	origWSAddr := fs.String("original-ws", "", "WebSocket listener (path /mote/) speaking the original Mote broker's dialect, as its app mote-native connects (e.g. :53535); default none")
	certFile := fs.String("cert", "", "TLS certificate (PEM)")
	keyFile := fs.String("key", "", "TLS private key (PEM)")
	pwFile := fs.String("password-file", "", "Mosquitto password file (see mote passwd)")
	aclFile := fs.String("acl-file", "", "Mosquitto ACL file")
	anon := fs.Bool("allow-anonymous", false, "accept clients without a username (without a password file the broker otherwise listens on loopback only)")
	pprofAddr := fs.String("pprof", "", "serve Go profiles (/debug/pprof/) on this address, loopback unless a host is given (default: off)")
	maxKeepAlive := fs.Uint("max-keepalive", 0, "largest keep-alive a client may use, in seconds (MQTT 5 clients are told; 0: no cap)")
	clf := addClusterFlags(fs)
	var origins stringList
	fs.Var(&origins, "allowed-origin", "a web origin (scheme://host[:port]) whose pages may open a WebSocket or use the HTTP API (repeatable; * for any; default: the broker's own origin)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mote broker: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	pick := func(flagVal, fileVal, def string) string {
		if flagVal != "" {
			return flagVal
		}
		if fileVal != "" {
			return fileVal
		}
		return def
	}
	log, err := newLogger(stderr, pick(*level, cfg.LogLevel, "info"))
	if err != nil {
		return err
	}
	if *pprofAddr != "" {
		_, stop, err := servePprof(*pprofAddr, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	// The password file, the ACL file, the history rules, the translators
	// and the TLS certificate are read here at start and again on SIGHUP (reload.go).
	tlsL, wssL := pick(*tlsAddr, cfg.Listeners.TLS, ""), pick(*wssAddr, cfg.Listeners.WSS, "")
	httpsL := offNone(pick(*httpsAddr, cfg.Listeners.HTTPS, ""))
	rf := reloadFlags{pwFile: *pwFile, aclFile: *aclFile, certFile: *certFile, keyFile: *keyFile, anon: *anon, tls: tlsL != "" || wssL != "" || httpsL != ""}
	set, err := readSettings(cfg, *cfgPath, rf)
	if err != nil {
		return err
	}
	retainOpts, err := cfg.retainOptions() // checked by readSettings
	if err != nil {
		return err
	}
	dir := pick(*data, cfg.Data, "data")
	opts := broker.Options{
		Users:          set.reload.Users,
		ACL:            set.reload.ACL,
		Translators:    set.reload.Translators,
		AllowAnonymous: set.reload.AllowAnonymous,
		SyncRetain:     *syncRetain || cfg.SyncRetain,
		Retain:         retainOpts,
		TCP:            pick(*tcp, cfg.Listeners.TCP, ""),
		WS:             pick(*ws, cfg.Listeners.WS, ""),
		WSPath:         cfg.Listeners.WSPath,
		TLS:            tlsL,
		WSS:            wssL,
		Original:       offNone(pick(*origAddr, cfg.Listeners.Original, "")),
		OriginalWS:     offNone(pick(*origWSAddr, cfg.Listeners.OriginalWS, "")),
		TLSConfig:      set.reload.TLSConfig,
		MaxPacketSize:  cfg.MaxPacketSize,
		MaxTopicLen:    cfg.MaxTopicLength,
		MaxTopicLevels: cfg.MaxTopicLevels,
		QueueBytes:     cfg.QueueBytes,
		PublishWait:    cfg.PublishWait,
		MaxClients:     cfg.MaxClients,
		MaxInflight:    cfg.MaxInflight,
		MaxKeepAlive:   cfg.MaxKeepAlive,
		ConnectTimeout: cfg.ConnectTimeout,
		MaxConnectSize: cfg.MaxConnectSize,
		GuessLimit:     cfg.GuessLimit,
		GuessWindow:    cfg.GuessWindow,
		Takeover:       broker.TakeoverPolicy(cfg.ClientIDTakeover),
		AllowedOrigins: cfg.AllowedOrigins,
		SlowClient:     broker.SlowPolicy(cfg.SlowClient),
		Log:            log,

		MaxSubscriptions:          cfg.MaxSubscriptions,
		MaxOfflineBytes:           cfg.MaxOfflineBytes,
		MaxSnapshotBytes:          cfg.MaxSnapshotBytes,
		MaxSessions:               cfg.MaxSessions,
		MaxSubscriptionsPerPacket: cfg.MaxSubscriptionsPerPacket,
		MaxUserProperties:         cfg.MaxUserProperties,
		MaxUserPropertyBytes:      cfg.MaxUserPropertyBytes,
		RefusalLog:                broker.LogLimit(cfg.RefusalLog),
	}
	if *maxKeepAlive > 0 {
		if *maxKeepAlive > 65535 {
			return fmt.Errorf("--max-keepalive %d: at most 65535", *maxKeepAlive)
		}
		opts.MaxKeepAlive = uint16(*maxKeepAlive)
	}
	if len(origins) > 0 {
		opts.AllowedOrigins = origins
	}
	if l := cfg.Limits; l.MaxPayload != 0 || l.MaxRows != 0 || l.MaxDepth != 0 || l.MaxNodes != 0 {
		def := tree.DefaultLimits()
		opts.Limits = tree.Limits{MaxPayload: l.MaxPayload, MaxRows: l.MaxRows, MaxDepth: l.MaxDepth, MaxNodes: l.MaxNodes}
		if opts.Limits.MaxPayload == 0 {
			opts.Limits.MaxPayload = def.MaxPayload
		}
		if opts.Limits.MaxRows == 0 {
			opts.Limits.MaxRows = def.MaxRows
		}
		if opts.Limits.MaxDepth == 0 {
			opts.Limits.MaxDepth = def.MaxDepth
		}
	}
	cc := clf.merge(cfg.Cluster)
	if dir == "off" { // in memory only, as Mosquitto's default (persistence false)
		switch {
		case cc.Name != "":
			return errors.New("--data off: a cluster node keeps its copy of the rows in its data directory")
		case opts.SyncRetain:
			return errors.New("--data off: --sync-retain (sync_retain) waits for commits to a store; there is none")
		case len(opts.Retain.History) > 0:
			return errors.New("--data off: history (SPEC §9) is kept in the store; there is none")
		}
	}
	if cc.Name != "" {
		node, err := openCluster(ctx, cc, dir, &opts, log)
		if err != nil {
			return err
		}
		defer node.close() // after the broker's Close
	} else if dir != "off" {
		store, err := retain.Open(dir)
		if err != nil {
			return err
		}
		opts.Store = store
	}
	b, err := broker.New(opts)
	if err != nil {
		if opts.Store != nil {
			opts.Store.Close()
		}
		return err
	}
	// SIGHUP reloads (from before Start: it never kills the broker);
	// ctx ends the broker (SIGINT, SIGTERM). Reloads run here, one at a
	// time, and end with runBroker.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := b.Start(); err != nil {
		b.Close() //nolint:errcheck // Start's error says more
		return err
	}
	if opts.Store == nil {
		log.Warn().Msg("--data off: retained rows are kept in memory only and lost when the broker stops")
	} else {
		log.Info().Str("store", filepath.Join(dir, retain.FileName)).Bool("sync_retain", opts.SyncRetain).Msg("retained rows persisted")
	}
	api, served, err := serveHTTP(b, pick(*httpAddr, cfg.Listeners.HTTP, httpapi.DefaultAddr), httpsL, cfg, log)
	if err != nil {
		b.Close() //nolint:errcheck // the listener's error says more
		return err
	}
	for running := true; running; {
		select {
		case <-ctx.Done():
			log.Info().Msg("signal received; shutting down")
			running = false
		case err = <-served:
			log.Error().Err(err).Msg("the HTTP listener stopped; shutting down")
			running = false
		case <-hup:
			set = reloadBroker(b, log, *cfgPath, rf, set)
		}
	}
	start := time.Now()
	if api != nil {
		api.Close() //nolint:errcheck // its streams end either way
	}
	err = errors.Join(err, b.Close())
	log.Info().Dur("took", time.Since(start)).Msg("shutdown complete")
	return err
}

// serveHTTP starts the HTTP API and web view on addr ("off": none), and
// over TLS on tlsAddr ("": none), bound to loopback as the broker's
// listeners are when it serves loopback only. served reports an error if
// either stops serving before Close.
func serveHTTP(b *broker.Broker, addr, tlsAddr string, cfg config, log zerolog.Logger) (*httpapi.Server, <-chan error, error) {
	served := make(chan error, 2)
	if addr == "off" && tlsAddr == "" {
		return nil, served, nil
	}
	api := httpapi.New(b, httpapi.Options{
		Metrics: b.Metrics(),
		Health:  b.Health,
		Web:     web.Handler(web.Config{MQTT: b.WSHandler(), Login: b.HasUsers}), // the page follows reloads
		Log:     log.With().Str("component", "http").Logger(),

		MaxBody:           cfg.HTTP.MaxBody,
		MaxStreams:        cfg.HTTP.MaxStreams,
		MaxStreamsPerUser: cfg.HTTP.MaxStreamsPerUser,
		MaxAnswerBytes:    cfg.HTTP.MaxAnswerBytes,
		MaxStreamBacklog:  cfg.HTTP.MaxStreamBacklog,
		MaxStreamsBacklog: cfg.HTTP.MaxStreamsBacklog,
		MaxConns:          cfg.HTTP.MaxConns,
		MaxConnsPerHost:   cfg.HTTP.MaxConnsPerHost,
	})
	type listener struct {
		net.Listener
		secure bool
	}
	var ls []listener
	fail := func(err error) (*httpapi.Server, <-chan error, error) {
		for _, l := range ls {
			l.Close()
		}
		return nil, nil, err
	}
	if addr != "off" {
		l, err := api.Listen(addr)
		if err != nil {
			return fail(fmt.Errorf("HTTP listener (--http, listeners.http): %w", err))
		}
		ls = append(ls, listener{l, false})
	}
	conf := b.ServerTLS()
	if tlsAddr != "" {
		if conf == nil {
			return fail(errors.New("HTTPS listener (--https, listeners.https): needs a certificate (--cert and --key, or cert and key in the config)"))
		}
		l, err := api.Listen(tlsAddr)
		if err != nil {
			return fail(fmt.Errorf("HTTPS listener (--https, listeners.https): %w", err))
		}
		ls = append(ls, listener{l, true})
	}
	for _, l := range ls {
		go func() {
			var err error
			if l.secure {
				err = api.ServeTLS(l.Listener, conf)
			} else {
				err = api.Serve(l.Listener)
			}
			if err != nil {
				served <- err
			}
		}()
		kind := "http"
		if l.secure {
			kind = "https"
		}
		log.Info().Str(kind, l.Addr().String()).Msg("web view at " + webURL(l.Addr(), l.secure))
	}
	return api, served, nil
}

// webURL is how a person on this machine opens the web view served at a.
func webURL(a net.Addr, secure bool) string {
	scheme := "http://"
	if secure {
		scheme = "https://"
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return scheme + a.String() + "/"
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() || ip.IsLoopback() {
		host = "localhost"
	}
	return scheme + net.JoinHostPort(host, port) + "/"
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// newLogger logs to w: human-readable on a terminal, JSON lines otherwise.
func newLogger(w io.Writer, level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Logger{}, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			w = zerolog.ConsoleWriter{Out: f, TimeFormat: time.TimeOnly}
		}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}
