package broker

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// internalPublish replaces the topic of a Mote publish once it is decoded:
// mochi disconnects a client whose PUBLISH topic holds a wildcard.
const internalPublish = "$mote/publish"

// Property-form tree subscriptions (MQTT 5 user property mote=sync|tree)
// are known to mochi under an internal filter that no client can send
// ("prop" is not an option of the grammar), so a resumed session still
// tells them from plain subscriptions to F.
const propOption = ".prop"

// hook is the mochi hook: the edge where packets enter the Mote path.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "mote" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnectAuthenticate, mqtt.OnACLCheck,
		mqtt.OnSessionEstablished, mqtt.OnDisconnect,
		mqtt.OnPacketRead, mqtt.OnPublish, mqtt.OnPacketProcessed,
		mqtt.OnSubscribe, mqtt.OnSubscribed, mqtt.OnUnsubscribe,
		mqtt.OnWill, mqtt.OnWillSent, mqtt.OnPacketEncode, mqtt.OnRetainMessage, mqtt.OnSysInfoTick,
	}, []byte{b})
}

// OnSysInfoTick publishes Mote's counters beside mochi's $SYS topics
// ($SYS/mote/…, retained), each time mochi publishes its own.
func (h *hook) OnSysInfoTick(*system.Info) {
	b := h.b
	for topic, v := range map[string]int64{
		"dropped":            b.stats.Dropped.Load(),
		"refused":            b.stats.Refused.Load(),
		"panics":             b.stats.Panics.Load(),
		"throttled":          b.stats.Throttled.Load(),
		"batches":            b.stats.Batches.Load(),
		"publishes":          b.stats.OpsApplied.Load(),
		"tree/messages":      b.stats.DeltasQueued.Load(),
		"tree/folded":        b.stats.Folded.Load(),
		"tree/subscriptions": b.treeSubs.Load(),
		"rows":               atomic.LoadInt64(&b.server.Info.Retained),
	} {
		b.inject(packets.Packet{FixedHeader: packets.FixedHeader{Retain: true}, TopicName: "$SYS/mote/" + topic, Payload: []byte(strconv.FormatInt(v, 10))})
	}
}

// OnRetainMessage keeps mochi's retained index empty but for $SYS: retained
// rows live once, in the tree core, which serves them to plain subscribers
// (mochi would also copy its whole index every second to expire it).
func (h *hook) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, _ int64) {
	if len(pk.Payload) > 0 && !isSys(pk.TopicName) {
		h.b.server.Topics.RetainMessage(packets.Packet{TopicName: pk.TopicName}) // an empty payload deletes
	}
}

func isSys(topic string) bool { return len(topic) >= 4 && strings.EqualFold(topic[:4], "$SYS") }

// OnPacketEncode keeps user properties on PUBLISH packets to clients that
// set Request Problem Information to 0: that flag only covers packets other
// than PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29], and mote-seq and
// mote-part must reach the client.
func (h *hook) OnPacketEncode(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Publish {
		pk.Mods.DisallowProblemInfo = false
	}
	return pk
}

// OnConnectAuthenticate checks the username and password against the
// password file; a client without a username needs AllowAnonymous (or the
// loopback-only mode of a broker with no password file).
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	ok := false
	switch {
	case user == "":
		ok = h.b.opts.AllowAnonymous || h.b.opts.Users == nil
	case h.b.opts.Users != nil:
		ok = h.b.opts.Users.Check(user, string(pk.Connect.Password))
	default:
		ok = h.b.opts.AllowAnonymous
	}
	if !ok {
		h.b.log.Warn().Str("client", cl.ID).Str("user", user).Str("remote", cl.Net.Remote).Msg("authentication failed")
	}
	return ok
}

