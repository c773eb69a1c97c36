// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/xid"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

const (
	defaultKeepalive             uint16 = 10 // the default connection keepalive value in seconds.
	defaultClientProtocolVersion byte   = 4  // the default mqtt protocol version of connecting clients (if somehow unspecified).
	minimumKeepalive             uint16 = 5  // the minimum recommended keepalive - values under with display a warning.
)

var (
	ErrMinimumKeepalive = errors.New("client keepalive is below minimum recommended value and may exhibit connection instability")
)

// ReadFn is the function signature for the function used for reading and processing new packets.
// mote: the packet by pointer (change 25), lent for the call: it goes back
// to the server's packetPool when the function returns.
type ReadFn func(*Client, *packets.Packet) error

// mote: packetPool lends the read loop the packet it decodes each packet
// into (change 25). The packet goes through mochi's handling and the hooks
// by pointer, so it lives on the heap; pooled, a packet read allocates
// nothing for it, and an idle connection holds none (a packet kept in
// each Client would add 800 bytes to every connection). put clears the
// packet: what it pointed to (its body, which its topic and payload
// alias) is not kept alive by the pool, and the next packet is decoded
// into a zero Packet, as upstream's were. A nil packetPool (a Client made
// outside a Server, in tests) allocates.
type packetPool struct{ p sync.Pool }

// get returns a zero packet.
func (pp *packetPool) get() *packets.Packet {
	if pp != nil {
		if pk, ok := pp.p.Get().(*packets.Packet); ok {
			return pk
		}
	}
	return new(packets.Packet)
}

// put clears pk and keeps it for the next get; pk must not be used after.
func (pp *packetPool) put(pk *packets.Packet) {
	if pp == nil {
		return
	}
	*pk = packets.Packet{}
	pp.p.Put(pk)
}

// Clients contains a map of the clients known by the broker.
type Clients struct {
	internal map[string]*Client // clients known by the broker, keyed on client id.
	sync.RWMutex
}

// NewClients returns an instance of Clients.
func NewClients() *Clients {
	return &Clients{
		internal: make(map[string]*Client),
	}
}

// Add adds a new client to the clients map, keyed on client id.
func (cl *Clients) Add(val *Client) {
	cl.Lock()
	defer cl.Unlock()
	cl.internal[val.ID] = val
}

// GetAll returns all the clients.
func (cl *Clients) GetAll() map[string]*Client {
	cl.RLock()
	defer cl.RUnlock()
	m := map[string]*Client{}
	for k, v := range cl.internal {
		m[k] = v
	}
	return m
}

// mote: AppendAll appends the clients filed to buf and returns it. The
// event loop's scans of every client (clearExpiredClients,
// clearExpiredInflights) take them into one slice they reuse: GetAll
// copied the map at each, twice a second, and that was 58% of an idle
// broker's CPU at 5,000 connections, with a GC cycle every 10 s
// (bench/README.md, branch h-tail; change 94).
func (cl *Clients) AppendAll(buf []*Client) []*Client {
	cl.RLock()
	defer cl.RUnlock()
	for _, v := range cl.internal {
		buf = append(buf, v)
	}
	return buf
}

// Get returns the value of a client if it exists.
func (cl *Clients) Get(id string) (*Client, bool) {
	cl.RLock()
	defer cl.RUnlock()
	val, ok := cl.internal[id]
	return val, ok
}

// Len returns the length of the clients map.
func (cl *Clients) Len() int {
	cl.RLock()
	defer cl.RUnlock()
	val := len(cl.internal)
	return val
}

// Delete removes a client from the internal map.
func (cl *Clients) Delete(id string) {
	cl.Lock()
	defer cl.Unlock()
	delete(cl.internal, id)
}

// GetByListener returns clients matching a listener id.
func (cl *Clients) GetByListener(id string) []*Client {
	cl.RLock()
	defer cl.RUnlock()
	clients := make([]*Client, 0, len(cl.internal)) // not cl.Len(): a read lock taken twice deadlocks (change 60)
	for _, client := range cl.internal {
		if client.Net.Listener == id && !client.Closed() {
			clients = append(clients, client)
		}
	}
	return clients
}

// Client contains information about a client known by the broker.
type Client struct {
	Properties   ClientProperties // client properties
	State        ClientState      // the operational state of the client.
	Net          ClientConnection // network connection state of the client
	ID           string           // the client id.
	ops          *ops             // ops provides a reference to server ops.
	sync.RWMutex                  // mutex
}

// mote: lockWrite takes the client's lock for one of mochi's own writes,
// counted in writesWaiting while it waits (change 27).
func (cl *Client) lockWrite() {
	cl.State.writesWaiting.Add(1)
	cl.Lock()
	cl.State.writesWaiting.Add(-1)
}

// mote: LetWritesFirst lets mochi's own writes that wait for the client's
// lock take it before the caller does (change 27). The broker's writer
// calls it before each flush: it holds the lock while the socket takes a
// flush, and once the client has read enough to free the socket it took
// the lock again for its next flush before a waiting PINGRESP had run (a
// Go mutex lets a newcomer barge ahead of a woken waiter for up to 1 ms),
// so a client reading a large replay fast got its PINGRESP behind many
// flushes instead of one (TestPingrespNotBehindReplay, up to 179 KB
// against its bound of 107 KB, one run in three on a loaded machine).
// The wait is bounded: a waiter that does not get the lock after as
// many yields is left to the mutex.
func (cl *Client) LetWritesFirst() {
	for i := 0; i < 100 && cl.State.writesWaiting.Load() > 0; i++ {
		runtime.Gosched()
	}
}

// ClientConnection contains the connection transport and metadata for the client.
type ClientConnection struct {
	Conn     net.Conn      // the net.Conn used to establish the connection
	bconn    *connReader   // a buffered net.Conn for reading packets (mote: change 62)
	outbuf   *bytes.Buffer // a buffer for writing packets
	Remote   string        // the remote address of the client
	Listener string        // listener id of the client

	// mote: the deadline refreshDeadline last set, and whether it set one
	// (the reader's own: see refreshDeadline).
	deadline time.Time

	// mote: Inline after deadline, beside deadlineSet, so that the two
	// bools share a word (change 80).
	Inline      bool // if true, the client is the built-in 'inline' embedded client
	deadlineSet bool
	// mote: bconn was given up while it held nothing (dropReader), to be
	// made again when Read next runs (change 84). The reader's own.
	bconnDropped bool

	// mote: Conn as a PublishBodies (change 56), where the reader takes a
	// small PUBLISH body from, is asked of Conn at each PUBLISH read
	// (readPacket), not kept: 16 bytes a client (change 80).
}

// PublishBodies is a net.Conn that provides the memory of the PUBLISH
// bodies read from it (mote change 56), so that the body and what the
// server makes of it can be one allocation. PublishBody is called on the
// client's read goroutine, before a PUBLISH body of fh.Remaining bytes is
// read; it returns a zeroed slice of exactly that length, not used for
// anything else, or nil for mochi to make its own.
type PublishBodies interface {
	PublishBody(fh *packets.FixedHeader) []byte
}

