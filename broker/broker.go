package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/translate"
	"github.com/mote-mqtt/mote/tree"
)

// Broker is a running Mote broker.
type Broker struct {
	opts      Options
	log       zerolog.Logger
	server    *mqtt.Server
	parser    *tree.Parser
	access    accessRef                     // users and ACL: swapped whole by Reload
	tlsConf   atomic.Pointer[tls.Config]    // what TLS and WSS handshakes use: swapped by Reload
	reloading sync.Mutex                    // one Reload at a time
	trans     atomic.Pointer[translate.Set] // translators (SPEC §11): swapped whole by Reload; nil for none
	wills     wills
	tree      *tree.Tree // owned by the loop goroutine
	reqs      *requestQueue
	ret       *retain.Retainer               // nil without a store
	cl        *clusterNode                   // nil unless a cluster node (cluster.go)
	histReads chan struct{}                  // a semaphore: $hist answers being read from disk
	marks     markLog                        // deletion markers without a store; the loop's
	props     map[string]*packets.Properties // MQTT 5 properties of plain retained rows (shared, never changed); owned by the loop
	pace      pacer                          // paced deltas (pace.go); owned by the loop
	bufs      bufPool                        // writers' encode buffers, lent from encode to flush (bufpool.go)
	readBufs  readBufPool                    // plain TCP connections' read buffers, lent while they hold input (bufpool.go)
	lists     replayLists                    // retained replays' row lists, shared by filter (replay.go); owned by the loop
	applied   atomic.Uint64                  // the store's revision once a batch is applied, stored before it is delivered (replayRows)
	// ackedAhead counts the MQTT clients' QoS 1/2 publishes that change
	// rows, acknowledged without waiting for the loop (queued to it, not
	// run inline) and not yet run by it: a SUBSCRIBE waits for them
	// (afterAcked). Added to by toLoop, taken from by the loop.
	ackedAhead atomic.Int64
	// resumeFloor is the lowest revision a resume may start from: one past
	// the revision of the last Reload, whose copies were made under other
	// read rules (owned by the loop).
	resumeFloor uint64
	// retScratch is the loop's slice of row changes for the retainer,
	// reused batch after batch (apply); owned by the loop.
	retScratch []retain.Change
	// loopMu is held by whoever runs the loop's work: the loop goroutine,
	// or a publisher running its own publish while the loop is idle
	// (runInline). loopOps and loopMeta are its scratch, and loopRows the
	// rows its publishes wrote so far (runBatch), owned by its holder.
	loopMu   sync.Mutex
	loopLive atomic.Bool // the loop goroutine runs: runInline may stand in for it
	loopOps  []tree.Op
	loopMeta []*pubMeta
	loopRows int
	// loopBatch and loopDelta are the loop's scratch for a batch's rows
	// and for a delta written directly (applyBatch, pushDelta): a delta
	// that waits in a queue gets its own copies (batchRows.keep), so a
	// tree publish whose deltas are all written at once allocates
	// neither; owned by loopMu's holder.
	loopBatch batchRows
	loopDelta deltaItem
	// loopPub is the pubMeta of a publish run inline (runInline), while
	// its batch runs; owned by loopMu's holder.
	loopPub pubMeta

	plainIdx subIndex // plain subscriptions, as delivery reads them (subindex.go)

	keptIn keptInbound // client QoS 2 publishes of persistent sessions that mochi's map could not keep

	conns      connTable[*mqtt.Client] // *mqtt.Client → *conn
	connWills  sync.Map                // *mqtt.Client → *will: a CONNECT's will from OnSessionEstablish until its conn holds it (OnSessionEstablished) or it is due (OnWill)
	byID       connTable[string]       // client id (or a door session's key) → *conn: where plain subscriptions deliver (a kept session's ended connection until it hands its messages on)
	parked     sync.Map                // *conn whose messages wait for a client taking its session over (conn.unpark)
	arriving   arriving                // messages for resumed sessions whose connection is not filed yet
	holds      sync.Pool               // *holdBatch, for deliverTo: a publish with no session away to hold for makes none
	serial     atomic.Uint64
	treeSubs   atomic.Int64 // tree subscriptions registered; 0 lets plain events skip the loop
	subsSent   atomic.Int64 // subscribe requests pushed, not yet handled by the loop
	lastTick   atomic.Int64 // when the loop last took work (Unix ns)
	offline    offlineHeld  // bytes held for offline persistent sessions
	away       awaySessions // persistent sessions whose clients are away, per user, longest away first (Options.MaxSessions)
	awayTrees  awayTrees    // what the $tree subscriptions of sessions away were last written (away.go); owned by the loop
	handshakes handshakes   // connections before their CONNECT
	guesses    *guesses     // failed logins per host (guesses.go)

	tcp, tls *tcpListener
	orig     *tcpListener // the original dialect's (SPEC §7), if configured
	origWS   *wsListener  // the same over WebSocket, if configured
	ws, wss  *wsListener

	rawMu     sync.Mutex            // guards raw and rawClosed
	raw       map[*netConn]struct{} // connections being served
	rawClosed bool                  // Close has begun: no new connection is served
	sessions  sync.WaitGroup        // connections being served
	lingers   sync.WaitGroup        // closed connections still lingering (netConn.Close): Close waits for them
	sleepers  *sleepers             // connections whose readers sleep (sleep_linux.go); nil: none do
	born      time.Time             // New's time, with its monotonic clock: the sleepers' deadlines count from it (netConn.rdl)

	loopDone  chan struct{}
	stop      chan struct{}  // closed by Close: stops the $SYS ticker
	splits    chan struct{}  // snapshots being split, at most its capacity at once
	snaps     Budget         // bytes of snapshots held for MQTT clients (MaxSnapshotBytes; snapbudget.go)
	shares    snapShares     // snapshots being written, shared by the subscriptions asking for the same
	estimates chan struct{}  // estimates walking the tree ($sync SUBSCRIBEs, AnswerSize), at most its capacity at once
	guessed   atomic.Int64   // bytes of rows the snapshot estimates walked (snapshotGuess), in all
	handing   chan struct{}  // writers reading their replays' rest for the session (handReplaysOn), at most its capacity at once
	writers   sync.WaitGroup // connections whose writer has not done its finishing duties
	tickers   sync.WaitGroup // the $SYS ticker
	started   bool
	closing   sync.Once
	closeErr  error

	// writerIdle is how long (ns) a writer waits for work before it exits
	// (0: writerIdleFor, writer.go); tests shorten it.
	writerIdle atomic.Int64

	// adopting, if set, is called by OnSessionEstablished once a
	// connection took its session's client QoS 2 state, before the
	// connection is filed; tests hold a connection there
	// (TestQoS2StateQuickTakeover).
	adopting atomic.Pointer[func(cl *mqtt.Client)]
	// establishing, if set, is called by OnSessionEstablished just
	// before the connection is filed (filed false) and just after (true);
	// tests hold a connection there (TestRTX5TakeoverOrder).
	establishing atomic.Pointer[func(cl *mqtt.Client, filed bool)]
	// takingInflight, if set, is called by a writer taking a QoS 1/2
	// publish in flight for cl at each takeStep; tests hold a writer
	// there (TestRTX5TakenBackCleared, TestMovedPlainNotHandedOn).
	// Unset, one atomic load a QoS 1/2 publish written.
	takingInflight atomic.Pointer[func(cl *mqtt.Client, step takeStep)]

	stats      Stats
	logs       *logBudget    // bounds the log lines of refused requests (loglimit.go)
	turns      chan struct{} // read turns of connections flooding refused packets (turns.go)
	meter      *meters       // Prometheus figures (metrics.go)
	healthWait time.Duration // how long Health waits for the loop and the store
}

