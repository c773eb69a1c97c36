package broker

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// Session is a subscriber of the broker that is not an MQTT connection: an
// HTTP event stream, a translator, a cluster peer, a test. It acts as its
// Principal (the same ACL, limits and refusals as an MQTT client) and gets
// its messages through the same queue and writer as an MQTT client: in
// order, one at a time, on the session's own goroutine.
type Session struct {
	b *Broker
	c *conn

	mu     sync.Mutex
	plain  map[string]bool // plain filters, as filed in mochi's index
	trees  map[string]bool // tree filters, as subscribed
	closed bool
}

// Delivery is one message to a Session: a plain publish (a retained row
// replayed on subscribing has Retain set), or a tree message with its
// MQTT 5 properties (mote-seq, mote-part, Content Type). Its Payload and
// Properties are the session's own: fn may keep or change them.
type Delivery struct {
	Topic      string
	Payload    []byte
	QoS        byte
	Retain     bool
	Properties packets.Properties
	// Err, when set, is the refusal of a tree subscription's first
	// message, made after SubscribeWith returned: its snapshot or history
	// cannot be cut into parts of the broker's maximum packet size (a
	// single row larger than a part). That first message never comes;
	// Topic is the subscription's, and later deltas may follow.
	Err *Refusal
}

// Seq is a tree message's mote-seq (0 for a snapshot), -1 for other
// messages.
func (d *Delivery) Seq() int64 {
	if v, ok := userProp(d.Properties.User, "mote-seq"); ok {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			return n
		}
	}
	return -1
}

// sessionIDMark starts a Session's id: U+0000, which no MQTT client id
// holds (mochi refuses it in every UTF-8 string).
const sessionIDMark = "\x00"

// Open starts a session acting as p; fn receives its messages until
// Close (fn may call it: what its writer took but had not handed to fn
// then goes no further; a call under way when Close runs elsewhere still
// finishes). A slow fn holds its queue, which the slow-client policy
// bounds as for any client.
func (b *Broker) Open(p Principal, fn func(Delivery)) *Session {
	s := &Session{b: b, plain: map[string]bool{}, trees: map[string]bool{}}
	out := &funcOut{fn: fn}
	s.c = newConn(b, p, "", true, out)
	// Its id keys its filings (subIndex) and byID, which MQTT clients'
	// ids key too: one no client can take [MQTT-1.5.4-2] (its key alone,
	// "web#1", is a legal client id).
	s.c.id = sessionIDMark + s.c.key()
	out.s = s
	b.byID.store(s.c.id, s.c)
	return s
}

// Subscribe subscribes the session to a filter, as an MQTT SUBSCRIBE
// would: "$sync/F" or "$tree/F" (with options, SPEC §2) for a tree, any
// other filter for plain messages (the matching retained rows first). It
// returns once the subscription is in place: every publish made after it
// reaches the session. A refused filter is a *Refusal.
func (s *Session) Subscribe(filter string, qos byte) error {
	return s.SubscribeWith(filter, qos, SubscribeOptions{})
}

// SubscribeOptions are what an MQTT 5 client says in a SUBSCRIBE's user
// properties about a tree subscription's first message.
type SubscribeOptions struct {
	// Since, if not nil, resumes a $sync subscription from that revision
	// (mote-since, SPEC §8).
	Since *uint64
	// From, To (Unix ms, inclusive) and Limit (pairs per row) select a
	// $hist subscription's history (mote-from, mote-to, mote-limit, SPEC §9).
	From, To *int64
	Limit    int
}

// treeOpts checks and converts o.
func (o SubscribeOptions) treeOpts() (treeOpts, error) {
	var props []packets.UserProperty
	if o.Since != nil {
		props = append(props, packets.UserProperty{Key: "mote-since", Val: strconv.FormatUint(*o.Since, 10)})
	}
	if o.From != nil {
		props = append(props, packets.UserProperty{Key: "mote-from", Val: strconv.FormatInt(*o.From, 10)})
	}
	if o.To != nil {
		props = append(props, packets.UserProperty{Key: "mote-to", Val: strconv.FormatInt(*o.To, 10)})
	}
	if o.Limit != 0 {
		props = append(props, packets.UserProperty{Key: "mote-limit", Val: strconv.Itoa(o.Limit)})
	}
	return readTreeOpts(props)
}