// ClientProperties contains the properties which define the client behaviour.
// mote: Props is a pointer, nil while the client has no CONNECT
// properties to keep: every MQTT 3.1.1 client, and an MQTT 5 one that
// sent none. Read them through ReceiveMaximum, TopicAliasMaximum,
// MaximumPacketSize and SessionExpiryInterval (or a nil check), which
// read nil as the zero properties; change them through EditProps, which
// makes them. 256 bytes a client less: Client falls from the 640-byte
// size class to 384 (change 82).
type ClientProperties struct {
	Props *packets.Properties
	// mote: Will is nil while the client has no will: its CONNECT had
	// none, or it was cleared (a DISCONNECT, a will sent after its
	// delay). 80 bytes a client without a will less: Client falls from
	// the 384-byte size class to 320 (change 83).
	Will            *Will
	Username        []byte
	ProtocolVersion byte
	Clean           bool
}

// EditProps returns the client's CONNECT properties to change, made (the
// zero properties) if it had none (mote change 82). Only while the client
// is not shared, or under the lock that guards the field written: other
// goroutines read Props without one.
func (p *ClientProperties) EditProps() *packets.Properties {
	if p.Props == nil {
		p.Props = new(packets.Properties)
	}
	return p.Props
}

// ReceiveMaximum is the client's Receive Maximum property, 0 if it sent
// none (mote change 82).
func (p *ClientProperties) ReceiveMaximum() uint16 {
	if p.Props == nil {
		return 0
	}
	return p.Props.ReceiveMaximum
}

// TopicAliasMaximum is the client's Topic Alias Maximum property, 0 if it
// sent none (mote change 82).
func (p *ClientProperties) TopicAliasMaximum() uint16 {
	if p.Props == nil {
		return 0
	}
	return p.Props.TopicAliasMaximum
}

// MaximumPacketSize is the client's Maximum Packet Size property, 0 if it
// sent none (mote change 82).
func (p *ClientProperties) MaximumPacketSize() uint32 {
	if p.Props == nil {
		return 0
	}
	return p.Props.MaximumPacketSize
}

// SessionExpiryInterval is the client's Session Expiry Interval, 0 if it
// has none (mote change 82). Once the client is filed, it changes under
// the client's expiryMu (change 53): read it there, or through
// SessionEndsWithConnection.
func (p *ClientProperties) SessionExpiryInterval() uint32 {
	if p.Props == nil {
		return 0
	}
	return p.Props.SessionExpiryInterval
}

// Will contains the last will and testament details for a client connection.
type Will struct {
	Payload           []byte                 // -
	User              []packets.UserProperty // -
	TopicName         string                 // -
	Flag              uint32                 // 0,1
	WillDelayInterval uint32                 // -
	Qos               byte                   // -
	Retain            bool                   // -
}

// ClientState tracks the state of the client.
// mote: its fields are ordered by alignment, the words first, so that it
// has no padding (168 → 160 bytes, Client's writesWaiting included), and
// Client is 696 bytes, 712 before: with the 8-byte header the runtime
// puts before an object over 512 bytes with pointers, one size class
// down (768 → 704 bytes a connection). Change 72.
type ClientState struct {
	TopicAliases  TopicAliases          // a map of topic aliases
	stopCause     atomic.Pointer[error] // reason for stopping (mote: a pointer, not an atomic.Value: 8 bytes less; change 80)
	Inflight      *Inflight             // a map of in-flight qos messages
	Subscriptions *Subscriptions        // a map of the subscription filters a client maintains
	disconnected  int64                 // the time the client disconnected in unix time, for calculating expiry
	// mote: the queue for pending outbound packets, made by the first
	// packet queued (outboundOf): Mote's deliveries go through writers of
	// its own, so most clients never queue one, and the channel and its
	// 16 slots cost 240 bytes a connection. Change 72.
	outbound atomic.Pointer[chan *packets.Packet]
	// mote: done is closed once the client is stopped (cancelOpen), made
	// by the first WriteLoop that waits on it (doneOf); upstream's open
	// context and its cancel function cost every connection 96 bytes and
	// 24 in the struct, and only a WriteLoop waits on them. Change 78.
	done    atomic.Pointer[chan struct{}]
	endOnce sync.Once // only end once
	// mote: flags holds what were four atomic.Bools, 16 bytes, in one
	// word (change 80): flagTakenOver (isTakenOver: used to identify
	// orphaned clients), flagStopped (Stop cancelled open, change 66:
	// Closed without a lock), flagWriting (a WriteLoop was started for the
	// client) and flagUnanswered (filed by its CONNECT, its CONNACK not yet
	// written; cleared under the client's lock with the write:
	// disconnectTakenOver, change 59).
	flags       atomic.Uint32
	TooLarge    atomic.Int32 // mote: publishes the resend discarded, too large for the client (change 52); the embedder takes them (an Int32 among the 4-byte fields since change 80)
	packetID    uint32       // the current highest packetID
	outboundQty int32        // number of messages currently in the outbound queue
	// mote: how many of mochi's own writes (a PINGRESP, an ack, a
	// CONNACK) wait for the client's lock; the broker's writer lets them
	// go first (LetWritesFirst). Change 27; here since change 72.
	writesWaiting   atomic.Int32
	subMu           sync.Mutex // mote: held while a SUBSCRIBE files its filters (processSubscribe); see settleSubscriptions
	expiryMu        sync.Mutex // mote: guards Properties.Props.SessionExpiryInterval once filed, claimed and expiryFlag (change 53)
	Keepalive       uint16     // the number of seconds the connection can wait
	writeOnDemand   bool       // mote: WriteLoop starts on the first queued packet (set before the client is shared)
	acksHeld        bool       // mote: writeAck held an ack in outbuf (read goroutine only)
	claimed         bool       // mote: a takeover read the session's lifetime (claimSession): a DISCONNECT no longer changes it
	ServerKeepalive bool       // keepalive was set by the server
	opened          bool       // mote: made by newClient, open until stopped (upstream's open context; change 78)
	expiryFlag      bool       // mote: a DISCONNECT set the Session Expiry Interval (0) of a client without CONNECT properties: Props.SessionExpiryIntervalFlag for a nil Props (change 82)
}

// mote: cancelOpen stops the client's packet exchange: Closed answers
// true from now on and a WriteLoop returns. Upstream cancelled the open
// context; idempotent as that was (change 78).
func (s *ClientState) cancelOpen() {
	if !s.setFlag(flagStopped) {
		return
	}
	if p := s.done.Load(); p != nil {
		close(*p)
	}
}

// mote: a client's flags (ClientState.flags, change 80).
const (
	flagTakenOver uint32 = 1 << iota
	flagStopped
	flagWriting
	flagUnanswered
)

