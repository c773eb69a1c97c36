package broker

import (
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/translate"
	"github.com/mote-mqtt/mote/tree"
)

// SlowPolicy says what happens to a client whose queue is full.
type SlowPolicy string

const (
	// SlowDrop drops what does not fit and counts it; mote-seq shows the
	// gap to MQTT 5 tree subscribers, who re-subscribe.
	SlowDrop SlowPolicy = "drop"
	// SlowDisconnect closes the client's connection.
	SlowDisconnect SlowPolicy = "disconnect"
)

// TakeoverPolicy says what a client gets when it connects with the client
// id of a session that another username created.
type TakeoverPolicy string

const (
	// TakeoverRefuse refuses the connection (CONNACK 0x85, client
	// identifier not valid; 0x02 for MQTT 3.1.1): a session, its queued
	// messages and its subscriptions belong to the username that made it.
	TakeoverRefuse TakeoverPolicy = "refuse"
	// TakeoverFresh lets the client in with a new, empty session; the other
	// user's session is dropped. A client id another user is connected on
	// is refused either way.
	TakeoverFresh TakeoverPolicy = "fresh"
)

// Options configure a Broker. The zero value of a field means its default.
type Options struct {
	TCP    string // TCP listener address; default ":1883"; "off" disables
	WS     string // WebSocket listener address (path /mqtt); default ":1884"; "off" disables
	WSPath string // WebSocket path; default "/mqtt"
	TLS    string // MQTT over TLS listener address (mqtts, 8883 by convention); "" for none
	WSS    string // WebSocket over TLS listener address; "" for none
	// Original is the address of a TCP listener that speaks the original
	// Mote broker's dialect (SPEC §7, original.go; the original's port was
	// 1993); "" for none. No other listener ever speaks it.
	Original string
	// OriginalWS is the address of a WebSocket listener (path /mote/, as
	// the original's app, mote-native, connects) that speaks the same
	// dialect; "" for none.
	OriginalWS string
	// TLSConfig serves TLS and WSS; required when either is set. Each
	// handshake reads the current one: Broker.Reload replaces it.
	TLSConfig *tls.Config
	// AllowedOrigins are the web origins ("https://app.example.com") whose
	// pages may open a WebSocket to the broker; "*" allows any. Requests
	// without an Origin header (programs, not browsers) are always let
	// through to MQTT's own authentication. Empty: the broker's own origin
	// only (the scheme, host and port the request was sent to: a page on
	// another port of the same host is another origin), and with anonymous
	// access only from a loopback host name, so a web page the local user
	// opens cannot reach a loopback broker. The HTTP API applies the same
	// rule (Broker.OriginAllowed).
	AllowedOrigins []string

	Limits        tree.Limits // tree publish limits (SPEC §5); default tree.DefaultLimits
	MaxPacketSize uint32      // largest packet in either direction; default 64 MiB
	// MaxTopicLen and MaxTopicLevels bound every topic and filter a client
	// sends, and every row topic a tree publish makes; default 4096 bytes
	// (at most 32,755, what the store can key) and 64 levels.
	MaxTopicLen    int
	MaxTopicLevels int
	// MaxUserProperties and MaxUserPropertyBytes bound the MQTT 5 User
	// Properties of one packet, in number and in bytes as sent (5 bytes
	// and key and value each); default 1,024 and 64 KiB, negative: no
	// bound. A PUBLISH or SUBSCRIBE past either is refused with reason
	// 0x97 Quota exceeded (PUBACK, PUBREC, SUBACK; a QoS 0 PUBLISH is
	// dropped), a CONNECT with CONNACK 0x97, any other packet with
	// DISCONNECT 0x97; each with a Warn line (within RefusalLog). Their decoding then keeps
	// none of them, so a packet costs the bound, not its size.
	MaxUserProperties    int
	MaxUserPropertyBytes int

	MaxClients  int64  // connected clients at most; default 100,000
	MaxInflight uint16 // QoS 1/2 messages in flight per client; default 1024
	// MaxKeepAlive caps the keep-alive a client may ask for, in seconds:
	// MQTT 5 clients asking for more (or for none) are told the cap
	// (Server Keep Alive), MQTT 3.1.1 clients asking for more are refused
	// (as Mosquitto's max_keepalive). 0: no cap.
	MaxKeepAlive uint16
	// ConnectTimeout closes a connection that has not sent a complete
	// CONNECT within it; default 10s. MaxConnectSize caps that packet,
	// read before anything is authenticated; default 64 KiB.
	ConnectTimeout time.Duration
	MaxConnectSize int
	// GuessLimit is how many failed logins naming a user (MQTT CONNECT,
	// HTTP Basic) a host may make in GuessWindow; past it the host's
	// logins are refused unchecked until the window ends (MQTT 5 CONNACK
	// 0x9F, HTTP 429). Default 10 per minute; negative: no limit.
	GuessLimit  int
	GuessWindow time.Duration
	// WriteTimeout bounds one write to a client; past it the connection is
	// closed (a client that stops reading does not linger). Default 10s.
	WriteTimeout time.Duration
	// ReaderSleep is how long a plain TCP client's connection waits
	// between packets with a read goroutine of its own; past it (and at
	// most half as long again) the goroutine is let go and the connection
	// waits for input in one epoll set of the broker's, until a packet,
	// its keep-alive deadline or its close comes, when a new goroutine
	// reads on (Linux; sleep_linux.go). An idle connection then holds no
	// goroutine stack. A client that sends more often than that never
	// sleeps; one that sends less often pays, at its next packet, a
	// wake-up through the epoll goroutine (one hop, a new goroutine) and,
	// ReaderSleep later, about 9 µs of CPU to sleep again. Default 10s;
	// negative: never. A fresh connection whose CONNECT is followed by
	// nothing sleeps from its CONNACK on, unless ReaderSleep is negative.
	ReaderSleep time.Duration

	// QueueBytes bounds what one client may have queued, in bytes
	// (snapshots and retained replays are read as the client drains them,
	// so they do not count until then); default 8 MiB. A plain message
	// counts its topic, payload and properties and 160 bytes (its share of
	// memory), counted whole for every subscriber. A message that finds
	// the queue full makes its publisher wait for room, in line behind the
	// publishers already waiting (first come, first served): PublishWait
	// (default 1s) for the whole publish, and longer only while the client
	// is being written, up to 5 × PublishWait (a subscriber that reads
	// steadily slows its publishers to its pace; a publisher's own
	// connection is not read while it waits). Each client may hold publishers back
	// PublishWait in all, earning it back as it is written (a second for
	// every 64 messages or 64 KiB, whichever comes first); one that runs
	// out is stalled: no publisher waits for it until its credit is whole
	// again. A client whose queue has been full for PublishWait with
	// nothing written to it is out of credit too, whoever waited: clients
	// that stop reading together cost publishers about one PublishWait,
	// not one each. For a plain TCP client on Linux, what its TCP stack
	// acknowledged of a write still in progress counts as written (the
	// kernel may hold one write longer than PublishWait while the client
	// reads steadily). A message that does not get room is dropped or
	// disconnects the client: SlowClient.
	QueueBytes  int
	PublishWait time.Duration
	// MaxSnapshotBytes bounds the bytes of $sync snapshots (and $hist
	// answers, resume deltas) held for MQTT clients, all together, from
	// the SUBSCRIBE (by an estimate from the rows matching) until they
	// are written; a SUBSCRIBE whose snapshot does not fit is refused,
	// SUBACK 0x97 (MQTT 3.1.1: 0x80), with a report. A client counts the
	// largest of its own (its writer makes one at a time); a snapshot
	// shared by several clients counts once. One snapshot fits when none
	// is held, however large. A resumed session's $sync subscription has
	// no SUBSCRIBE to refuse: its snapshot waits for room, first come
	// first, and SUBSCRIBEs are refused while one waits, but for small
	// ones (an estimate of at most a 64th of it), which have the last
	// 16th to themselves (large ones and waiters the rest). Default 256 MiB.
	MaxSnapshotBytes int64
	SlowClient       SlowPolicy // default SlowDrop
	LoopQueue        int        // publishes waiting for the message loop before publishers wait, at most, whatever they weigh (see LoopBudget); default 100,000
	// LoopBudget bounds how far the message loop may be behind, in its
	// own time: publishers wait once the publishes waiting for it would
	// take it about this long to run, at what the last ones' rows cost
	// (a publish weighs the rows it writes; however few they are: 64
	// rows' worth at least, or LoopQueue if smaller);
	// default 100ms. A retained publish delivered to many subscribers
	// costs many times one delivered to few, so one publisher cannot
	// queue minutes of work ahead of everyone else's publishes.
	LoopBudget time.Duration

	// MaxOfflineBytes bounds what the broker holds, in all, for persistent
	// sessions whose clients are away: QoS 1/2 messages, resent when they
	// come back, at most MaxInflight per session, each counted as 1.25 KiB
	// plus its topic, payload and MQTT 5 properties; those a session's connection left sent
	// and not acknowledged count from the moment it ends, as those held
	// for it later do. Default 256 MiB. Past it the session holding the
	// most of the user holding the most (a user as for MaxSessions) has
	// every message it holds dropped, until the rest fit: a message for a
	// session of another user is held by making room so, unless that user
	// would then hold as much; it is dropped otherwise. A dropped message
	// is gone (the session resumes without it); it is counted
	// (offline_full), and a Warn log line names each session and its user.
	// A QoS 2 message the client received (PUBREC) and did not complete
	// counts too (its PUBREL is held): dropped, its packet id is kept (2
	// bytes) and the client gets its PUBREL when it resumes, so it takes
	// no later message for a duplicate of it.
	MaxOfflineBytes int
	// MaxSessions bounds the persistent sessions kept for clients that
	// are away (MQTT 3.1.1 Clean Session 0, MQTT 5 Session Expiry
	// Interval above 0); default 100,000 (DefaultMaxSessions); negative:
	// no bound. MaxClients bounds connected clients only: a client
	// connecting with ever new client ids could leave sessions, and their
	// subscriptions, without end. A disconnect that leaves more than
	// MaxSessions away ends one at once, as if it had expired: the one
	// away longest of the user with the most sessions away (a tie: the
	// user whose oldest left first), so a user leaving ever new client
	// ids ends its own sessions first. A user is the username checked
	// against Users; the anonymous clients are one user, and without
	// Users every client is one. Its subscriptions are removed, the
	// messages held for it dropped (counted session_ended), its delayed
	// will published; a Warn log line names it and its user, and
	// $SYS/mote/sessions/ended and mote_sessions_ended_total count it.
	MaxSessions int

	// MaxSubscriptions bounds one client's subscriptions (default 10,000),
	// and their filters' levels in all to 4 per subscription (each level
	// of a filter costs mochi's topic index ~600 bytes);
	// MaxSubscriptionsPerPacket the filters of one SUBSCRIBE (default
	// 1,000); more are refused with reason 0x97 (quota exceeded).
	MaxSubscriptions          int
	MaxSubscriptionsPerPacket int

	// RefusalLog bounds the log lines that requests refused one at a time
	// write (a refused publish, subscription or CONNECT, a packet over the
	// user property bounds, one that ends its connection) and the lines
	// a client can cause once a connection or session (a slow client, a
	// session ended past MaxSessions, held messages dropped past
	// MaxOfflineBytes), so that a
	// client looping refused packets cannot fill the disk through the
	// log: default 10 lines per connection and 100 for the broker in each
	// 10 s; the first line of each reason code is kept, and the lines left out
	// are counted in one line (suppressed=K) and in
	// mote_log_lines_suppressed_total.
	RefusalLog LogLimit

	// Takeover decides what a client gets that connects with the client
	// id of a session another username made; default TakeoverRefuse.
	Takeover TakeoverPolicy

	// Store, if not nil, persists retained rows: they are loaded at Start,
	// before listeners accept clients, and a retainer goroutine commits
	// every change to it. The broker closes it.
	Store retain.RowStore
	// Retain tunes the retainer's commit interval and bounds.
	Retain retain.Options
	// Cluster, if not nil, makes the broker one node of a cluster (SPEC
	// §12, cluster.go); Store must then be the node's copy of the
	// cluster's log.
	Cluster *Cluster
	// SyncRetain acknowledges QoS 1 and 2 publishes that change retained
	// rows only once their rows are committed (nothing acknowledged is lost
	// in a crash; slower).
	SyncRetain bool

	// Users, if not nil, authenticate clients by username and password
	// (a Mosquitto password file). Without Users and without
	// AllowAnonymous, every listener binds to loopback only.
	Users *auth.Users
	// AllowAnonymous accepts clients that send no username.
	AllowAnonymous bool
	// ACL, if not nil, is enforced for plain traffic and per row for tree
	// publishes, $set, snapshots and deltas (SPEC §6). Broker.Reload
	// replaces Users, AllowAnonymous and ACL while clients stay connected.
	ACL *auth.ACL
	// Translators, if not nil, keep topic hierarchies in step (SPEC §11;
	// translate.New validates them). Broker.Reload replaces them.
	Translators *translate.Set

	Log zerolog.Logger // all logs; default: discarded
}

