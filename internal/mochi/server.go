// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2022 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

// Package mqtt provides a high performance, fully compliant MQTT v5 broker server with v3.1.1 backward compatibility.
package mqtt

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/hooks/storage"
	"github.com/mote-mqtt/mote/internal/mochi/listeners"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/internal/mochi/system"

	"log/slog"
)

const (
	Version                       = "2.7.9" // the current server version.
	defaultSysTopicInterval int64 = 1       // the interval between $SYS topic publishes
	LocalListener                 = "local"
	InlineClientId                = "inline"
)

var (
	// Deprecated: Use NewDefaultServerCapabilities to avoid data race issue.
	DefaultServerCapabilities = NewDefaultServerCapabilities()

	ErrListenerIDExists       = errors.New("listener id already exists")                               // a listener with the same id already exists
	ErrConnectionClosed       = errors.New("connection not open")                                      // connection is closed
	ErrInlineClientNotEnabled = errors.New("please set Options.InlineClient=true to use this feature") // inline client is not enabled by default
	ErrOptionsUnreadable      = errors.New("unable to read options from bytes")
)

// Capabilities indicates the capabilities and features provided by the server.
type Capabilities struct {
	MaximumClients               int64           `yaml:"maximum_clients" json:"maximum_clients"`                                 // maximum number of connected clients
	MaximumMessageExpiryInterval int64           `yaml:"maximum_message_expiry_interval" json:"maximum_message_expiry_interval"` // maximum message expiry if message expiry is 0 or over
	MaximumClientWritesPending   int32           `yaml:"maximum_client_writes_pending" json:"maximum_client_writes_pending"`     // maximum number of pending message writes for a client
	MaximumSessionExpiryInterval uint32          `yaml:"maximum_session_expiry_interval" json:"maximum_session_expiry_interval"` // maximum number of seconds to keep disconnected sessions
	MaximumPacketSize            uint32          `yaml:"maximum_packet_size" json:"maximum_packet_size"`                         // maximum packet size, no limit if 0
	MaximumUserProperties        int             `yaml:"maximum_user_properties" json:"maximum_user_properties"`                 // mote change 68: user properties a packet may carry, no limit if 0
	MaximumUserPropertyBytes     int             `yaml:"maximum_user_property_bytes" json:"maximum_user_property_bytes"`         // mote change 68: their bytes as sent, no limit if 0
	maximumPacketID              uint32          // unexported, used for testing only
	ReceiveMaximum               uint16          `yaml:"receive_maximum" json:"receive_maximum"`                   // maximum number of concurrent qos messages per client
	MaximumInflight              uint16          `yaml:"maximum_inflight" json:"maximum_inflight"`                 // maximum number of qos > 0 messages can be stored, 0(=8192)-65535
	TopicAliasMaximum            uint16          `yaml:"topic_alias_maximum" json:"topic_alias_maximum"`           // maximum topic alias value
	SharedSubAvailable           byte            `yaml:"shared_sub_available" json:"shared_sub_available"`         // support of shared subscriptions
	MinimumProtocolVersion       byte            `yaml:"minimum_protocol_version" json:"minimum_protocol_version"` // minimum supported mqtt version
	Compatibilities              Compatibilities `yaml:"compatibilities" json:"compatibilities"`                   // version compatibilities the server provides
	MaximumQos                   byte            `yaml:"maximum_qos" json:"maximum_qos"`                           // maximum qos value available to clients
	RetainAvailable              byte            `yaml:"retain_available" json:"retain_available"`                 // support of retain messages
	WildcardSubAvailable         byte            `yaml:"wildcard_sub_available" json:"wildcard_sub_available"`     // support of wildcard subscriptions
	SubIDAvailable               byte            `yaml:"sub_id_available" json:"sub_id_available"`                 // support of subscription identifiers
}

// NewDefaultServerCapabilities defines the default features and capabilities provided by the server.
func NewDefaultServerCapabilities() *Capabilities {
	return &Capabilities{
		MaximumClients:               math.MaxInt64,  // maximum number of connected clients
		MaximumMessageExpiryInterval: 60 * 60 * 24,   // maximum message expiry if message expiry is 0 or over
		MaximumClientWritesPending:   1024 * 8,       // maximum number of pending message writes for a client
		MaximumSessionExpiryInterval: math.MaxUint32, // maximum number of seconds to keep disconnected sessions
		MaximumPacketSize:            0,              // no maximum packet size
		maximumPacketID:              math.MaxUint16,
		ReceiveMaximum:               1024,           // maximum number of concurrent qos messages per client
		MaximumInflight:              1024 * 8,       // maximum number of qos > 0 messages can be stored
		TopicAliasMaximum:            math.MaxUint16, // maximum topic alias value
		SharedSubAvailable:           1,              // shared subscriptions are available
		MinimumProtocolVersion:       3,              // minimum supported mqtt version (3.0.0)
		MaximumQos:                   2,              // maximum qos value available to clients
		RetainAvailable:              1,              // retain messages is available
		WildcardSubAvailable:         1,              // wildcard subscriptions are available
		SubIDAvailable:               1,              // subscription identifiers are available
	}
}

// Compatibilities provides flags for using compatibility modes.
type Compatibilities struct {
	ObscureNotAuthorized       bool `yaml:"obscure_not_authorized" json:"obscure_not_authorized"`                 // return unspecified errors instead of not authorized
	PassiveClientDisconnect    bool `yaml:"passive_client_disconnect" json:"passive_client_disconnect"`           // don't disconnect the client forcefully after sending disconnect packet (paho - spec violation)
	AlwaysReturnResponseInfo   bool `yaml:"always_return_response_info" json:"always_return_response_info"`       // always return response info (useful for testing)
	RestoreSysInfoOnRestart    bool `yaml:"restore_sys_info_on_restart" json:"restore_sys_info_on_restart"`       // restore system info from store as if server never stopped
	NoInheritedPropertiesOnAck bool `yaml:"no_inherited_properties_on_ack" json:"no_inherited_properties_on_ack"` // don't allow inherited user properties on ack (paho - spec violation)
}

// Options contains configurable options for the server.
type Options struct {
	// Listeners specifies any listeners which should be dynamically added on serve. Used when setting listeners by config.
	Listeners []listeners.Config `yaml:"listeners" json:"listeners"`

	// Hooks specifies any hooks which should be dynamically added on serve. Used when setting hooks by config.
	Hooks []HookLoadConfig `yaml:"hooks" json:"hooks"`

	// Capabilities defines the server features and behaviour. If you only wish to modify
	// several of these values, set them explicitly - e.g.
	// 	server.Options.Capabilities.MaximumClientWritesPending = 16 * 1024
	Capabilities *Capabilities `yaml:"capabilities" json:"capabilities"`

	// ClientNetWriteBufferSize specifies the size of the client *bufio.Writer write buffer.
	ClientNetWriteBufferSize int `yaml:"client_net_write_buffer_size" json:"client_net_write_buffer_size"`

	// ClientNetReadBufferSize specifies the size of the client *bufio.Reader read buffer.
	ClientNetReadBufferSize int `yaml:"client_net_read_buffer_size" json:"client_net_read_buffer_size"`

	// Logger specifies a custom configured implementation of log/slog to override
	// the servers default logger configuration. If you wish to change the log level,
	// of the default logger, you can do so by setting:
	// server := mqtt.New(nil)
	// level := new(slog.LevelVar)
	// server.Slog = slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
	// 	Level: level,
	// }))
	// level.Set(slog.LevelDebug)
	Logger *slog.Logger `yaml:"-" json:"-"`

	// SysTopicResendInterval specifies the interval between $SYS topic updates in seconds.
	SysTopicResendInterval int64 `yaml:"sys_topic_resend_interval" json:"sys_topic_resend_interval"`

	// Enable Inline client to allow direct subscribing and publishing from the parent codebase,
	// with negligible performance difference (disabled by default to prevent confusion in statistics).
	InlineClient bool `yaml:"inline_client" json:"inline_client"`

	// mote: TakeoverCheck, if set, decides whether cl, whose CONNECT is
	// establishing its session, takes its client id over from old, the
	// client filed for the id now (connected or not), and how (change
	// 24). It is called under the id's takeover lock, before
	// OnSessionEstablish: no other CONNECT of the id, and no removal of
	// its session, runs meanwhile, so old is the client a takeover would
	// cut off and copy. It must not block, nor take the id's lock
	// (RemoveSession).
	TakeoverCheck func(old, cl *Client, pk packets.Packet) Takeover `yaml:"-" json:"-"`

	// mote: LogRefusal, if set, is asked before each log line that one
	// packet of cl can cause (change 69): a packet refused for its User
	// Properties, a packet whose error ends the connection ("error
	// processing packet"), a CONNECT's keep-alive below the minimum; code
	// is the packet's reason code (CodeSuccess for a notice). The line is
	// written only if it answers true, so a client looping refused packets
	// writes what the caller allows, not a line each. It must not block.
	LogRefusal func(cl *Client, code packets.Code) bool `yaml:"-" json:"-"`

	// mote: CreatedOnDemand, if set, has processPublish read the clock for
	// a PUBLISH's Created time before OnPublish only when it has an
	// expiry, its own or the server's MaximumMessageExpiryInterval
	// (Expiry is counted from it; Mote's maximum is 0); otherwise after
	// OnPublish, and
	// only for a packet that goes on to be retained or delivered (not
	// Ignore). OnPublish hooks then see Created 0 for a message without
	// an expiry, and OnPublished hooks for one a hook ignored (change 44:
	// Mote's hook reads neither, and the clock was ~47 ns a publish).
	CreatedOnDemand bool `yaml:"-" json:"-"`
}

// Server is an MQTT broker server. It should be created with server.New()
// in order to ensure all the internal fields are correctly populated.
type Server struct {
	Options      *Options             // configurable server options
	Listeners    *listeners.Listeners // listeners are network interfaces which listen for new connections
	Clients      *Clients             // clients known to the broker
	Topics       *TopicsIndex         // an index of topic filter subscriptions and retained messages
	Info         *system.Info         // values about the server commonly known as $SYS topics
	loop         *loop                // loop contains tickers for the system event loop
	done         chan bool            // indicate that the server is ending
	loopDone     chan struct{}        // mote: closed once the event loop Serve started has returned; nil: none started (change 81)
	Log          *slog.Logger         // minimal no-alloc logger
	hooks        *Hooks               // hooks contains hooks for extra functionality such as auth and persistent storage
	inlineClient *Client              // inlineClient is a special client used for inline subscriptions and inline Publish
	takeovers    idLocks              // mote: one CONNECT at a time takes its client id over and files itself (inheritClientSession, Clients.Add)
	packetPool   packetPool           // mote: the packets the clients' read loops decode into (change 25)
	clientOps    atomic.Pointer[ops]  // mote: the ops NewClient's clients share while the server's fields stay as they were (clientOpsOf, change 78)
}

// loop contains interval tickers for the system events loop.
type loop struct {
	sysTopics      *time.Ticker     // interval ticker for sending updating $SYS topics
	clientExpiry   *time.Ticker     // interval ticker for cleaning expired clients
	inflightExpiry *time.Ticker     // interval ticker for cleaning up expired inflight messages
	retainedExpiry *time.Ticker     // interval ticker for cleaning retained messages
	willDelaySend  *time.Ticker     // interval ticker for sending Will Messages with a delay
	willDelayed    *packets.Packets // activate LWT packets which will be sent after a delay
	willOwners     sync.Map         // mote: client id → the *Client whose will waits in willDelayed (change 50)
}

// ops contains server values which can be propagated to other structs.
type ops struct {
	options *Options     // a pointer to the server options and capabilities, for referencing in clients
	info    *system.Info // pointers to server system info
	hooks   *Hooks       // pointer to the server hooks
	log     *slog.Logger // a structured logger for the client
	pool    *packetPool  // mote: the server's packetPool (change 25); nil allocates
}

// New returns a new instance of mochi mqtt broker. Optional parameters
// can be specified to override some default settings (see Options).
func New(opts *Options) *Server {
	if opts == nil {
		opts = new(Options)
	}

	opts.ensureDefaults()

	s := &Server{
		done:      make(chan bool),
		Clients:   NewClients(),
		Topics:    NewTopicsIndex(),
		Listeners: listeners.New(),
		loop: &loop{
			sysTopics:      time.NewTicker(time.Second * time.Duration(opts.SysTopicResendInterval)),
			clientExpiry:   time.NewTicker(time.Second),
			inflightExpiry: time.NewTicker(time.Second),
			retainedExpiry: time.NewTicker(time.Second),
			willDelaySend:  time.NewTicker(time.Second),
			willDelayed:    packets.NewPackets(),
		},
		Options: opts,
		Info: &system.Info{
			Version: Version,
			Started: time.Now().Unix(),
		},
		Log: opts.Logger,
		hooks: &Hooks{
			Log: opts.Logger,
		},
	}

	if s.Options.InlineClient {
		s.inlineClient = s.NewClient(nil, LocalListener, InlineClientId, true)
		s.Clients.Add(s.inlineClient)
	}

	return s
}