// mote: flag reports whether f is set (change 80).
func (s *ClientState) flag(f uint32) bool { return s.flags.Load()&f != 0 }

// mote: setFlag sets f and reports whether it was clear: an atomic.Bool's
// CompareAndSwap(false, true) (change 80).
func (s *ClientState) setFlag(f uint32) bool { return s.flags.Or(f)&f == 0 }

// mote: clearFlag clears f (change 80).
func (s *ClientState) clearFlag(f uint32) { s.flags.And(^f) }

// mote: doneOf is the channel closed by cancelOpen, made the first time
// it is asked for. A caller that made it after cancelOpen looked must
// check stopped after doneOf returns: cancelOpen sets stopped before it
// looks, so either it closes the channel or the caller sees stopped
// (change 78).
func (s *ClientState) doneOf() <-chan struct{} {
	if p := s.done.Load(); p != nil {
		return *p
	}
	ch := make(chan struct{})
	s.done.CompareAndSwap(nil, &ch)
	return *s.done.Load()
}

// newClient returns a new instance of Client. This is almost exclusively used by Server
// for creating new clients, but it lives here because it's not dependent.
func newClient(c net.Conn, o *ops) *Client {
	cl := &Client{
		State: ClientState{
			Inflight:      NewInflights(),
			Subscriptions: NewSubscriptions(),
			// mote: no topic aliases until the client uses them: inbound
			// made by the first alias the client sets (InboundAliases),
			// outbound by a CONNECT allowing some (ParseConnect). Change 78.
			opened:    true, // mote: change 78
			Keepalive: defaultKeepalive,
		},
		Properties: ClientProperties{
			ProtocolVersion: defaultClientProtocolVersion, // default protocol version
		},
		ops: o,
	}

	if c != nil {
		cl.Net = ClientConnection{
			Conn:   c,
			bconn:  newConnReader(c, o.options.ClientNetReadBufferSize), // mote change 62
			Remote: c.RemoteAddr().String(),
		}
	}

	return cl
}

// WriteLoop ranges over pending outbound messages and writes them to the client connection.
func (cl *Client) WriteLoop() {
	done := cl.State.doneOf() // mote: change 78
	if cl.State.flag(flagStopped) {
		return
	}
	for {
		select {
		case pk := <-cl.outboundOf(): // mote: change 72
			if err := cl.WritePacket(*pk); err != nil {
				// TODO : Figure out what to do with error
				cl.ops.log.Debug("failed publishing packet", "error", err, "client", LogString(cl.ID), LogPacket(pk)) // mote change 68
			}
			atomic.AddInt32(&cl.State.outboundQty, -1)
		case <-done:
			return
		}
	}
}

// mote: outboundOf is the client's outbound channel, made the first time
// it is asked for (change 72): by the first packet queued, or a WriteLoop
// started without one.
func (cl *Client) outboundOf() chan *packets.Packet {
	if p := cl.State.outbound.Load(); p != nil {
		return *p
	}
	ch := make(chan *packets.Packet, cl.ops.options.Capabilities.MaximumClientWritesPending)
	cl.State.outbound.CompareAndSwap(nil, &ch)
	return *cl.State.outbound.Load()
}

// mote: outboundLen is how many packets wait in the outbound channel; 0
// before it is made (change 72).
func (cl *Client) outboundLen() int {
	if p := cl.State.outbound.Load(); p != nil {
		return len(*p)
	}
	return 0
}

// mote: startWriteLoop starts the client's WriteLoop on the first packet
// queued to its outbound channel, for a client attached by the server
// (writeOnDemand); it is a no-op once one was started. Mote delivers through
// writers of its own and mochi writes its acks with WritePacket, so most
// clients never queue a packet here: a goroutine parked on this channel for
// every connection cost at least 4 KiB each (bench/README.md, "Mochi
// carried in the tree (issue 15)"). The loop stops as before, when the
// client's open context is cancelled.
func (cl *Client) startWriteLoop() {
	if cl.State.writeOnDemand && cl.State.setFlag(flagWriting) {
		go cl.WriteLoop()
	}
}

// mote: SessionEndsWithConnection reports whether cl's session lasts only
// as long as its network connection: MQTT 3.1.1 CleanSession 1
// [MQTT-3.1.2-6], MQTT 5 Session Expiry Interval 0 (§3.1.2.11.2; a
// DISCONNECT cannot raise it from 0 [MQTT-3.14.2-2]) (change 51).
//
// The Session Expiry Interval is read under cl.State.expiryMu: a
// DISCONNECT (processDisconnect, cl's read goroutine) may rewrite it while
// another goroutine asks (change 53).
func (cl *Client) SessionEndsWithConnection() bool {
	cl.State.expiryMu.Lock()
	defer cl.State.expiryMu.Unlock()
	return cl.sessionEndsLocked()
}

// mote: sessionEndsLocked is SessionEndsWithConnection, expiryMu held.
func (cl *Client) sessionEndsLocked() bool {
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.SessionExpiryInterval() == 0 // mote change 82
	}
	return cl.Properties.Clean
}

// mote: sessionExpiry returns cl's Session Expiry Interval and whether
// it was set, read under expiryMu (change 53).
func (cl *Client) sessionExpiry() (uint32, bool) {
	cl.State.expiryMu.Lock()
	defer cl.State.expiryMu.Unlock()
	if p := cl.Properties.Props; p != nil { // mote change 82
		return p.SessionExpiryInterval, p.SessionExpiryIntervalFlag
	}
	return 0, cl.State.expiryFlag
}

// mote: claimSession is called by a CONNECT taking cl's client id over,
// under the id's takeover lock: it reports whether cl's session lasts
// only as long as its connection, and fixes that answer — a DISCONNECT of
// cl read after it no longer changes its Session Expiry Interval (the
// session is the new connection's now). The CONNECT's hooks
// (OnSessionEstablish: SessionEndsWithConnection) and inheritSession all
// get that one answer: read apart, a DISCONNECT between the reads split
// them (change 53).
func (cl *Client) claimSession() bool {
	cl.State.expiryMu.Lock()
	defer cl.State.expiryMu.Unlock()
	cl.State.claimed = true
	return cl.sessionEndsLocked()
}

// mote: setSessionExpiry is a DISCONNECT's Session Expiry Interval
// [MQTT-3.14.2-2], unless a takeover claimed the session (change 53).
func (cl *Client) setSessionExpiry(v uint32) {
	cl.State.expiryMu.Lock()
	defer cl.State.expiryMu.Unlock()
	if cl.State.claimed {
		return
	}
	// mote: a client without CONNECT properties (interval 0) can only
	// be set 0 (processDisconnect); its flag goes to State.expiryFlag, not
	// into properties made here: the broker's writer reads Props without
	// expiryMu (change 82).
	if p := cl.Properties.Props; p != nil {
		p.SessionExpiryInterval = v
		p.SessionExpiryIntervalFlag = true
	} else if v == 0 {
		cl.State.expiryFlag = true
	}
}

