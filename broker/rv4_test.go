package broker

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// rv4Raw is a subscriber read byte for byte: each packet as it came off
// the socket, its fixed header and Remaining Length included.
type rv4Raw struct {
	c  net.Conn
	in chan []byte
}

// rv4RawDial connects client id at MQTT version v with CONNECT
// properties props, subscribes to filter at QoS 0 (opts: its option
// byte's RAP and the rest) and then reads every packet raw.
func rv4RawDial(t *testing.T, b *Broker, v byte, id string, props packets.Properties, filter string, rap bool, subID int) *rv4Raw {
	t.Helper()
	nc := hxDial(t, b.TCPAddr())
	con := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id},
		Properties:      props,
	}
	var buf bytes.Buffer
	if err := con.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	sub := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: v,
		PacketID:        3,
		Filters:         packets.Subscriptions{{Filter: filter, RetainAsPublished: rap}},
	}
	if subID > 0 {
		sub.Properties.SubscriptionIdentifier = []int{subID}
	}
	if err := sub.SubscribeEncode(&buf); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(nc)
	for _, want := range []byte{packets.Connack, packets.Suback} {
		raw, err := rv4ReadRaw(r)
		if err != nil || raw[0]>>4 != want {
			t.Fatalf("%s: want packet type %d, got % x (%v)", id, want, raw[:min(len(raw), 8)], err)
		}
	}
	p := &rv4Raw{c: nc, in: make(chan []byte, 4096)}
	go func() {
		defer close(p.in)
		for {
			raw, err := rv4ReadRaw(r)
			if err != nil {
				return
			}
			p.in <- raw
		}
	}()
	return p
}

