package broker

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/wire"
)

// takeBytes is how much the writer takes from its queue at a time: room
// comes back to waiting publishers in steps of this size, not only once a
// whole backlog is written.
const takeBytes = 64 << 10

// writerIdleFor is how long a writer waits for more once it found nothing
// to write before it stops (between one and two of these): a steady
// stream keeps one writer, an idle connection holds none (issue 15: a
// goroutine's stack was a third of an idle connection's memory).
const writerIdleFor = time.Second

// startWriter starts the connection's writer goroutine (outQueue.start,
// called with the queue's running flag set).
func (c *conn) startWriter() { go c.writeLoop() }

// writeLoop is the connection's writer: the one path every message to the
// client takes. It takes items in order and writes them; snapshots,
// retained replays and folded deltas are made by the message loop when the
// writer reaches them. It runs while there is something to write: started
// by a wake-up (outQueue.unlockAndWake), it stops once it has found
// nothing for a while, or, when the connection closes, once it has done
// its finishing duties (the leftovers' replays, handReplaysOn, and their
// hand-off, conn.finish) — the one writer that does them, whose exit the
// broker's Close waits for (Broker.writers).
func (c *conn) writeLoop() {
	c.b.stats.Writers.Add(1)
	defer c.b.stats.Writers.Add(-1)
	if !c.writeUntilDone() {
		return // idle: a wake-up starts another
	}
	defer c.b.writers.Done()
	defer c.finish(false, false)
	c.handReplaysOn()
}

// writeUntilDone writes what the queue holds as it comes; it returns false
// when it may stop idle (outQueue.idle), true when the connection is done
// (its queue closed, or a write failed).
func (c *conn) writeUntilDone() bool {
	d := time.Duration(c.b.writerIdle.Load())
	if d <= 0 {
		d = writerIdleFor
	}
	idle := time.NewTimer(d)
	defer idle.Stop()
	busy := false // woken since the timer was last set
	var batch []item
	done := c.q.done.wait()
	wake := c.q.wakeOf() // nil in the queue once this writer stops idle
	for {
		select {
		case <-wake:
		case <-done:
			return true
		case <-idle.C:
			if !busy && c.q.idle() {
				return false
			}
			busy = false
			idle.Reset(d)
			continue
		}
		busy = true
		if c.q.takeOver() { // a direct write left bytes: they go first
			if err := c.out.flush(); err != nil {
				c.fail(err)
				return true
			}
		}
		for {
			batch = c.q.take(batch[:0], takeBytes)
			if len(batch) == 0 {
				break
			}
			for i, m := range batch {
				if err := c.write(m); err != nil {
					c.fail(err)
					// What was not written stays the session's (a failed
					// item was not taken in flight; one that cannot be
					// encoded never will be).
					// A plain message taken in flight and back that
					// mochi moved to the client taking the session
					// over is that client's (it sends it again): not
					// left, or the session would get it twice.
					var tb *takenBack
					if errors.Is(err, errEncode) {
						i++
					} else if _, ok := m.(*plainItem); ok && errors.As(err, &tb) && tb.moved {
						i++
					}
					c.q.unsent(batch[i:])
					clear(batch)
					return true
				}
				batch[i] = nil
			}
			if err := c.out.flush(); err != nil { // one write for the batch
				c.fail(err)
				return true
			}
		}
	}
}

// handReplaysOn makes plain messages, for the session, of what is left of
// the QoS 1/2 retained replays the connection did not finish (the one
// being written, and those still queued) when its session outlives it:
// they take the replays' places among the leftovers, which conn.finish
// hands on. The writer calls it as it exits, before finish: the loop,
// which reads the rows, never waits for a writer. A few writers do it at
// once (handingAtOnce); the others wait their turn.
func (c *conn) handReplaysOn() {
	o, ok := c.out.(*mqttOut)
	if !ok || !sessionLasts(o.cl) {
		return
	}
	left := c.q.leftReplays()
	if len(left) == 0 {
		return
	}
	select {
	case c.b.handing <- struct{}{}:
	case <-c.b.stop:
		return
	}
	defer func() { <-c.b.handing }()
	var rows []replayRow
	for _, r := range left {
		var msgs []*plainItem
		if msgs, rows, ok = c.replayLeft(r, c.q.leftRoom(r), rows); !ok {
			return
		}
		c.q.expand(r, msgs)
	}
}