// ParseConnect parses the connect parameters and properties for a client.
func (cl *Client) ParseConnect(lid string, pk packets.Packet) {
	cl.Net.Listener = lid

	cl.Properties.ProtocolVersion = pk.ProtocolVersion
	cl.Properties.Username = pk.Connect.Username
	cl.Properties.Clean = pk.Connect.Clean
	cl.Properties.Props, cl.State.expiryFlag = nil, false // mote: kept only when the CONNECT had some (change 82)
	if props := pk.Properties.Copy(false); !reflect.ValueOf(&props).Elem().IsZero() {
		cl.Properties.Props = &props
		if props.ReceiveMaximum > cl.ops.options.Capabilities.MaximumInflight { // 3.3.4 Non-normative
			props.ReceiveMaximum = cl.ops.options.Capabilities.MaximumInflight
		}
	}

	if pk.Connect.Keepalive <= minimumKeepalive && cl.logRefusal(packets.CodeSuccess) { // mote change 69
		cl.ops.log.Warn(
			ErrMinimumKeepalive.Error(),
			"client", LogString(cl.ID), // mote change 68
			"keepalive", pk.Connect.Keepalive,
			"recommended", minimumKeepalive,
		)
	}

	cl.State.Keepalive = pk.Connect.Keepalive                                              // [MQTT-3.2.2-22]
	cl.State.Inflight.ResetReceiveQuota(int32(cl.ops.options.Capabilities.ReceiveMaximum)) // server receive max per client
	cl.State.Inflight.ResetSendQuota(int32(cl.Properties.ReceiveMaximum()))                // client receive max
	cl.State.TopicAliases.Outbound = nil                                                   // mote: only for a client allowing aliases; nil is a maximum of 0 (change 78)
	if max := cl.Properties.TopicAliasMaximum(); max > 0 {
		cl.State.TopicAliases.Outbound = NewOutboundTopicAliases(max)
	}

	cl.ID = pk.Connect.ClientIdentifier
	if cl.ID == "" {
		cl.ID = xid.New().String()                         // [MQTT-3.1.3-6] [MQTT-3.1.3-7]
		cl.Properties.EditProps().AssignedClientID = cl.ID // mote change 82
	}

	if pk.Connect.WillFlag {
		cl.Properties.Will = &Will{ // mote: a pointer (change 83)
			Qos:               pk.Connect.WillQos,
			Retain:            pk.Connect.WillRetain,
			Payload:           pk.Connect.WillPayload,
			TopicName:         pk.Connect.WillTopic,
			WillDelayInterval: pk.Connect.WillProperties.WillDelayInterval,
			User:              pk.Connect.WillProperties.User,
		}
		if pk.Properties.SessionExpiryIntervalFlag &&
			pk.Properties.SessionExpiryInterval < pk.Connect.WillProperties.WillDelayInterval {
			cl.Properties.Will.WillDelayInterval = pk.Properties.SessionExpiryInterval
		}
		if pk.Connect.WillFlag {
			cl.Properties.Will.Flag = 1 // atomic for checking
		}
	}
}

// refreshDeadline refreshes the read deadline for the net.Conn connection.
//
// mote: the read deadline only, not the write deadline as well
// (SetDeadline): the connection's writes set their own (broker netConn,
// WriteTimeout), and this one, set by the reader, moved a blocked
// write's deadline to keep-alive × 1.5 away, again and again while the
// client sent: a subscriber that stopped reading but kept sending was
// never cut off by the write timeout (TestWriteTimeoutNotMovedByKeepAlive).
//
// mote: the deadline is moved only when it would otherwise come before
// keepalive × 1.5 from now, and then to deadlineSlack past that: never
// earlier than MQTT says, at most deadlineSlack later, and set about once
// a second however many packets the client sends. mochi set it for every
// packet, a lock and a timer change in the runtime's netpoller each
// (issue 15: 3–7% of a QoS 0 fan-in's CPU). Called by the connection's
// reader only (the CONNECT's goroutine, then the read loop).
func (cl *Client) refreshDeadline(keepalive uint16) {
	if cl.Net.Conn == nil {
		return
	}
	if keepalive == 0 { // nil time can be used to disable deadline if keepalive = 0
		if !cl.Net.deadlineSet || !cl.Net.deadline.IsZero() {
			cl.Net.deadline, cl.Net.deadlineSet = time.Time{}, true
			_ = cl.Net.Conn.SetReadDeadline(time.Time{})
		}
		return
	}
	// mote: keep-alive × 1.5 in Duration, not uint16: upstream's
	// keepalive+keepalive/2 overflowed above 43690 (65535 gave 32766 s,
	// 43691 gave 0) and lost an odd keep-alive's half second.
	within := time.Duration(keepalive) * 1500 * time.Millisecond // [MQTT-3.1.2-22]
	// mote change 97: the deadline set (time.Now's, so with a monotonic
	// reading) is compared by time.Until, which reads the monotonic clock
	// alone, the same test as !deadline.Before(time.Now().Add(within))
	// without the wall clock's read and Time.Add's (~100 instructions a
	// packet; bench/README.md, branch h-lat3); time.Now only to move it.
	if cl.Net.deadlineSet && !cl.Net.deadline.IsZero() && time.Until(cl.Net.deadline) >= within {
		return
	}
	cl.Net.deadline, cl.Net.deadlineSet = time.Now().Add(within+deadlineSlack), true
	_ = cl.Net.Conn.SetReadDeadline(cl.Net.deadline) // [MQTT-3.1.2-22]
}

// deadlineSlack is how much later than keepalive × 1.5 a client's read
// deadline may come (refreshDeadline). mote
const deadlineSlack = time.Second

// NextPacketID returns the next available (unused) packet id for the client.
// If no unused packet ids are available, an error is returned and the client
// should be disconnected.
func (cl *Client) NextPacketID() (i uint32, err error) {
	cl.Lock()
	defer cl.Unlock()

	i = atomic.LoadUint32(&cl.State.packetID)
	started := i
	overflowed := false
	for {
		if overflowed && i == started {
			return 0, packets.ErrQuotaExceeded
		}

		if i >= cl.ops.options.Capabilities.maximumPacketID {
			overflowed = true
			i = 0
			continue
		}

		i++

		if !cl.State.Inflight.Used(uint16(i)) { // mote: a dropped QoS 2 delivery's id too (change 64)
			atomic.StoreUint32(&cl.State.packetID, i)
			return i, nil
		}
	}
}