// rv4ReadRaw reads one packet, every byte of it.
func rv4ReadRaw(r *bufio.Reader) ([]byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	raw := []byte{h}
	n, shift := 0, 0
	for {
		c, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		raw = append(raw, c)
		n |= int(c&0x7f) << shift
		if c < 0x80 {
			break
		}
		shift += 7
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return append(raw, body...), nil
}

// TestRV4PlainQoS0Wire (review h-rv4): every plain QoS 0 PUBLISH a
// subscriber gets, whoever encodes it (sendPlain0, directly or by the
// writer, or send), is byte for byte what mochi's PublishEncode writes
// for it: MQTT 3.1.1 and 5, an empty payload, UTF-8 topics, Remaining
// Lengths at each Variable Byte Integer edge, payloads around flushAt
// in a burst that crosses it, the longest topics (32,747 bytes: Options.MaxTopicLen at most), retained with and without Retain As
// Published, and an MQTT 5 client's Maximum Packet Size at its edge (a
// PUBLISH of exactly that size is sent, one byte more is not).
func TestRV4PlainQoS0Wire(t *testing.T) {
	b := start(t, Options{MaxTopicLen: 32747})
	w := x5Writer(t, b, "rv4w")
	type sub struct {
		name  string
		v     byte
		props packets.Properties
		rap   bool
		subID int
		p     *rv4Raw
	}
	const maxSize = 200
	subs := []*sub{
		{name: "3.1.1", v: 4},
		{name: "5", v: 5},
		{name: "5 rap", v: 5, rap: true},
		{name: "5 max", v: 5, props: packets.Properties{MaximumPacketSize: maxSize}},
		{name: "5 subid", v: 5, subID: 7},
	}
	for i, s := range subs {
		s.p = rv4RawDial(t, b, s.v, fmt.Sprintf("rv4s%d", i), s.props, "rb/#", s.rap, s.subID)
	}
	type msg struct {
		topic   string
		payload []byte
		retain  bool
		qos     byte
		props   packets.Properties
	}
	var msgs []msg
	add := func(topic string, n int, retain bool) {
		msgs = append(msgs, msg{topic: topic, payload: bytes.Repeat([]byte{byte('a' + len(msgs)%26)}, n), retain: retain})
	}
	// QoS 1 published, QoS 0 subscribed: downgraded; with properties.
	add("rb/q1", 9, false)
	msgs[len(msgs)-1].qos = 1
	add("rb/props", 12, true)
	msgs[len(msgs)-1].props = packets.Properties{User: []packets.UserProperty{{Key: "k", Val: "v"}}, ContentType: "text/plain",
		ResponseTopic: "rb/resp", CorrelationData: []byte("cd"), PayloadFormat: 1, PayloadFormatFlag: true}
	add("rb/a", 0, false)
	add("rb/é/ü/日本", 1, false)
	add("rb/r", 5, true)
	add("rb/r", 0, true) // clears it (still delivered live, empty)
	// Remaining Length 127/128 for either version.
	for _, n := range []int{116, 117, 118, 119, 120, 121} {
		add("rb/edge", n, false)
	}
	for _, n := range []int{16366, 16367, 16368, 16369, 16370} { // 16383/16384
		add("rb/edge", n, false)
	}
	for _, n := range []int{flushAt - 40, flushAt - 1, flushAt, flushAt + 1, 100, flushAt - 4, 3, 2 * flushAt} {
		add("rb/flush", n, n%2 == 0)
	}
	// The Maximum Packet Size's edge: rb/m is 4 bytes, so an MQTT 5 PUBLISH
	// of p payload bytes (Remaining Length 7+p, two bytes of it) is 10+p.
	add("rb/m", maxSize-10, false)
	add("rb/m", maxSize-9, false)
	add("rb/"+strings.Repeat("L", 3000), 10, true)
	add("rb/"+strings.Repeat("M", 32747-3), 1, false) // the longest topic the broker takes
	add("rb/"+strings.Repeat("M", 32747-3), flushAt-100, true)
	for _, m := range msgs {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: m.retain, Qos: m.qos}, TopicName: m.topic, Payload: m.payload, Properties: m.props}
		if m.qos > 0 {
			if rc := w.pub(t, pk); rc != 0 {
				t.Fatalf("publish %s: %#x", m.topic, rc)
			}
			continue
		}
		w.write(t, pk)
	}
	for _, s := range subs {
		for i, m := range msgs {
			pk := packets.Packet{
				FixedHeader:     packets.FixedHeader{Type: packets.Publish, Retain: m.retain && s.rap},
				TopicName:       m.topic,
				Payload:         m.payload,
				ProtocolVersion: s.v,
				Properties:      m.props,
			}
			if s.subID > 0 {
				pk.Properties.SubscriptionIdentifier = []int{s.subID}
			}
			pk.Mods.AllowResponseInfo = true
			var want bytes.Buffer
			if err := pk.PublishEncode(&want); err != nil {
				t.Fatal(err)
			}
			if s.props.MaximumPacketSize > 0 && want.Len() > int(s.props.MaximumPacketSize) {
				continue // not sent [MQTT-3.1.2-24]
			}
			got, ok := <-s.p.in
			if !ok {
				t.Fatalf("%s: the connection ended before message %d", s.name, i)
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("%s: message %d (%d-byte topic, %d-byte payload, retain %v):\n got % x\nwant % x",
					s.name, i, len(m.topic), len(m.payload), m.retain, got[:min(len(got), 48)], want.Bytes()[:min(want.Len(), 48)])
			}
		}
	}
	// Nothing more: one more message on each, and it comes next.
	w.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "rb/end", Payload: []byte("end")})
	for _, s := range subs {
		got := <-s.p.in
		if !bytes.Contains(got, []byte("rb/end")) {
			t.Fatalf("%s: after the table, % x, want rb/end", s.name, got[:min(len(got), 48)])
		}
	}
}