// Stats are the broker's counters.
type Stats struct {
	Dropped      atomic.Int64 // messages dropped for slow clients
	TooLarge     atomic.Int64 // messages skipped: over the client's Maximum Packet Size
	Refused      atomic.Int64 // refused publishes, subscriptions, wills and connections
	Panics       atomic.Int64 // connections closed by a recovered panic
	Batches      atomic.Int64 // batches applied by the message loop
	OpsApplied   atomic.Int64 // publishes applied
	DeltasQueued atomic.Int64 // tree messages queued to clients
	Folded       atomic.Int64 // deltas folded into one still waiting for its client's writer
	Throttled    atomic.Int64 // publishes that waited for the disk
	Inline       atomic.Int64 // batches of one publish (and its translation) run by their publisher while the loop was idle (runInline)
	Direct       atomic.Int64 // QoS 0 messages written by their deliverer, not handed to a writer (direct.go)
	DirectRest   atomic.Int64 // of those, the ones the socket did not take whole: their writer wrote the rest
	Writers      atomic.Int64 // writer goroutines running now: one runs only while its connection has something to write (writer.go)
	// SessionsEnded counts the persistent sessions of clients away ended
	// early: more than Options.MaxSessions were kept (endAway).
	SessionsEnded atomic.Int64
}