// ResendInflightMessages attempts to resend any pending inflight messages to connected clients.
func (cl *Client) ResendInflightMessages(force bool) error {
	if cl.State.Inflight.Len() == 0 {
		return nil
	}

	for _, tk := range cl.State.Inflight.GetAll(false) {
		if tk.FixedHeader.Type == packets.Publish {
			tk.FixedHeader.Dup = true // [MQTT-3.3.1-1] [MQTT-3.3.1-3]
		}

		cl.ops.hooks.OnQosPublish(cl, tk, tk.Created, 0)
		err := cl.WritePacket(tk)
		if errors.Is(err, packets.ErrPacketTooLarge) && tk.FixedHeader.Type == packets.Publish {
			// mote: a message held for the session that exceeds the
			// client's Maximum Packet Size is discarded, as if its
			// delivery were complete [MQTT-3.1.2-25], and the others are
			// resent. Upstream returned the error, and the server ended
			// the connection: at every reconnect, while the session lasted.
			if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
				cl.State.Inflight.IncreaseSendQuota()
				atomic.AddInt64(&cl.ops.info.Inflight, -1)
				cl.State.TooLarge.Add(1) // mote: counted for the embedder (change 52)
				cl.ops.hooks.OnQosDropped(cl, tk)
			}
			continue
		}
		if err != nil {
			return err
		}

		if tk.FixedHeader.Type == packets.Puback || tk.FixedHeader.Type == packets.Pubcomp {
			if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
				cl.ops.hooks.OnQosComplete(cl, tk)
				atomic.AddInt64(&cl.ops.info.Inflight, -1)
			}
		}
	}

	return nil
}

// ClearInflights deletes all inflight messages for the client, e.g. for a disconnected user with a clean session.
func (cl *Client) ClearInflights() {
	for _, tk := range cl.State.Inflight.GetAll(false) {
		if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
			cl.ops.hooks.OnQosDropped(cl, tk)
			atomic.AddInt64(&cl.ops.info.Inflight, -1)
		}
	}
}

// droppedMoved is ClearInflights for a session taken over, whose
// in-flight messages moved (Inflight.moveOut) to the new client: they are
// still in flight, counted once in Info.Inflight, and gone from cl, whose
// hooks are told (OnQosDropped) as ClearInflights tells them (mote:
// changes 49 and 74).
func (cl *Client) droppedMoved(moved *Inflight) {
	if moved == nil {
		return
	}
	for _, tk := range moved.GetAll(false) {
		cl.ops.hooks.OnQosDropped(cl, tk)
	}
}

// ClearExpiredInflights deletes any inflight messages which have expired.
//
// mote: change 67: only the expired messages are copied out (Inflight.expired),
// not every one held (GetAll): the once-a-second sweep asks every client,
// and sessions away holding MaxInflight each made it copy and sort 800
// bytes a held message, a second.
func (cl *Client) ClearExpiredInflights(now, maximumExpiry int64) []uint16 {
	deleted := []uint16{}
	for _, tk := range cl.State.Inflight.expired(now, maximumExpiry) {
		if ok := cl.State.Inflight.Delete(tk.PacketID); ok {
			cl.ops.hooks.OnQosDropped(cl, tk)
			atomic.AddInt64(&cl.ops.info.Inflight, -1)
			deleted = append(deleted, tk.PacketID)
		}
	}

	return deleted
}

// Read reads incoming packets from the connected client and transforms them into
// packets to be handled by the packetHandler.
func (cl *Client) Read(packetHandler ReadFn) error {
	if cl.Net.bconnDropped { // mote: served after a sleep, or for the first time (change 84)
		cl.Net.bconn = newConnReader(cl.Net.Conn, cl.ops.options.ClientNetReadBufferSize)
		cl.Net.bconnDropped = false
	}
	for {
		if cl.Closed() {
			return cl.closedCause() // mote: change 54
		}

		// mote: wait for the next packet here, in this shallow frame, and
		// read and handle it in readOne, under which processPacket holds
		// an 800-byte Packet (two before change 25): a connection parked
		// between packets then uses little of its stack, and the garbage
		// collector halves a stack only when less than a quarter of it is
		// in use (a reader parked inside readOne kept the 16 KiB the
		// CONNECT path had grown).
		//
		// mote: the read deadline is refreshed only when the next packet
		// is not already whole in the buffer (change 26): a packet that is
		// is read without touching the connection, so no deadline applies
		// to it, and refreshDeadline's clock read (time.Now, 2% of a QoS 0
		// fan-in's CPU) is spared; before any read that may wait, the
		// deadline is refreshed as before [MQTT-3.1.2-22].
		if cl.Net.bconn != nil {
			if !cl.moreInput() {
				cl.refreshDeadline(cl.State.Keepalive)
				if err := cl.FlushHeld(); err != nil { // mote: before waiting (writeAck)
					return err
				}
			}
			if err := cl.Net.bconn.waitPacket(); err != nil {
				if err == ErrAsleep { //nolint:errorlint // ReadLent returns the sentinel itself
					cl.dropReader() // mote: a reader asleep holds no connReader (change 84)
				}
				return err // mote: ErrAsleep too (change 75): nothing read, nothing held
			}
		} else {
			cl.refreshDeadline(cl.State.Keepalive)
		}
		if err := cl.readOne(packetHandler); err != nil {
			_ = cl.FlushHeld() // mote: the acks held for packets handled before it, before the connection closes
			return err
		}
	}
}

// mote: dropReader gives the client's connReader up while it is as
// newConnReader made it, holding no buffer and nothing unread, for Read
// to make again when it next runs (change 84): a connection whose reader
// sleeps (ErrAsleep), or that Mote puts to sleep from its CONNACK on
// (establishClient), holds none. The read goroutine's, or
// establishClient's before the client is served.
func (cl *Client) dropReader() {
	if r := cl.Net.bconn; r != nil && r.fresh() {
		cl.Net.bconn, cl.Net.bconnDropped = nil, true
	}
}

// mote: readOne reads one packet and hands it to packetHandler (the body of
// Read's loop, which waits for it).
//
//go:noinline
func (cl *Client) readOne(packetHandler ReadFn) error {
	fh := new(packets.FixedHeader)
	err := cl.ReadFixedHeader(fh)
	if err != nil {
		cl.disconnectMalformed(err) // mote: a fixed header that does not decode (flags, QoS 3, length) is told too
		return err
	}

	// mote: the packet is lent from the server's pool and read, handled
	// and returned by pointer: upstream copied its 800 bytes at each call
	// on the way (change 25). A panic leaves it to the garbage collector.
	pk := cl.ops.pool.get()
	err = cl.readPacket(fh, pk)
	if err == nil {
		err = packetHandler(cl, pk) // Process inbound packet.
	}
	cl.ops.pool.put(pk)
	return err
}

// Stop instructs the client to shut down all processing goroutines and disconnect.
func (cl *Client) Stop(err error) {
	cl.State.endOnce.Do(func() {

		if cl.Net.Conn != nil {
			_ = cl.Net.Conn.Close() // omit close error
		}

		if err != nil {
			cl.State.stopCause.Store(&err) // mote change 80
		}

		if cl.State.opened { // mote: change 78 (upstream: a cancel function, made by newClient)
			cl.State.cancelOpen()
		}

		atomic.StoreInt64(&cl.State.disconnected, time.Now().Unix())
	})
}