// replayLeft reads what is left of r, a QoS 1/2 replay the connection did
// not finish, into plain messages for its session, up to room bytes by
// their cost (the leftovers' bound: no row past it is read), rows read as
// the replay reads them (replayRows, one trip to the loop at a time) and
// made into messages here, off the loop: a trip holds the loop as long as
// a live replay's, whatever is left, and the writers of many sessions
// ending at once take their turns on the loop trip by trip (one session's
// rest made on the loop was 1.5 ms a 300-row replay: 2,000 sessions kept
// the last writer waiting 2.7 s, and everybody's publishes behind them).
// rows is a buffer to read into, returned for the next; ok is false once
// the broker stops.
func (c *conn) replayLeft(r *replayItem, room int, rows []replayRow) (out []*plainItem, buf []replayRow, ok bool) {
	if room <= 0 {
		return nil, rows, true // not a row would be kept: none is read
	}
	if cap(rows) < replayRowsMax {
		// Made here, not grown on the loop (two thirds of a trip's time
		// went to growing it there).
		rows = make([]replayRow, 0, replayRowsMax)
	}
	n := 0
	// Messages, each with its item (message.first), are made leftSlab at
	// a time: one allocation for many, and a slab holds only messages
	// kept (but for the last one's rest), however few rows of a trip are.
	var slab []message
	for done := false; !done; {
		var err error
		if rows, done, err = c.b.replay(c.b.stop, c, r, rows[:0]); err != nil {
			return nil, nil, false
		}
		for i := range rows {
			if len(slab) == 0 {
				slab = make([]message, leftSlab)
			}
			m, keep := c.leftMessage(r, &rows[i], &slab[0])
			if !keep {
				continue
			}
			if n += m.cost(); n > room {
				slab[0] = message{}
				done = true
				break
			}
			slab = slab[1:]
			out = append(out, m)
		}
		clear(rows)
	}
	r.list = nil // no trip reads r again (the last answered): let the list go
	return out, rows, true
}

// leftMessage makes msg the message, for the session, of a replayed row
// and returns its item, by the rules replayPacket applies: the reader's
// read check, QoS capped by the row's and the subscription's (a row that
// comes down to QoS 0 is not kept), the subscription identifier, the
// row's MQTT 5 properties.
func (c *conn) leftMessage(r *replayItem, row *replayRow, msg *message) (*plainItem, bool) {
	qos := min(row.qos, r.qos)
	if qos == 0 || !c.b.access.canRead(c.p, row.topic) {
		return nil, false
	}
	*msg = message{topic: row.topic, payload: bytesOf(row.value.Data), props: row.props, qos: row.qos, retain: true, firstUsed: true}
	m := &msg.first
	*m = plainItem{msg: msg, qos: qos, retain: true}
	if r.subID > 0 {
		m.subIDs = []int{r.subID}
	}
	return m, true
}

// leftSlab is how many messages replayLeft allocates at once.
const leftSlab = 64

// handingAtOnce is how many writers may read their replays' rest at once
// (handReplaysOn): a few trips to the loop wait in its inbox at a time,
// not one for each of thousands of sessions ending together, so a
// publish made meanwhile waits behind a few, and the writers making
// messages do not crowd the loop off the processors.
const handingAtOnce = 4

// sessionLasts reports whether cl's session outlives its connection
// (read under mochi's lock: a DISCONNECT may be changing it, change 53).
func sessionLasts(cl *mqtt.Client) bool {
	return !cl.SessionEndsWithConnection()
}

// fail ends a connection whose writer cannot go on. A write error (the
// socket broke, or the write deadline passed) closes the connection, so a
// client that stopped reading does not linger.
func (c *conn) fail(err error) {
	if !c.q.close() || errors.Is(err, errWriterStop) {
		return
	}
	if !errors.Is(err, mqtt.ErrConnectionClosed) {
		c.b.log.Debug().Err(err).Str("client", truncate(c.p.ClientID, 200)).Msg("write failed; closing the connection")
	}
	c.out.stop(err)
}