// Default listener addresses and sizes.
const (
	DefaultTCP                       = ":1883"
	DefaultWS                        = ":1884"
	DefaultWSPath                    = "/mqtt"
	DefaultMaxPacketSize             = 64 << 20
	DefaultMaxTopicLen               = 4096
	DefaultMaxTopicLevels            = 64
	DefaultMaxUserProperties         = 1_024
	DefaultMaxUserPropertyBytes      = 64 << 10
	DefaultLoopQueue                 = 100_000
	DefaultLoopBudget                = 100 * time.Millisecond
	DefaultMaxClients                = 100_000
	DefaultMaxInflight               = 1024
	DefaultConnectTimeout            = 10 * time.Second
	DefaultMaxConnectSize            = 64 << 10
	DefaultWriteTimeout              = 10 * time.Second
	DefaultReaderSleep               = 10 * time.Second
	DefaultQueueBytes                = 8 << 20
	DefaultMaxSnapshotBytes          = 256 << 20
	DefaultPublishWait               = time.Second
	DefaultMaxSubscriptions          = 10_000
	DefaultMaxOfflineBytes           = 256 << 20
	DefaultMaxSessions               = DefaultMaxClients
	DefaultMaxSubscriptionsPerPacket = 1_000
	DefaultResumeWindow              = 1_000_000
	DefaultRefusalLogPerClient       = 10
	DefaultRefusalLogTotal           = 100
	DefaultRefusalLogInterval        = 10 * time.Second
	// MaxTopicLenLimit is the largest MaxTopicLen: the store's longest key.
	MaxTopicLenLimit = retain.MaxTopic
)