// ensureDefaults ensures that the server starts with sane default values, if none are provided.
func (o *Options) ensureDefaults() {
	if o.Capabilities == nil {
		o.Capabilities = NewDefaultServerCapabilities()
	}

	o.Capabilities.maximumPacketID = math.MaxUint16 // spec maximum is 65535

	if o.Capabilities.MaximumInflight == 0 {
		o.Capabilities.MaximumInflight = 1024 * 8
	}

	if o.SysTopicResendInterval == 0 {
		o.SysTopicResendInterval = defaultSysTopicInterval
	}

	if o.ClientNetWriteBufferSize == 0 {
		o.ClientNetWriteBufferSize = 1024 * 2
	}

	if o.ClientNetReadBufferSize == 0 {
		o.ClientNetReadBufferSize = 1024 * 2
	}

	if o.Logger == nil {
		log := slog.New(slog.NewTextHandler(os.Stdout, nil))
		o.Logger = log
	}
}

// mote: clientOpsOf is the ops of a new client: one for every client
// made while the server's options, info, hooks and logger stay the
// fields they were, a new one once one of them is changed. Upstream made
// one for each client (48 bytes a connection). Change 78.
func (s *Server) clientOpsOf() *ops {
	o := s.clientOps.Load()
	if o == nil || o.options != s.Options || o.info != s.Info || o.hooks != s.hooks || o.log != s.Log {
		o = &ops{
			options: s.Options,
			info:    s.Info,
			hooks:   s.hooks,
			log:     s.Log,
			pool:    &s.packetPool, // mote: change 25
		}
		s.clientOps.Store(o)
	}
	return o
}

// NewClient returns a new Client instance, populated with all the required values and
// references to be used with the server. If you are using this client to directly publish
// messages from the embedding application, set the inline flag to true to bypass ACL and
// topic validation checks.
func (s *Server) NewClient(c net.Conn, listener string, id string, inline bool) *Client {
	cl := newClient(c, s.clientOpsOf()) // [MQTT-3.1.2-6] implicit

	cl.ID = id
	cl.Net.Listener = listener

	if inline { // inline clients bypass acl and some validity checks.
		cl.Net.Inline = true
		// By default, we don't want to restrict developer publishes,
		// but if you do, reset this after creating inline client.
		cl.State.Inflight.ResetReceiveQuota(math.MaxInt32)
	}

	return cl
}

// AddHook attaches a new Hook to the server. Ideally, this should be called
// before the server is started with s.Serve().
func (s *Server) AddHook(hook Hook, config any) error {
	nl := s.Log.With("hook", hook.ID())
	hook.SetOpts(nl, &HookOptions{
		Capabilities: s.Options.Capabilities,
	})

	s.Log.Info("added hook", "hook", hook.ID())
	return s.hooks.Add(hook, config)
}

// AddHooksFromConfig adds hooks to the server which were specified in the hooks config (usually from a config file).
// New built-in hooks should be added to this list.
func (s *Server) AddHooksFromConfig(hooks []HookLoadConfig) error {
	for _, h := range hooks {
		if err := s.AddHook(h.Hook, h.Config); err != nil {
			return err
		}
	}
	return nil
}

// AddListener adds a new network listener to the server, for receiving incoming client connections.
func (s *Server) AddListener(l listeners.Listener) error {
	if _, ok := s.Listeners.Get(l.ID()); ok {
		return ErrListenerIDExists
	}

	nl := s.Log.With(slog.String("listener", l.ID()))
	err := l.Init(nl)
	if err != nil {
		return err
	}

	s.Listeners.Add(l)

	s.Log.Info("attached listener", "id", l.ID(), "protocol", l.Protocol(), "address", l.Address())
	return nil
}

// AddListenersFromConfig adds listeners to the server which were specified in the listeners config (usually from a config file).
// New built-in listeners should be added to this list.
func (s *Server) AddListenersFromConfig(configs []listeners.Config) error {
	for _, conf := range configs {
		var l listeners.Listener
		switch strings.ToLower(conf.Type) {
		case listeners.TypeTCP:
			l = listeners.NewTCP(conf)
		case listeners.TypeWS:
			l = listeners.NewWebsocket(conf)
		case listeners.TypeUnix:
			l = listeners.NewUnixSock(conf)
		case listeners.TypeHealthCheck:
			l = listeners.NewHTTPHealthCheck(conf)
		case listeners.TypeSysInfo:
			l = listeners.NewHTTPStats(conf, s.Info)
		case listeners.TypeMock:
			l = listeners.NewMockListener(conf.ID, conf.Address)
		default:
			s.Log.Error("listener type unavailable by config", "listener", conf.Type)
			continue
		}
		if err := s.AddListener(l); err != nil {
			return err
		}
	}
	return nil
}

// Serve starts the event loops responsible for establishing client connections
// on all attached listeners, publishing the system topics, and starting all hooks.
func (s *Server) Serve() error {
	s.Log.Info("mochi mqtt starting", "version", Version)
	defer s.Log.Info("mochi mqtt server started")

	if len(s.Options.Listeners) > 0 {
		err := s.AddListenersFromConfig(s.Options.Listeners)
		if err != nil {
			return err
		}
	}

	if len(s.Options.Hooks) > 0 {
		err := s.AddHooksFromConfig(s.Options.Hooks)
		if err != nil {
			return err
		}
	}

	if s.hooks.Provides(
		StoredClients,
		StoredInflightMessages,
		StoredRetainedMessages,
		StoredSubscriptions,
		StoredSysInfo,
	) {
		err := s.readStore()
		if err != nil {
			return err
		}
	}

	loopDone := make(chan struct{})
	s.loopDone = loopDone
	go func() { s.eventLoop(); close(loopDone) }() // spin up event loop for issuing $SYS values and closing server.
	s.Listeners.ServeAll(s.EstablishConnection)    // start listening on all listeners.
	s.publishSysTopics()                           // begin publishing $SYS system values.
	s.hooks.OnStarted()

	return nil
}

// eventLoop loops forever, running various server housekeeping methods at different intervals.
func (s *Server) eventLoop() {
	s.Log.Debug("system event loop started")
	defer s.Log.Debug("system event loop halted")

	var all []*Client // mote: the clients, scanned in turn (Clients.AppendAll, change 94)
	expire, inflights := s.expireClientsOf, s.clearExpiredInflightsOf
	for {
		select {
		case <-s.done:
			s.loop.sysTopics.Stop()
			return
		case <-s.loop.sysTopics.C:
			s.publishSysTopics()
		case <-s.loop.clientExpiry.C:
			all = s.scanClients(all, time.Now().Unix(), expire)
		case <-s.loop.retainedExpiry.C:
			s.clearExpiredRetainedMessages(time.Now().Unix())
		case <-s.loop.willDelaySend.C:
			s.sendDelayedLWT(time.Now().Unix())
		case <-s.loop.inflightExpiry.C:
			all = s.scanClients(all, time.Now().Unix(), inflights)
		}
	}
}

// mote: scanClients runs scan over the clients filed now, taken into
// all (Clients.AppendAll), and returns all for the next scan: cleared,
// so that it holds no client until then, and kept unless it is mostly
// unused (a burst of clients long gone does not stay in it) (change 94).
func (s *Server) scanClients(all []*Client, now int64, scan func([]*Client, int64)) []*Client {
	all = s.Clients.AppendAll(all[:0])
	scan(all, now)
	clear(all)
	if cap(all) > 1024 && cap(all) > 4*len(all) {
		return nil
	}
	return all[:0]
}

// EstablishConnection establishes a new client when a listener accepts a new connection.
func (s *Server) EstablishConnection(listener string, c net.Conn) error {
	cl := s.NewClient(c, listener, "", false)
	return s.attachClient(cl, listener)
}

// mote: EstablishSession is EstablishConnection in two halves. It reads the
// CONNECT and establishes the session, up to and including
// OnSessionEstablished, and returns serve, which reads the client's packets
// until the connection ends and then does what EstablishConnection does
// after its read loop (the will, OnDisconnect, expiry, stopping the client);
// serve returns EstablishConnection's error. The caller must call serve
// exactly once, on any goroutine: until then the client counts as
// connected and the listeners' ClientsWg waits for it. On error serve is
// nil and the connection is already stopped.
//
// Mote calls serve on a fresh goroutine started from a shallow frame, so
// the stack the CONNECT path grew (mochi's CONNECT handling is about 11 KB
// deep before Mote's hooks run) is freed when the accepting goroutine
// returns, and the parked reader keeps a small one.
func (s *Server) EstablishSession(listener string, c net.Conn) (serve func() error, err error) {
	cl := s.NewClient(c, listener, "", false)
	return s.establishClient(cl, listener)
}

// attachClient validates an incoming client connection and if viable, attaches the client
// to the server, performs session housekeeping, and reads incoming packets.
func (s *Server) attachClient(cl *Client, listener string) error {
	serve, err := s.establishClient(cl, listener) // mote: split in two (EstablishSession)
	if err != nil {
		return err
	}
	return serve()
}

// mote: establishClient is attachClient up to OnSessionEstablished, and
// serveClient the rest; the deferred calls of attachClient are made by
// serveClient once the session is served, or here when the connection
// fails (or panics) before that.
func (s *Server) establishClient(cl *Client, listener string) (serve func() error, err error) {
	s.Listeners.ClientsWg.Add(1)
	connected := false
	defer func() {
		if serve != nil {
			return
		}
		if connected {
			atomic.AddInt64(&s.Info.ClientsConnected, -1)
		}
		cl.Stop(nil)
		s.Listeners.ClientsWg.Done()
	}()

	cl.State.writeOnDemand = true // mote: no WriteLoop until a packet is queued (startWriteLoop)

	pk, err := s.readConnectionPacket(cl)
	if err != nil {
		s.refuseUndecoded(cl, pk.ProtocolVersion, err)
		return nil, fmt.Errorf("read connection: %w", err)
	}

	cl.ParseConnect(listener, pk)
	if atomic.LoadInt64(&s.Info.ClientsConnected) >= s.Options.Capabilities.MaximumClients {
		if cl.Properties.ProtocolVersion < 5 {
			s.SendConnack(cl, packets.ErrServerUnavailable, false, nil)
		} else {
			s.SendConnack(cl, packets.ErrServerBusy, false, nil)
		}

		return nil, packets.ErrServerBusy
	}

	code := s.validateConnect(cl, pk) // [MQTT-3.1.4-1] [MQTT-3.1.4-2]
	if code != packets.CodeSuccess {
		if connectUnanswered(cl.Properties.ProtocolVersion, code) {
			return nil, code // mote: [MQTT-3.1.4-1] closed without a CONNACK
		}
		if err := s.SendConnack(cl, code, false, nil); err != nil {
			return nil, fmt.Errorf("invalid connection send ack: %w", err)
		}
		return nil, code // [MQTT-3.2.2-7] [MQTT-3.1.4-6]
	}

	err = s.hooks.OnConnect(cl, pk)
	if err != nil {
		return nil, err
	}

	cl.refreshDeadline(cl.State.Keepalive)
	if !s.hooks.OnConnectAuthenticate(cl, pk) { // [MQTT-3.1.4-2]
		err := s.SendConnack(cl, packets.ErrBadUsernameOrPassword, false, nil)
		if err != nil {
			return nil, fmt.Errorf("invalid connection send ack: %w", err)
		}

		return nil, packets.ErrBadUsernameOrPassword
	}

	atomic.AddInt64(&s.Info.ClientsConnected, 1)
	connected = true // mote: serveClient (or the deferred call above) takes it back

	// mote: OnSessionEstablish, the takeover of the client id and the
	// filing of cl, one CONNECT of an id at a time: two that both found
	// the old client before either filed itself both took it over, and the
	// second filed replaced the first in s.Clients, which nobody
	// disconnected: it stayed connected under an id no longer its own
	// [MQTT-3.1.4-3]. Options.TakeoverCheck may refuse the takeover there
	// (change 24): cl is answered with its code and closed, filed nowhere.
	cl.State.setFlag(flagUnanswered) // mote: before it is filed; see disconnectTakenOver
	sessionPresent, refused := s.takeOverAndFile(pk, cl)
	if refused != nil {
		if err := s.SendConnack(cl, *refused, false, nil); err != nil {
			return nil, fmt.Errorf("refused takeover send ack: %w", err)
		}
		return nil, *refused
	}

	// mote: from here on the client is filed in s.Clients and holds the
	// session: a failure ends the session as the end of the read loop does
	// (endSession: the will, OnDisconnect, and a session that does not
	// outlive its connection unsubscribed and removed from s.Clients).
	// Upstream only stopped the client: a clean session whose CONNACK could
	// not be written (the client reset the connection meanwhile) stayed in
	// s.Clients, closed, for MaximumSessionExpiryInterval (136 years by
	// default), and hooks never saw its OnDisconnect.
	// Its write clears unanswered, under cl's lock (change 59).
	err = s.SendConnack(cl, code, sessionPresent, nil) // [MQTT-3.1.4-5] [MQTT-3.2.0-1] [MQTT-3.2.0-2] &[MQTT-3.14.0-1]
	if err != nil {
		err = fmt.Errorf("ack connection packet: %w", err)
		s.endSession(cl, listener, err)
		return nil, err
	}

	s.deleteDelayedWill(cl.ID) // [MQTT-3.1.3-9]

	if sessionPresent {
		// mote: a message held for the session whose Message Expiry
		// Interval passed is deleted before the resend, not sent: the
		// once-a-second sweep (clearExpiredInflights) may not have run
		// since it expired [MQTT-3.3.2-5] (change 65).
		cl.ClearExpiredInflights(time.Now().Unix(), s.Options.Capabilities.MaximumMessageExpiryInterval)
		err = cl.ResendInflightMessages(true)
		if err != nil {
			err = fmt.Errorf("resend inflight: %w", err)
			s.endSession(cl, listener, err)
			return nil, err
		}
	}

	s.hooks.OnSessionEstablished(cl, pk)

	// mote: a CONNECT read to its end leaves the reader holding nothing:
	// it is given up until the client is served (change 84), so that a
	// connection Mote puts to sleep from its CONNACK on holds none.
	cl.dropReader()

	// mote: the listener is read back from the client (ParseConnect set
	// it to listener, and nothing sets it after), so that the function,
	// kept by Mote for each connection asleep, holds two words, not four:
	// 24 bytes, not 48 (change 87).
	return func() error { return s.serveClient(cl, cl.Net.Listener) }, nil
}