// write sends one item. Before it waits on the loop, what is encoded goes
// out.
//
// It is not inlined into writeUntilDone (PGO inlined it there once its
// cold cases were out): a writer waiting for items then holds only
// writeLoop's and writeUntilDone's small frames, so the GC shrinks an idle
// writer's stack back to 2–4 KiB; with write's frame in writeUntilDone's
// (2.8 KiB), a waiting writer stayed at 8 KiB, +2.5 MiB of the live
// dashboard's plain peak RSS (500 writers).
//
//go:noinline
func (c *conn) write(m item) error {
	switch m.(type) {
	case *snapshotItem, *replayItem, *deltaItem:
		if d, ok := m.(*deltaItem); !ok || d.folded != nil {
			if err := c.out.flush(); err != nil {
				return err
			}
		}
	}
	switch m := m.(type) {
	case *plainItem:
		if o, ok := c.out.(*mqttOut); ok && m.qos == 0 && o.sendPlain0(c, m) {
			return nil
		}
		var pk packets.Packet
		m.packet(&pk)
		return c.send(&pk, outPlain)
	case *treeItem:
		pk := c.treePacket(m)
		return c.send(&pk, m.sentAs())
	case *deltaItem:
		if m.folded != nil {
			ok, err := c.b.encodeFolded(c, m)
			if err != nil || !ok {
				return err
			}
		}
		m.rev = m.sub.moteRev(m.rev)
		err := c.sendTree(m.sub, &m.treeItem, outDelta)
		m.payload = nil // its subscription still points at it (to fold): let the payload go
		return err
	case *snapshotItem:
		return c.writeSnapshot(m)
	case *replayItem:
		return c.writeReplay(m)
	}
	return fmt.Errorf("broker: unknown queue item %T", m)
}

// writeSnapshot sends a snapshot item: the loop takes the snapshot now,
// and its messages go out, flushed.
//
// It and writeReplay are write's cold cases, kept out of its frame
// (go:noinline: PGO inlined replayPacket's 816-byte Packet into write):
// every delta a writer sends passes through write's frame, and with those
// cases in it the delta path (write, sendTree, the send under it) passed
// the 8 KiB a goroutine's stack starts doubling at, so every busy writer's
// stack grew to 16 KiB, and grew again after each GC shrank it: +4 MiB
// for the live dashboard's 500 $sync writers (bench/README.md, "PGO and
// the live dashboard's peak RSS").
//
//go:noinline
func (c *conn) writeSnapshot(m *snapshotItem) error {
	// What it holds of the snapshot budget goes once it is written
	// (flushed), or will never be.
	defer func() {
		c.b.releaseShared(m.sub.takeShared())
		c.releaseSnapshot(m.sub)
	}()
	if err := c.paceSnapshots(); err != nil {
		return err
	}
	if _, ok := c.out.(*mqttOut); ok && m.sub.resumed {
		// A resumed session's: no SUBACK took its room.
		if err := c.awaitSnapshotRoom(m.sub); err != nil {
			return err
		}
	}
	msgs, err := c.b.takeSnapshot(c, m.sub)
	if err != nil {
		return err
	}
	if _, ok := c.out.(*mqttOut); ok && len(msgs) > 0 {
		var n int64
		for _, t := range msgs {
			if !m.sub.shares(t.payload) { // a shared one counts once, by itself
				n += int64(len(t.payload))
			}
		}
		c.resizeSnapshot(m.sub, n)
	}
	for i, t := range msgs {
		if err := c.sendTree(m.sub, t, t.sentAs()); err != nil {
			return err
		}
		msgs[i] = nil // sent: let its payload go once written
	}
	return c.out.flush()
}

// writeReplay sends a retained replay item, a few hundred rows at a time
// read off the loop (write's other cold case: see writeSnapshot).
//
//go:noinline
func (c *conn) writeReplay(m *replayItem) error {
	var rows []replayRow
	for {
		var done bool
		var err error
		// The trip is waited for even if the connection ends
		// meanwhile (only the broker's stop gives up on it): a trip
		// given up on still ran, later, and moved the replay past rows
		// nobody sent — up to replayRowsMax of them lost to the session
		// (TestReplayTripNotGivenUp).
		rows, done, err = c.b.replay(c.b.stop, c, m, rows[:0])
		if err != nil {
			return err
		}
		for i := range rows {
			if pk, ok := c.replayPacket(m, &rows[i]); ok {
				if err := c.send(&pk, outRetained); err != nil {
					// The rest is the session's (handReplaysOn): from
					// this row on, or the next if it cannot be encoded.
					m.next = rows[i].at
					if errors.Is(err, errEncode) {
						m.next++
					}
					return err
				}
			}
			rows[i] = replayRow{}
		}
		if done {
			m.list = nil // let the list go
			return nil
		}
	}
}