// LogLimit bounds log lines: PerClient for each connection and Total for
// the broker in each Interval. Zero: the default; negative: no bound.
type LogLimit struct {
	PerClient int
	Total     int
	Interval  time.Duration
}

// withDefaults fills in defaults and checks values.
func (o Options) withDefaults() (Options, error) {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	if o.TCP == "" {
		o.TCP = DefaultTCP
	}
	if o.WS == "" {
		o.WS = DefaultWS
	}
	if o.WSPath == "" {
		o.WSPath = DefaultWSPath
	}
	if o.Limits == (tree.Limits{}) {
		o.Limits = tree.DefaultLimits()
	}
	if o.MaxPacketSize == 0 {
		o.MaxPacketSize = DefaultMaxPacketSize
	}
	def(&o.MaxTopicLen, DefaultMaxTopicLen)
	def(&o.MaxTopicLevels, DefaultMaxTopicLevels)
	def(&o.MaxUserProperties, DefaultMaxUserProperties)
	def(&o.MaxUserPropertyBytes, DefaultMaxUserPropertyBytes)
	if o.MaxClients == 0 {
		o.MaxClients = DefaultMaxClients
	}
	if o.MaxInflight == 0 {
		o.MaxInflight = DefaultMaxInflight
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	def(&o.MaxConnectSize, DefaultMaxConnectSize)
	def(&o.GuessLimit, DefaultGuessLimit)
	if o.GuessWindow <= 0 {
		o.GuessWindow = DefaultGuessWindow
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.ReaderSleep == 0 {
		o.ReaderSleep = DefaultReaderSleep
	}
	def(&o.QueueBytes, DefaultQueueBytes)
	if o.MaxSnapshotBytes == 0 {
		o.MaxSnapshotBytes = DefaultMaxSnapshotBytes
	}
	if o.PublishWait == 0 {
		o.PublishWait = DefaultPublishWait
	}

	if o.SlowClient == "" {
		o.SlowClient = SlowDrop
	}
	def(&o.LoopQueue, DefaultLoopQueue)
	if o.LoopBudget == 0 {
		o.LoopBudget = DefaultLoopBudget
	}
	def(&o.MaxSubscriptions, DefaultMaxSubscriptions)
	def(&o.MaxOfflineBytes, DefaultMaxOfflineBytes)
	def(&o.MaxSessions, DefaultMaxSessions)
	def(&o.MaxSubscriptionsPerPacket, DefaultMaxSubscriptionsPerPacket)
	def(&o.RefusalLog.PerClient, DefaultRefusalLogPerClient)
	def(&o.RefusalLog.Total, DefaultRefusalLogTotal)
	if o.RefusalLog.Interval <= 0 {
		o.RefusalLog.Interval = DefaultRefusalLogInterval
	}
	if o.Takeover == "" {
		o.Takeover = TakeoverRefuse
	}
	for _, origin := range o.AllowedOrigins {
		if _, _, ok := parseOrigin(strings.TrimSuffix(origin, "/")); !ok && origin != "*" {
			return o, fmt.Errorf("broker: allowed origin %q: want scheme://host[:port] (http or https), or *", origin)
		}
	}
	switch {
	case o.SlowClient != SlowDrop && o.SlowClient != SlowDisconnect:
		return o, fmt.Errorf("broker: slow client policy %q: want drop or disconnect", o.SlowClient)
	case o.Takeover != TakeoverRefuse && o.Takeover != TakeoverFresh:
		return o, fmt.Errorf("broker: client id takeover policy %q: want refuse or fresh", o.Takeover)
	case o.QueueBytes < 1 || o.MaxSnapshotBytes < 1 || o.LoopQueue < 1 || o.MaxClients < 1 || o.MaxSubscriptions < 1 || o.MaxSubscriptionsPerPacket < 1 || o.MaxConnectSize < 1:
		return o, fmt.Errorf("broker: sizes and counts must be positive")
	case o.PublishWait < 0 || o.ConnectTimeout < 0 || o.WriteTimeout < 0 || o.LoopBudget < 0:
		return o, fmt.Errorf("broker: durations must not be negative")
	case o.MaxTopicLen < 1 || o.MaxTopicLen > MaxTopicLenLimit:
		return o, fmt.Errorf("broker: max topic length %d: want 1 to %d", o.MaxTopicLen, MaxTopicLenLimit)
	case o.MaxTopicLevels < 1:
		return o, fmt.Errorf("broker: max topic levels must be positive")
	case o.TCP == "off" && o.WS == "off" && o.TLS == "" && o.WSS == "" && o.Original == "" && o.OriginalWS == "":
		return o, fmt.Errorf("broker: every listener is off")
	case (o.TLS != "" || o.WSS != "") && o.TLSConfig == nil:
		return o, fmt.Errorf("broker: TLS listeners need a certificate and key")
	}
	if o.Retain.ResumeWindow == 0 {
		o.Retain.ResumeWindow = DefaultResumeWindow
	}
	if err := checkHistory(o.Retain.History); err != nil {
		return o, fmt.Errorf("broker: %w", err)
	}
	if o.Limits.MaxTopicLen == 0 || o.Limits.MaxTopicLen > o.MaxTopicLen {
		o.Limits.MaxTopicLen = o.MaxTopicLen
	}
	if o.Limits.MaxTopicLevels == 0 || o.Limits.MaxTopicLevels > o.MaxTopicLevels {
		o.Limits.MaxTopicLevels = o.MaxTopicLevels
	}
	return o, nil
}

// checkHistory checks history rules (Options.Retain.History, Reload.History).
func checkHistory(rules []retain.HistoryRule) error {
	for _, h := range rules {
		if err := h.Validate(); err != nil {
			return err
		}
		if h.Keep > maxHistLimit {
			return fmt.Errorf("history filter %q: keep %d, at most %d", h.Filter, h.Keep, maxHistLimit)
		}
	}
	return nil
}

// LoadTLS builds a server TLS configuration from PEM certificate and key
// files. Broker.Reload takes a new one: handshakes from then on use it.
func LoadTLS(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("broker: TLS certificate %s / key %s: %w", certFile, keyFile, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
