package broker

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/tree"
)

// Broker is a running Mote broker.
type Broker struct {
	opts   Options
	log    zerolog.Logger
	server *mqtt.Server
	inline *mqtt.Client // publishes rows, reports and plain retained packets into mochi
	parser *tree.Parser
	tree   *tree.Tree // owned by the loop goroutine
	reqs   *requestQueue
	ret    *retain.Retainer              // nil without a store
	props  map[string]packets.Properties // MQTT 5 properties of plain retained rows; owned by the loop

	conns    sync.Map // *mqtt.Client → *conn
	serial   atomic.Uint64
	treeSubs atomic.Int64 // tree subscriptions registered; 0 lets plain events skip the loop
	subsSent atomic.Int64 // subscribe requests pushed, not yet handled by the loop

	tcp, tls *tcpListener
	ws, wss  *wsListener

	loopDone chan struct{}
	writers  sync.WaitGroup // per-connection tree writers
	closing  sync.Once

	stats Stats
}

// Stats are the broker's counters.
type Stats struct {
	Dropped      atomic.Int64 // messages (tree and plain) dropped for slow clients
	Refused      atomic.Int64 // refused Mote publishes and subscriptions
	Panics       atomic.Int64 // connections closed by a recovered panic
	Batches      atomic.Int64 // batches applied by the message loop
	OpsApplied   atomic.Int64 // publishes applied
	DeltasQueued atomic.Int64 // tree messages queued to clients
	Folded       atomic.Int64 // deltas folded into one still waiting for its client's writer
	Throttled    atomic.Int64 // publishes that waited for the disk
}

// New builds a broker; Start binds its listeners.
func New(opts Options) (*Broker, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	parser, err := tree.NewParser(opts.Limits)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumMessageExpiryInterval = 0 // mochi's 86400 would delete retained rows after a day
	caps.MaximumPacketSize = opts.MaxPacketSize
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	caps.MaximumClients = opts.MaxClients
	caps.MaximumInflight = opts.MaxInflight
	caps.ReceiveMaximum = opts.MaxInflight
	// mochi allocates this queue whole for every client, 8 bytes a slot (its
	// default 8192 costs 64 KiB per idle connection); publishes no longer go
	// through it (deliverPlain), only mochi's own $SYS messages and wills.
	caps.MaximumClientWritesPending = 128
	b := &Broker{
		opts:     opts,
		log:      opts.Log,
		parser:   parser,
		tree:     tree.New(),
		reqs:     newRequestQueue(opts.LoopQueue),
		props:    map[string]packets.Properties{},
		loopDone: make(chan struct{}),
	}
	b.server = mqtt.New(&mqtt.Options{Capabilities: caps, Logger: newSlog(opts.Log)})
	b.inline = b.server.NewClient(nil, mqtt.LocalListener, "$mote", true)
	if err := b.server.AddHook(&hook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("broker: add hook: %w", err)
	}
	return b, nil
}

// Start loads the stored rows, binds the listeners and starts serving. It
// returns once clients can connect.
func (b *Broker) Start() error {
	if b.opts.Store != nil {
		if err := b.load(); err != nil {
			return err
		}
		b.ret = retain.New(b.opts.Store, b.opts.Retain, b.log.With().Str("component", "retainer").Logger())
	}
	b.localOnly()
	onPanic := func(c net.Conn) { b.connPanicked(c) }
	if b.opts.TCP != "off" {
		b.tcp = &tcpListener{id: "tcp", addr: b.opts.TCP, log: b.log, onPanic: onPanic}
		if err := b.server.AddListener(b.tcp); err != nil {
			return err
		}
	}
	if b.opts.WS != "off" {
		b.ws = &wsListener{id: "ws", addr: b.opts.WS, path: b.opts.WSPath, log: b.log, onPanic: onPanic}
		if err := b.server.AddListener(b.ws); err != nil {
			b.closeListeners()
			return err
		}
	}
	if b.opts.TLS != "" {
		b.tls = &tcpListener{id: "tls", addr: b.opts.TLS, tls: b.opts.TLSConfig, log: b.log, onPanic: onPanic}
		if err := b.server.AddListener(b.tls); err != nil {
			b.closeListeners()
			return err
		}
	}
	if b.opts.WSS != "" {
		b.wss = &wsListener{id: "wss", addr: b.opts.WSS, path: b.opts.WSPath, tls: b.opts.TLSConfig, log: b.log, onPanic: onPanic}
		if err := b.server.AddListener(b.wss); err != nil {
			b.closeListeners()
			return err
		}
	}
	go b.loop()
	if err := b.server.Serve(); err != nil {
		return fmt.Errorf("broker: serve: %w", err)
	}
	ev := b.log.Info()
	for _, l := range []*tcpListener{b.tcp, b.tls} {
		if l != nil {
			ev = ev.Str(l.id, l.Address())
		}
	}
	for _, l := range []*wsListener{b.ws, b.wss} {
		if l != nil {
			ev = ev.Str(l.id, l.Address()+b.opts.WSPath)
		}
	}
	ev.Msg("mote broker listening")
	return nil
}

// TCPAddr is the TCP listener's address ("" when off or not started).
func (b *Broker) TCPAddr() string {
	if b.tcp == nil || b.tcp.ln == nil {
		return ""
	}
	return b.tcp.Address()
}

// WSAddr is the WebSocket listener's address, without the path.
func (b *Broker) WSAddr() string {
	if b.ws == nil || b.ws.ln == nil {
		return ""
	}
	return b.ws.Address()
}