// New builds a broker; Start loads its rows and binds its listeners.
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
	caps.MaximumUserProperties = max(opts.MaxUserProperties, 0) // negative: no bound (0 to mochi)
	caps.MaximumUserPropertyBytes = max(opts.MaxUserPropertyBytes, 0)
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	caps.MaximumClients = opts.MaxClients
	caps.MaximumInflight = opts.MaxInflight
	caps.ReceiveMaximum = opts.MaxInflight
	caps.TopicAliasMaximum = maxTopicAliases // mochi's 65535 could hold gigabytes of topics per client
	// mochi allocates this queue whole for every client, 8 bytes a slot;
	// nothing is delivered through it (every message takes the
	// connection's writer), so it stays small.
	caps.MaximumClientWritesPending = 16
	b := &Broker{
		opts:      opts,
		log:       opts.Log,
		parser:    parser,
		tree:      tree.New(),
		reqs:      newRequestQueue(opts.LoopQueue, opts.LoopBudget),
		props:     map[string]*packets.Properties{},
		loopDone:  make(chan struct{}),
		stop:      make(chan struct{}),
		raw:       map[*netConn]struct{}{},
		splits:    make(chan struct{}, 2),
		snaps:     Budget{max: opts.MaxSnapshotBytes, reserve: opts.MaxSnapshotBytes / 16},
		estimates: make(chan struct{}, estimatesAtOnce),
		handing:   make(chan struct{}, handingAtOnce),
		histReads: make(chan struct{}, 2),
		guesses:   newGuesses(opts.GuessLimit, opts.GuessWindow),
		logs:      newLogBudget(opts.Log, opts.RefusalLog),
		turns:     newTurns(),
		born:      time.Now(),
	}
	if opts.Cluster != nil {
		if opts.Store == nil || opts.Cluster.Log == nil {
			return nil, errors.New("broker: a cluster node needs the cluster's log and its copy as the store")
		}
		b.cl = newClusterNode(*opts.Cluster)
	}
	b.access.store(&access{users: opts.Users, acl: opts.ACL, anonymous: opts.AllowAnonymous})
	b.tlsConf.Store(opts.TLSConfig)
	b.trans.Store(opts.Translators)
	b.wills = wills{b: b, delayed: map[string]*will{}, resuming: map[*mqtt.Client][]*will{}}
	b.pace.b = b
	b.server = mqtt.New(&mqtt.Options{
		Capabilities:            caps,
		ClientNetReadBufferSize: clientReadBuffer,
		Logger:                  newSlog(opts.Log),
		// The broker publishes $SYS itself (sys.go), through the door;
		// mochi's own ticker would bypass it.
		SysTopicResendInterval: math.MaxInt32,
		TakeoverCheck:          b.takeoverCheck,
		// The hook reads no PUBLISH's Created time (it computes the
		// expiry of what it delivers itself: prepare): mochi reads the
		// clock only for what it retains or delivers itself.
		CreatedOnDemand: true,
		LogRefusal:      b.logRefusal,
	})
	b.meter, b.healthWait = newMeters(b), healthWait
	if err := b.server.AddHook(&hook{b: b}, nil); err != nil {
		return nil, fmt.Errorf("broker: add hook: %w", err)
	}
	return b, nil
}