// mote: stopIfUnanswered stops cl, taken over, if its CONNACK is not
// written yet, and reports whether it did. Under cl's lock, which the
// CONNACK's write holds while it writes and clears unanswered: a CONNACK
// not written by then never is (its write finds the connection closed)
// (disconnectTakenOver, change 59).
func (cl *Client) stopIfUnanswered() bool {
	cl.lockWrite()
	defer cl.Unlock()
	if !cl.State.flag(flagUnanswered) {
		return false
	}
	cl.Stop(packets.ErrSessionTakenOver)
	return true
}

// mote: settleSubscriptions waits until a SUBSCRIBE that cl is filing
// (fileSubscribe) has filed its filters and run OnSubscribed. Called once
// cl is stopped, it is a barrier: cl files no SUBSCRIBE after it, so its
// subscriptions can be copied or unfiled (inheritClientSession,
// UnsubscribeClient) without one landing behind.
func (cl *Client) settleSubscriptions() {
	cl.State.subMu.Lock()
	cl.State.subMu.Unlock() //nolint:staticcheck // an empty critical section: a barrier
}

// mote: closedCause is what Read returns for a client found stopped
// between packets: nil (no will) only if the client itself left with
// DISCONNECT (processDisconnect); otherwise why it was stopped — taken
// over (ErrSessionTakenOver), disconnected by the server, the server
// shutting down — as Read returns when the stop breaks a read under way.
// Upstream returned nil for any stop, and endSession then cleared the
// will: a connection taken over (or shut down) between two packets lost
// it, one blocked in a read did not (change 54) [MQTT-3.1.2-8].
func (cl *Client) closedCause() error {
	err := cl.StopCause()
	if c, ok := err.(packets.Code); ok && c == packets.CodeDisconnect {
		return nil
	}
	return err
}

// StopCause returns the reason the client connection was stopped, if any.
func (cl *Client) StopCause() error {
	if p := cl.State.stopCause.Load(); p != nil { // mote change 80
		return *p
	}
	return nil
}

// StopTime returns the the time the client disconnected in unix time, else zero.
func (cl *Client) StopTime() int64 {
	return atomic.LoadInt64(&cl.State.disconnected)
}

// Closed returns true if client connection is closed.
func (cl *Client) Closed() bool {
	// mote: change 66: a stopped client answers from an atomic; a closed
	// context's Err takes its Done channel's lock, and the broker asks
	// every away subscriber of a message.
	// mote: change 78: no open context; a client not made by newClient
	// is closed, as one without that context was.
	return cl.State.flag(flagStopped) || !cl.State.opened
}

func (cl *Client) IsTakenOver() bool {
	return cl.State.flag(flagTakenOver)
}

// mote: Answered reports whether cl's CONNACK was written (change 58): a
// client that ends before OnSessionEstablished (its resend failed) was
// told its session is present if so, or never connected (its CONNACK
// failed) if not.
func (cl *Client) Answered() bool {
	return !cl.State.flag(flagUnanswered)
}

// ReadFixedHeader reads in the values of the next packet's fixed header.
// mote: an MQTT 5 client's Remaining Length in more bytes than it needs
// is a Malformed Packet [MQTT-1.5.5-1]; a CONNECT's is checked once its
// protocol level is read (Server.readConnectionPacket).
func (cl *Client) ReadFixedHeader(fh *packets.FixedHeader) error {
	bu, err := cl.readFixedHeader(fh)
	if err == nil && cl.Properties.ProtocolVersion == 5 {
		err = packets.CheckMinimal("remaining length", fh.Remaining, bu)
	}
	return err
}

// mote: readFixedHeader is ReadFixedHeader without the check of the
// Remaining Length's encoding, which took bu bytes.
func (cl *Client) readFixedHeader(fh *packets.FixedHeader) (bu int, err error) {
	if cl.Net.bconn == nil {
		return 0, ErrConnectionClosed
	}

	b, err := cl.Net.bconn.ReadByte()
	if err != nil {
		return 0, err
	}

	err = fh.Decode(b)
	if err != nil {
		return 0, err
	}

	fh.Remaining, bu, err = packets.DecodeLength(cl.Net.bconn)
	if err != nil {
		return bu, err
	}

	if cl.ops.options.Capabilities.MaximumPacketSize > 0 && uint32(fh.Remaining+1) > cl.ops.options.Capabilities.MaximumPacketSize {
		return bu, packets.ErrPacketTooLarge // [MQTT-3.2.2-15]
	}

	atomic.AddInt64(&cl.ops.info.BytesReceived, int64(bu+1))
	return bu, nil
}

// mote: bodyStep is the largest packet body made whole before its bytes
// arrive (unless they have: readBody); a larger one grows from it as they
// do. A connection's idle cost is a few KiB: a body step of that order
// keeps a client that declares a packet and sends little of it at that.
const bodyStep = 4 << 10

// mote: readBody reads a packet body of n bytes. A body up to bodyStep,
// or already in r's buffer, is read into a buffer of its size, one
// allocation as upstream; a larger one into a buffer that starts at
// bodyStep (or what r holds) and doubles as the bytes arrive, so a
// client holds memory in proportion to what it has sent (twice that at
// most): upstream made the declared size at once, and a client that
// declared a 64 MiB PUBLISH and sent 10 bytes of it held 64 MiB of the
// broker's memory until its connection ended.
func readBody(r *connReader, n int) ([]byte, error) {
	if n <= bodyStep || n <= r.Buffered() {
		p := make([]byte, n)
		_, err := io.ReadFull(r, p)
		return p, err
	}
	p := make([]byte, 0, max(bodyStep, r.Buffered()))
	for len(p) < n {
		if len(p) == cap(p) { // double, up to n (slices.Grow would round past it)
			q := make([]byte, len(p), min(2*cap(p), n))
			copy(q, p)
			p = q
		}
		k, err := io.ReadFull(r, p[len(p):min(cap(p), n)])
		p = p[:len(p)+k]
		if err != nil {
			return p, err
		}
	}
	return p, nil
}

// ReadPacket reads the remaining buffer into an MQTT packet.
// mote: a copy of the packet readPacket reads into one of the pool's
// (change 25); the read loop reads with readPacket itself.
func (cl *Client) ReadPacket(fh *packets.FixedHeader) (packets.Packet, error) {
	pk := cl.ops.pool.get()
	err := cl.readPacket(fh, pk)
	v := *pk
	cl.ops.pool.put(pk)
	return v, err
}

