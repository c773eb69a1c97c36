package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/translate"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// Message is a publish entering the broker through its door.
type Message struct {
	Topic   string // a plain topic, or a Mote prefix ($tree/…, $set/…)
	Payload []byte
	QoS     byte
	Retain  bool
	// Properties are the MQTT 5 properties delivered with a plain publish;
	// the user properties mote=tree, mote-codec and mote-replace make a
	// plain topic a tree publish (SPEC §4).
	Properties packets.Properties

	// pre is the message a plain publish becomes, made with its body
	// (netConn.PublishBody), or nil: prepare makes one.
	pre *message
	// props, if not nil, are its properties in place of Properties: an
	// MQTT client's PUBLISH lends its own (OnPublish) for the call, not
	// copied into the Message (256 bytes) for every publish.
	props *packets.Properties
	// topicValid says Topic is known to be a valid topic name, checked
	// by the front end that read it: a UTF-8 string of 1 to 65,535 bytes
	// with no NUL and no wildcard (what wire.ValidateTopic checks), so
	// the door does not check it again. Only an MQTT client's OnPublish
	// sets it: mochi's decoding and PublishValidate refused any other
	// topic, with the protocol's answer, before the door (hooks.go).
	// Every other front end's topic is checked here.
	topicValid bool
}

// properties are m's MQTT 5 properties: props if set, else Properties.
// Only read.
func (m *Message) properties() *packets.Properties {
	if m.props != nil {
		return m.props
	}
	return &m.Properties
}

// Refusal is why the broker refused a publish or a subscription: an MQTT 5
// reason code and the cause.
type Refusal struct {
	Code  packets.Code
	Topic string // as sent
	Err   error
}

// Error says what was refused and why.
func (r *Refusal) Error() string {
	return fmt.Sprintf("refused %.200q (0x%02x %s): %v", r.Topic, r.Code.Code, r.Code.Reason, r.Err)
}

// Unwrap gives the cause.
func (r *Refusal) Unwrap() error { return r.Err }

// waitMode says how long a publish through the door waits.
type waitMode uint8

const (
	waitNone    waitMode = iota // hand it in; the loop reports a refusal itself (MQTT QoS 0, wills)
	waitAck                     // wait when the answer needs the loop or the disk (MQTT QoS 1/2)
	waitApplied                 // wait until applied, and with SyncRetain committed (the door's API)
)

// Publish publishes m on behalf of p, with every check a client's publish
// gets: Mote's and $SYS prefixes, topic limits, the ACL (per row for
// trees), payload decoding and limits. It returns once the publish is
// applied (with Options.SyncRetain, once its rows are committed; a plain
// event, once it is queued to its subscribers), or a *Refusal. For an
// Answered principal, a publish applied whose translation was partly
// refused returns a *TranslationRefused.
func (b *Broker) Publish(ctx context.Context, p Principal, m Message) error {
	return b.publish(ctx, p, m, waitApplied)
}

// publish is the door every publish takes: MQTT clients, wills, the
// broker's own reports and counters, and the exported API.
func (b *Broker) publish(ctx context.Context, p Principal, m Message, wait waitMode) error {
	return b.enter(ctx, p, &m, wait, false, nil)
}

// publishInline is publish for an MQTT client's read goroutine (in
// OnPublish), which holds no lock the loop's work takes: while the loop
// is idle, the publish is applied and delivered on the caller's
// goroutine (runInline), not handed to the loop. m is only read, and not
// kept; mp is the client's publisher. Its context is Background: an MQTT
// publish waits by its clock, not by a context.
func (b *Broker) publishInline(p Principal, m *Message, wait waitMode, mp *mqttPublisher) error {
	return b.enter(context.Background(), p, m, wait, b.cl == nil, mp)
}

// enter is publish, and publishInline when inline is set or mp given
// (an MQTT client's publisher, nil for every other). The message
// and what prepare made of it go by pointer: a Message is 304 bytes, and
// they were copied at each call of a plain publish's way, 1.5 KB in all.
func (b *Broker) enter(ctx context.Context, p Principal, m *Message, wait waitMode, inline bool, mp *mqttPublisher) error {
	var r prepared
	if err := b.prepareInto(p, m, &r); err != nil {
		return b.refusal(p, "publish", m.Topic, err)
	}
	if !p.system {
		k := inPlain
		if r.mote {
			k = inTree
			if r.op.SetFilter != "" {
				k = inSet
			}
		}
		b.meter.in[k].Add(1)
	}
	r.trans = b.translation(p, m, &r) // SPEC §11 (translate.go)
	err := b.dispatch(ctx, p, m, &r, wait, inline, mp)
	if err == nil && r.transRefused != nil && p.Answered {
		// Reported to nobody (Answered): the caller is told.
		return &TranslationRefused{Refusal: r.transRefused}
	}
	return err
}