// Start loads the stored rows, binds the listeners and starts serving. It
// returns once clients can connect. After a failed Start, Close releases
// what it took.
func (b *Broker) Start() error {
	b.marks.window = b.opts.Retain.ResumeWindow
	if b.opts.Store == nil {
		// Nothing survives a restart: start past every revision an earlier
		// run could have handed out (one batch a microsecond at most), and
		// answer resumes from before with snapshots.
		rev := uint64(time.Now().UnixMicro())
		b.tree.SetRev(rev)
		b.marks.floor = rev
	}
	if b.opts.Store != nil {
		if err := b.load(); err != nil {
			return err
		}
		ro := b.opts.Retain
		m := b.opts.Store.Meta()
		ro.Rev, ro.Floor = m.Rev, m.Floor
		switch {
		case m.Fresh:
			// A new store (a wiped or other data directory): clients may
			// hold revisions of an earlier store. Start past any of them,
			// as without a store, and answer resumes from before with
			// snapshots.
			ro.Rev = max(ro.Rev, uint64(time.Now().UnixMicro()))
			ro.Floor = ro.Rev
		case !m.Clean:
			// Revisions handed out since the last commit are lost: skip
			// past them, and answer resumes from before with snapshots.
			// A run that started on a fresh store (at the time in µs) may
			// have committed nothing: the time now is past all it handed
			// out too (at most one batch a µs).
			ro.Rev = max(ro.Rev+bootRevSkip, uint64(time.Now().UnixMicro()))
			ro.Floor = ro.Rev
			b.log.Warn().Uint64("rev", ro.Rev).Msg("the store was not closed cleanly: the revision skips ahead, and clients resuming get full snapshots")
		}
		b.tree.SetRev(ro.Rev)
		ro.OnCommit = b.meter.onCommit(ro.OnCommit)
		ret, err := retain.New(b.opts.Store, ro, b.log.With().Str("component", "retainer").Logger())
		if err != nil {
			return fmt.Errorf("broker: start the retainer: %w", err)
		}
		b.ret = ret
		b.meter.registerRetainer(ret)
	}
	b.localOnly()
	if err := b.listen(); err != nil {
		return err
	}
	b.started = true
	b.applied.Store(b.tree.Rev())
	b.loopLive.Store(true)
	go b.loop()
	if b.cl != nil {
		if err := b.startCluster(); err != nil {
			return err
		}
	}
	b.sleepers = newSleepers(b)
	if err := b.server.Serve(); err != nil {
		b.sleepers.stop()
		b.sleepers = nil // stopped once
		return fmt.Errorf("broker: serve: %w", err)
	}
	for _, pk := range b.server.Topics.Retained.GetAll() { // mochi's first $SYS publish, before any hook ran
		b.server.Topics.RetainMessage(packets.Packet{TopicName: pk.TopicName})
	}
	last := map[string]string{}
	if err := b.publishSys(last, waitApplied); err != nil { // $SYS is there for the first client
		return err
	}
	b.tickers.Add(1)
	go b.sysTicker(last)
	ev := b.log.Info()
	for _, l := range []*tcpListener{b.tcp, b.tls, b.orig} {
		if l != nil {
			ev = ev.Str(l.id, l.Address())
		}
	}
	for _, l := range []*wsListener{b.ws, b.wss, b.origWS} {
		if l != nil {
			ev = ev.Str(l.id, l.Address()+l.path)
		}
	}
	ev.Msg("mote broker listening")
	return nil
}

// listen adds the configured listeners to mochi (each binds at once).
func (b *Broker) listen() error {
	mk := func(id, addr string, tls bool) *tcpListener {
		l := &tcpListener{id: id, addr: addr, b: b}
		if tls {
			l.tls = b.serverTLS()
		}
		return l
	}
	mkWS := func(id, addr string, tls bool) *wsListener {
		l := &wsListener{id: id, addr: addr, path: b.opts.WSPath, b: b}
		if tls {
			l.tls = b.serverTLS()
		}
		return l
	}
	if b.opts.TCP != "off" {
		b.tcp = mk("tcp", b.opts.TCP, false)
		if err := b.server.AddListener(b.tcp); err != nil {
			return err
		}
	}
	if b.opts.WS != "off" {
		b.ws = mkWS("ws", b.opts.WS, false)
		if err := b.server.AddListener(b.ws); err != nil {
			return err
		}
	}
	if b.opts.TLS != "" {
		b.tls = mk("tls", b.opts.TLS, true)
		if err := b.server.AddListener(b.tls); err != nil {
			return err
		}
	}
	if b.opts.WSS != "" {
		b.wss = mkWS("wss", b.opts.WSS, true)
		if err := b.server.AddListener(b.wss); err != nil {
			return err
		}
	}
	if b.opts.Original != "" {
		b.orig = mk(originalListener, b.opts.Original, false)
		if err := b.server.AddListener(b.orig); err != nil {
			return err
		}
	}
	if b.opts.OriginalWS != "" {
		b.origWS = mkWS(originalWSListener, b.opts.OriginalWS, false)
		b.origWS.path = originalWSPath
		if err := b.server.AddListener(b.origWS); err != nil {
			return err
		}
	}
	return nil
}