// mote: serveClient is the second half of attachClient (establishClient):
// it reads the client's packets until the connection ends, then publishes
// the will, calls OnDisconnect and expires the session (endSession), as
// attachClient did, and makes attachClient's deferred calls in the same
// order (stopClient), on a panic too. Its frame is kept small, and the
// rest is in functions called after the read loop, so the read loop parks
// in a shallow stack: the garbage collector halves a goroutine's stack only
// when less than a quarter of it is in use.
//
// mote: a reader asleep between packets (ErrAsleep, change 75) returns
// ErrAsleep and leaves the session as it is: the connection is served
// again by another call, on another goroutine, once it has input.
func (s *Server) serveClient(cl *Client, listener string) (err error) {
	defer func() {
		if err != ErrAsleep { //nolint:errorlint // Read returns the sentinel itself
			s.stopClient(cl)
		}
	}()
	err = cl.Read(s.receivePacket)
	if err == ErrAsleep { //nolint:errorlint // as above
		return err
	}
	s.endSession(cl, listener, err)
	return err
}

// mote: stopClient makes attachClient's deferred calls, in its order.
func (s *Server) stopClient(cl *Client) {
	atomic.AddInt64(&s.Info.ClientsConnected, -1)
	cl.Stop(nil)
	s.Listeners.ClientsWg.Done()
}

// mote: endSession is what attachClient did after its read loop ended.
//
//go:noinline
func (s *Server) endSession(cl *Client, listener string, err error) {
	if err != nil {
		s.sendLWT(cl)
		cl.Stop(err)
	} else {
		cl.Properties.Will = nil // [MQTT-3.14.4-3] [MQTT-3.1.2-10] (mote: nil is none, change 83)
	}
	s.Log.Debug("client disconnected", "error", err, "client", LogString(cl.ID), "remote", cl.Net.Remote, "listener", listener)

	expire := cl.SessionEndsWithConnection()
	s.hooks.OnDisconnect(cl, err, expire)

	if expire {
		// mote: under the client id's takeover lock (change 14): a
		// takeover that came between the IsTakenOver check and the
		// Delete had its own client deleted from s.Clients (Delete is by
		// id), connected but filed nowhere: no later CONNECT of the id
		// would disconnect it.
		s.RemoveSession(cl) // [MQTT-4.1.0-2] ![MQTT-3.1.2-23]
	}
	s.clearTakenOverInflights(cl)
}

// mote: clearTakenOverInflights takes out of Info.Inflight what a client
// taken over put in flight after the takeover had cleared (or cloned and
// cleared) its in-flight messages: a QoS 2 PUBLISH read before the
// takeover, whose PUBREC its reader set in flight after it (change 55).
// No other client holds that entry, so it stayed counted for ever. Under
// the id's takeover lock: a takeover marks the client taken over and
// clears its messages under it, so what cl holds then is left over; cl's
// reader has ended, so nothing is set after.
func (s *Server) clearTakenOverInflights(cl *Client) {
	k := s.takeovers.lock(cl.ID)
	defer s.takeovers.unlock(cl.ID, k)
	if cl.IsTakenOver() {
		cl.ClearInflights()
	}
}

// mote: takeOverAndFile takes cl's client id over from the client that
// holds it (inheritClientSession) and files cl in s.Clients, under the
// id's takeover lock: one CONNECT of an id at a time (change 14). The lock
// is let go on a panic too (a hook's), or no CONNECT of the id would
// ever get past it.
//
// The client holding the id is asked about under the lock
// (Options.TakeoverCheck, change 24), before OnSessionEstablish: a
// decision taken before the lock (in OnConnect) could be about a client
// the id no longer has, and a client of another user filed meanwhile was
// cut off and its session copied to cl. A refusal (its code returned)
// leaves everything as it was: OnSessionEstablish is not called, the old
// client is not touched and cl is not filed.
func (s *Server) takeOverAndFile(pk packets.Packet, cl *Client) (sessionPresent bool, refused *packets.Code) {
	k := s.takeovers.lock(cl.ID)
	defer s.takeovers.unlock(cl.ID, k)
	fresh := false
	if old, ok := s.Clients.Get(cl.ID); ok && s.Options.TakeoverCheck != nil {
		d := s.Options.TakeoverCheck(old, cl, pk)
		if d.Refuse {
			return false, &d.Code
		}
		fresh = d.Fresh
	}
	if old, ok := s.Clients.Get(cl.ID); ok {
		old.claimSession() // mote: one answer for the takeover's hooks and inheritSession (change 53)
	}
	s.hooks.OnSessionEstablish(cl, pk)
	sessionPresent = s.inheritSession(pk, cl, fresh)
	s.Clients.Add(cl) // [MQTT-4.1.0-1]
	return sessionPresent, nil
}

// mote: Takeover is what Options.TakeoverCheck decides about a CONNECT
// taking a client id over (change 24).
type Takeover struct {
	// Fresh: the new client starts a session of its own, as with Clean
	// Start: the old session is ended (unsubscribed, its in-flight
	// messages dropped), nothing of it is copied.
	Fresh bool
	// Refuse: the CONNECT is answered with CONNACK Code (an MQTT 5 error
	// code, 0x80 or above, sent to a 3.1.1 client as V5CodesToV3 maps it)
	// and closed; the old client is not touched.
	Refuse bool
	Code   packets.Code
}

// mote: RemoveSession ends cl's session: its in-flight messages dropped,
// its subscriptions unfiled (UnsubscribeClient, OnUnsubscribed) and cl
// deleted from s.Clients, under the client id's takeover lock and only
// while cl is the client filed for its id and not taken over. It reports
// whether it did. Every removal of a session by its id goes through the
// lock and this check: s.Clients and the topic index are keyed by the id
// alone, so a removal racing with a takeover (which files the new client
// under the same id, with the same filters) deleted the new client's
// filing or its subscriptions: it stayed connected where no later CONNECT
// of its id would find it, or lost what it subscribed to. The session's
// end (endSession) and Mote's own removals (a panicked connection's end,
// another user's session dropped for a new one) call it.
func (s *Server) RemoveSession(cl *Client) bool {
	return s.RemoveSessionWith(cl, nil)
}

// mote: RemoveSessionWith is RemoveSession calling ending (if not nil)
// under the lock, once the checks passed, before the session is removed
// (change 61): what the caller keeps of the session goes with it, and a
// CONNECT of the id finds either all of it or none.
func (s *Server) RemoveSessionWith(cl *Client, ending func()) bool {
	return s.WhileFiled(cl, func() {
		if ending != nil {
			ending()
		}
		cl.ClearInflights()
		s.UnsubscribeClient(cl)
		s.Clients.Delete(cl.ID)
	})
}

// mote: WhileFiled runs fn under the client id's takeover lock if cl is
// the client filed for its id and not taken over, and reports whether it
// did (change 61): a CONNECT of the id comes wholly before fn (and fn is
// not run) or wholly after it. fn must not take the id's lock again
// (RemoveSession, a CONNECT's hooks).
func (s *Server) WhileFiled(cl *Client, fn func()) bool {
	k := s.takeovers.lock(cl.ID)
	defer s.takeovers.unlock(cl.ID, k)
	if cur, ok := s.Clients.Get(cl.ID); !ok || cur != cl || cl.IsTakenOver() {
		return false
	}
	fn()
	return true
}

// readConnectionPacket reads the first incoming header for a connection, and if
// acceptable, returns the valid connection packet.
// mote: an MQTT 5 CONNECT's Remaining Length is checked here, once its
// protocol level is known, as ReadFixedHeader checks later packets'.
func (s *Server) readConnectionPacket(cl *Client) (pk packets.Packet, err error) {
	fh := new(packets.FixedHeader)
	bu, err := cl.readFixedHeader(fh)
	if err != nil {
		return
	}

	if fh.Type != packets.Connect {
		return pk, packets.ErrProtocolViolationRequireFirstConnect // [MQTT-3.1.0-1]
	}

	pk, err = cl.ReadPacket(fh)
	if err == nil && pk.ProtocolVersion == 5 {
		err = packets.CheckMinimal("remaining length", fh.Remaining, bu)
	}
	return
}

// receivePacket processes an incoming packet for a client, and issues a disconnect to the client
// if an error has occurred (if mqtt v5).
// mote: pk by pointer (change 25).
func (s *Server) receivePacket(cl *Client, pk *packets.Packet) error {
	err := s.processPacket(cl, pk)
	if err != nil {
		if code, ok := err.(packets.Code); ok &&
			cl.Properties.ProtocolVersion == 5 &&
			code.Code >= packets.ErrUnspecifiedError.Code {
			_ = s.DisconnectClient(cl, code)
		}

		// mote: what identifies the packet, never its payload (change
		// 68); if Options.LogRefusal allows it (change 69)
		code, _ := err.(packets.Code)
		if cl.logRefusal(code) {
			s.Log.Warn("error processing packet", "error", err, "client", LogString(cl.ID), "listener", cl.Net.Listener, LogPacket(pk))
		}

		return err
	}

	return nil
}

// mote: connectUnanswered reports whether a CONNECT refused with code is
// closed without a CONNACK: an MQTT 3.1.1 CONNECT that does not conform to
// §3.1 (a Malformed Packet or Protocol Error in MQTT 5's terms), for which
// 3.1.1 has no return code [MQTT-3.1.4-1]. A protocol level 3.1.1 does not
// serve is answered 0x01 instead [MQTT-3.1.2-2] (V5CodesToV3). Mochi sent
// these a CONNACK with the MQTT 5 code, which 3.1.1 reserves.
func connectUnanswered(version byte, code packets.Code) bool {
	if version >= 5 || code == packets.ErrProtocolViolationProtocolVersion {
		return false
	}
	return code.Code == packets.ErrMalformedPacket.Code || code.Code == packets.ErrProtocolViolation.Code
}

// mote: refuseUndecoded answers an MQTT 5 CONNECT that did not decode
// (err: a Malformed Packet or Protocol Error, once its protocol level,
// version, was read) with CONNACK and the error's reason code before the
// connection closes, as §4.13.1 allows and validateConnect answers a
// CONNECT that decoded but breaks a rule (Will QoS 3: 0x81). Upstream
// closed it without a word. A 3.1.1 CONNECT has no code for it
// [MQTT-3.1.4-1]; one whose level was never read gets nothing either.
func (s *Server) refuseUndecoded(cl *Client, version byte, err error) {
	var code packets.Code
	if version != 5 || !errors.As(err, &code) || code.Code < packets.ErrUnspecifiedError.Code {
		return
	}
	cl.Properties.ProtocolVersion = version
	_ = s.SendConnack(cl, code, false, nil) // closing either way
}

// validateConnect validates that a connect packet is compliant.
func (s *Server) validateConnect(cl *Client, pk packets.Packet) packets.Code {
	code := pk.ConnectValidate() // [MQTT-3.1.4-1] [MQTT-3.1.4-2]
	if code != packets.CodeSuccess {
		return code
	}

	// mote change 68: CONNACK 0x97 Quota exceeded
	if pk.Properties.UserOverLimit || pk.Connect.WillProperties.UserOverLimit {
		cl.logUserOver(&pk)
		return packets.ErrQuotaExceeded
	}

	// mote: 0x02 Identifier rejected, then the connection closes
	// [MQTT-3.1.3-8] (mochi said 0x80, a code 3.1.1 reserves). MQTT 5
	// assigns an id whatever Clean Start says [MQTT-3.1.3-6].
	if cl.Properties.ProtocolVersion < 5 && !pk.Connect.Clean && pk.Connect.ClientIdentifier == "" {
		return packets.ErrClientIdentifierNotValid // [MQTT-3.1.3-8]
	}

	if cl.Properties.ProtocolVersion < s.Options.Capabilities.MinimumProtocolVersion {
		return packets.ErrUnsupportedProtocolVersion // [MQTT-3.1.2-2]
	} else if w := cl.Properties.Will; w != nil && w.Qos > s.Options.Capabilities.MaximumQos { // mote: nil is no will (change 83)
		return packets.ErrQosNotSupported // [MQTT-3.2.2-12]
	} else if w != nil && w.Retain && s.Options.Capabilities.RetainAvailable == 0x00 {
		return packets.ErrRetainNotSupported // [MQTT-3.2.2-13]
	}

	return code
}

// mote: idLocks is a mutex per client id, there while someone holds or
// waits for it: a takeover waits only for another CONNECT of its own id
// (whose DisconnectClient may wait up to a write's deadline on a stalled
// old connection).
type idLocks struct {
	mu sync.Mutex         // guards by
	by map[string]*idLock // id → its lock, while refs > 0
}

type idLock struct {
	sync.Mutex
	refs int // holders and waiters; under idLocks.mu
}