// TestRV4LentPropsKept (review h-rv4): the door lends a PUBLISH's own
// Properties to the publish (Message.props) for the call. What outlives
// it — the retained copy, the messages queued for slow subscribers —
// must not change when the publisher's next packets reuse the packet
// and its read buffer, and one subscriber's outgoing topic alias must
// not reach another's packet, nor the publisher's incoming alias anyone.
func TestRV4LentPropsKept(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "rv4pw")
	alias, _ := x5Dial(t, b, 5, "rv4pa", true, packets.Properties{TopicAliasMaximum: 5})
	plain, _ := x5Dial(t, b, 5, "rv4pb", true, packets.Properties{})
	old, _ := x5Dial(t, b, 4, "rv4pc", true, packets.Properties{})
	for _, s := range []*x5Peer{alias, plain, old} {
		s.sub(t, packets.Properties{}, x5Sub("pa/#", func(s *packets.Subscription) { s.Qos = 1 }))
	}
	props := func(i int) packets.Properties {
		return packets.Properties{
			User:            []packets.UserProperty{{Key: "k", Val: fmt.Sprintf("v%03d", i)}},
			ContentType:     fmt.Sprintf("ct%03d", i),
			ResponseTopic:   fmt.Sprintf("resp/%03d", i),
			CorrelationData: []byte(fmt.Sprintf("cd%03d", i)),
			PayloadFormat:   1, PayloadFormatFlag: true,
		}
	}
	same := func(got, want packets.Properties) bool {
		return len(got.User) == 1 && got.User[0] == want.User[0] && got.ContentType == want.ContentType &&
			got.ResponseTopic == want.ResponseTopic && bytes.Equal(got.CorrelationData, want.CorrelationData) &&
			got.PayloadFormatFlag && got.PayloadFormat == 1
	}
	// The retained one, with the publisher's topic alias 1 set; then one
	// by that alias alone.
	p0 := props(0)
	p0.TopicAlias, p0.TopicAliasFlag = 1, true
	if rc := w.pub(t, packets.Packet{FixedHeader: packets.FixedHeader{Retain: true, Qos: 1}, TopicName: "pa/t", Payload: []byte("zero"), Properties: p0}); rc != 0 {
		t.Fatalf("retained publish: %#x", rc)
	}
	p1 := props(1)
	p1.TopicAlias, p1.TopicAliasFlag = 1, true
	w.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, Payload: []byte("one"), Properties: p1})
	// Many more of the same sizes, to reuse the publisher's buffers.
	const more = 300
	for i := 2; i < more; i++ {
		w.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "pa/x", Payload: []byte(fmt.Sprintf("m%03d", i)), Properties: props(i)})
	}
	if rc := w.pub(t, packets.Packet{FixedHeader: packets.FixedHeader{Qos: 1}, TopicName: "pa/y", Payload: []byte("sync")}); rc != 0 {
		t.Fatalf("sync publish: %#x", rc)
	}
	for _, s := range []struct {
		name string
		p    *x5Peer
	}{{"alias", alias}, {"plain", plain}, {"3.1.1", old}} {
		for i := 0; i < more; i++ {
			pk := s.p.publish(t, true)
			topic := "pa/x"
			if i < 2 {
				topic = "pa/t"
			}
			if pk.TopicName != topic || string(pk.Payload) == "" {
				t.Fatalf("%s: message %d on %q (%q), want %q", s.name, i, pk.TopicName, pk.Payload, topic)
			}
			if s.p == plain && (pk.Properties.TopicAlias != 0 || pk.Properties.TopicAliasFlag) {
				t.Fatalf("%s: message %d with topic alias %d: the client allows none", s.name, i, pk.Properties.TopicAlias)
			}
			if s.p.v == 5 && !same(pk.Properties, props(i)) {
				t.Fatalf("%s: message %d props %+v, want %+v", s.name, i, pk.Properties, props(i))
			}
		}
	}
	late, _ := x5Dial(t, b, 5, "rv4pd", true, packets.Properties{})
	late.sub(t, packets.Properties{}, x5Sub("pa/t"))
	pk := late.publish(t, true)
	if string(pk.Payload) != "zero" || !pk.FixedHeader.Retain || !same(pk.Properties, props(0)) || pk.Properties.TopicAlias != 0 {
		t.Fatalf("the retained message: %q retain %v props %+v, want zero with %+v", pk.Payload, pk.FixedHeader.Retain, pk.Properties, props(0))
	}
}

