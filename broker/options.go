package broker

import (
	"crypto/tls"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/tree"
)

// SlowPolicy says what happens to a client whose tree deliveries pile up.
type SlowPolicy string

const (
	// SlowDrop drops the newest tree messages and counts them; mote-seq
	// shows the gap to MQTT 5 clients, who re-subscribe.
	SlowDrop SlowPolicy = "drop"
	// SlowDisconnect closes the client's connection.
	SlowDisconnect SlowPolicy = "disconnect"
)

// Options configure a Broker. The zero value of a field means its default.
type Options struct {
	TCP    string // TCP listener address; default ":1883"; "off" disables
	WS     string // WebSocket listener address (path /mqtt); default ":1884"; "off" disables
	WSPath string // WebSocket path; default "/mqtt"
	TLS    string // MQTT over TLS listener address (mqtts, 8883 by convention); "" for none
	WSS    string // WebSocket over TLS listener address; "" for none
	// TLSConfig serves TLS and WSS; required when either is set.
	TLSConfig *tls.Config

	Limits        tree.Limits // tree publish limits (SPEC §5); default tree.DefaultLimits
	MaxPacketSize uint32      // largest packet in either direction; default 64 MiB

	MaxClients  int64         // connected clients at most; default 100,000
	MaxInflight uint16        // QoS 1/2 messages in flight per client; default 1024
	PlainQueue  int           // plain messages queued per client; default 1000
	PlainWait   time.Duration // how long a publisher waits for room in a full queue; default 5s
	TreeQueue   int           // tree messages queued per client before SlowPolicy applies; default 1000
	SlowClient  SlowPolicy    // default SlowDrop
	LoopQueue   int           // publishes waiting for the message loop before publishers wait; default 100,000

	// Store, if not nil, persists retained rows: they are loaded at Start,
	// before listeners accept clients, and a retainer goroutine commits
	// every change to it. The broker closes it.
	Store retain.RowStore
	// Retain tunes the retainer's commit interval and bounds.
	Retain retain.Options
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
	// publishes, $set, snapshots and deltas (SPEC §6).
	ACL *auth.ACL

	Log zerolog.Logger // all logs; default: discarded
}

// Default listener addresses and sizes.
const (
	DefaultTCP           = ":1883"
	DefaultWS            = ":1884"
	DefaultWSPath        = "/mqtt"
	DefaultMaxPacketSize = 64 << 20
	DefaultTreeQueue     = 1000
	DefaultLoopQueue     = 100_000
	DefaultMaxClients    = 100_000
	DefaultMaxInflight   = 1024
	DefaultPlainQueue    = 1000
	DefaultPlainWait     = 5 * time.Second
)

// withDefaults fills in defaults and checks values.
func (o Options) withDefaults() (Options, error) {
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
	if o.MaxClients == 0 {
		o.MaxClients = DefaultMaxClients
	}
	if o.MaxInflight == 0 {
		o.MaxInflight = DefaultMaxInflight
	}
	if o.PlainQueue == 0 {
		o.PlainQueue = DefaultPlainQueue
	}
	if o.PlainWait == 0 {
		o.PlainWait = DefaultPlainWait
	}
	if o.TreeQueue == 0 {
		o.TreeQueue = DefaultTreeQueue
	}
	if o.SlowClient == "" {
		o.SlowClient = SlowDrop
	}
	if o.LoopQueue == 0 {
		o.LoopQueue = DefaultLoopQueue
	}
	switch {
	case o.SlowClient != SlowDrop && o.SlowClient != SlowDisconnect:
		return o, fmt.Errorf("broker: slow client policy %q: want drop or disconnect", o.SlowClient)
	case o.TreeQueue < 1 || o.LoopQueue < 1 || o.PlainQueue < 1 || o.MaxClients < 1:
		return o, fmt.Errorf("broker: queue sizes must be positive (tree %d, loop %d)", o.TreeQueue, o.LoopQueue)
	case o.TCP == "off" && o.WS == "off" && o.TLS == "" && o.WSS == "":
		return o, fmt.Errorf("broker: every listener is off")
	case (o.TLS != "" || o.WSS != "") && o.TLSConfig == nil:
		return o, fmt.Errorf("broker: TLS listeners need a certificate and key")
	}
	return o, nil
}

// LoadTLS builds a server TLS configuration from PEM certificate and key files.
func LoadTLS(certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("broker: TLS certificate %s / key %s: %w", certFile, keyFile, err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