// lock locks id's mutex and returns it, for unlock.
func (l *idLocks) lock(id string) *idLock {
	l.mu.Lock()
	k := l.by[id]
	if k == nil {
		if l.by == nil {
			l.by = map[string]*idLock{}
		}
		k = &idLock{}
		l.by[id] = k
	}
	k.refs++
	l.mu.Unlock()
	k.Lock()
	return k
}

// unlock unlocks k, id's mutex, forgetting it once nobody wants it.
func (l *idLocks) unlock(id string, k *idLock) {
	k.Unlock()
	l.mu.Lock()
	k.refs--
	if k.refs == 0 {
		delete(l.by, id)
	}
	l.mu.Unlock()
}

// mote: takeoverWriteWait bounds the writes to a connection being taken
// over: its DISCONNECT, and a write under way before it.
const takeoverWriteWait = 500 * time.Millisecond

// mote: disconnectTakenOver writes DISCONNECT 0x8E Session taken over to
// cl (MQTT 5) and closes its connection, for a CONNECT taking cl's client
// id over, under the id's takeover lock (idLocks). A client that stopped
// reading holds it takeoverWriteWait at most: the connection's writes are
// bounded by then (SetWriteDeadline), the one under way too, which holds
// cl's lock that the DISCONNECT waits for. Upstream waited for the write,
// up to the connection's own write deadline (Mote's WriteTimeout, 10 s),
// and with it the CONNECT taking over, and now any CONNECT of the id.
// What the bound cuts short is not written at all (the broker's connection
// writes nothing after a failed write), and the connection closes.
//
// A client filed under the id whose CONNACK is not written yet (its
// CONNECT took the id the moment before, and is writing it) gets no
// DISCONNECT: the first packet from the server MUST be the CONNACK
// [MQTT-3.2.0-1]; it is only closed. Upstream sent it DISCONNECT 0x8E
// first. Whether it is answered is read under cl's lock, which the
// CONNACK's write holds and clears unanswered under (writePacket), and a
// client found unanswered is stopped under it: its CONNACK is either
// written before, and the DISCONNECT follows it, or never (change 59).
// unanswered was cleared after the write, once the lock was let go: a
// CONNECT of the id that came in between (its client had read the
// CONNACK and connected again) closed the old connection without the
// DISCONNECT (TestTakeoverV3NoDisconnectPacket, 1 run in 40 to 300 under
// -race; TestTakeoverJustAnswered). The lock is waited for after the
// write deadline is set, so a CONNACK's write under way holds the
// takeover takeoverWriteWait at most too.
func (s *Server) disconnectTakenOver(cl *Client) {
	if cl.Net.Conn != nil {
		_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(takeoverWriteWait))
	}
	if cl.stopIfUnanswered() {
		return
	}
	_ = s.DisconnectClient(cl, packets.ErrSessionTakenOver) // [MQTT-3.1.4-3]
}

// inheritClientSession inherits the state of an existing client sharing the same
// connection ID. If clean is true, the state of any previously existing client
// session is abandoned.
func (s *Server) inheritClientSession(pk packets.Packet, cl *Client) bool {
	return s.inheritSession(pk, cl, false)
}

// mote: inheritSession is inheritClientSession; fresh (Takeover.Fresh)
// abandons the old session as Clean Start does.
func (s *Server) inheritSession(pk packets.Packet, cl *Client, fresh bool) bool {
	if existing, ok := s.Clients.Get(cl.ID); ok {
		s.disconnectTakenOver(existing) // [MQTT-3.1.4-3]
		// mote: no SUBSCRIBE of existing files after this point.
		existing.settleSubscriptions()
		// mote: an MQTT 5 session with a Session Expiry Interval of 0
		// lasts only as long as its connection, as a 3.1.1 clean session
		// does: a CONNECT taking over its live connection starts afresh
		// (change 51).
		if fresh || pk.Connect.Clean || existing.claimSession() { // [MQTT-3.1.2-4] [MQTT-3.1.4-4]
			s.UnsubscribeClient(existing)
			existing.ClearInflights()
			existing.State.setFlag(flagTakenOver) // only set isTakenOver after unsubscribe has occurred
			return false                          // [MQTT-3.2.2-3]
		}

		existing.State.setFlag(flagTakenOver)
		// mote: moved, not cloned, in one step (change 74): what the old
		// connection sets in its map after this (a QoS 2 PUBLISH's PUBREC
		// it was processing) stays there, and what it deletes (a delivery
		// its writer takes back) is no longer cl's message.
		moved := existing.State.Inflight.moveOut()
		// mote: or only ids of dropped QoS 2 deliveries to release (change 64).
		if moved != nil {
			cl.State.Inflight = moved // [MQTT-3.1.2-5]
			if cl.State.Inflight.maximumReceiveQuota == 0 && cl.ops.options.Capabilities.ReceiveMaximum != 0 {
				cl.State.Inflight.ResetReceiveQuota(int32(cl.ops.options.Capabilities.ReceiveMaximum)) // server receive max per client
				cl.State.Inflight.ResetSendQuota(int32(cl.Properties.ReceiveMaximum()))                // client receive max
			}
		}

		for _, sub := range existing.State.Subscriptions.GetAll() {
			existed := !s.Topics.Subscribe(cl.ID, sub) // [MQTT-3.8.4-3]
			if !existed {
				atomic.AddInt64(&s.Info.Subscriptions, 1)
			}
			cl.State.Subscriptions.Add(sub.Filter, sub)
		}

		// Clean the state of the existing client to prevent sequential take-overs
		// from increasing memory usage by inflights + subs * client-id.
		s.UnsubscribeClient(existing)
		// mote: the messages moved to cl are still in flight, counted
		// once in Info.Inflight (change 49); the old client's hooks are
		// told they left it (change 74).
		existing.droppedMoved(moved)

		s.Log.Debug("session taken over", "client", LogString(cl.ID), "old_remote", existing.Net.Remote, "new_remote", cl.Net.Remote)

		return true // [MQTT-3.2.2-3]
	}

	if atomic.LoadInt64(&s.Info.ClientsConnected) > atomic.LoadInt64(&s.Info.ClientsMaximum) {
		atomic.AddInt64(&s.Info.ClientsMaximum, 1)
	}

	return false // [MQTT-3.2.2-2]
}

// SendConnack returns a Connack packet to a client.
func (s *Server) SendConnack(cl *Client, reason packets.Code, present bool, properties *packets.Properties) error {
	if properties == nil {
		properties = &packets.Properties{
			ReceiveMaximum: s.Options.Capabilities.ReceiveMaximum,
		}
	}

	properties.ReceiveMaximum = s.Options.Capabilities.ReceiveMaximum // 3.2.2.3.3 Receive Maximum
	if cl.State.ServerKeepalive {                                     // You can set this dynamically using the OnConnect hook.
		properties.ServerKeepAlive = cl.State.Keepalive // [MQTT-3.1.2-21]
		properties.ServerKeepAliveFlag = true
	}

	if reason.Code >= packets.ErrUnspecifiedError.Code {
		// mote: a level above 5 (6, 255) is answered as 3.1.1 is, 0x01
		// [MQTT-3.1.2-2] (as Mosquitto does): it got 0x82 in a CONNACK
		// without properties, valid in no version.
		if cl.Properties.ProtocolVersion != 5 {
			if v3reason, ok := packets.V5CodesToV3[reason]; ok { // NB v3 3.2.2.3 Connack return codes
				reason = v3reason
			}
		}

		properties.ReasonString = reason.Reason
		ack := packets.Packet{
			FixedHeader: packets.FixedHeader{
				Type: packets.Connack,
			},
			SessionPresent: false,       // [MQTT-3.2.2-6]
			ReasonCode:     reason.Code, // [MQTT-3.2.2-8]
			Properties:     *properties,
		}
		return cl.WritePacket(ack)
	}

	if s.Options.Capabilities.MaximumQos < 2 {
		properties.MaximumQos = s.Options.Capabilities.MaximumQos // [MQTT-3.2.2-9]
		properties.MaximumQosFlag = true
	}

	// mote: Props nil is the zero properties (change 82); an interval
	// over the maximum means they are there.
	if p := cl.Properties.Props; p != nil && p.AssignedClientID != "" {
		properties.AssignedClientID = p.AssignedClientID // [MQTT-3.1.3-7] [MQTT-3.2.2-16]
	}

	if p := cl.Properties.Props; p != nil && p.SessionExpiryInterval > s.Options.Capabilities.MaximumSessionExpiryInterval {
		properties.SessionExpiryInterval = s.Options.Capabilities.MaximumSessionExpiryInterval
		properties.SessionExpiryIntervalFlag = true
		p.SessionExpiryInterval = properties.SessionExpiryInterval
		p.SessionExpiryIntervalFlag = true
	}

	ack := packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type: packets.Connack,
		},
		SessionPresent: present,
		ReasonCode:     reason.Code, // [MQTT-3.2.2-8]
		Properties:     *properties,
	}
	return cl.WritePacket(ack)
}

// processPacket processes an inbound packet for a client. Since the method is
// typically called as a goroutine, errors are primarily for test checking purposes.
// mote: pk by pointer (change 25), and a PUBLISH handled through it; the
// other packets are handled by value, as upstream (a copy each).
func (s *Server) processPacket(cl *Client, pk *packets.Packet) error {
	var err error

	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = s.processConnect(cl, *pk)
	case packets.Disconnect:
		err = s.processDisconnect(cl, *pk)
	case packets.Pingreq:
		err = s.processPingreq(cl, *pk)
	case packets.Publish:
		code := pk.PublishValidate(s.Options.Capabilities.TopicAliasMaximum)
		if code != packets.CodeSuccess {
			return code
		}
		// mote: processPublish changes *pk (its origin, times, topic
		// alias, QoS, and what the OnPublish hooks change); upstream's
		// had a copy, and OnPacketProcessed below saw the packet as read.
		// So it still does: one copy here, on the stack, and back.
		// mote change 92: unless every hook providing OnPacketProcessed
		// reads only the packet's FixedHeader, PacketID and ReasonCode
		// (ProcessedHeaderOnly: Mote's), which are kept alone.
		if s.hooks.ProcessedPacketFull() {
			read := *pk
			err = s.processPublish(cl, pk)
			*pk = read
		} else {
			fh, id, rc := pk.FixedHeader, pk.PacketID, pk.ReasonCode
			err = s.processPublish(cl, pk)
			pk.FixedHeader, pk.PacketID, pk.ReasonCode = fh, id, rc
		}
	case packets.Puback:
		err = s.processPuback(cl, *pk)
	case packets.Pubrec:
		err = s.processPubrec(cl, *pk)
	case packets.Pubrel:
		err = s.processPubrel(cl, *pk)
	case packets.Pubcomp:
		err = s.processPubcomp(cl, *pk)
	case packets.Subscribe:
		code := pk.SubscribeValidate()
		if code != packets.CodeSuccess {
			return code
		}
		err = s.processSubscribe(cl, *pk)
	case packets.Unsubscribe:
		code := pk.UnsubscribeValidate()
		if code != packets.CodeSuccess {
			return code
		}
		err = s.processUnsubscribe(cl, *pk)
	case packets.Auth:
		code := pk.AuthValidate()
		if code != packets.CodeSuccess {
			return code
		}
		err = s.processAuth(cl, *pk)
	default:
		return fmt.Errorf("no valid packet available; %v", pk.FixedHeader.Type)
	}

	s.hooks.OnPacketProcessed(cl, pk, err)
	if err != nil {
		return err
	}

	if cl.State.Inflight.Len() > 0 && atomic.LoadInt32(&cl.State.Inflight.sendQuota) > 0 {
		next, ok := cl.State.Inflight.NextImmediate()
		if ok {
			_ = cl.WritePacket(next)
			if ok := cl.State.Inflight.Delete(next.PacketID); ok {
				atomic.AddInt64(&s.Info.Inflight, -1)
			}
			cl.State.Inflight.DecreaseSendQuota()
		}
	}

	return nil
}

// processConnect processes a Connect packet. The packet cannot be used to establish
// a new connection on an existing connection. See EstablishConnection instead.
func (s *Server) processConnect(cl *Client, _ packets.Packet) error {
	s.sendLWT(cl)
	return packets.ErrProtocolViolationSecondConnect // [MQTT-3.1.0-2]
}

// processPingreq processes a Pingreq packet.
func (s *Server) processPingreq(cl *Client, _ packets.Packet) error {
	return cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type: packets.Pingresp, // [MQTT-3.12.4-1]
		},
	})
}

// Publish publishes a publish packet into the broker as if it were sent from the specified client.
// This is a convenience function which wraps InjectPacket. As such, this method can publish packets
// to any topic (including $SYS) and bypass ACL checks. The qos byte is used for limiting the
// outbound qos (mqtt v5) rather than issuing to the broker (we assume qos 2 complete).
func (s *Server) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if !s.Options.InlineClient {
		return ErrInlineClientNotEnabled
	}

	return s.InjectPacket(s.inlineClient, packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type:   packets.Publish,
			Qos:    qos,
			Retain: retain,
		},
		TopicName: topic,
		Payload:   payload,
		PacketID:  uint16(qos), // we never process the inbound qos, but we need a packet id for validity checks.
	})
}