// TCPAddr is the TCP listener's address ("" when off or not started).
func (b *Broker) TCPAddr() string {
	if b.tcp == nil || b.tcp.ln == nil {
		return ""
	}
	return b.tcp.Address()
}

// OriginalAddr is the original-dialect listener's address (SPEC §7; ""
// when none or not started).
func (b *Broker) OriginalAddr() string {
	if b.orig == nil || b.orig.ln == nil {
		return ""
	}
	return b.orig.Address()
}

// OriginalWSAddr is the address of the original dialect's WebSocket
// listener (path /mote/; "" when none or not started).
func (b *Broker) OriginalWSAddr() string {
	if b.origWS == nil || b.origWS.ln == nil {
		return ""
	}
	return b.origWS.Address()
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
	for _, l := range []*tcpListener{b.tcp, b.tls, b.orig} {
		if l != nil && l.ln != nil {
			l.Close(func(string) {})
		}
	}
	for _, l := range []*wsListener{b.ws, b.wss, b.origWS} {
		if l != nil && l.ln != nil {
			l.Close(nil)
		}
	}
}

// Close stops the broker: listeners close, the delayed wills waiting are
// published (stopping ends every session), clients are disconnected, the
// message loop applies what is already queued and stops, the retainer
// commits everything and the store closes. It waits for all of them, and
// returns an error when rows could not be stored (the caller should exit
// non-zero: rows were lost).
func (b *Broker) Close() error {
	b.closing.Do(func() { b.closeErr = b.shutdown() })
	return b.closeErr
}

func (b *Broker) shutdown() error {
	close(b.stop)
	b.closeListeners() // no new connections
	b.sleepers.halt()  // no reader sleeps after; those asleep wake as their connections close
	// Stopping ends every session (they live in memory only), so every
	// delayed will is published [MQTT-3.1.3-9], through the door while
	// the loop and the retainer still run (a retained will reaches its
	// row, and the store): first those waiting now, while their
	// subscribers are still connected (a QoS 0 subscriber gets its will
	// before its connection stops; QoS 1/2 ones may not be written in
	// time); then, once the connections have ended, those their ends made
	// wait, those a resuming CONNECT still held set aside (unless its
	// CONNACK was written: cancelled) and those a CONNECT ended and did
	// not publish (wills.close; any due after it is published at once). Each
	// round waits at most willsWait in all for stalled subscribers'
	// queues (a will is published waitNone: the loop never waits, a
	// plain will's publisher waits PublishWait at most), and Sync too.
	if b.wills.publishAll(willsWait) > 0 {
		// Into the queues of the subscribers before they are stopped.
		ctx, cancel := context.WithTimeout(context.Background(), willsWait)
		b.Sync(ctx) //nolint:errcheck // bounded; what is late still reaches the rows
		cancel()
	}
	for _, cl := range b.conns.keys() {
		cl.Stop(packets.ErrServerShuttingDown) // mochi then runs OnWill and OnDisconnect
	}
	b.closeConns() // and those still in their handshake
	waitTimeout(&b.sessions, 5*time.Second)
	b.sleepers.stop() // none should be left asleep; any is woken
	// The closed connections linger (netConn.Close: a client reads what
	// was written before its reset) for lingerFor at most: once their
	// readers stopped waiting for the same deadline (sleepers.halt), Close
	// returned with a drain goroutine and a descriptor left a connection
	// (red team h-rtsleep, TestSleepingCloseBounded).
	waitTimeout(&b.lingers, lingerFor+time.Second)
	// Every session has ended: mochi's Close cannot race a new one.
	closed := make(chan struct{})
	go func() { b.server.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		b.log.Warn().Msg("mochi did not stop within 5 s; going on")
	}
	b.wills.close(willsWait)
	b.tickers.Wait()
	b.reqs.close()
	if b.started {
		select { // the loop applies what is queued, then ends
		case <-b.loopDone:
		case <-time.After(10 * time.Second):
			b.log.Error().Msg("message loop did not stop within 10 s; flushing the retainer anyway")
		}
	}
	if b.cl != nil {
		b.stopCluster()
	}
	var errs []error
	if b.ret != nil {
		if err := b.ret.Close(); err != nil {
			b.log.Error().Err(err).Msg("retainer: rows were not stored")
			errs = append(errs, err)
		}
	}
	if b.opts.Store != nil {
		if err := b.opts.Store.Close(); err != nil {
			b.log.Error().Err(err).Msg("closing the store")
			errs = append(errs, err)
		}
	}
	for _, c := range b.conns.conns() {
		c.close()
	}
	for _, c := range b.byID.conns() {
		c.close()
	}
	waitTimeout(&b.writers, 5*time.Second)
	b.logs.flush() // the count of log lines left out lately
	b.log.Info().Msg("mote broker stopped")
	return errors.Join(errs...)
}