// Snapshots are made on the loop, at a cost the client does not pay when
// it cannot take them (too large for it, say): a connection gets
// snapshotBurst of them at once, then snapshotRate a second.
const (
	snapshotBurst = 1000
	snapshotRate  = 100
)

// paceSnapshots waits, if the connection has taken its snapshots' worth,
// until it may take another (a token bucket, owned by the writer).
func (c *conn) paceSnapshots() error {
	now := time.Now()
	if c.snapPace == nil {
		c.snapPace = &snapPace{tokens: snapshotBurst, at: now}
	}
	p := c.snapPace
	p.tokens = min(snapshotBurst, p.tokens+now.Sub(p.at).Seconds()*snapshotRate)
	p.at = now
	if p.tokens < 1 {
		wait := time.Duration((1 - p.tokens) / snapshotRate * float64(time.Second))
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.q.done.wait():
			return errWriterStop
		}
		p.tokens, p.at = 1, time.Now()
	}
	p.tokens--
	return nil
}

// snapPace is a connection's snapshot token bucket (paceSnapshots): the
// snapshots it may take now, and when they were last topped up.
type snapPace struct {
	tokens float64
	at     time.Time
}

// send writes one packet, a message of kind k, and counts it. One the
// client cannot take (over its Maximum Packet Size) is skipped and
// counted, as MQTT 5 says [MQTT-3.1.2-25]; a tree message skipped this
// way is also reported, and its mote-seq gap tells the client to
// subscribe again (snapshots are split to fit).
//
// pk is the caller's, by pointer (an outgoing packet is ~800 bytes: it
// was copied at every call), and the endpoint may change it.
func (c *conn) send(pk *packets.Packet, k outKind) error {
	_, err := c.sendOut(pk, k)
	return err
}

// sendOut is send, and reports whether the packet went to the client
// (false for one skipped: too large, expired).
func (c *conn) sendOut(pk *packets.Packet, k outKind) (bool, error) {
	topic, size := pk.TopicName, len(pk.Payload) // before send may take the name away (a topic alias)
	var err error
	switch o := c.out.(type) { // by type: through the interface pk would escape
	case *mqttOut:
		err = o.send(c, pk)
	case *funcOut:
		if k == outPlain || k == outRetained {
			// The message's properties (or the retained row's), one for
			// all its subscribers; fn may change what it gets (Open).
			pk.Properties = pk.Properties.Copy(false)
		}
		err = o.send(c, pk)
	default:
		cp := *pk
		err = c.out.send(c, &cp)
	}
	switch {
	case err == nil:
		c.b.meter.out[k].Add(1)
		return true, nil
	case errors.Is(err, errSkipped):
		return false, nil
	case !errors.Is(err, errTooLarge):
		return false, err
	}
	c.b.stats.TooLarge.Add(1)
	if k != outPlain && k != outRetained {
		c.b.refuse(c.p, "deliver", topic, fmt.Errorf("%w: a %d-byte tree message exceeds your Maximum Packet Size; it was skipped (subscribe again for a snapshot in parts)", errTooLarge, size))
	}
	return false, nil
}

// sendTree sends st's tree message m and, once it went to the client,
// notes it in st's mark (treeSub.wrote): a part but the last of a message
// in parts notes its mote-seq alone (wrotePart), the message is not whole
// yet. So is one taken in flight and back as the client was taken over
// that mochi moved to the client that took the session (takenBack.moved,
// from mochi's moved ids: one deleted after the move is not): that client
// sends it (DUP), and the resume delta of its connection, unnoted, took
// the same mote-seq with more rows.
func (c *conn) sendTree(st *treeSub, m *treeItem, k outKind) error {
	var sent bool
	var err error
	if o, ok := c.out.(*mqttOut); ok && o.sendTree0(c, m, k) {
		sent = true // an MQTT 3.1.1 client's QoS 0 message, encoded as is
	} else {
		pk := c.treePacket(m)
		sent, err = c.sendOut(&pk, k)
	}
	if !sent && err != nil {
		var tb *takenBack
		sent = errors.As(err, &tb) && tb.moved
	}
	if sent && st.mark != nil {
		if lastPart(m.part) {
			st.wrote(m.seq, m.rev)
		} else {
			st.wrotePart(m.seq)
		}
	}
	return err
}