// Subscribe adds an inline subscription for the specified topic filter and subscription identifier
// with the provided handler function.
func (s *Server) Subscribe(filter string, subscriptionId int, handler InlineSubFn) error {
	if !s.Options.InlineClient {
		return ErrInlineClientNotEnabled
	}

	if handler == nil {
		return packets.ErrInlineSubscriptionHandlerInvalid
	}

	if !IsValidFilter(filter, false) {
		return packets.ErrTopicFilterInvalid
	}

	subscription := packets.Subscription{
		Identifier: subscriptionId,
		Filter:     filter,
	}

	pk := s.hooks.OnSubscribe(s.inlineClient, packets.Packet{ // subscribe like a normal client.
		Origin:      s.inlineClient.ID,
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe},
		Filters:     packets.Subscriptions{subscription},
	})

	inlineSubscription := InlineSubscription{
		Subscription: subscription,
		Handler:      handler,
	}

	s.Topics.InlineSubscribe(inlineSubscription)
	s.hooks.OnSubscribed(s.inlineClient, pk, []byte{packets.CodeSuccess.Code})

	// Handling retained messages.
	for _, pkv := range s.Topics.Messages(filter) { // [MQTT-3.8.4-4]
		handler(s.inlineClient, inlineSubscription.Subscription, pkv)
	}
	return nil
}

// Unsubscribe removes an inline subscription for the specified subscription and topic filter.
// It allows you to unsubscribe a specific subscription from the internal subscription
// associated with the given topic filter.
func (s *Server) Unsubscribe(filter string, subscriptionId int) error {
	if !s.Options.InlineClient {
		return ErrInlineClientNotEnabled
	}

	if !IsValidFilter(filter, false) {
		return packets.ErrTopicFilterInvalid
	}

	pk := s.hooks.OnUnsubscribe(s.inlineClient, packets.Packet{
		Origin:      s.inlineClient.ID,
		FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe},
		Filters: packets.Subscriptions{
			{
				Identifier: subscriptionId,
				Filter:     filter,
			},
		},
	})

	s.Topics.InlineUnsubscribe(subscriptionId, filter)
	s.hooks.OnUnsubscribed(s.inlineClient, pk)
	return nil
}

// InjectPacket injects a packet into the broker as if it were sent from the specified client.
// InlineClients using this method can publish packets to any topic (including $SYS) and bypass ACL checks.
func (s *Server) InjectPacket(cl *Client, pk packets.Packet) error {
	pk.ProtocolVersion = cl.Properties.ProtocolVersion

	err := s.processPacket(cl, &pk) // mote: by pointer (change 25): pk is InjectPacket's copy
	if err != nil {
		return err
	}

	atomic.AddInt64(&cl.ops.info.PacketsReceived, 1)
	if pk.FixedHeader.Type == packets.Publish {
		atomic.AddInt64(&cl.ops.info.MessagesReceived, 1)
	}

	return nil
}

// processPublish processes a Publish packet.
// mote: pk by pointer (change 25), changed in place: its origin, times,
// topic and QoS are set here, then the OnPublish hooks change it, and the
// delivery and OnPublished see it so, as upstream's copy.
func (s *Server) processPublish(cl *Client, pk *packets.Packet) error {
	// mote change 95: only a topic starting with '$' is asked here. For
	// any other IsValidFilter checks wildcards alone, and processPacket,
	// processPublish's one caller, has refused a topic with one already
	// (PublishValidate, DISCONNECT 0x82): the same topic, before its
	// alias is resolved, so the loop over it was run twice a publish.
	// mote change 98: that check in one pass (isValidDollarTopic), not
	// the general checks' five.
	if !cl.Net.Inline && len(pk.TopicName) > 0 && pk.TopicName[0] == '$' && !isValidDollarTopic(pk.TopicName) {
		return nil
	}

	// mote: the alias is set (or resolved) before the publish can be
	// refused (change 70): the receiver records the mapping of every
	// PUBLISH with a Topic Alias and a topic (§3.3.2.3.4), whatever
	// becomes of it, so the client's next alias-only PUBLISH is refused
	// the same way, not a Protocol Error. Upstream set it after the User
	// Property and ACL refusals.
	if pk.Properties.TopicAliasFlag && pk.Properties.TopicAlias > 0 { // [MQTT-3.3.2-11]
		pk.TopicName = cl.InboundAliases().Set(pk.Properties.TopicAlias, pk.TopicName) // mote change 78
		if pk.TopicName == "" {                                                        // mote: an alias the client never set, with no topic [MQTT-3.3.4] (§3.3.4 3a)
			return s.DisconnectClient(cl, packets.ErrProtocolViolationUnknownAlias)
		}
	}

	if pk.Properties.UserOverLimit { // mote change 68
		return s.refuseUserOver(cl, pk)
	}

	if atomic.LoadInt32(&cl.State.Inflight.receiveQuota) == 0 {
		return s.DisconnectClient(cl, packets.ErrReceiveMaximum) // ~[MQTT-3.3.4-7] ~[MQTT-3.3.4-8]
	}

	// mote change 96: not asked when a hook declares it lets every
	// publish through (PublishesChecked: Mote's, whose door checks it).
	if !cl.Net.Inline && !s.hooks.PublishesChecked() && !s.hooks.OnACLCheck(cl, pk.TopicName, true) {
		if pk.FixedHeader.Qos == 0 {
			return nil
		}

		if cl.Properties.ProtocolVersion != 5 {
			return s.DisconnectClient(cl, packets.ErrNotAuthorized)
		}

		ackType := packets.Puback
		if pk.FixedHeader.Qos == 2 {
			ackType = packets.Pubrec
		}

		ack := s.buildAck(pk.PacketID, ackType, 0, pk.Properties, packets.ErrNotAuthorized)
		return cl.WritePacket(ack)
	}

	pk.Origin = cl.ID
	expiry := minimum(s.Options.Capabilities.MaximumMessageExpiryInterval,
		int64(pk.Properties.MessageExpiryInterval))
	if !s.Options.CreatedOnDemand || expiry > 0 { // mote change 44: else after OnPublish, if needed
		pk.Created = time.Now().Unix()
	}

	if expiry > 0 {
		pk.Expiry = pk.Created + expiry
	}

	// mote: not for QoS 0, which has no packet id [MQTT-2.2.1-2]: its 0
	// names no message in flight (ids are 1–65535), and the lookup takes
	// the in-flight map's lock at every publish (4% of a QoS 0 fan-in).
	if !cl.Net.Inline && pk.FixedHeader.Qos > 0 {
		if pki, ok := cl.State.Inflight.Get(pk.PacketID); ok {
			if pki.FixedHeader.Type == packets.Pubrec { // [MQTT-4.3.3-10]
				ack := s.buildAck(pk.PacketID, packets.Pubrec, 0, pk.Properties, packets.ErrPacketIdentifierInUse)
				return cl.WritePacket(ack)
			}
			if ok := cl.State.Inflight.Delete(pk.PacketID); ok { // [MQTT-4.3.2-5]
				atomic.AddInt64(&s.Info.Inflight, -1)
			}
		}
	}

	if pk.FixedHeader.Qos > s.Options.Capabilities.MaximumQos {
		pk.FixedHeader.Qos = s.Options.Capabilities.MaximumQos // [MQTT-3.2.2-9] Reduce qos based on server max qos capability
	}

	// mote: OnPublish changes *pk in place (change 25); on an error *pk
	// is as it came, as upstream kept its own copy then.
	err := s.hooks.OnPublish(cl, pk)
	switch {
	case err == nil:
	case errors.Is(err, packets.ErrRejectPacket):
		return nil
	case errors.Is(err, packets.CodeSuccessIgnore):
		pk.Ignore = true
	case cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos > 0 && errors.As(err, new(packets.Code)):
		err = cl.writeAck(s.buildAck(pk.PacketID, packets.Puback, 0, pk.Properties, err.(packets.Code))) // mote: writeAck
		if err != nil {
			return err
		}
		return nil
	}

	if pk.Created == 0 && !pk.Ignore { // mote change 44 (CreatedOnDemand): it goes on, with its time
		pk.Created = time.Now().Unix()
	}

	if pk.FixedHeader.Retain { // [MQTT-3.3.1-5] ![MQTT-3.3.1-8]
		s.retainMessage(cl, *pk)
	}

	// If it's inlineClient, it can't handle PUBREC and PUBREL.
	// When it publishes a package with a qos > 0, the server treats
	// the package as qos=0, and the client receives it as qos=1 or 2.
	if pk.FixedHeader.Qos == 0 || cl.Net.Inline {
		if !pk.Ignore { // mote: publishToSubscribers does nothing with it; not copied for nothing
			s.publishToSubscribers(*pk)
		}
		s.hooks.OnPublished(cl, pk)
		return nil
	}

	cl.State.Inflight.DecreaseReceiveQuota()
	ack := s.buildAck(pk.PacketID, packets.Puback, 0, pk.Properties, packets.QosCodes[pk.FixedHeader.Qos]) // [MQTT-4.3.2-4]
	if pk.FixedHeader.Qos == 2 {
		ack = s.buildAck(pk.PacketID, packets.Pubrec, 0, pk.Properties, packets.CodeSuccess) // [MQTT-3.3.4-1] [MQTT-4.3.3-8]
	}

	// mote: a QoS 1 publish's PUBACK is not put in the in-flight map: it is
	// written at once and never sent again, so upstream's Set and Delete
	// around the write only cost a map entry, which Go allocates apart
	// for a value this size (a ~900-byte Packet a publish), and two locks.
	// The hooks are called as before; Info.Inflight went up and down
	// around the write, and now stays (change 48).
	if pk.FixedHeader.Qos == 1 {
		s.hooks.OnQosPublish(cl, ack, ack.Created, 0)
	} else if ok := cl.State.Inflight.Set(ack); ok {
		atomic.AddInt64(&s.Info.Inflight, 1)
		s.hooks.OnQosPublish(cl, ack, ack.Created, 0)
	}

	err = cl.writeAck(ack) // mote: held while the next packet waits (writeAck)
	if err != nil {
		return err
	}

	if pk.FixedHeader.Qos == 1 {
		cl.State.Inflight.IncreaseReceiveQuota()
		s.hooks.OnQosComplete(cl, ack)
	}

	if !pk.Ignore { // mote: as above
		s.publishToSubscribers(*pk)
	}
	s.hooks.OnPublished(cl, pk)

	return nil
}

// retainMessage adds a message to a topic, and if a persistent store is provided,
// adds the message to the store to be reloaded if necessary.
func (s *Server) retainMessage(cl *Client, pk packets.Packet) {
	if s.Options.Capabilities.RetainAvailable == 0 || pk.Ignore {
		return
	}

	out := pk.Copy(false)
	r := s.Topics.RetainMessage(out)
	s.hooks.OnRetainMessage(cl, pk, r)
	atomic.StoreInt64(&s.Info.Retained, int64(s.Topics.Retained.Len()))
}

// publishToSubscribers publishes a publish packet to all subscribers with matching topic filters.
func (s *Server) publishToSubscribers(pk packets.Packet) {
	if pk.Ignore {
		return
	}

	if pk.Created == 0 {
		pk.Created = time.Now().Unix()
	}

	if pk.Expiry == 0 {
		if expiry := minimum(s.Options.Capabilities.MaximumMessageExpiryInterval,
			int64(pk.Properties.MessageExpiryInterval)); expiry > 0 {
			pk.Expiry = pk.Created + expiry
		}
	}

	subscribers := s.Topics.Subscribers(pk.TopicName)
	if len(subscribers.Shared) > 0 {
		subscribers = s.hooks.OnSelectSubscribers(subscribers, pk)
		if len(subscribers.SharedSelected) == 0 {
			subscribers.SelectShared()
		}
		subscribers.MergeSharedSelected()
	}

	for _, inlineSubscription := range subscribers.InlineSubscriptions {
		inlineSubscription.Handler(s.inlineClient, inlineSubscription.Subscription, pk)
	}

	for id, subs := range subscribers.Subscriptions {
		if cl, ok := s.Clients.Get(id); ok {
			_, err := s.publishToClient(cl, subs, pk)
			if err != nil {
				s.Log.Debug("failed publishing packet", "error", err, "client", LogString(cl.ID), LogPacket(&pk)) // mote change 68
			}
		}
	}
}