// TranslationRefused is what Publish returns to a front end that answers
// its caller (Principal.Answered) when the publish was applied but some of
// its translated rows were refused (SPEC §11: a translated topic past the
// topic limits, or one of the broker's): what an MQTT client would read in
// its report on $SYS/mote/errors/<client-id>. The publish itself stands.
type TranslationRefused struct {
	Refusal *Refusal
}

// Error says that the publish was applied, and what of its translation was
// refused.
func (t *TranslationRefused) Error() string {
	return "applied, but its translation was " + t.Refusal.Error()
}

// prepared is a publish that passed every check but those only the loop
// can make.
type prepared struct {
	op    tree.Op  // a Mote publish's; a plain one's is made by dispatch, when needed
	mote  bool     // a tree publish or $set
	plain *message // what plain subscribers get (a plain publish)
	// trans is its translation, made at the door; loopTrans, for a $set
	// or .replace, the translators the loop translates its rows with.
	trans     *tree.Op
	loopTrans *translate.Set
	// transRefused is the refusal of some of its translated rows (a
	// translated topic past the limits), made at the door; nil if none.
	transRefused *Refusal
}

// prepare checks a publish and decodes it into an op, on the caller's
// goroutine: the loop never decodes.
func (b *Broker) prepare(p Principal, m *Message) (prepared, error) {
	var r prepared
	err := b.prepareInto(p, m, &r)
	return r, err
}

// prepareInto is prepare filling *r, a zero prepared, in the caller's
// frame (the door's: a 184-byte prepared was built, returned and copied
// for every publish). On an error *r is not to be used.
func (b *Broker) prepareInto(p Principal, m *Message, r *prepared) error {
	if p.original {
		if x, handled, err := b.prepareOriginal(p, m); handled {
			*r = x
			return err
		}
	}
	props := m.properties()
	pub, isMote, err := parsePublish(m.Topic, props)
	if err != nil {
		return err
	}
	if !p.system {
		if err := b.opts.Limits.CheckTopic(pub.Topic); err != nil {
			return err
		}
		// Only a topic starting with '$' may be refused here: asked first,
		// strings.Cut and the calls were 10 L1 instruction misses of a
		// plain publish (bench/README.md, branch h-fast).
		if dollar := len(m.Topic) > 0 && m.Topic[0] == '$'; dollar && !isMote {
			if first, _, _ := strings.Cut(m.Topic, "/"); strings.EqualFold(first, "$share") { // ('$' first: no other rune folds to it)
				return wire.ErrReservedf("%.200q: a filter starting with $share is a shared subscription, so no topic may", m.Topic)
			}
			if reserved(m.Topic) {
				return wire.ErrReservedf("%.200q: topics starting with $SYS, $mote, $hist or a Mote verb are the broker's", m.Topic)
			}
		}
	}
	if !isMote {
		if !m.topicValid { // (an MQTT PUBLISH's was checked as it was read)
			if err := wire.ValidateTopic(m.Topic); err != nil {
				return err
			}
		}
		if !b.access.canWrite(p, m.Topic) {
			return fmt.Errorf("%w: write to %.200q", tree.ErrDenied, m.Topic)
		}
		var msg *message
		if hasProps(props) || props.MessageExpiryInterval > 0 {
			mp := &messageProps{props: *props} // one allocation, not two
			props := &mp.props
			props.TopicAlias, props.TopicAliasFlag, props.SubscriptionIdentifier = 0, false, nil
			if exp := props.MessageExpiryInterval; exp > 0 && !m.Retain {
				mp.expiry = time.Now().Unix() + int64(exp) // an event held for an offline session expires [MQTT-3.3.2-5]
			} else {
				props.MessageExpiryInterval = 0 // rows never expire (SPEC §1)
			}
			msg = &mp.message
			msg.props, msg.size = props, propsSize(props)
		} else if msg = m.pre; msg == nil {
			msg = new(message)
		}
		msg.topic, msg.payload, msg.origin, msg.qos, msg.retain = m.Topic, m.Payload, p.origin(), m.QoS, m.Retain
		r.plain = msg // its op is made when needed (dispatch)
		return nil
	}
	if !p.system && reserved(pub.Topic) {
		return wire.ErrReservedf("%.200q: $set and tree publishes cannot reach the broker's topics", m.Topic)
	}
	op, err := b.parser.Op(pub, m.Payload, m.Retain, m.QoS)
	if err != nil {
		return err
	}
	*r, err = b.checkOp(p, op)
	return err
}