// mote: readPacket is ReadPacket reading into *pk, a zero Packet (change
// 25). On an error *pk holds what was read of it.
func (cl *Client) readPacket(fh *packets.FixedHeader, pk *packets.Packet) (err error) {
	atomic.AddInt64(&cl.ops.info.PacketsReceived, 1)

	pk.ProtocolVersion = cl.Properties.ProtocolVersion // inherit client protocol version for decoding
	pk.FixedHeader = *fh
	pk.Mods.MaxUserProperties = cl.ops.options.Capabilities.MaximumUserProperties       // mote change 68
	pk.Mods.MaxUserPropertyBytes = cl.ops.options.Capabilities.MaximumUserPropertyBytes // mote change 68
	var p []byte
	if pk.FixedHeader.Type == packets.Publish {
		if bodies, ok := cl.Net.Conn.(PublishBodies); ok { // mote changes 56, 80
			p = bodies.PublishBody(&pk.FixedHeader)
		}
	}
	if p != nil && len(p) == pk.FixedHeader.Remaining {
		_, err = io.ReadFull(cl.Net.bconn, p)
	} else {
		p, err = readBody(cl.Net.bconn, pk.FixedHeader.Remaining) // mote: as it arrives
	}
	if err != nil {
		return err
	}

	atomic.AddInt64(&cl.ops.info.BytesReceived, int64(len(p)))

	// mote: decode p itself. Upstream decoded a second copy (px :=
	// append([]byte{}, p...)) so that the next packet could not change this
	// one's data; but p is made afresh for every packet above and never
	// written again, so the copy bought nothing and cost an allocation and
	// a copy of the body per packet (TestReadPacketOwnsBody).
	px := p
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectDecode(px)
	case packets.Disconnect:
		err = pk.DisconnectDecode(px)
	case packets.Connack:
		err = pk.ConnackDecode(px)
	case packets.Publish:
		err = pk.PublishDecode(px)
		if err == nil {
			atomic.AddInt64(&cl.ops.info.MessagesReceived, 1)
		}
	case packets.Puback:
		err = pk.PubackDecode(px)
	case packets.Pubrec:
		err = pk.PubrecDecode(px)
	case packets.Pubrel:
		err = pk.PubrelDecode(px)
	case packets.Pubcomp:
		err = pk.PubcompDecode(px)
	case packets.Subscribe:
		err = pk.SubscribeDecode(px)
	case packets.Suback:
		err = pk.SubackDecode(px)
	case packets.Unsubscribe:
		err = pk.UnsubscribeDecode(px)
	case packets.Unsuback:
		err = pk.UnsubackDecode(px)
	case packets.Pingreq, packets.Pingresp:
		if len(px) != 0 { // mote: no variable header, no payload (§3.12, §3.13)
			err = packets.ErrMalformedPacket
		}
	case packets.Auth:
		err = pk.AuthDecode(px)
	default:
		err = fmt.Errorf("invalid packet type; %v", pk.FixedHeader.Type)
	}

	if err == nil {
		err = cl.userOverLimit(pk)
	}
	if err != nil {
		cl.disconnectMalformed(err) // mote
		return err
	}

	return cl.ops.hooks.OnPacketRead(cl, pk) // mote: changes *pk in place
}

// mote: userOverLimit is ErrQuotaExceeded for a packet that carried more
// User Properties than the server keeps (change 68), but for a CONNECT,
// PUBLISH or SUBSCRIBE, which are refused by their own acknowledgement
// (validateConnect, processPublish, processSubscribe) and lose nothing
// else. Packets of other types have no acknowledgement that could say so:
// the connection closes with DISCONNECT 0x97.
func (cl *Client) userOverLimit(pk *packets.Packet) error {
	if !pk.Properties.UserOverLimit {
		return nil
	}
	switch pk.FixedHeader.Type {
	case packets.Connect, packets.Publish, packets.Subscribe:
		return nil
	}
	cl.logUserOver(pk)
	return packets.ErrQuotaExceeded
}

// mote: logUserOver logs a packet refused for its User Properties (change
// 68), and the limits it passed, if Options.LogRefusal allows it (change
// 69).
func (cl *Client) logUserOver(pk *packets.Packet) {
	if !cl.logRefusal(packets.ErrQuotaExceeded) {
		return
	}
	cl.ops.log.Warn("packet refused: too many user properties (0x97 quota exceeded)",
		"client", LogString(cl.ID), LogPacket(pk),
		"max_user_properties", cl.ops.options.Capabilities.MaximumUserProperties,
		"max_user_property_bytes", cl.ops.options.Capabilities.MaximumUserPropertyBytes)
}

// mote: logRefusal reports whether a log line about a packet of cl,
// refused with code, may be written: Options.LogRefusal decides, if set
// (change 69).
func (cl *Client) logRefusal(code packets.Code) bool {
	f := cl.ops.options.LogRefusal
	return f == nil || f(cl, code)
}

// mote: disconnectMalformed tells an MQTT 5 client why a packet it sent
// could not be decoded — a DISCONNECT with the decoder's reason code (0x81
// Malformed Packet, 0x82 Protocol Error) — before the read loop ends and
// the connection closes, as receivePacket does for a packet that decoded
// but was refused. Without it the client saw only the connection close.
func (cl *Client) disconnectMalformed(err error) {
	var code packets.Code
	if cl.Properties.ProtocolVersion != 5 || !errors.As(err, &code) || code.Code < packets.ErrUnspecifiedError.Code {
		return
	}
	_ = cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Disconnect},
		ReasonCode:  code.Code,
	})
}

// WritePacket encodes and writes a packet to the client.
func (cl *Client) WritePacket(pk packets.Packet) error {
	return cl.writePacket(pk, false)
}

// mote: writeAck writes an acknowledgement of a packet the client sent
// (PUBACK, PUBREC, PUBCOMP); only the read goroutine calls it. While
// another whole packet already waits in the read buffer (moreInput), the
// ack is held in outbuf, to go out with the next ones in one write: the
// next write of any packet flushes it first, and Read flushes what is held
// before it waits for input (FlushHeld). A client pipelining QoS 1
// publishes got one write system call per PUBACK, a quarter of the
// broker's CPU in a QoS 1 fan-in.
func (cl *Client) writeAck(pk packets.Packet) error {
	hold := cl.moreInput()
	if hold {
		cl.State.acksHeld = true
	}
	return cl.writePacket(pk, hold)
}

// mote: WriteAck is writeAck for a hook on the read goroutine: the ack of
// a packet the hook refused (Mote's PUBACK or PUBREC with a reason code
// for a refused publish), held with the others while more input waits, so
// a client flooding refused packets gets their acks in one write per read
// instead of a write each (change 73).
func (cl *Client) WriteAck(pk packets.Packet) error {
	return cl.writeAck(pk)
}