// OnACLCheck enforces the ACL file for plain traffic (mochi asks on
// SUBSCRIBE, PUBLISH and every delivery). Tree subscriptions and Mote
// publishes pass here and are checked per row in the tree core.
// $SYS/mote/errors/<client-id> is readable by that client only.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if !write && strings.HasPrefix(topic, ErrorTopic) {
		rest := topic[len(ErrorTopic):]
		return rest == cl.ID || rest == "#" || rest == "+"
	}
	acl := h.b.opts.ACL
	if acl == nil || cl.Net.Inline {
		return true
	}
	if topic == internalPublish || (!write && isTreeFilter(topic)) {
		return true
	}
	c := auth.Client{User: string(cl.Properties.Username), ID: cl.ID}
	if write {
		return acl.CanWrite(c, topic)
	}
	return acl.CanRead(c, topic)
}

// isTreeFilter reports whether a SUBSCRIBE filter is a tree subscription
// (either form as mochi knows it).
func isTreeFilter(f string) bool {
	p, err := wire.ParseSubscribe(strings.Replace(f, propOption, "", 1))
	return err == nil && p.Mode != wire.Plain
}

// allowRead and allowWrite are the per-row checks of a client, nil without
// an ACL.
func (b *Broker) allowRead(cl *mqtt.Client) func(string) bool {
	if b.opts.ACL == nil {
		return nil
	}
	c := auth.Client{User: string(cl.Properties.Username), ID: cl.ID}
	return func(topic string) bool { return b.opts.ACL.CanRead(c, topic) }
}

func (b *Broker) allowWrite(cl *mqtt.Client) func(string) bool {
	if b.opts.ACL == nil {
		return nil
	}
	c := auth.Client{User: string(cl.Properties.Username), ID: cl.ID}
	return func(topic string) bool { return b.opts.ACL.CanWrite(c, topic) }
}

func (h *hook) conn(cl *mqtt.Client) *conn {
	if v, ok := h.b.conns.Load(cl); ok {
		return v.(*conn)
	}
	return nil
}

// OnSessionEstablished starts the connection's state and re-registers the
// tree subscriptions of a resumed session (with a fresh snapshot: deltas
// were missed while it was away).
func (h *hook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	c := newConn(h.b, cl)
	h.b.conns.Store(cl, c)
	var subs []subReq
	for filter, s := range cl.State.Subscriptions.GetAll() {
		if r, ok := resumedSub(filter, s); ok {
			subs = append(subs, r)
		}
	}
	if len(subs) > 0 {
		h.b.pushSubscribe(request{kind: reqSubscribe, conn: c, subs: subs})
	}
}

// resumedSub rebuilds the tree subscription behind a filter mochi kept.
func resumedSub(filter string, s packets.Subscription) (subReq, bool) {
	topic := filter
	if verb, rest, ok := strings.Cut(filter, "/"); ok && strings.Contains(verb, propOption) {
		filter = strings.Replace(verb, propOption, "", 1) + "/" + rest
		topic = rest
	}
	p, err := wire.ParseSubscribe(filter)
	if err != nil || p.Mode == wire.Plain {
		return subReq{}, false
	}
	return subReq{topic: topic, parsed: p, qos: s.Qos, id: s.Identifier}, true
}

// OnDisconnect ends the connection's tree deliveries and subscriptions.
func (h *hook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.b.dropConn(cl)
}

func (b *Broker) dropConn(cl *mqtt.Client) {
	v, ok := b.conns.LoadAndDelete(cl)
	if !ok {
		return
	}
	c := v.(*conn)
	c.close()
	b.reqs.push(request{kind: reqDetach, conn: c})
}

// OnPacketRead decodes a Mote publish before mochi validates the topic
// (which holds wildcards in $tree/a/+ and $set/a/+/b), and stashes the op
// for OnPublish.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	c := h.conn(cl)
	if c == nil {
		return pk, nil
	}
	c.pending = nil
	p, isMote, err := parsePublish(pk)
	if !isMote && isSys(pk.TopicName) {
		// mochi drops a client's $SYS publish without an ack, leaving QoS 1/2
		// publishers waiting: refuse it properly instead.
		isMote, err = true, wire.ErrReservedf("%q: $SYS topics are the broker's", pk.TopicName)
	}
	if !isMote {
		return pk, nil
	}
	pend := &pendingPub{topic: pk.TopicName, err: err}
	if err == nil && pk.Properties.TopicAlias > 0 {
		pend.err = errAlias
	}
	if pend.err == nil {
		pend.op, pend.err = h.b.parser.Op(p, pk.Payload, pk.FixedHeader.Retain, pk.FixedHeader.Qos)
	}
	if pend.err == nil && h.b.opts.ACL != nil {
		// Rows a tree publish names are checked now, so the ack can carry
		// 0x87; $set and .replace rows are known only in the loop.
		pend.op.Allow = h.b.allowWrite(cl)
		for _, r := range pend.op.Rows {
			if !pend.op.Allow(r.Topic) {
				pend.err = fmt.Errorf("%w: write to %q", tree.ErrDenied, r.Topic)
				break
			}
		}
	}
	c.pending = pend
	pk.TopicName = internalPublish
	return pk, nil
}