// checkOp is the ACL check of a tree publish or $set decoded into op.
func (b *Broker) checkOp(p Principal, op tree.Op) (prepared, error) {
	if write := b.access.writeCheck(p); write != nil {
		// Rows a tree publish names are checked now, so the ack can say
		// 0x87; $set and .replace rows are known only in the loop.
		for _, r := range op.Rows {
			if !write(r.Topic) {
				return prepared{}, fmt.Errorf("%w: write to %.200q", tree.ErrDenied, r.Topic)
			}
		}
		op.Allow, op.Visible = write, b.access.readCheck(p)
	}
	return prepared{op: op, mote: true}, nil
}

// plainOp is the op of a plain publish: one row, typed by SPEC §1.
func (b *Broker) plainOp(m *Message) tree.Op {
	v := b.parser.TypePlain(m.Payload)
	if m.Retain && len(m.Payload) == 0 {
		v = wire.Value{}
	}
	return tree.Op{Rows: []tree.Row{{Topic: m.Topic, Value: v, Retain: m.Retain}}, QoS: m.QoS}
}

// dispatch hands a prepared publish on: a plain event is delivered on the
// caller's goroutine (and folded into tree deltas when tree subscriptions
// exist); anything that changes rows goes to the loop, which delivers it
// (with inline, the caller stands in for an idle loop: runInline). mp is
// an MQTT client's publisher, nil for every other.
func (b *Broker) dispatch(ctx context.Context, p Principal, m *Message, r *prepared, wait waitMode, inline bool, mp *mqttPublisher) error {
	if b.cl != nil && !m.Retain && !p.system {
		if err := b.shareEvent(p, m, r); err != nil { // to the other nodes of a cluster (cluster.go)
			return b.refusal(p, "publish", m.Topic, err)
		}
	}
	if !r.mote && !m.Retain {
		if mp != nil && mp.queued.Load() > 0 {
			b.afterQueued(ctx, mp) // its earlier publishes wait in the loop: this one comes after them
		}
		if b.hasTreeSubs() { // an event reaches tree subscribers in deltas
			req, meta := request{kind: reqPublish, op: b.plainOp(m)}, pubMeta{p: p, topic: m.Topic}
			if r.trans != nil {
				b.toLoop(inline, req, meta, request{kind: reqPublish, op: *r.trans, pub: translatedMeta(p, *r.trans, false)})
			} else {
				b.toLoop(inline, req, meta)
			}
		}
		w := b.publisherWait(ctx, mp)
		b.deliverPlain(r.plain, w)
		if r.trans != nil {
			b.deliverTranslatedEvent(*r.trans, w)
		}
		return nil
	}
	if !r.mote {
		r.op = b.plainOp(m)
	}
	if b.ret != nil && !p.system && b.ret.Wait() {
		b.stats.Throttled.Add(1) // the disk is behind: the publisher waited
	}
	// A value: toLoop puts it on the heap only if the publish is queued
	// (a publish run inline uses the loop's: Broker.loopPub).
	meta := pubMeta{p: p, topic: m.Topic, rows: r.mote, trans: r.loopTrans}
	if exp := m.properties().MessageExpiryInterval; r.mote && !m.Retain && exp > 0 {
		meta.expiry = time.Now().Unix() + int64(exp) // its rows are events [MQTT-3.3.2-5]
	}
	if b.cl == nil { // (a cluster node delivers once its log took the write: not counted)
		if mp != nil {
			meta.queued = &mp.queued // counted by toLoop if queued
		}
	}
	if !r.mote {
		meta.plain = r.plain
	}
	meta.commit = b.opts.SyncRetain && b.ret != nil && (wait == waitApplied || m.QoS > 0)
	if wait == waitApplied || (wait == waitAck && (meta.commit || b.cl != nil || r.op.SetFilter != "" || r.op.Replace != "")) {
		// (a cluster node answers once the log took the write, or refused it)
		// the loop decides which rows a $set or .replace touches, and so
		// whether the ACL lets it through
		meta.done = make(chan error, 1)
	}
	// A row acknowledged once handed in: counted until applied (afterAcked).
	meta.acked = wait == waitAck && meta.done == nil && m.Retain
	if meta.acked && b.ackedAhead.Load() >= maxAckedAhead {
		// The loop is that far behind: this one is acknowledged once
		// applied, so a SUBSCRIBE waits for about maxAckedAhead rows at
		// most, not for a whole inbox (LoopQueue).
		meta.done, meta.acked = make(chan error, 1), false
	}
	req := request{kind: reqPublish, op: r.op}
	var pushed bool
	if r.trans != nil {
		pushed = b.toLoop(inline, req, meta, request{kind: reqPublish, op: *r.trans, pub: translatedMeta(p, *r.trans, true)})
	} else {
		pushed = b.toLoop(inline, req, meta)
	}
	if !pushed {
		return b.refusal(p, "publish", m.Topic, errShutdown)
	}
	if meta.done == nil {
		return nil
	}
	if len(meta.done) == 0 { // the answer waits for the loop, the disk or the cluster's log
		if mp != nil {
			mp.flush() // the acks mochi held for this client's earlier publishes do not wait with it
		}
	}
	if b.cl != nil { // a write through the cluster's log: never an endless wait
		var cancel context.CancelFunc
		ctx, cancel = b.cl.answerWait(ctx)
		defer cancel()
	}
	select {
	case err := <-meta.done:
		if err != nil {
			return b.refusal(p, "publish", m.Topic, err)
		}
		return nil
	case <-ctx.Done():
		return b.refusal(p, "publish", m.Topic, context.Cause(ctx))
	}
}