// lastPart reports whether part ("i/n", or "" for a message whole) is
// the last of its message.
func lastPart(part string) bool {
	i, n, _ := strings.Cut(part, "/")
	return i == n
}

// replayPacket is the retained publish of a replayed row for this
// connection, with MQTT's rules: the reader's read check, QoS capped by the
// row's and the subscription's, the subscription identifier, the row's
// MQTT 5 properties. The payload is the store's string, not copied:
// encoding only reads it.
func (c *conn) replayPacket(r *replayItem, row *replayRow) (packets.Packet, bool) {
	if !c.b.access.canRead(c.p, row.topic) {
		return packets.Packet{}, false
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: min(row.qos, r.qos), Retain: true},
		TopicName:   row.topic,
		Payload:     bytesOf(row.value.Data),
	}
	if c.v5 {
		if row.props != nil {
			pk.Properties = *row.props
		}
		if r.subID > 0 {
			pk.Properties.SubscriptionIdentifier = []int{r.subID}
		}
	}
	return pk, true
}

// packet fills out, a zero Packet, with the publish of a plain item for
// its subscriber: filled in place, not returned, so a send builds the
// 816-byte Packet once, in its own frame (returned, it was built and then
// copied: 2% of a plain message's instructions and 13 L1 data misses
// under callgrind; bench/README.md, branch h-lat2). It has no Created
// time, nor has any packet a conn sends (treePacket, replayPacket): no
// endpoint reads it — at QoS 1 and 2 takeInflight sets it to the packet
// id, the order in which mochi resends; QoS 0 is encoded without it, and
// funcOut does not pass it on. Reading the clock was 2% of a fan-in's CPU
// (bench/README.md, "Issue 15: packets by pointer on the plain publish
// path").
func (m *plainItem) packet(out *packets.Packet) {
	msg := m.msg
	out.FixedHeader = packets.FixedHeader{Type: packets.Publish, Qos: m.qos, Retain: m.retain}
	out.TopicName, out.Payload = msg.topic, msg.payload
	out.Origin, out.Expiry = msg.origin, msg.expiry
	// mochi expires held messages of version 5 only [MQTT-3.3.2-5];
	// the writer encodes for the client's version.
	out.ProtocolVersion = 5
	if msg.props != nil {
		out.Properties = *msg.props
	}
	out.Properties.SubscriptionIdentifier = m.subIDs
}

// treePacket is the publish of a tree message: on MQTT 5 with mote-seq,
// mote-rev, mote-resume, mote-part, Content Type and the subscription
// identifier.
func (c *conn) treePacket(m *treeItem) packets.Packet {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: m.qos},
		TopicName:   m.topic,
		Payload:     m.payload, // no Created: see plainItem.packet
	}
	if c.v5 {
		pk.Properties.ContentType = m.codec.ContentType()
		pk.Properties.User = []packets.UserProperty{
			{Key: "mote-seq", Val: strconv.FormatUint(m.seq, 10)},
			{Key: "mote-rev", Val: strconv.FormatUint(m.rev, 10)},
		}
		if m.resume {
			pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: "mote-resume", Val: "1"})
		}
		if m.part != "" {
			pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: "mote-part", Val: m.part})
		}
		if m.subID > 0 {
			pk.Properties.SubscriptionIdentifier = []int{m.subID}
		}
	}
	return pk
}

// packetLimit is the largest packet the writer may send to this client:
// the broker's max_packet_size, or the client's Maximum Packet Size if
// smaller.
func (c *conn) packetLimit() int {
	max := c.b.opts.MaxPacketSize
	if cm := c.out.maxPacket(); cm > 0 && cm < max {
		max = cm
	}
	return int(max)
}

// treePacketSize is the size of the PUBLISH that carries tree message m
// to this client: its header and properties encoded as the writer will
// (treePacket, then the endpoint's send), its payload's length added. For
// a client that allows Topic Aliases, send gives the packet one (3
// bytes): a topic whose alias the client knows goes without its name
// (an alias, once given, stays for the connection), one it does not know
// is counted with both (send may find no free alias: then it is smaller).
func (c *conn) treePacketSize(m *treeItem) int {
	pk := c.treePacket(m)
	n := len(pk.Payload)
	pk.Payload = nil
	pk.PacketID = 1 // send takes one at QoS 1 and 2; its value does not change the size
	pk.ProtocolVersion = 4
	if c.v5 {
		pk.ProtocolVersion = 5
		if o, ok := c.out.(*mqttOut); ok && o.cl.Properties.TopicAliasMaximum() > 0 {
			pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 1, true
			if o.cl.State.TopicAliases.Outbound.Known(pk.TopicName) {
				pk.TopicName = ""
			}
		}
	}
	if err := pk.PublishEncode(new(bytes.Buffer)); err != nil {
		return math.MaxInt // it cannot be encoded: it fits no client
	}
	n += pk.FixedHeader.Remaining
	return 1 + varintLen(n) + n
}