func (s *Server) publishToClient(cl *Client, sub packets.Subscription, pk packets.Packet) (packets.Packet, error) {
	if sub.NoLocal && pk.Origin == cl.ID {
		return pk, nil // [MQTT-3.8.3-3]
	}

	out := pk.Copy(false)
	if !s.hooks.OnACLCheck(cl, pk.TopicName, false) {
		return out, packets.ErrNotAuthorized
	}
	if !sub.FwdRetainedFlag && ((cl.Properties.ProtocolVersion == 5 && !sub.RetainAsPublished) || cl.Properties.ProtocolVersion < 5) { // ![MQTT-3.3.1-13] [v3 MQTT-3.3.1-9]
		out.FixedHeader.Retain = false // [MQTT-3.3.1-12]
	}

	if len(sub.Identifiers) > 0 { // [MQTT-3.3.4-3]
		out.Properties.SubscriptionIdentifier = []int{}
		for _, id := range sub.Identifiers {
			out.Properties.SubscriptionIdentifier = append(out.Properties.SubscriptionIdentifier, id) // [MQTT-3.3.4-4] ![MQTT-3.3.4-5]
		}
		sort.Ints(out.Properties.SubscriptionIdentifier)
	}

	if out.FixedHeader.Qos > sub.Qos {
		out.FixedHeader.Qos = sub.Qos
	}

	if out.FixedHeader.Qos > s.Options.Capabilities.MaximumQos {
		out.FixedHeader.Qos = s.Options.Capabilities.MaximumQos // [MQTT-3.2.2-9]
	}

	if cl.Properties.TopicAliasMaximum() > 0 { // mote change 82
		var aliasExists bool
		out.Properties.TopicAlias, aliasExists = cl.State.TopicAliases.Outbound.Set(pk.TopicName)
		if out.Properties.TopicAlias > 0 {
			out.Properties.TopicAliasFlag = true
			if aliasExists {
				out.TopicName = ""
			}
		}
	}

	if out.FixedHeader.Qos > 0 {
		if cl.State.Inflight.Len() >= int(s.Options.Capabilities.MaximumInflight) {
			// add hook?
			atomic.AddInt64(&s.Info.InflightDropped, 1)
			s.Log.Warn("client store quota reached", "client", LogString(cl.ID), "listener", cl.Net.Listener)
			return out, packets.ErrQuotaExceeded
		}

		i, err := cl.NextPacketID() // [MQTT-4.3.2-1] [MQTT-4.3.3-1]
		if err != nil {
			s.hooks.OnPacketIDExhausted(cl, pk)
			atomic.AddInt64(&s.Info.InflightDropped, 1)
			s.Log.Warn("packet ids exhausted", "error", err, "client", LogString(cl.ID), "listener", cl.Net.Listener)
			return out, packets.ErrQuotaExceeded
		}

		out.PacketID = uint16(i) // [MQTT-2.2.1-4]
		sentQuota := atomic.LoadInt32(&cl.State.Inflight.sendQuota)

		if ok := cl.State.Inflight.Set(out); ok { // [MQTT-4.3.2-3] [MQTT-4.3.3-3]
			atomic.AddInt64(&s.Info.Inflight, 1)
			s.hooks.OnQosPublish(cl, out, out.Created, 0)
			cl.State.Inflight.DecreaseSendQuota()
		}

		if sentQuota == 0 && atomic.LoadInt32(&cl.State.Inflight.maximumSendQuota) > 0 {
			out.Expiry = -1
			cl.State.Inflight.Set(out)
			return out, nil
		}
	}

	if cl.Net.Conn == nil || cl.Closed() {
		return out, packets.CodeDisconnect
	}

	cl.startWriteLoop() // mote: the writer starts with the first queued packet
	select {
	case cl.outboundOf() <- &out: // mote: change 72
		atomic.AddInt32(&cl.State.outboundQty, 1)
	default:
		atomic.AddInt64(&s.Info.MessagesDropped, 1)
		cl.ops.hooks.OnPublishDropped(cl, pk)
		if out.FixedHeader.Qos > 0 {
			cl.State.Inflight.Delete(out.PacketID) // packet was dropped due to irregular circumstances, so rollback inflight.
			cl.State.Inflight.IncreaseSendQuota()
		}
		return out, packets.ErrPendingClientWritesExceeded
	}

	return out, nil
}

func (s *Server) publishRetainedToClient(cl *Client, sub packets.Subscription, existed bool) {
	if IsSharedFilter(sub.Filter) {
		return // 4.8.2 Non-normative - Shared Subscriptions - No Retained Messages are sent to the Session when it first subscribes.
	}

	if sub.RetainHandling == 1 && existed || sub.RetainHandling == 2 { // [MQTT-3.3.1-10] [MQTT-3.3.1-11]
		return
	}

	sub.FwdRetainedFlag = true
	for _, pkv := range s.Topics.Messages(sub.Filter) { // [MQTT-3.8.4-4]
		_, err := s.publishToClient(cl, sub, pkv)
		if err != nil {
			s.Log.Debug("failed to publish retained message", "error", err, "client", LogString(cl.ID), "listener", cl.Net.Listener, LogPacket(&pkv)) // mote change 68
			continue
		}
		s.hooks.OnRetainPublished(cl, pkv)
	}
}

// buildAck builds a standardised ack message for Puback, Pubrec, Pubrel, Pubcomp packets.
func (s *Server) buildAck(packetID uint16, pkt, qos byte, properties packets.Properties, reason packets.Code) packets.Packet {
	if s.Options.Capabilities.Compatibilities.NoInheritedPropertiesOnAck {
		properties = packets.Properties{}
	}
	if reason.Code >= packets.ErrUnspecifiedError.Code {
		properties.ReasonString = reason.Reason
	}

	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type: pkt,
			Qos:  qos,
		},
		PacketID:   packetID,    // [MQTT-2.2.1-5]
		ReasonCode: reason.Code, // [MQTT-3.4.2-1]
		Properties: properties,
		Created:    time.Now().Unix(),
		Expiry:     time.Now().Unix() + s.Options.Capabilities.MaximumMessageExpiryInterval,
	}

	return pk
}

// processPuback processes a Puback packet, denoting completion of a QOS 1 packet sent from the server.
func (s *Server) processPuback(cl *Client, pk packets.Packet) error {
	if _, ok := cl.State.Inflight.Get(pk.PacketID); !ok {
		return nil // omit, but would be packets.ErrPacketIdentifierNotFound
	}

	if ok := cl.State.Inflight.Delete(pk.PacketID); ok { // [MQTT-4.3.2-5]
		cl.State.Inflight.IncreaseSendQuota()
		atomic.AddInt64(&s.Info.Inflight, -1)
		s.hooks.OnQosComplete(cl, pk)
	}

	return nil
}

// processPubrec processes a Pubrec packet, denoting receipt of a QOS 2 packet sent from the server.
func (s *Server) processPubrec(cl *Client, pk packets.Packet) error {
	if _, ok := cl.State.Inflight.Get(pk.PacketID); !ok { // [MQTT-4.3.3-7] [MQTT-4.3.3-13]
		return cl.WritePacket(s.buildAck(pk.PacketID, packets.Pubrel, 1, pk.Properties, packets.ErrPacketIdentifierNotFound))
	}

	if pk.ReasonCode >= packets.ErrUnspecifiedError.Code || !pk.ReasonCodeValid() { // [MQTT-4.3.3-4]
		if ok := cl.State.Inflight.Delete(pk.PacketID); ok {
			atomic.AddInt64(&s.Info.Inflight, -1)
		}
		cl.ops.hooks.OnQosDropped(cl, pk)
		return nil // as per MQTT5 Section 4.13.2 paragraph 2
	}

	ack := s.buildAck(pk.PacketID, packets.Pubrel, 1, pk.Properties, packets.CodeSuccess) // [MQTT-4.3.3-4] ![MQTT-4.3.3-6]
	cl.State.Inflight.DecreaseReceiveQuota()                                              // -1 RECV QUOTA
	cl.State.Inflight.Set(ack)                                                            // [MQTT-4.3.3-5]
	return cl.WritePacket(ack)
}

// processPubrel processes a Pubrel packet, denoting completion of a QOS 2 packet sent from the client.
func (s *Server) processPubrel(cl *Client, pk packets.Packet) error {
	if _, ok := cl.State.Inflight.Get(pk.PacketID); !ok { // [MQTT-4.3.3-7] [MQTT-4.3.3-13]
		return cl.WritePacket(s.buildAck(pk.PacketID, packets.Pubcomp, 0, pk.Properties, packets.ErrPacketIdentifierNotFound))
	}

	if pk.ReasonCode >= packets.ErrUnspecifiedError.Code || !pk.ReasonCodeValid() { // [MQTT-4.3.3-9]
		if ok := cl.State.Inflight.Delete(pk.PacketID); ok {
			atomic.AddInt64(&s.Info.Inflight, -1)
		}
		cl.ops.hooks.OnQosDropped(cl, pk)
		return nil
	}

	ack := s.buildAck(pk.PacketID, packets.Pubcomp, 0, pk.Properties, packets.CodeSuccess) // [MQTT-4.3.3-11]
	cl.State.Inflight.Set(ack)

	err := cl.writeAck(ack) // mote: writeAck
	if err != nil {
		return err
	}

	cl.State.Inflight.IncreaseReceiveQuota()             // +1 RECV QUOTA
	cl.State.Inflight.IncreaseSendQuota()                // +1 SENT QUOTA
	if ok := cl.State.Inflight.Delete(pk.PacketID); ok { // [MQTT-4.3.3-12]
		atomic.AddInt64(&s.Info.Inflight, -1)
		s.hooks.OnQosComplete(cl, pk)
	}

	return nil
}

// processPubcomp processes a Pubcomp packet, denoting completion of a QOS 2 packet sent from the server.
func (s *Server) processPubcomp(cl *Client, pk packets.Packet) error {
	// regardless of whether the pubcomp is a success or failure, we end the qos flow, delete inflight, and restore the quotas.
	cl.State.Inflight.IncreaseReceiveQuota() // +1 RECV QUOTA
	cl.State.Inflight.IncreaseSendQuota()    // +1 SENT QUOTA
	if ok := cl.State.Inflight.Delete(pk.PacketID); ok {
		atomic.AddInt64(&s.Info.Inflight, -1)
		s.hooks.OnQosComplete(cl, pk)
	}

	return nil
}

// processSubscribe processes a Subscribe packet.
func (s *Server) processSubscribe(cl *Client, pk packets.Packet) error {
	if pk.Properties.UserOverLimit { // mote change 68
		return s.refuseUserOver(cl, &pk)
	}
	pk = s.hooks.OnSubscribe(cl, pk)
	code := packets.CodeSuccess
	if _, ok := cl.State.Inflight.Get(pk.PacketID); ok {
		code = packets.ErrPacketIdentifierInUse
	}

	reasonCodes, filterExisted, err := s.fileSubscribe(cl, pk, code)
	if err != nil {
		return err
	}

	ack := packets.Packet{ // [MQTT-3.8.4-1] [MQTT-3.8.4-5]
		FixedHeader: packets.FixedHeader{
			Type: packets.Suback,
		},
		PacketID:    pk.PacketID, // [MQTT-2.2.1-6] [MQTT-3.8.4-2]
		ReasonCodes: reasonCodes, // [MQTT-3.8.4-6]
		// mote change 68: the SUBSCRIBE's User Properties are not echoed
		// (MQTT 5 §3.9.2.1.3 allows them, within the client's Maximum
		// Packet Size, and asks nothing of the kind): 16 MiB of them came
		// back 16 MiB.
	}

	if code.Code >= packets.ErrUnspecifiedError.Code {
		ack.Properties.ReasonString = code.Reason
	}

	// mote: a SUBACK refusing every filter is held with the acks while
	// more input waits (writeAck), as a refused publish's: nothing was
	// filed, so no retained message follows it and nothing it is written
	// after can overtake what it answers. A client flooding refused
	// SUBSCRIBEs got a write(2) each (change 73).
	if refusesAll(reasonCodes) {
		err = cl.writeAck(ack)
	} else {
		err = cl.WritePacket(ack)
	}
	if err != nil {
		return err
	}

	for i, sub := range pk.Filters { // [MQTT-3.3.1-9]
		if reasonCodes[i] >= packets.ErrUnspecifiedError.Code {
			continue
		}

		s.publishRetainedToClient(cl, sub, filterExisted[i])
	}

	return nil
}

// mote: refusesAll reports whether every reason code of a SUBACK is a
// failure (0x80 and above; none: a SUBSCRIBE without filters is refused
// before it is processed) (change 73).
func refusesAll(codes []byte) bool {
	for _, c := range codes {
		if c < packets.ErrUnspecifiedError.Code {
			return false
		}
	}
	return len(codes) > 0
}

// mote: fileSubscribe is processSubscribe's filing, up to OnSubscribed,
// under cl.State.subMu, and only while cl is open: a SUBSCRIBE that a
// client's read loop handles while another goroutine takes the client
// over (inheritClientSession) or unsubscribes it (UnsubscribeClient) files
// its filters before that goroutine unfiles the client's subscriptions,
// or not at all (ErrConnectionClosed: the client was stopped first, and
// gets no SUBACK). Upstream could file them after the takeover had
// unfiled the old client's, under the client id, where nothing unfiled
// them: the new client got publishes to a filter it never subscribed to.
func (s *Server) fileSubscribe(cl *Client, pk packets.Packet, code packets.Code) (reasonCodes []byte, filterExisted []bool, err error) {
	cl.State.subMu.Lock()
	defer cl.State.subMu.Unlock()
	if cl.Closed() {
		return nil, nil, ErrConnectionClosed
	}

	filterExisted = make([]bool, len(pk.Filters))
	reasonCodes = make([]byte, len(pk.Filters))
	for i, sub := range pk.Filters {
		if code != packets.CodeSuccess {
			reasonCodes[i] = code.Code // NB 3.9.3 Non-normative 0x91
			continue
		} else if !IsValidFilter(sub.Filter, false) {
			reasonCodes[i] = packets.ErrTopicFilterInvalid.Code
		} else if sub.NoLocal && IsSharedFilter(sub.Filter) {
			reasonCodes[i] = packets.ErrProtocolViolationInvalidSharedNoLocal.Code // [MQTT-3.8.3-4]
		} else if !s.hooks.OnACLCheck(cl, sub.Filter, false) {
			reasonCodes[i] = packets.ErrNotAuthorized.Code
			if s.Options.Capabilities.Compatibilities.ObscureNotAuthorized {
				reasonCodes[i] = packets.ErrUnspecifiedError.Code
			}
		} else {
			isNew := s.Topics.Subscribe(cl.ID, sub) // [MQTT-3.8.4-3]
			if isNew {
				atomic.AddInt64(&s.Info.Subscriptions, 1)
			}
			cl.State.Subscriptions.Add(sub.Filter, sub) // [MQTT-3.2.2-10]

			if sub.Qos > s.Options.Capabilities.MaximumQos {
				sub.Qos = s.Options.Capabilities.MaximumQos // [MQTT-3.2.2-9]
			}

			filterExisted[i] = !isNew
			reasonCodes[i] = sub.Qos // [MQTT-3.9.3-1] [MQTT-3.8.4-7]
		}

		if reasonCodes[i] > packets.CodeGrantedQos2.Code && cl.Properties.ProtocolVersion < 5 { // MQTT3
			reasonCodes[i] = packets.ErrUnspecifiedError.Code
		}
	}

	s.hooks.OnSubscribed(cl, pk, reasonCodes)
	return reasonCodes, filterExisted, nil
}