var errShutdown = errors.New("broker: shutting down")

// maxAckedAhead bounds the QoS 1/2 retained publishes acknowledged before
// the loop applied them (Broker.ackedAhead): past it, a publisher's ack
// waits for the loop. A SUBSCRIBE waits for those rows (afterAcked);
// unbounded, a loop behind a fast publisher made it wait for a whole
// inbox, 100,000 rows, seconds (TestAckedAheadBounded). The loop still
// gets batches of about this many rows, and a publisher that waits
// finds the count low again once its row is applied.
const maxAckedAhead = 1000

// toLoop hands one publish, req with its pubMeta meta (and its
// translation, as a second request), to the loop: run at once by the
// caller when inline is set and the loop is idle (runInline), queued
// otherwise, with a copy of meta on the heap. It reports false once the
// loop has stopped.
func (b *Broker) toLoop(inline bool, req request, meta pubMeta, trans ...request) bool {
	var batch [2]request // on the stack: runInline keeps no reference
	batch[0] = req
	n := 1 + copy(batch[1:], trans)
	if inline && b.runInline(batch[:n], meta) {
		return true
	}
	req.pub = new(pubMeta)
	*req.pub = meta
	batch[0].pub = req.pub
	c := req.pub.queued
	if c != nil {
		c.Add(1) // before the loop can take it
	}
	if req.pub.acked {
		b.ackedAhead.Add(1) // before its acknowledgement can be written
	}
	var ok bool
	if n == 2 {
		ok = b.reqs.pushPair(batch[0], batch[1])
	} else {
		ok = b.reqs.push(req)
	}
	if !ok && c != nil {
		c.Add(-1)
	}
	if !ok && req.pub.acked {
		b.ackedAhead.Add(-1)
	}
	return ok
}

// afterAcked waits, when some client's QoS 1/2 publish was acknowledged
// before the loop ran it (Broker.ackedAhead), until the loop has applied
// and delivered what it was handed before (a barrier), or stop is closed.
// A plain SUBSCRIBE calls it before its filters are filed: a row
// acknowledged before the SUBSCRIBE came is then in its retained replay
// and never comes live after it, as if the acknowledgement had waited for
// the row (Mosquitto's order), without making publishers wait for the
// loop. A $sync or $tree subscription needs none: the loop registers it
// behind what it was handed. Nothing waits while no such publish is
// queued, the common case.
func (b *Broker) afterAcked(stop <-chan struct{}) {
	if b.ackedAhead.Load() > 0 {
		b.onLoop(stop, func() {}) // false only once stop is closed or the loop stopped: nothing is left to wait for
	}
}