// SubscribeWith is Subscribe with the options of a tree subscription's
// first message.
func (s *Session) SubscribeWith(filter string, qos byte, o SubscribeOptions) error {
	b, c := s.b, s.c
	sf, err := parseFilter(filter, wire.Subscription{})
	if err == nil {
		err = b.opts.Limits.CheckTopic(sf.Filter)
	}
	topts, terr := o.treeOpts()
	if err == nil {
		err = terr
	}
	if err == nil {
		err = topts.check(sf.Mode)
	}
	if err != nil {
		return b.refusal(c.p, "subscribe", filter, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return b.refusal(c.p, "subscribe", filter, errShutdown)
	case !s.plain[filter] && !s.trees[filter] && len(s.plain)+len(s.trees) >= b.opts.MaxSubscriptions:
		return b.refusal(c.p, "subscribe", filter, errQuotaf("more than %d subscriptions", b.opts.MaxSubscriptions))
	}
	qos = min(qos, 2)
	if sf.Mode != wire.Plain {
		s.trees[filter] = true
		b.subscribeTree(c, filter, sf, qos, 0, topts)
		if err := b.Sync(context.Background()); err != nil { // registered: the loop took the request
			return b.refusal(c.p, "subscribe", filter, err)
		}
		return nil
	}
	if !b.access.canSubscribe(c.p, filter) {
		return b.refusal(c.p, "subscribe", filter, fmt.Errorf("%w: subscribe to %.200q", tree.ErrDenied, filter))
	}
	b.afterAcked(b.stop) // rows acknowledged before it are in its replay, not live
	if b.fileSub(c.id, packets.Subscription{Filter: filter, Qos: qos}) {
		atomic.AddInt64(&b.server.Info.Subscriptions, 1)
	}
	s.plain[filter] = true
	if !mqtt.IsSharedFilter(filter) {
		c.enqueueToken(&replayItem{filter: filter, qos: qos, from: b.applied.Load(), drops: c.dropped.Load()}) // filed first: see replayRows
	}
	return nil
}

// Unsubscribe ends the session's subscription to filter, as subscribed.
func (s *Session) Unsubscribe(filter string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unsubscribeLocked(filter)
}

func (s *Session) unsubscribeLocked(filter string) {
	b := s.b
	if s.plain[filter] {
		delete(s.plain, filter)
		if b.unfileSub(filter, s.c.id) {
			atomic.AddInt64(&b.server.Info.Subscriptions, -1)
		}
	}
	if s.trees[filter] {
		delete(s.trees, filter)
		b.reqs.push(request{kind: reqUnsubscribe, owner: s.c.key(), topics: []string{filter}})
	}
}

// Done is closed when the session ends: Close, the slow-client policy
// (SlowDisconnect), or the broker's Close.
func (s *Session) Done() <-chan struct{} { return s.c.q.done.wait() }

// Publish publishes m as the session's principal (Broker.Publish).
func (s *Session) Publish(ctx context.Context, m Message) error {
	return s.b.Publish(ctx, s.c.p, m)
}

// Close ends the session: its subscriptions go, its queue is dropped.
func (s *Session) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	for f := range s.plain {
		s.unsubscribeLocked(f)
	}
	s.trees = map[string]bool{}
	b := s.b
	b.byID.compareAndDelete(s.c.id, s.c)
	b.logs.closed(&s.c.logs, s.c.p.ClientID)
	s.c.close()
	b.reqs.push(request{kind: reqDetach, owner: s.c.key()})
}

// funcOut is a session's endpoint: its callback.
type funcOut struct {
	fn func(Delivery)
	s  *Session
}

func (o *funcOut) send(c *conn, pk *packets.Packet) error {
	c.q.wrote(len(pk.Payload)+len(pk.TopicName), 1)
	// A copy: the payload may be the store's own bytes, and fn may keep or
	// change what it gets.
	payload := append([]byte(nil), pk.Payload...)
	// Once the session is closed fn gets nothing more, though its writer
	// took a batch before (a callback that closes its own session, say):
	// what was taken stops here (at most a call already under way when
	// Close runs elsewhere still finishes).
	if c.q.isClosed() {
		return errWriterStop
	}
	o.fn(Delivery{Topic: pk.TopicName, Payload: payload, QoS: pk.FixedHeader.Qos, Retain: pk.FixedHeader.Retain, Properties: pk.Properties})
	return nil
}

// refused hands fn the refusal of a subscription's first message (the
// writer's goroutine: in order with what it sends).
func (o *funcOut) refused(c *conn, r *Refusal) {
	if !c.q.isClosed() {
		o.fn(Delivery{Topic: r.Topic, Err: r})
	}
}

func (o *funcOut) maxPacket() uint32 { return 0 }

func (o *funcOut) flush() error { return nil }

func (o *funcOut) stop(error) { go o.s.Close() } // not on the writer: Close waits for nothing, but keep the writer free