var errAlias = errors.New("broker: a topic alias cannot be set on a Mote topic")

// parsePublish reads a PUBLISH as a Mote publish: a $tree/$set/$sync
// prefix, or (MQTT 5) the user property mote=tree on a plain topic.
func parsePublish(pk packets.Packet) (wire.Publish, bool, error) {
	if wire.IsMote(pk.TopicName) {
		p, err := wire.ParsePublish(pk.TopicName)
		return p, true, err
	}
	mode, ok := userProp(pk.Properties.User, "mote")
	if !ok {
		return wire.Publish{}, false, nil
	}
	if mode != "tree" {
		return wire.Publish{}, true, wire.ErrPrefixf("user property mote=%q on a PUBLISH: want tree", mode)
	}
	p := wire.Publish{Op: wire.PubTree, Topic: pk.TopicName}
	if v, ok := userProp(pk.Properties.User, "mote-codec"); ok {
		c, err := wire.ParseCodec(v)
		if err != nil {
			return p, true, err
		}
		p.Codec = c
	} else if pk.Properties.ContentType == wire.CodecCBOR.ContentType() {
		p.Codec = wire.CodecCBOR
	}
	if v, ok := userProp(pk.Properties.User, "mote-replace"); ok {
		p.Replace = v == "1" || v == "true"
	}
	if err := wire.ValidateFilter(p.Topic); err != nil {
		return p, true, err
	}
	return p, true, nil
}

func userProp(props []packets.UserProperty, key string) (string, bool) {
	for _, u := range props {
		if u.Key == key {
			return u.Val, true
		}
	}
	return "", false
}

// OnPublish routes a publish; mochi only acknowledges it. A Mote publish
// goes to the loop; a plain retained one too, which stores the row and
// delivers it; a plain event is delivered here, through the subscribers'
// writers, and, when tree subscriptions exist, folded into deltas too.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	c := h.conn(cl)
	if c == nil {
		return pk, nil
	}
	if pk.TopicName == internalPublish {
		p := c.pending
		c.pending = nil
		if p == nil {
			return h.b.refusePublish(c, pk, internalPublish, wire.ErrReservedf("%q is the broker's own topic", internalPublish))
		}
		if p.err != nil {
			return h.b.refusePublish(c, pk, p.topic, p.err)
		}
		return h.b.submit(c, pk, request{kind: reqPublish, conn: c, op: p.op, topic: p.topic, rows: true})
	}
	if pk.FixedHeader.Retain {
		cp := pk
		cp.Properties.MessageExpiryInterval = 0 // rows never expire (SPEC §1)
		return h.b.submit(c, pk, request{kind: reqPublish, conn: c, op: plainOp(pk), topic: pk.TopicName, plain: &cp})
	}
	if h.b.hasTreeSubs() {
		h.b.reqs.push(request{kind: reqPublish, conn: c, op: plainOp(pk), topic: pk.TopicName})
	}
	h.b.deliverPlain(pk, true) // paced, instead of mochi's dropping delivery
	return pk, packets.CodeSuccessIgnore
}