// afterQueued waits until the loop has delivered what it was handed
// before (a barrier: the loop runs its inbox in order), so that an MQTT
// client's plain event, delivered on its own goroutine, reaches
// subscribers after the client's earlier publishes that the loop delivers
// (mp.queued > 0): MQTT 3.1.1 [MQTT-4.6.0-6], MQTT 5 §4.6 [MQTT-4.6.0-5,6].
// The acks mochi held for the client go out first. Nothing waits when the
// client has nothing queued, the common case.
func (b *Broker) afterQueued(ctx context.Context, mp *mqttPublisher) {
	mp.flush()
	b.onLoop(ctx.Done(), func() {}) // false only once the loop stopped: nothing is left to wait for
}

// parsePublish reads a publish topic: a $tree/$set prefix, or (MQTT 5)
// the user property mote=tree on a plain topic; isMote is false for a plain
// publish (returned with Topic set).
//
// Mote's user properties are read once each: one given twice (mote=tree
// and mote=sync, mote-replace 0 and 1) is refused, not read as its first
// value, and so is a mote-replace other than 1, true, 0 or false. On a
// $tree topic, mote-replace and mote-codec (SPEC §4's MQTT 5 forms of
// .replace and the codec options) apply as its options would; one that
// contradicts the topic's own option is refused, and on a $set topic,
// which takes no options, both are (mote-replace=1 on $tree/T was
// ignored: no replace).
func parsePublish(topic string, props *packets.Properties) (wire.Publish, bool, error) {
	if len(props.User) == 0 && (len(topic) == 0 || topic[0] != '$') {
		return wire.Publish{Topic: topic}, false, nil // a plain publish: neither a prefix nor mote=tree
	}
	// One parse: a topic without a Mote verb comes back plain (its first
	// level was split twice more, IsMote's and ParsePublish's).
	if p, err := wire.ParsePublish(topic); err != nil || p.Op != wire.PubPlain {
		if err == nil {
			err = treePublishProps(&p, topic, props.User)
		}
		return p, true, err
	}
	mode, ok, err := moteProp(props.User, "mote")
	if err != nil {
		return wire.Publish{}, true, err
	}
	if !ok {
		return wire.Publish{Topic: topic}, false, nil
	}
	if mode != "tree" {
		return wire.Publish{}, true, wire.ErrPrefixf("user property mote=%q on a PUBLISH: want tree", mode)
	}
	p := wire.Publish{Op: wire.PubTree, Topic: topic}
	v, ok, err := moteProp(props.User, "mote-codec")
	switch {
	case err != nil:
		return p, true, err
	case ok:
		c, err := wire.ParseCodec(v)
		if err != nil {
			return p, true, err
		}
		p.Codec = c
	default:
		if c, ok := wire.ContentTypeCodec(props.ContentType); ok {
			p.Codec = c
		}
	}
	v, ok, err = moteProp(props.User, "mote-replace")
	if err == nil && ok {
		p.Replace, err = replaceProp(v)
	}
	if err != nil {
		return p, true, err
	}
	if err := wire.ValidateFilter(p.Topic); err != nil {
		return p, true, err
	}
	if reserved(p.Topic) {
		return p, true, wire.ErrReservedf("%.200q: a tree publish cannot write the broker's topics", p.Topic)
	}
	return p, true, nil
}

// reserved reports whether a topic is the broker's: no client publishes
// there (one definition, the tree core's, for plain and tree publishes).
func reserved(topic string) bool { return tree.Reserved(topic) }

// isSys reports whether topic is under the broker's own $SYS level (not
// a client's $SYSTEM/… or $sysfoo/…, which a tree publish may write).
func isSys(topic string) bool {
	first, _, _ := strings.Cut(topic, "/")
	return strings.EqualFold(first, "$SYS")
}

func userProp(props []packets.UserProperty, key string) (string, bool) {
	for _, u := range props {
		if u.Key == key {
			return u.Val, true
		}
	}
	return "", false
}