// processUnsubscribe processes an unsubscribe packet.
func (s *Server) processUnsubscribe(cl *Client, pk packets.Packet) error {
	// mote: a filter that breaks the syntax of §4.7 ("a/#/b", "a+") is
	// refused, as fileSubscribe refuses it: MQTT 5 per filter, 0x8F
	// (unfileUnsubscribe); a 3.1.1 UNSUBACK has no per-filter code, so the
	// packet is refused whole and the connection closed [MQTT-4.8.0-1],
	// nothing unsubscribed (UnsubscribeValidate does so for "").
	if cl.Properties.ProtocolVersion < 5 {
		for _, f := range pk.Filters {
			if !IsValidFilter(f.Filter, false) {
				return fmt.Errorf("unsubscribe %q: %w", f.Filter, packets.ErrTopicFilterInvalid)
			}
		}
	}

	code := packets.CodeSuccess
	if _, ok := cl.State.Inflight.Get(pk.PacketID); ok {
		code = packets.ErrPacketIdentifierInUse
	}

	pk, reasonCodes, err := s.unfileUnsubscribe(cl, pk, code)
	if err != nil {
		return err
	}

	ack := packets.Packet{ // [MQTT-3.10.4-4]
		FixedHeader: packets.FixedHeader{
			Type: packets.Unsuback,
		},
		PacketID:    pk.PacketID, // [MQTT-2.2.1-6]  [MQTT-3.10.4-5]
		ReasonCodes: reasonCodes, // [MQTT-3.11.3-2]
		// mote change 68: the UNSUBSCRIBE's User Properties are not echoed,
		// as a SUBACK (processSubscribe).
	}

	if code.Code >= packets.ErrUnspecifiedError.Code {
		ack.Properties.ReasonString = code.Reason
	}

	return cl.WritePacket(ack)
}

// mote: unfileUnsubscribe is processUnsubscribe's unfiling, from
// OnUnsubscribe to OnUnsubscribed, under cl.State.subMu and only while cl
// is open, as fileSubscribe files: an UNSUBSCRIBE that a client's read
// loop handles while a CONNECT takes the client over unfiles before the
// takeover copies the client's subscriptions (inheritClientSession waits
// for it: settleSubscriptions), or not at all (ErrConnectionClosed: the
// client was stopped first, and gets no UNSUBACK). Upstream could unfile
// after the copy: the topic index files a subscription by filter and
// client id, which the new client shares, so the old connection's
// UNSUBSCRIBE removed the new client's (and the broker's hooks unfiled
// by id as well), which its session still listed.
func (s *Server) unfileUnsubscribe(cl *Client, pk packets.Packet, code packets.Code) (packets.Packet, []byte, error) {
	cl.State.subMu.Lock()
	defer cl.State.subMu.Unlock()
	if cl.Closed() {
		return pk, nil, ErrConnectionClosed
	}

	// mote: a filter's syntax is checked as the client sent it, before
	// OnUnsubscribe may name it as it was filed ("" included: [MQTT-4.7.3-1]).
	invalid := make([]bool, len(pk.Filters))
	for i, sub := range pk.Filters {
		invalid[i] = !IsValidFilter(sub.Filter, false)
	}
	if code == packets.CodeSuccess {
		// mote: change 71: the hooks are asked only of an UNSUBSCRIBE not
		// refused whole (0x91): one that is unsubscribes nothing here,
		// and a hook that acted on it (Mote's ends tree subscriptions in
		// OnUnsubscribe) would disagree with the session kept.
		pk = s.hooks.OnUnsubscribe(cl, pk)
	}
	reasonCodes := make([]byte, len(pk.Filters))
	for i, sub := range pk.Filters { // [MQTT-3.10.4-6] [MQTT-3.11.3-1]
		if code != packets.CodeSuccess {
			reasonCodes[i] = code.Code // NB 3.11.3 Non-normative 0x91
			continue
		}

		if i < len(invalid) && invalid[i] { // mote: 0x8F as fileSubscribe answers it (3.1.1: processUnsubscribe)
			reasonCodes[i] = packets.ErrTopicFilterInvalid.Code
			continue
		}

		if q := s.Topics.Unsubscribe(sub.Filter, cl.ID); q {
			atomic.AddInt64(&s.Info.Subscriptions, -1)
			reasonCodes[i] = packets.CodeSuccess.Code
		} else {
			reasonCodes[i] = packets.CodeNoSubscriptionExisted.Code
		}

		cl.State.Subscriptions.Delete(sub.Filter) // [MQTT-3.10.4-2] [MQTT-3.10.4-2] ~[MQTT-3.10.4-3]
	}

	s.hooks.OnUnsubscribed(cl, pk)
	return pk, reasonCodes, nil
}

// UnsubscribeClient unsubscribes a client from all of their subscriptions.
func (s *Server) UnsubscribeClient(cl *Client) {
	cl.settleSubscriptions() // mote
	i := 0
	filterMap := cl.State.Subscriptions.GetAll()
	filters := make([]packets.Subscription, len(filterMap))
	for k := range filterMap {
		cl.State.Subscriptions.Delete(k)
	}

	if cl.IsTakenOver() {
		return
	}

	for k, v := range filterMap {
		if s.Topics.Unsubscribe(k, cl.ID) {
			atomic.AddInt64(&s.Info.Subscriptions, -1)
		}
		filters[i] = v
		i++
	}
	s.hooks.OnUnsubscribed(cl, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, Filters: filters})
}

// processAuth processes an Auth packet.
func (s *Server) processAuth(cl *Client, pk packets.Packet) error {
	_, err := s.hooks.OnAuthPacket(cl, pk)
	if err != nil {
		return err
	}

	return nil
}

// processDisconnect processes a Disconnect packet.
func (s *Server) processDisconnect(cl *Client, pk packets.Packet) error {
	if pk.Properties.SessionExpiryIntervalFlag {
		if pk.Properties.SessionExpiryInterval > 0 && cl.Properties.SessionExpiryInterval() == 0 { // mote change 82
			return packets.ErrProtocolViolationZeroNonZeroExpiry
		}

		cl.setSessionExpiry(pk.Properties.SessionExpiryInterval) // mote: under expiryMu (change 53)
	}

	if pk.ReasonCode == packets.CodeDisconnectWillMessage.Code { // [MQTT-3.1.2.5] Non-normative comment
		return packets.CodeDisconnectWillMessage
	}

	s.deleteDelayedWill(cl.ID)      // [MQTT-3.1.3-9] [MQTT-3.1.2-8]
	cl.Stop(packets.CodeDisconnect) // [MQTT-3.14.4-2]

	return nil
}

// DisconnectClient sends a Disconnect packet to a client and then closes the client connection.
func (s *Server) DisconnectClient(cl *Client, code packets.Code) error {
	out := packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type: packets.Disconnect,
		},
		ReasonCode: code.Code,
		Properties: packets.Properties{},
	}

	if code.Code >= packets.ErrUnspecifiedError.Code {
		out.Properties.ReasonString = code.Reason //  // [MQTT-3.14.2-1]
	}

	// We already have a code we are using to disconnect the client, so we are not
	// interested if the write packet fails due to a closed connection (as we are closing it).
	// mote: only MQTT 5 has a DISCONNECT from the server; a 3.1.1
	// connection is just closed (§3.14, [MQTT-3.1.4-2]).
	var err error
	if cl.Properties.ProtocolVersion >= 5 {
		err = cl.WritePacket(out)
	} else {
		// mote: the acks writeAck held go out before the close, as
		// WritePacket writes them first for MQTT 5
		cl.Lock()
		_ = cl.flushOutbuf()
		cl.Unlock()
	}
	if !s.Options.Capabilities.Compatibilities.PassiveClientDisconnect {
		cl.Stop(code)
		if code.Code >= packets.ErrUnspecifiedError.Code {
			return code
		}
	}

	return err
}

// publishSysTopics publishes the current values to the server $SYS topics.
// Due to the int to string conversions this method is not as cheap as
// some of the others so the publishing interval should be set appropriately.
func (s *Server) publishSysTopics() {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type:   packets.Publish,
			Retain: true,
		},
		Created: time.Now().Unix(),
	}

	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	atomic.StoreInt64(&s.Info.MemoryAlloc, int64(m.HeapInuse))
	atomic.StoreInt64(&s.Info.Threads, int64(runtime.NumGoroutine()))
	atomic.StoreInt64(&s.Info.Time, time.Now().Unix())
	atomic.StoreInt64(&s.Info.Uptime, time.Now().Unix()-atomic.LoadInt64(&s.Info.Started))
	atomic.StoreInt64(&s.Info.ClientsTotal, int64(s.Clients.Len()))
	atomic.StoreInt64(&s.Info.ClientsDisconnected, atomic.LoadInt64(&s.Info.ClientsTotal)-atomic.LoadInt64(&s.Info.ClientsConnected))

	info := s.Info.Clone()
	topics := map[string]string{
		SysPrefix + "/broker/version":              s.Info.Version,
		SysPrefix + "/broker/time":                 Int64toa(info.Time),
		SysPrefix + "/broker/uptime":               Int64toa(info.Uptime),
		SysPrefix + "/broker/started":              Int64toa(info.Started),
		SysPrefix + "/broker/load/bytes/received":  Int64toa(info.BytesReceived),
		SysPrefix + "/broker/load/bytes/sent":      Int64toa(info.BytesSent),
		SysPrefix + "/broker/clients/connected":    Int64toa(info.ClientsConnected),
		SysPrefix + "/broker/clients/disconnected": Int64toa(info.ClientsDisconnected),
		SysPrefix + "/broker/clients/maximum":      Int64toa(info.ClientsMaximum),
		SysPrefix + "/broker/clients/total":        Int64toa(info.ClientsTotal),
		SysPrefix + "/broker/packets/received":     Int64toa(info.PacketsReceived),
		SysPrefix + "/broker/packets/sent":         Int64toa(info.PacketsSent),
		SysPrefix + "/broker/messages/received":    Int64toa(info.MessagesReceived),
		SysPrefix + "/broker/messages/sent":        Int64toa(info.MessagesSent),
		SysPrefix + "/broker/messages/dropped":     Int64toa(info.MessagesDropped),
		SysPrefix + "/broker/messages/inflight":    Int64toa(info.Inflight),
		SysPrefix + "/broker/retained":             Int64toa(info.Retained),
		SysPrefix + "/broker/subscriptions":        Int64toa(info.Subscriptions),
		SysPrefix + "/broker/system/memory":        Int64toa(info.MemoryAlloc),
		SysPrefix + "/broker/system/threads":       Int64toa(info.Threads),
	}

	for topic, payload := range topics {
		pk.TopicName = topic
		pk.Payload = []byte(payload)
		s.Topics.RetainMessage(pk.Copy(false))
		s.publishToSubscribers(pk)
	}

	s.hooks.OnSysInfoTick(info)
}

// Close attempts to gracefully shut down the server, all listeners, clients, and stores.
func (s *Server) Close() error {
	close(s.done)
	if s.loopDone != nil {
		<-s.loopDone // mote: nothing of the loop runs, or logs, after Close returns (change 81)
	}
	s.Log.Info("gracefully stopping server")
	s.Listeners.CloseAll(s.closeListenerClients)
	s.hooks.OnStopped()
	s.hooks.Stop()

	s.Log.Info("mochi mqtt server stopped")
	return nil
}

// closeListenerClients closes all clients on the specified listener.
func (s *Server) closeListenerClients(listener string) {
	clients := s.Clients.GetByListener(listener)
	for _, cl := range clients {
		_ = s.DisconnectClient(cl, packets.ErrServerShuttingDown)
	}
}

// sendLWT issues an LWT message to a topic when a client disconnects.
func (s *Server) sendLWT(cl *Client) {
	w := cl.Properties.Will // mote: nil is no will (change 83)
	if w == nil || atomic.LoadUint32(&w.Flag) == 0 {
		return
	}

	modifiedLWT := s.hooks.OnWill(cl, *w)

	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{
			Type:   packets.Publish,
			Retain: modifiedLWT.Retain, // [MQTT-3.1.2-14] [MQTT-3.1.2-15]
			Qos:    modifiedLWT.Qos,
		},
		TopicName: modifiedLWT.TopicName,
		Payload:   modifiedLWT.Payload,
		Properties: packets.Properties{
			User: modifiedLWT.User,
		},
		Origin:  cl.ID,
		Created: time.Now().Unix(),
	}

	if w.WillDelayInterval > 0 {
		pk.Connect.WillProperties.WillDelayInterval = w.WillDelayInterval
		pk.Expiry = time.Now().Unix() + int64(pk.Connect.WillProperties.WillDelayInterval)
		s.loop.willDelayed.Add(cl.ID, pk)
		s.loop.willOwners.Store(cl.ID, cl) // mote: change 50
		return
	}

	if pk.FixedHeader.Retain {
		s.retainMessage(cl, pk)
	}

	s.publishToSubscribers(pk)     // [MQTT-3.1.2-8]
	atomic.StoreUint32(&w.Flag, 0) // [MQTT-3.1.2-10]
	s.hooks.OnWillSent(cl, pk)
}