// varintLen is the length of n as an MQTT variable byte integer.
func varintLen(n int) int {
	size := 1
	for ; n >= 128; n >>= 7 {
		size++
	}
	return size
}

// snapshotMessages cuts an encoded snapshot into the messages that carry
// it: one if that packet fits the client, else (MQTT 5) parts split by
// subtree, each a valid partial tree (mote-part i/n). SPEC §2: only a
// snapshot larger than the client's Maximum Packet Size is split, so the
// packet is measured as it will be sent (treePacketSize). A snapshot
// that does not fit an MQTT 3.1.1 client, or cannot be split into parts
// that fit, is an error (reported: errTooLarge). A value that alone fits
// no part is left out of the parts and counted in TooLarge: the parts
// are returned with an errTooLarge naming the values left out (to be
// reported), so one row too large does not take the whole snapshot away.
func (c *conn) snapshotMessages(m treeItem) ([]*treeItem, error) {
	limit := c.packetLimit()
	if c.treePacketSize(&m) <= limit {
		return []*treeItem{&m}, nil
	}
	if !c.v5 {
		return nil, fmt.Errorf("%w: snapshot of %d bytes does not fit the maximum packet size; MQTT 5 clients get it in parts", errTooLarge, len(m.payload))
	}
	// A part also carries mote-part "i/n", and n is known only once the
	// snapshot is split: the room counts i and n with as many digits as
	// the payload's length (there are fewer parts than bytes). The packet
	// shrinks by at least as much as its payload does.
	probe := m
	digits := strings.Repeat("9", len(strconv.Itoa(len(m.payload))))
	probe.part = digits + "/" + digits
	room := len(m.payload) - (c.treePacketSize(&probe) - limit)
	// Splitting decodes the whole snapshot (~17× its size): a few at a time
	// broker-wide, whatever the number of clients asking.
	select {
	case c.b.splits <- struct{}{}:
	case <-c.q.done.wait():
		return nil, errWriterStop
	}
	split := wire.SplitSkip
	if m.resume {
		// A resume delta: a value left out is null in the parts, so the
		// client drops the value it holds from before rather than keep it
		// under this mote-rev (SPEC §8), as a snapshot would lack it.
		split = wire.SplitDrop
	}
	parts, left, err := split(m.codec, m.payload, room)
	<-c.b.splits
	if err != nil {
		return nil, fmt.Errorf("%w: snapshot: %w", errTooLarge, err)
	}
	out := make([]*treeItem, len(parts))
	for i, p := range parts {
		t := m
		t.payload, t.part = p, strconv.Itoa(i+1)+"/"+strconv.Itoa(len(parts))
		if size := c.treePacketSize(&t); size > limit { // not by the bound above: never sent over the limit
			return nil, fmt.Errorf("%w: part %s of the snapshot is a %d-byte packet, over the maximum packet size %d", errTooLarge, t.part, size, limit)
		}
		out[i] = &t
	}
	if len(left) > 0 {
		for _, t := range out {
			t.rev = m.leftOutRev()
		}
		c.b.stats.TooLarge.Add(int64(len(left)))
		what := "left out of the snapshot"
		if m.resume {
			what = "sent as null in the resume delta (dropped from your copy)"
		}
		return out, fmt.Errorf("%w: %s %s: each alone is over your Maximum Packet Size; the rest was sent", errTooLarge, namePointers(left), what)
	}
	return out, nil
}

// namePointers names the first few of ptrs, then how many more there are.
func namePointers(ptrs []string) string {
	const named = 3
	if len(ptrs) <= named {
		return strings.Join(ptrs, ", ")
	}
	return strings.Join(ptrs[:named], ", ") + " and " + strconv.Itoa(len(ptrs)-named) + " more"
}