// submit hands a publish that changes rows to the loop; mochi then acks it
// without delivering it (the loop delivers). A disk that is behind makes
// the publisher wait first. With SyncRetain, a QoS 1/2 publish is acked
// only once its rows are committed, or refused with the reason.
func (b *Broker) submit(c *conn, pk packets.Packet, r request) (packets.Packet, error) {
	if b.ret != nil {
		if b.ret.Wait() {
			b.stats.Throttled.Add(1)
		}
		if b.opts.SyncRetain && pk.FixedHeader.Qos > 0 {
			r.done = make(chan error, 1)
		}
	}
	if r.op.Allow != nil && (r.op.SetFilter != "" || r.op.Replace != "") {
		r.done = make(chan error, 1) // the loop decides which rows a $set or .replace touches
	}
	if !b.reqs.push(r) {
		return b.refusePublish(c, pk, r.topic, errShutdown)
	}
	if r.done != nil {
		if err := <-r.done; err != nil {
			return b.refusePublish(c, pk, r.topic, err)
		}
	}
	return pk, packets.CodeSuccessIgnore
}

var errShutdown = errors.New("broker: shutting down")

// plainOp is the op of a plain publish: one row, typed by SPEC §1.
func plainOp(pk packets.Packet) tree.Op {
	v := wire.TypePlain(pk.Payload)
	if pk.FixedHeader.Retain && len(pk.Payload) == 0 {
		v = wire.Value{}
	}
	return tree.Op{Rows: []tree.Row{{Topic: pk.TopicName, Value: v, Retain: pk.FixedHeader.Retain}}, QoS: pk.FixedHeader.Qos}
}

// OnSubscribe parses each filter: Mote filters are checked (a malformed
// one is made invalid for mochi, which refuses it in the SUBACK: 0x80, MQTT
// 5: 0x8F), and the MQTT 5 user property mote=sync|tree turns every filter
// of the packet into a tree subscription.
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	c := h.conn(cl)
	if c == nil {
		return pk
	}
	c.subParse = c.subParse[:0]
	c.subExisted = c.subExisted[:0]
	c.subAcked, c.retained = nil, nil
	propMode, propErr := subscribeProps(pk)
	filters := make([]packets.Subscription, len(pk.Filters))
	copy(filters, pk.Filters)
	for i := range filters {
		f := &filters[i]
		var p wire.Subscription
		var err error
		switch {
		case propErr != nil:
			err = propErr
		case propMode.Mode != wire.Plain:
			if err = wire.ValidateFilter(f.Filter); err == nil {
				p = wire.Subscription{Mode: propMode.Mode, Codec: propMode.Codec, Filter: f.Filter}
				f.Filter = "$" + p.Mode.String() + propOption + "." + p.Codec.String() + "/" + f.Filter
			}
		default:
			p, err = wire.ParseSubscribe(f.Filter)
			if err != nil && !wire.IsMote(f.Filter) {
				err = nil // a plain filter: mochi judges it
			}
		}
		if err != nil {
			h.b.refuse(c, "subscribe", pk.Filters[i].Filter, err)
			f.Filter = "" // invalid: mochi answers 0x8F (0x80 for MQTT 3.1.1)
		}
		_, existed := cl.State.Subscriptions.Get(f.Filter)
		c.subParse = append(c.subParse, p)
		c.subExisted = append(c.subExisted, existed)
	}
	pk.Filters = filters
	return pk
}

// subscribeProps reads the MQTT 5 user properties mote and mote-codec.
func subscribeProps(pk packets.Packet) (wire.Subscription, error) {
	var s wire.Subscription
	mode, ok := userProp(pk.Properties.User, "mote")
	if !ok {
		return s, nil
	}
	switch mode {
	case "sync":
		s.Mode = wire.Sync
	case "tree":
		s.Mode = wire.Tree
	default:
		return s, wire.ErrPrefixf("user property mote=%q: want sync or tree", mode)
	}
	if v, ok := userProp(pk.Properties.User, "mote-codec"); ok {
		c, err := wire.ParseCodec(v)
		if err != nil {
			return s, err
		}
		s.Codec = c
	}
	return s, nil
}