// load puts every stored row into the tree core, before any client can
// connect.
func (b *Broker) load() error {
	start := time.Now()
	n := 0
	err := b.opts.Store.Load(func(r retain.Row) error {
		b.tree.Store().Put(r.Topic, r.Value, r.QoS, tree.Stamp{Rev: r.Rev, MS: r.MS})
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

// willsWait bounds the time the delayed wills published at shutdown may
// wait for subscribers' queues, all together, in each of its two rounds.
const willsWait = 2 * time.Second

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// connPanicked cleans up after a connection whose goroutine panicked: mochi
// never ran its disconnect hooks for it, nor ended its session if it does
// not outlive the connection (attachClient). The session is removed under
// its client id's takeover lock, and only while its client is still the
// id's (mochi's RemoveSession): removed by id, a CONNECT that had taken
// the id over meanwhile lost its filing (connected, where no later CONNECT
// of the id would find it) and its subscriptions.
func (b *Broker) connPanicked(nc net.Conn) {
	b.stats.Panics.Add(1)
	b.connWills.Range(func(k, _ any) bool {
		if k.(*mqtt.Client).Net.Conn == nc {
			b.connWills.Delete(k) // it panicked before its conn was made
		}
		return true
	})
	b.wills.ending.Range(func(k, _ any) bool {
		if cl := k.(*mqtt.Client); cl.Net.Conn == nc {
			b.wills.publishEnded(cl) // the session its CONNECT ended still ended
		}
		return true
	})
	b.wills.settleOn(nc) // what its CONNECT set aside
	for _, cl := range b.conns.keys() {
		if cl.Net.Conn == nc {
			b.log.Error().Str("client", truncate(cl.ID, 200)).Str("remote", cl.Net.Remote).Msg("client connection closed after a panic")
			expire := cl.SessionEndsWithConnection()
			b.dropConn(cl, !expire)
			if expire {
				b.server.RemoveSession(cl)
			}
			return
		}
	}
}

// localOnly binds every listener to loopback when nobody is authenticated
// and anonymous access was not asked for (as Mosquitto 2 does).
func (b *Broker) localOnly() {
	if b.opts.Users != nil || b.opts.AllowAnonymous {
		return
	}
	for _, addr := range []*string{&b.opts.TCP, &b.opts.WS, &b.opts.TLS, &b.opts.WSS, &b.opts.Original, &b.opts.OriginalWS} {
		if *addr != "off" && *addr != "" {
			*addr = LoopbackAddr(*addr)
		}
	}
	b.log.Warn().Msg("no password file and no --allow-anonymous: listening on loopback only; " +
		"add users with 'mote passwd' and --password-file, or pass --allow-anonymous, to accept remote clients")
}

// anonymousLocal reports whether the broker serves anonymous clients on
// loopback only under its current access rules (no password file, no
// anonymous access): what every request asks (LocalOnly, WSHandler), so a
// Reload that removes the password file makes the loopback-only checks
// apply at once.
func (b *Broker) anonymousLocal() bool {
	a := b.access.load()
	return a.users == nil && !a.anonymous
}

// startedLocal reports whether the broker was started without a password
// file and without anonymous access: its listeners are bound to loopback.
func (b *Broker) startedLocal() bool { return b.opts.Users == nil && !b.opts.AllowAnonymous }