// treePublishProps applies the user properties mote-replace and
// mote-codec to a $tree or $set publish parsed from topic.
func treePublishProps(p *wire.Publish, topic string, user []packets.UserProperty) error {
	replace, hasReplace, err := moteProp(user, "mote-replace")
	if err != nil {
		return err
	}
	codec, hasCodec, err := moteProp(user, "mote-codec")
	if err != nil {
		return err
	}
	if !hasReplace && !hasCodec {
		return nil
	}
	if p.Op != wire.PubTree {
		return wire.ErrPrefixf("user property mote-replace or mote-codec on %.40q: $set takes no options", topic)
	}
	if hasReplace {
		r, err := replaceProp(replace)
		switch {
		case err != nil:
			return err
		case !r && p.Replace:
			return wire.ErrPrefixf("user property mote-replace=%s on %.40q, whose topic says replace", replace, topic)
		}
		p.Replace = p.Replace || r
	}
	if hasCodec {
		c, err := wire.ParseCodec(codec)
		if err != nil {
			return err
		}
		first, _, _ := strings.Cut(topic, "/")
		for _, o := range strings.Split(first, ".")[1:] {
			if tc, err := wire.ParseCodec(o); err == nil && tc != c {
				return wire.ErrPrefixf("user property mote-codec=%s on %.40q, whose topic says %s", codec, topic, o)
			}
		}
		p.Codec = c
	}
	return nil
}

// replaceProp reads the value of the user property mote-replace.
func replaceProp(v string) (bool, error) {
	switch v {
	case "1", "true":
		return true, nil
	case "0", "false":
		return false, nil
	}
	return false, wire.ErrPrefixf("user property mote-replace=%.40q: want 1 or 0", v)
}

// moteProp is userProp for one of Mote's own user properties, which a
// packet gives at most once: a second one is an error, not ignored.
func moteProp(props []packets.UserProperty, key string) (string, bool, error) {
	var v string
	n := 0
	for _, u := range props {
		if u.Key == key {
			if n == 0 {
				v = u.Val
			}
			n++
		}
	}
	if n > 1 {
		return "", false, wire.ErrPrefixf("user property %s given %d times", key, n)
	}
	return v, n == 1, nil
}

// Sync returns once every publish handed to the broker before it has been
// applied and delivered to the queues of its subscribers: a barrier for
// tests and front ends.
func (b *Broker) Sync(ctx context.Context) error {
	if !b.onLoop(ctx.Done(), func() {}) {
		return errShutdown
	}
	return nil
}

// Tree returns the tree a $sync/filter snapshot would carry for p, in
// codec c: only the rows p may read; and the revision it reflects (its
// mote-rev, SPEC §8), taken with it on the loop.
func (b *Broker) Tree(ctx context.Context, p Principal, filter string, c wire.Codec) ([]byte, uint64, error) {
	if err := b.checkAnswerFilter(filter); err != nil {
		return nil, 0, b.refusal(p, "subscribe", filter, err)
	}
	var out []byte
	var rev uint64
	if !b.onLoop(ctx.Done(), func() { out, rev = b.tree.Snapshot(filter, c, b.access.readCheck(p)), b.tree.Rev() }) {
		err := ctx.Err()
		if err == nil {
			err = errShutdown
		}
		return nil, 0, b.refusal(p, "subscribe", filter, err)
	}
	return out, rev, nil
}

// checkAnswerFilter checks the filter of a front end's tree or history
// answer (Tree, AnswerSize) as a $sync SUBSCRIBE's is checked
// (parseFilter): valid, within the topic limits, and not beginning with
// a level no row has ($sync, $share, …), which the SUBSCRIBE and the
// event stream refuse where a GET answered 200 with an empty tree.
func (b *Broker) checkAnswerFilter(filter string) error {
	if _, err := parseFilter(filter, wire.Subscription{Mode: wire.Sync}); err != nil {
		return err
	}
	return b.opts.Limits.CheckTopic(filter)
}

// Rev returns the store's revision (SPEC §8): what a snapshot taken now
// would carry as mote-rev.
func (b *Broker) Rev(ctx context.Context) (uint64, error) {
	var rev uint64
	if !b.onLoop(ctx.Done(), func() { rev = b.tree.Rev() }) {
		return 0, errShutdown
	}
	return rev, nil
}