// mote: moreInput reports whether a whole PUBLISH, PUBREL or SUBSCRIBE
// waits in the read buffer (its fixed header and all its remaining
// length): a packet that is itself answered with an ack through writeAck
// (a SUBACK refusing every filter: change 73). Any other packet (a
// DISCONNECT, an UNSUBSCRIBE, a malformed one) may close the connection
// or wait in a hook, so Read writes the held acks before it handles it; a
// SUBSCRIBE's hooks write them before they may wait (Mote's OnSubscribe),
// and a SUBACK granting anything is written with them (WritePacket).
// Read goroutine only.
func (cl *Client) moreInput() bool {
	r := cl.Net.bconn
	if r == nil {
		return false
	}
	n := r.Buffered()
	if n < 2 {
		return false
	}
	b, _ := r.Peek(min(n, 5)) // buffered: never waits
	// mote: SUBSCRIBE too (change 73)
	if t := b[0] >> 4; t != packets.Publish && t != packets.Pubrel && t != packets.Subscribe {
		return false
	}
	length, mult := 0, 1
	for i := 1; i < len(b); i++ {
		length += int(b[i]&127) * mult
		if b[i]&128 == 0 {
			return n >= i+1+length
		}
		mult *= 128
	}
	return false
}

// mote: FlushHeld writes the acks writeAck held, if no write has since.
// Only the goroutine that reads cl may call it: Read, and the hooks it
// calls (a publisher about to wait for room in a full queue writes the
// acks of the publishes before it first: broker pubWait).
func (cl *Client) FlushHeld() error {
	if !cl.State.acksHeld {
		return nil
	}
	cl.State.acksHeld = false
	cl.lockWrite() // mote: change 27
	defer cl.Unlock()
	if cl.outboundLen() > 0 {
		return nil // the WriteLoop flushes outbuf with what it writes next
	}
	return cl.flushOutbuf()
}

func (cl *Client) writePacket(pk packets.Packet, hold bool) error {
	if cl.Closed() {
		return ErrConnectionClosed
	}

	if cl.Net.Conn == nil {
		return nil
	}

	if pk.Expiry > 0 {
		expiry := pk.Expiry - time.Now().Unix()
		if expiry < 1 {
			expiry = 1
		}
		pk.Properties.MessageExpiryInterval = uint32(expiry) // [MQTT-3.3.2-6]
	}

	pk.ProtocolVersion = cl.Properties.ProtocolVersion
	if pk.Mods.MaxSize == 0 { // NB we use this statement to embed client packet sizes in tests
		pk.Mods.MaxSize = cl.Properties.MaximumPacketSize() // mote: nil is none (change 82)
	}

	props := cl.Properties.Props // mote: nil is the zero properties (change 82)
	if props != nil && props.RequestProblemInfoFlag && props.RequestProblemInfo == 0x0 {
		pk.Mods.DisallowProblemInfo = true // [MQTT-3.1.2-29] strict, no problem info on any packet if set
	}

	if pk.FixedHeader.Type != packets.Connack || (props != nil && props.RequestResponseInfo == 0x1) || cl.ops.options.Capabilities.Compatibilities.AlwaysReturnResponseInfo {
		pk.Mods.AllowResponseInfo = true // [MQTT-3.1.2-28] we need to know which properties we can encode
	}

	pk = cl.ops.hooks.OnPacketEncode(cl, pk)

	var err error
	buf := new(bytes.Buffer)
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(buf)
	case packets.Connack:
		err = pk.ConnackEncode(buf)
	case packets.Publish:
		err = pk.PublishEncode(buf)
	case packets.Puback:
		err = pk.PubackEncode(buf)
	case packets.Pubrec:
		err = pk.PubrecEncode(buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(buf)
	case packets.Pubcomp:
		err = pk.PubcompEncode(buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(buf)
	case packets.Suback:
		err = pk.SubackEncode(buf)
	case packets.Unsubscribe:
		err = pk.UnsubscribeEncode(buf)
	case packets.Unsuback:
		err = pk.UnsubackEncode(buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(buf)
	case packets.Pingresp:
		err = pk.PingrespEncode(buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(buf)
	case packets.Auth:
		err = pk.AuthEncode(buf)
	default:
		err = fmt.Errorf("%w: %v", packets.ErrNoValidPacketAvailable, pk.FixedHeader.Type)
	}
	if err != nil {
		return err
	}

	if pk.Mods.MaxSize > 0 && uint32(buf.Len()) > pk.Mods.MaxSize {
		return packets.ErrPacketTooLarge // [MQTT-3.1.2-24] [MQTT-3.1.2-25]
	}

	n, err := func() (written int64, err error) {
		cl.lockWrite() // mote: change 27
		defer cl.Unlock()
		if pk.FixedHeader.Type == packets.Connack {
			defer func() { // mote: before the Unlock (change 59)
				if err == nil {
					cl.State.clearFlag(flagUnanswered) // answered: a takeover may send it DISCONNECT now
				}
			}()
		}
		if hold && cl.outboundLen() == 0 {
			// mote: writeAck's held ack: kept with any held before it,
			// written once outbuf is full or by the next write or FlushHeld
			if cl.Net.outbuf == nil {
				cl.Net.outbuf = new(bytes.Buffer)
			}
			n, _ := cl.Net.outbuf.Write(buf.Bytes())
			if cl.Net.outbuf.Len() < cl.ops.options.ClientNetWriteBufferSize {
				return int64(n), nil
			}
			return int64(n), cl.flushOutbuf()
		}
		if cl.outboundLen() == 0 {
			if cl.Net.outbuf == nil {
				return buf.WriteTo(cl.Net.Conn)
			}

			// first write to buffer, then flush buffer
			n, _ := cl.Net.outbuf.Write(buf.Bytes()) // will always be successful
			err = cl.flushOutbuf()
			return int64(n), err
		}

		// there are more writes in the queue
		if cl.Net.outbuf == nil {
			if buf.Len() >= cl.ops.options.ClientNetWriteBufferSize {
				return buf.WriteTo(cl.Net.Conn)
			}
			cl.Net.outbuf = new(bytes.Buffer)
		}

		n, _ := cl.Net.outbuf.Write(buf.Bytes()) // will always be successful
		if cl.Net.outbuf.Len() < cl.ops.options.ClientNetWriteBufferSize {
			return int64(n), nil
		}

		err = cl.flushOutbuf()
		return int64(n), err
	}()
	if err != nil {
		return err
	}

	atomic.AddInt64(&cl.ops.info.BytesSent, n)
	atomic.AddInt64(&cl.ops.info.PacketsSent, 1)
	if pk.FixedHeader.Type == packets.Publish {
		atomic.AddInt64(&cl.ops.info.MessagesSent, 1)
	}

	cl.ops.hooks.OnPacketSent(cl, pk, buf.Bytes())

	return err
}

func (cl *Client) flushOutbuf() (err error) {
	if cl.Net.outbuf == nil {
		return
	}

	_, err = cl.Net.outbuf.WriteTo(cl.Net.Conn)
	if err == nil {
		cl.Net.outbuf = nil
	}
	return
}