// readStore reads in any data from the persistent datastore (if applicable).
func (s *Server) readStore() error {
	if s.hooks.Provides(StoredClients) {
		clients, err := s.hooks.StoredClients()
		if err != nil {
			return fmt.Errorf("failed to load clients; %w", err)
		}
		s.loadClients(clients)
		s.Log.Debug("loaded clients from store", "len", len(clients))
	}

	if s.hooks.Provides(StoredSubscriptions) {
		subs, err := s.hooks.StoredSubscriptions()
		if err != nil {
			return fmt.Errorf("load subscriptions; %w", err)
		}
		s.loadSubscriptions(subs)
		s.Log.Debug("loaded subscriptions from store", "len", len(subs))
	}

	if s.hooks.Provides(StoredInflightMessages) {
		inflight, err := s.hooks.StoredInflightMessages()
		if err != nil {
			return fmt.Errorf("load inflight; %w", err)
		}
		s.loadInflight(inflight)
		s.Log.Debug("loaded inflights from store", "len", len(inflight))
	}

	if s.hooks.Provides(StoredRetainedMessages) {
		retained, err := s.hooks.StoredRetainedMessages()
		if err != nil {
			return fmt.Errorf("load retained; %w", err)
		}
		s.loadRetained(retained)
		s.Log.Debug("loaded retained messages from store", "len", len(retained))
	}

	if s.hooks.Provides(StoredSysInfo) {
		sysInfo, err := s.hooks.StoredSysInfo()
		if err != nil {
			return fmt.Errorf("load server info; %w", err)
		}
		s.loadServerInfo(sysInfo.Info)
		s.Log.Debug("loaded $SYS info from store")
	}

	return nil
}

// loadServerInfo restores server info from the datastore.
func (s *Server) loadServerInfo(v system.Info) {
	if s.Options.Capabilities.Compatibilities.RestoreSysInfoOnRestart {
		atomic.StoreInt64(&s.Info.BytesReceived, v.BytesReceived)
		atomic.StoreInt64(&s.Info.BytesSent, v.BytesSent)
		atomic.StoreInt64(&s.Info.ClientsMaximum, v.ClientsMaximum)
		atomic.StoreInt64(&s.Info.ClientsTotal, v.ClientsTotal)
		atomic.StoreInt64(&s.Info.ClientsDisconnected, v.ClientsDisconnected)
		atomic.StoreInt64(&s.Info.MessagesReceived, v.MessagesReceived)
		atomic.StoreInt64(&s.Info.MessagesSent, v.MessagesSent)
		atomic.StoreInt64(&s.Info.MessagesDropped, v.MessagesDropped)
		atomic.StoreInt64(&s.Info.PacketsReceived, v.PacketsReceived)
		atomic.StoreInt64(&s.Info.PacketsSent, v.PacketsSent)
		atomic.StoreInt64(&s.Info.InflightDropped, v.InflightDropped)
	}
	atomic.StoreInt64(&s.Info.Retained, v.Retained)
	atomic.StoreInt64(&s.Info.Inflight, v.Inflight)
	atomic.StoreInt64(&s.Info.Subscriptions, v.Subscriptions)
}

// loadSubscriptions restores subscriptions from the datastore.
func (s *Server) loadSubscriptions(v []storage.Subscription) {
	for _, sub := range v {
		sb := packets.Subscription{
			Filter:            sub.Filter,
			RetainHandling:    sub.RetainHandling,
			Qos:               sub.Qos,
			RetainAsPublished: sub.RetainAsPublished,
			NoLocal:           sub.NoLocal,
			Identifier:        sub.Identifier,
		}
		if s.Topics.Subscribe(sub.Client, sb) {
			if cl, ok := s.Clients.Get(sub.Client); ok {
				cl.State.Subscriptions.Add(sub.Filter, sb)
			}
		}
	}
}

// loadClients restores clients from the datastore.
func (s *Server) loadClients(v []storage.Client) {
	for _, c := range v {
		cl := s.NewClient(nil, c.Listener, c.ID, false)
		cl.Properties.Username = c.Username
		cl.Properties.Clean = c.Clean
		cl.Properties.ProtocolVersion = c.ProtocolVersion
		cl.Properties.Props = &packets.Properties{ // mote: a pointer (change 82)
			SessionExpiryInterval:     c.Properties.SessionExpiryInterval,
			SessionExpiryIntervalFlag: c.Properties.SessionExpiryIntervalFlag,
			AuthenticationMethod:      c.Properties.AuthenticationMethod,
			AuthenticationData:        c.Properties.AuthenticationData,
			RequestProblemInfoFlag:    c.Properties.RequestProblemInfoFlag,
			RequestProblemInfo:        c.Properties.RequestProblemInfo,
			RequestResponseInfo:       c.Properties.RequestResponseInfo,
			ReceiveMaximum:            c.Properties.ReceiveMaximum,
			TopicAliasMaximum:         c.Properties.TopicAliasMaximum,
			User:                      c.Properties.User,
			MaximumPacketSize:         c.Properties.MaximumPacketSize,
		}
		will := Will(c.Will)
		cl.Properties.Will = &will                 // mote: a pointer (change 83)
		if cl.Properties.TopicAliasMaximum() > 0 { // mote: as newClient made them before change 78
			cl.State.TopicAliases.Outbound = NewOutboundTopicAliases(s.Options.Capabilities.TopicAliasMaximum)
		}

		// cancel the context, update cl.State such as disconnected time and stopCause.
		cl.Stop(packets.ErrServerShuttingDown)

		expire := (cl.Properties.ProtocolVersion == 5 && cl.Properties.SessionExpiryInterval() == 0) || (cl.Properties.ProtocolVersion < 5 && cl.Properties.Clean)
		s.hooks.OnDisconnect(cl, packets.ErrServerShuttingDown, expire)
		if expire {
			cl.ClearInflights()
			s.UnsubscribeClient(cl)
		} else {
			s.Clients.Add(cl)
		}
	}
}

// loadInflight restores inflight messages from the datastore.
func (s *Server) loadInflight(v []storage.Message) {
	for _, msg := range v {
		if client, ok := s.Clients.Get(msg.Client); ok {
			client.State.Inflight.Set(msg.ToPacket())
		}
	}
}

// loadRetained restores retained messages from the datastore.
func (s *Server) loadRetained(v []storage.Message) {
	for _, msg := range v {
		s.Topics.RetainMessage(msg.ToPacket())
	}
}

// clearExpiredClients deletes all clients which have been disconnected for longer
// than their given expiry intervals.
func (s *Server) clearExpiredClients(dt int64) {
	s.expireClientsOf(s.Clients.AppendAll(nil), dt)
}

// mote: expireClientsOf is clearExpiredClients over the clients all,
// taken from Clients at once, keyed by their ID there (change 94).
func (s *Server) expireClientsOf(all []*Client, dt int64) {
	for _, client := range all {
		id := client.ID
		disconnected := client.StopTime()
		if disconnected == 0 {
			continue
		}

		expire := s.Options.Capabilities.MaximumSessionExpiryInterval
		if v, set := client.sessionExpiry(); client.Properties.ProtocolVersion == 5 && set { // mote: under expiryMu (change 53)
			expire = v
		}

		if disconnected+int64(expire) < dt {
			s.expireClient(id, client)
		}
	}
}

// mote: expireClient forgets an expired session, under its client id's
// takeover lock and only while cl is still the client filed for the id:
// upstream deleted the id from s.Clients (by id) after a CONNECT that had
// taken the session over meanwhile filed itself, and that client stayed
// connected where no later CONNECT of its id would find it (RemoveSession).
func (s *Server) expireClient(id string, cl *Client) {
	k := s.takeovers.lock(id)
	defer s.takeovers.unlock(id, k)
	if cur, ok := s.Clients.Get(id); !ok || cur != cl || cl.IsTakenOver() {
		return
	}
	s.hooks.OnClientExpired(cl)
	s.Clients.Delete(id) // [MQTT-4.1.0-2]
}

// clearExpiredRetainedMessage deletes retained messages from topics if they have expired.
func (s *Server) clearExpiredRetainedMessages(now int64) {
	for filter, pk := range s.Topics.Retained.GetAll() {
		expired := pk.ProtocolVersion == 5 && pk.Expiry > 0 && pk.Expiry < now // [MQTT-3.3.2-5]

		// If the maximum message expiry interval is set (greater than 0), and the message
		// retention period exceeds the maximum expiry, the message will be forcibly removed.
		enforced := s.Options.Capabilities.MaximumMessageExpiryInterval > 0 &&
			now-pk.Created > s.Options.Capabilities.MaximumMessageExpiryInterval

		if expired || enforced {
			s.Topics.Retained.Delete(filter)
			s.hooks.OnRetainedExpired(filter)
		}
	}
}

// clearExpiredInflights deletes any inflight messages which have expired.
func (s *Server) clearExpiredInflights(now int64) {
	s.clearExpiredInflightsOf(s.Clients.AppendAll(nil), now)
}

// mote: clearExpiredInflightsOf is clearExpiredInflights over the
// clients all, taken from Clients at once (change 94).
func (s *Server) clearExpiredInflightsOf(all []*Client, now int64) {
	for _, client := range all {
		if deleted := client.ClearExpiredInflights(now, s.Options.Capabilities.MaximumMessageExpiryInterval); len(deleted) > 0 {
			for _, id := range deleted {
				s.hooks.OnQosDropped(client, packets.Packet{PacketID: id})
			}
		}
	}
}

// sendDelayedLWT sends any LWT messages which have reached their issue time.
//
// mote: the will is cleared on the client that left it (willOwners), not
// on whichever client the id is filed for now: a client that reconnected
// with the same id and a will of its own (filed, its CONNACK not yet
// written, so its reconnect had not yet cancelled the delayed will; or the
// old connection's will queued after the takeover) lost its will, and no
// will was published when its connection ended (change 50).
func (s *Server) sendDelayedLWT(dt int64) {
	for id, pk := range s.loop.willDelayed.GetAll() {
		if dt > pk.Expiry {
			s.publishToSubscribers(pk) // [MQTT-3.1.2-8]
			if v, ok := s.loop.willOwners.Load(id); ok {
				cl := v.(*Client)
				if pk.FixedHeader.Retain {
					s.retainMessage(cl, pk)
				}
				cl.Properties.Will = nil // [MQTT-3.1.2-10] (mote: nil is none, change 83)
				s.hooks.OnWillSent(cl, pk)
			}
			s.deleteDelayedWill(id)
		}
	}
}

// mote: deleteDelayedWill drops the delayed will of a client id, and the
// client it belongs to (change 50).
func (s *Server) deleteDelayedWill(id string) {
	s.loop.willDelayed.Delete(id)
	s.loop.willOwners.Delete(id)
}

// Int64toa converts an int64 to a string.
func Int64toa(v int64) string {
	return strconv.FormatInt(v, 10)
}

// minimum differs from built-in min, it returns minimum of the non-zero value a and b.
// If both a and b are zero value, it reutrns 0.
func minimum(a, b int64) (m int64) {
	if a != 0 {
		m = a
		if b != 0 && b < a {
			m = b
		}
		return
	}

	if b != 0 {
		m = b
	}
	return
}

// mote: refuseUserOver refuses a PUBLISH or SUBSCRIBE that carried more
// User Properties than the server keeps (change 68) with reason 0x97 Quota
// exceeded, "an implementation or administratively imposed limit": a
// PUBACK (PUBREC at QoS 2) or a SUBACK of 0x97 for every filter, nothing
// published or subscribed, the connection kept. 0x95 Packet too large is
// for a packet past Maximum Packet Size, and a DISCONNECT only; 0x83
// Implementation specific error says less. A QoS 0 PUBLISH, which has no
// acknowledgement, is dropped. Only MQTT 5 packets have properties.
func (s *Server) refuseUserOver(cl *Client, pk *packets.Packet) error {
	cl.logUserOver(pk)
	switch {
	case pk.FixedHeader.Type == packets.Subscribe:
		codes := make([]byte, len(pk.Filters))
		for i := range codes {
			codes[i] = packets.ErrQuotaExceeded.Code
		}
		return cl.WritePacket(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Suback},
			PacketID:    pk.PacketID,
			ReasonCodes: codes,
			Properties:  packets.Properties{ReasonString: packets.ErrQuotaExceeded.Reason},
		})
	case pk.FixedHeader.Qos == 0:
		return nil
	case pk.FixedHeader.Qos == 1:
		return cl.WritePacket(s.buildAck(pk.PacketID, packets.Puback, 0, packets.Properties{}, packets.ErrQuotaExceeded))
	}
	return cl.WritePacket(s.buildAck(pk.PacketID, packets.Pubrec, 0, packets.Properties{}, packets.ErrQuotaExceeded))
}