// AnswerSize estimates, without building it, the bytes of the answer
// Tree would give for filter (with hist, the $hist/filter answer with
// those options, SPEC §9): an upper bound from the rows matching filter
// now (p's ACL not applied), each row's tree.SizeBound (an upper bound of
// its bytes in a tree of any codec, keys included), and for a history
// each row's pair and the history values stored for the rows matching
// filter, deleted ones too (histSize). It walks the rows on the loop and
// allocates nothing per row, once it has one of the few slots the
// broker's estimates take (EstimateSlots, shared with the $sync
// SUBSCRIBEs' estimates), so that callers looping refused requests do
// not queue walks on the loop without bound. A front end counts an
// answer against its budget (a Budget) with it before the answer is
// built. (Rows and history values added after the estimate are not in
// it.)
func (b *Broker) AnswerSize(ctx context.Context, p Principal, filter string, hist *SubscribeOptions) (int64, error) {
	if err := b.checkAnswerFilter(filter); err != nil {
		return 0, b.refusal(p, "subscribe", filter, err)
	}
	select {
	case b.estimates <- struct{}{}:
	case <-ctx.Done():
		return 0, b.refusal(p, "subscribe", filter, ctx.Err())
	}
	defer func() { <-b.estimates }()
	size := int64(tree.SnapshotFraming)
	ok := b.onLoop(ctx.Done(), func() {
		b.tree.Store().MatchSizes(filter, func(_ string, _ wire.Value, row int64) bool {
			size += row
			if hist != nil {
				size += histLeafBytes + histPairBytes // the current value's pair: [[t, value]]
			}
			return true
		})
	})
	if !ok {
		err := ctx.Err()
		if err == nil {
			err = errShutdown
		}
		return 0, b.refusal(p, "subscribe", filter, err)
	}
	if hist != nil {
		size += b.histSize(filter, hist.Limit)
	}
	return size, nil
}

// histLeafBytes bounds what a history leaf, an array of [t, value] pairs
// (readHistory), takes beyond its pairs: JSON's brackets, a CBOR or
// MessagePack array's head (at most 9 bytes). histPairBytes bounds what a
// pair takes beyond its value's bytes as written: `[t,` `]` and a comma
// in JSON, t at most 20 digits; a head and t of at most 9 bytes in CBOR
// and MessagePack.
const (
	histLeafBytes = 9
	histPairBytes = 24
)

// histSize is an upper bound of what the stored history values of the
// rows matching filter take in a $hist answer (readHistory), keys
// included, in any codec: from each row's retain.HistSize, the values
// stored (each as wire.LeafGrowth grows it), at most its rule's keep and
// the newest, or limit (0: none), of the largest. It reads no value but
// those handed to the retainer and not committed yet (Retainer.HistorySizes).
func (b *Broker) histSize(filter string, limit int) int64 {
	if b.ret == nil {
		return 0
	}
	rules := b.ret.HistoryRules()
	if len(rules) == 0 {
		return 0 // readHistory reads none
	}
	var size int64
	known := b.ret.HistorySizes(filter, func(topic string, s retain.HistSize) bool {
		n := int64(s.Values)
		if rule := retain.RuleFor(rules, topic); rule != nil {
			n = min(n, int64(rule.Keep)+1) // keepPairs
		}
		if limit > 0 {
			n = min(n, int64(limit))
		}
		// The row's key and leaf, as if it had no current row (a deleted
		// one): tree.SizeBound of an empty value.
		size += tree.SizeBound(topic, wire.Value{}) + histLeafBytes
		size += min(s.Bytes+int64(s.Values)*histPairBytes, n*(s.Most+histPairBytes))
		return true
	})
	if !known {
		// The store's history was unreadable at its start (a damaged
		// page): what one answer reads at most, each byte and each
		// value's 48 counted (retain.Store.History) as the most an
		// encoder grows them, 6 times. An answer this large is let in
		// only when no other is held.
		return 6 * histReadBytes
	}
	return size
}

// estimatesAtOnce is how many estimates (AnswerSize, a $sync
// SUBSCRIBE's) walk the tree at once, whichever door asks: a walk of a
// large filter holds the loop, and 64 HTTP clients looping refused GETs
// queued 47 ms of walks on it.
const estimatesAtOnce = 4

// EstimateSlots is the semaphore the estimates take (AnswerSize, a
// $sync SUBSCRIBE's), estimatesAtOnce slots: a door holding a slot keeps
// one walk out.
func (b *Broker) EstimateSlots() chan struct{} { return b.estimates }