// TestRV4SubIndexFewKidsConcurrent (review h-rv4): publishes walking the
// trie while other subscriptions come and go beside theirs, across the
// edge where a node's children move from its few list to its kids map
// (and a level pruned and made again, its list rebuilt each time), never
// miss a subscription that stayed filed.
func TestRV4SubIndexFewKidsConcurrent(t *testing.T) {
	var x subIndex
	const perm = "c/k0/x"
	x.subscribe("perm", packets.Subscription{Filter: perm})
	x.subscribe("perm2", packets.Subscription{Filter: "d/+/y"})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for round := 0; ; round++ {
			select {
			case <-stop:
				return
			default:
			}
			// Siblings of k0 under c (crossing fewKids), and a whole
			// subtree under d made and pruned, beside d/+.
			for i := 1; i <= 2*fewKids; i++ {
				x.subscribe("w", packets.Subscription{Filter: fmt.Sprintf("c/k%d/x", i)})
				x.subscribe("w", packets.Subscription{Filter: fmt.Sprintf("d/k%d/y", i)})
			}
			for i := 1; i <= 2*fewKids; i++ {
				x.unsubscribe(fmt.Sprintf("c/k%d/x", i), "w")
				x.unsubscribe(fmt.Sprintf("d/k%d/y", i), "w")
			}
		}
	}()
	for i := 0; i < 20000; i++ {
		if got := matchText(&x, perm, ""); len(got) != 1 {
			close(stop)
			<-done
			t.Fatalf("publish %d: %s matched %v, want perm alone", i, perm, got)
		}
		if got := matchText(&x, "d/k1/y", ""); len(got) < 1 {
			close(stop)
			<-done
			t.Fatalf("publish %d: d/k1/y matched %v, want perm2 (d/+/y) at least", i, got)
		}
	}
	close(stop)
	<-done
}

// TestRV4SizeBoundAfterRestart (review h-rv4): rows loaded from the
// retainer at boot are counted as rows put live are (tgrow at node
// creation, grow at put for values up to 64 bytes): each row's size in
// the estimate walk is exactly tree.SizeBound's, and bounds what it
// takes in a snapshot, for hostile levels (control characters, quotes,
// backslashes, invalid UTF-8 bytes are not MQTT: runes), values just at
// and past 64 bytes, rows deleted and put again before the restart.
func TestRV4SizeBoundAfterRestart(t *testing.T) {
	dir := t.TempDir()
	b := startOn(t, dir, Options{})
	w := x5Writer(t, b, "rv4sb")
	levels := []string{"a", "\x01", `"`, `\`, "é", "\x7f", "\u2028", strings.Repeat("\x1f", 200), ""}
	values := []string{"", "1.5", strings.Repeat(`"`, 63), strings.Repeat("\x01", 64), strings.Repeat(`\`, 65),
		`{"a":[1.5,"` + strings.Repeat("\x02", 40) + `"]}`, strings.Repeat("9", 64), "[" + strings.Repeat("0.1,", 15) + "0.1]"}
	var topics []string
	kept := 0 // rows left: an empty value deletes
	for i, l1 := range levels {
		for j, l2 := range levels {
			topics = append(topics, "sb/"+l1+"/"+l2+fmt.Sprint(i*len(levels)+j))
		}
	}
	for i, topic := range topics {
		v := values[i%len(values)]
		if i%5 == 0 { // deleted and put again
			w.row(t, topic, "gone")
			w.row(t, topic, "")
		}
		w.row(t, topic, v)
		if v != "" {
			kept++
		}
	}
	settle(t, b)
	before := string(b.snapshot("sb/#"))
	b.Close()

	b2 := startOn(t, dir, Options{})
	if after := string(b2.snapshot("sb/#")); !jsonEqual(t, after, before) { // (keys in the order the rows were loaded)
		t.Fatalf("the snapshot after the restart differs:\n%.300s\nbefore\n%.300s", after, before)
	}
	var bad []string
	rows := 0
	ok := b2.onLoop(testCtx(t).Done(), func() {
		b2.tree.Store().MatchSizes("sb/#", func(topic string, v wire.Value, size int64) bool {
			rows++
			if want := tree.SizeBound(topic, v); size != want {
				bad = append(bad, fmt.Sprintf("%.40q: size %d, SizeBound %d", topic, size, want))
			}
			return true
		})
	})
	if !ok {
		t.Fatal("the loop did not run the walk")
	}
	if rows != kept {
		t.Errorf("%d rows after the restart, want %d", rows, kept)
	}
	for _, s := range bad {
		t.Error(s)
	}
	for _, topic := range topics[:20] {
		snap := b2.snapshot(topic)
		var bound int64
		b2.onLoop(testCtx(t).Done(), func() {
			b2.tree.Store().MatchSizes(topic, func(_ string, _ wire.Value, size int64) bool { bound += size; return true })
		})
		if int64(len(snap)) > bound+tree.SnapshotFraming {
			t.Errorf("%.40q: snapshot %d bytes, bound %d", topic, len(snap), bound+tree.SnapshotFraming)
		}
	}
}