// OnSubscribed registers the tree subscriptions mochi granted and queues
// the retained rows of plain ones. mochi writes the SUBACK next: the
// connection's writer is held until it is out (OnPacketProcessed), so
// snapshots and retained rows follow the SUBACK, and a publish that another
// client makes after this one got its SUBACK is never missed.
func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	c := h.conn(cl)
	if c == nil || len(c.subParse) != len(pk.Filters) {
		return
	}
	for i, f := range pk.Filters {
		p := c.subParse[i]
		if i >= len(codes) || codes[i] >= 0x80 {
			continue
		}
		if p.Mode == wire.Plain {
			// Retained rows for a plain subscription [MQTT-3.3.1-9..11]: none
			// for shared subscriptions, RetainHandling 2, or 1 on a
			// subscription that already existed.
			if !mqtt.IsSharedFilter(f.Filter) && f.RetainHandling != 2 && !(f.RetainHandling == 1 && c.subExisted[i]) {
				c.retained = append(c.retained, retainedReq{filter: f.Filter, qos: codes[i], id: f.Identifier})
			}
			continue
		}
		topic := f.Filter
		if strings.Contains(strings.SplitN(f.Filter, "/", 2)[0], propOption) {
			topic = p.Filter
		}
		c.subAcked = append(c.subAcked, subReq{topic: topic, parsed: p, qos: codes[i], id: f.Identifier})
	}
	if len(c.subAcked) == 0 && len(c.retained) == 0 {
		return
	}
	c.hold()
	c.subHeld = true
	h.b.pushSubscribe(request{kind: reqSubscribe, conn: c, subs: c.subAcked, retained: c.retained})
	c.subAcked, c.retained = nil, nil
}

// OnPacketProcessed lets the writer go once mochi has written the SUBACK.
func (h *hook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, _ error) {
	if pk.FixedHeader.Type != packets.Subscribe {
		return
	}
	if c := h.conn(cl); c != nil && c.subHeld {
		c.subHeld = false
		c.release()
	}
}

// OnUnsubscribe removes tree subscriptions; a plain filter F that names a
// property-form tree subscription is rewritten to mochi's internal filter.
func (h *hook) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	c := h.conn(cl)
	if c == nil {
		return pk
	}
	var topics []string
	filters := make([]packets.Subscription, len(pk.Filters))
	copy(filters, pk.Filters)
	for i := range filters {
		f := &filters[i]
		if p, err := wire.ParseSubscribe(f.Filter); err == nil && p.Mode != wire.Plain {
			topics = append(topics, f.Filter)
			continue
		}
		for _, m := range []string{"$sync", "$tree"} {
			for _, codec := range []string{".json", ".cbor"} {
				internal := m + propOption + codec + "/" + f.Filter
				if _, ok := cl.State.Subscriptions.Get(internal); ok {
					f.Filter = internal
					topics = append(topics, pk.Filters[i].Filter)
				}
			}
		}
	}
	pk.Filters = filters
	if len(topics) > 0 {
		h.b.reqs.push(request{kind: reqUnsubscribe, conn: c, topics: topics})
	}
	return pk
}

// OnWill turns a will on a Mote topic into a tree publish (a device's
// last tree), delivered as rows; mochi then publishes it to nobody.
func (h *hook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if !wire.IsMote(will.TopicName) {
		return will, nil
	}
	c := h.conn(cl)
	p, err := wire.ParsePublish(will.TopicName)
	var op tree.Op
	if err == nil {
		op, err = h.b.parser.Op(p, will.Payload, will.Retain, will.Qos)
	}
	if err != nil {
		h.b.refuse(c, "will", will.TopicName, err)
	} else {
		h.b.reqs.push(request{kind: reqPublish, conn: c, op: op, topic: will.TopicName, rows: true})
	}
	will.TopicName, will.Retain = "", false // matches no subscription
	return will, nil
}

// OnWillSent folds a plain will into the tree (mochi has retained and
// delivered it itself).
func (h *hook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	if pk.TopicName == "" || (!pk.FixedHeader.Retain && !h.b.hasTreeSubs()) {
		return
	}
	h.b.reqs.push(request{kind: reqPublish, conn: h.conn(cl), op: plainOp(pk), topic: pk.TopicName})
}