// TLSAddr is the TLS listener's address ("" when none).
func (b *Broker) TLSAddr() string {
	if b.tls == nil || b.tls.ln == nil {
		return ""
	}
	return b.tls.Address()
}

// WSSAddr is the WebSocket-over-TLS listener's address, without the path.
func (b *Broker) WSSAddr() string {
	if b.wss == nil || b.wss.ln == nil {
		return ""
	}
	return b.wss.Address()
}

// Stats returns the broker's counters.
func (b *Broker) Stats() *Stats { return &b.stats }

func (b *Broker) closeListeners() {
	for _, l := range []*tcpListener{b.tcp, b.tls} {
		if l != nil && l.ln != nil {
			l.Close(func(string) {})
		}
	}
	for _, l := range []*wsListener{b.ws, b.wss} {
		if l != nil && l.ln != nil {
			l.Close(nil)
		}
	}
}

// Close stops the broker: listeners close, clients are disconnected, the
// message loop applies what is already queued and stops, and the tree
// writers end. It waits for all of them.
func (b *Broker) Close() error {
	b.closing.Do(func() {
		b.closeListeners() // no new connections
		b.conns.Range(func(_, v any) bool {
			v.(*conn).cl.Stop(packets.ErrServerShuttingDown) // mochi then runs OnDisconnect
			return true
		})
		// mochi's Close waits for every client goroutine; one stuck in a
		// handshake must not hold the shutdown forever.
		closed := make(chan struct{})
		go func() { b.server.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			b.log.Warn().Msg("mochi did not stop within 5 s; going on")
		}
		for _, l := range []*tcpListener{b.tcp, b.tls} {
			if l != nil {
				waitTimeout(&l.wg, 5*time.Second)
			}
		}
		b.reqs.close()
		select { // the loop applies what is queued, then ends
		case <-b.loopDone:
		case <-time.After(10 * time.Second):
			b.log.Error().Msg("message loop did not stop within 10 s; flushing the retainer anyway")
		}
		if b.ret != nil {
			if err := b.ret.Close(); err != nil {
				b.log.Error().Err(err).Msg("retainer: final commit failed")
			}
			if err := b.opts.Store.Close(); err != nil {
				b.log.Error().Err(err).Msg("closing the store")
			}
		}
		b.conns.Range(func(_, v any) bool {
			v.(*conn).close()
			return true
		})
		waitTimeout(&b.writers, 5*time.Second)
		b.log.Info().Msg("mote broker stopped")
	})
	return nil
}

// load puts every stored row into the tree core, before any client can
// connect.
func (b *Broker) load() error {
	start := time.Now()
	n := 0
	err := b.opts.Store.Load(func(r retain.Row) error {
		b.tree.Store().Set(r.Topic, r.Value, r.QoS)
		n++
		return nil
	})
	if err != nil {
		return fmt.Errorf("broker: load retained rows: %w", err)
	}
	b.server.Info.Retained = int64(n)
	b.log.Info().Int("rows", n).Dur("took", time.Since(start)).Msg("retained rows loaded")
	return nil
}

// hasTreeSubs reports whether a plain event may concern a tree
// subscription: one is registered, or one is on its way to the loop (its
// SUBACK may already be out).
func (b *Broker) hasTreeSubs() bool {
	return b.treeSubs.Load() > 0 || b.subsSent.Load() > 0
}

// pushSubscribe hands a subscribe request to the loop.
func (b *Broker) pushSubscribe(r request) {
	b.subsSent.Add(1)
	if !b.reqs.push(r) {
		b.subsSent.Add(-1)
	}
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// inject hands a publish to mochi as the broker's own client: mochi
// retains it (if flagged) and delivers it to plain subscribers.
func (b *Broker) inject(pk packets.Packet) {
	pk.FixedHeader.Type = packets.Publish
	pk.PacketID = uint16(pk.FixedHeader.Qos) // mochi's own Publish does this to pass validation
	pk.Origin = ""
	if err := b.server.InjectPacket(b.inline, pk); err != nil {
		b.log.Error().Err(err).Str("topic", pk.TopicName).Msg("mochi refused an injected publish")
	}
}

// rowPacket is the plain publish of one applied row.
func rowPacket(r tree.Row, qos byte) packets.Packet {
	return packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: r.Retain},
		TopicName:   r.Topic,
		Payload:     []byte(r.Value.Data),
	}
}

// connPanicked cleans up after a connection whose goroutine panicked: mochi
// never ran its disconnect hooks for it.
func (b *Broker) connPanicked(nc net.Conn) {
	b.stats.Panics.Add(1)
	b.conns.Range(func(k, v any) bool {
		if c := v.(*conn); c.cl.Net.Conn == nc {
			b.log.Error().Str("client", c.cl.ID).Str("remote", c.cl.Net.Remote).Msg("client connection closed after a panic")
			b.dropConn(c.cl)
			return false
		}
		return true
	})
}

// localOnly binds every listener to loopback when nobody is authenticated
// and anonymous access was not asked for (as Mosquitto 2 does).
func (b *Broker) localOnly() {
	if b.opts.Users != nil || b.opts.AllowAnonymous {
		return
	}
	for _, addr := range []*string{&b.opts.TCP, &b.opts.WS, &b.opts.TLS, &b.opts.WSS} {
		if *addr == "off" || *addr == "" {
			continue
		}
		host, port, err := net.SplitHostPort(*addr)
		if err != nil {
			continue
		}
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			continue
		}
		*addr = net.JoinHostPort("127.0.0.1", port)
	}
	b.log.Warn().Msg("no password file and no --allow-anonymous: listening on loopback only; " +
		"add users with 'mote passwd' and --password-file, or pass --allow-anonymous, to accept remote clients")
}
