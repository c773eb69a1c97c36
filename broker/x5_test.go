package broker

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// The red team of MQTT 5 features where they meet the packets Mote makes
// itself (docs/spec-audit-x5.md): snapshots, deltas, paced deltas, resumes,
// $hist answers, rows of tree publishes to plain subscribers, reports. The
// clients are raw MQTT 5 (or 3.1.1) connections, so that what the broker
// sends is read byte for byte, topic aliases and packet ids included, and
// acknowledged only when a test says so.

// x5Peer is a raw MQTT connection whose packets a goroutine (its reader,
// which ends with the connection) decodes as they come.
type x5Peer struct {
	c       net.Conn
	v       byte
	in      chan packets.Packet
	aliases map[uint16]string // the broker's topic aliases, as it set them
	pending []packets.Packet  // publishes read while waiting for an ack (until)
}

// x5Dial connects client id (MQTT version v, Clean Start clean, CONNECT
// properties props) and fails the test unless the CONNACK is a success.
// It returns the peer and the CONNACK's Session Present flag.
func x5Dial(t *testing.T, b *Broker, v byte, id string, clean bool, props packets.Properties) (*x5Peer, bool) {
	t.Helper()
	return x5DialAs(t, b, v, id, "", clean, props)
}

// x5DialAs is x5Dial with a username ("" for none).
func x5DialAs(t *testing.T, b *Broker, v byte, id, user string, clean bool, props packets.Properties) (*x5Peer, bool) {
	t.Helper()
	nc := hxDial(t, b.TCPAddr())
	p := &x5Peer{c: nc, v: v, in: make(chan packets.Packet, 1000), aliases: map[uint16]string{}}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: clean, Keepalive: 30, ClientIdentifier: id},
		Properties:      props,
	}
	if user != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(user)
	}
	p.write(t, pk)
	r := bufio.NewReader(nc)
	h, body, err := readPacketBody(r)
	if err != nil || h != 0x20 || len(body) < 2 || body[1] != 0 {
		t.Fatalf("CONNACK: %#x % x %v", h, body, err)
	}
	go p.read(r)
	return p, body[0]&1 == 1
}

// read decodes packets into p.in until the connection ends; a packet
// that does not decode is passed on as a DISCONNECT with reason 0xff.
func (p *x5Peer) read(r *bufio.Reader) {
	defer close(p.in)
	for {
		h, body, err := readPacketBody(r)
		if err != nil {
			return
		}
		pk := packets.Packet{ProtocolVersion: p.v}
		if err := pk.FixedHeader.Decode(h); err != nil {
			p.in <- packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: 0xff}
			return
		}
		pk.FixedHeader.Remaining = len(body)
		switch pk.FixedHeader.Type {
		case packets.Publish:
			err = pk.PublishDecode(body)
		case packets.Suback:
			err = pk.SubackDecode(body)
		case packets.Puback:
			err = pk.PubackDecode(body)
		case packets.Pubrec:
			err = pk.PubrecDecode(body)
		case packets.Unsuback:
			err = pk.UnsubackDecode(body)
		case packets.Disconnect:
			err = pk.DisconnectDecode(body)
		}
		if err != nil {
			pk = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ReasonCode: 0xff}
		}
		p.in <- pk
	}
}

func (p *x5Peer) write(t *testing.T, pk packets.Packet) {
	t.Helper()
	pk.ProtocolVersion = p.v
	pk.Mods.AllowResponseInfo = true
	if pk.FixedHeader.Type == packets.Puback {
		if _, err := p.c.Write([]byte{0x40, 2, byte(pk.PacketID >> 8), byte(pk.PacketID)}); err != nil {
			t.Fatal(err)
		}
		return
	}
	if pk.FixedHeader.Type == packets.Unsubscribe {
		var buf bytes.Buffer
		if err := pk.UnsubscribeEncode(&buf); err != nil {
			t.Fatal(err)
		}
		if _, err := p.c.Write(buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		return
	}
	if _, err := p.c.Write(ownerPacket(t, pk)); err != nil {
		t.Fatal(err)
	}
}

// next returns the next packet; an ended connection fails the test.
func (p *x5Peer) next(t *testing.T) packets.Packet {
	t.Helper()
	select {
	case pk, ok := <-p.in:
		if !ok {
			t.Fatal("the connection ended")
		}
		if pk.FixedHeader.Type == packets.Publish {
			p.resolve(t, &pk)
		}
		return pk
	case <-time.After(testTimeout):
		t.Fatal("nothing received")
	}
	return packets.Packet{}
}

// resolve gives a publish that came with a topic alias its topic, as a
// client must [MQTT-3.3.2-12], and checks the alias is one the client
// allows.
func (p *x5Peer) resolve(t *testing.T, pk *packets.Packet) {
	t.Helper()
	a := pk.Properties.TopicAlias
	if a == 0 {
		return
	}
	if pk.TopicName != "" {
		p.aliases[a] = pk.TopicName
		return
	}
	topic, ok := p.aliases[a]
	if !ok {
		t.Fatalf("a PUBLISH with topic alias %d never set", a)
	}
	pk.TopicName = topic
}

// pub publishes pk (QoS 1 unless given) and returns its PUBACK's reason
// code, passing the publishes that come first to skipped, if not nil.
func (p *x5Peer) pub(t *testing.T, pk packets.Packet) byte {
	t.Helper()
	pk.FixedHeader.Type = packets.Publish
	if pk.FixedHeader.Qos == 0 {
		pk.FixedHeader.Qos = 1
	}
	pk.PacketID = 7
	p.write(t, pk)
	return p.until(t, packets.Puback).ReasonCode
}

// until returns the next packet of type typ, keeping the publishes
// before it for publish; it fails the test on any other packet before it.
func (p *x5Peer) until(t *testing.T, typ byte) packets.Packet {
	t.Helper()
	if typ == packets.Publish && len(p.pending) > 0 {
		pk := p.pending[0]
		p.pending = p.pending[1:]
		return pk
	}
	for {
		pk := p.next(t)
		if pk.FixedHeader.Type == typ {
			return pk
		}
		if pk.FixedHeader.Type == packets.Publish {
			p.pending = append(p.pending, pk)
			continue
		}
		t.Fatalf("%s %q %q before a packet of type %d", packets.PacketNames[pk.FixedHeader.Type], pk.TopicName, pk.Payload, typ)
	}
}

// sub sends one SUBSCRIBE and returns the SUBACK's reason codes.
func (p *x5Peer) sub(t *testing.T, props packets.Properties, filters ...packets.Subscription) []byte {
	t.Helper()
	p.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 9,
		Filters: filters, Properties: props})
	return p.until(t, packets.Suback).ReasonCodes
}

// publish returns the next PUBLISH, acknowledging it at QoS 1 if ack.
func (p *x5Peer) publish(t *testing.T, ack bool) packets.Packet {
	t.Helper()
	pk := p.until(t, packets.Publish)
	if testing.Verbose() {
		t.Logf("got %s %q qos %d retain %v props %+v", pk.TopicName, pk.Payload, pk.FixedHeader.Qos, pk.FixedHeader.Retain, pk.Properties)
	}
	if ack && pk.FixedHeader.Qos == 1 {
		p.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	}
	return pk
}

// user returns the value of user property key of pk.
func user(pk packets.Packet, key string) string {
	for _, u := range pk.Properties.User {
		if u.Key == key {
			return u.Val
		}
	}
	return ""
}

// x5Writer is a plain MQTT 5 writer of rows for these tests.
func x5Writer(t *testing.T, b *Broker, id string) *x5Peer {
	t.Helper()
	w, _ := x5Dial(t, b, 5, id, true, packets.Properties{})
	return w
}

// row publishes a retained row (QoS 1).
func (p *x5Peer) row(t *testing.T, topic, payload string) {
	t.Helper()
	if rc := p.pub(t, packets.Packet{FixedHeader: packets.FixedHeader{Retain: true}, TopicName: topic, Payload: []byte(payload)}); rc != 0 {
		t.Fatalf("publish %s %s: %#x", topic, payload, rc)
	}
}

// x5Sub is a subscription of filter at QoS 1 with options.
func x5Sub(filter string, opts ...func(*packets.Subscription)) packets.Subscription {
	s := packets.Subscription{Filter: filter, Qos: 1}
	for _, o := range opts {
		o(&s)
	}
	return s
}

// TestX5MaxPacketFold: MQTT 5 §3.1.2.11.4 — the server must not send a
// packet larger than the client's Maximum Packet Size [MQTT-3.1.2-24];
// SPEC §2 folds what a paced subscription holds into one delta and splits
// only snapshots. Two rows that each fit the client alone, held together,
// make a delta that does not: it is skipped (never sent over the limit),
// the next delta's mote-seq shows the gap, and a SUBSCRIBE again gets a
// snapshot in parts that holds both rows. (The report of the skip, on
// the client's error topic, is itself over a limit this small: the gap
// is the client's one signal.)
func TestX5MaxPacketFold(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	w.row(t, "fo/a", "1")
	settle(t, b)
	const limit = 300
	const filter = "$sync.300ms/fo/+"
	c, _ := x5Dial(t, b, 5, "small", true, packets.Properties{MaximumPacketSize: limit})
	c.sub(t, packets.Properties{}, x5Sub(filter))
	next := func() packets.Packet {
		t.Helper()
		p := c.publish(t, true)
		p.ProtocolVersion = 5
		if n := len(ownerPacket(t, p)); n > limit {
			t.Fatalf("a %d-byte packet, over the client's %d", n, limit)
		}
		return p
	}
	if p := next(); user(p, "mote-seq") != "0" {
		t.Fatalf("%s %s, want the snapshot", p.TopicName, p.Payload)
	}
	long := strconv.Quote(strings.Repeat("v", 120))
	w.row(t, "fo/b", long) // idle: leaves at once
	if p := next(); user(p, "mote-seq") != "1" || !strings.Contains(string(p.Payload), `"b"`) {
		t.Fatalf("%s seq %s, want b's delta", p.Payload, user(p, "mote-seq"))
	}
	skipped := b.stats.TooLarge.Load()
	w.row(t, "fo/c", long) // within the interval: held, folded
	w.row(t, "fo/d", long)
	waitFor(t, "the folded delta skipped", func() bool { return b.stats.TooLarge.Load() > skipped })
	w.row(t, "fo/e", "5")
	if p := next(); user(p, "mote-seq") != "3" || !jsonEqual(t, string(p.Payload), `{"e":5}`) {
		t.Fatalf("%s seq %s, want e's delta, seq 3 (2 skipped)", p.Payload, user(p, "mote-seq"))
	}
	c.sub(t, packets.Properties{}, x5Sub(filter))
	doc := map[string]any{}
	for {
		p := next()
		if user(p, "mote-seq") != "0" {
			t.Fatalf("%s seq %s, want a part of the snapshot", p.Payload, user(p, "mote-seq"))
		}
		merge1(t, doc, p.Payload)
		part := user(p, "mote-part")
		if i, n, _ := strings.Cut(part, "/"); part == "" || i == n {
			break
		}
	}
	if len(doc) != 5 || doc["d"] == nil {
		t.Fatalf("the snapshot after the gap: %v", doc)
	}
}

// TestX5TopicAliasOut: MQTT 5 §3.3.2.3.4 — the server may give its
// publishes Topic Aliases up to the client's Topic Alias Maximum, none
// when the client sets none [MQTT-3.3.2-9]; a topic alias the client
// reads must have been set [MQTT-3.3.2-12]. Every kind of message Mote
// makes — snapshot, delta, $tree delta, a row of a tree publish for a
// plain subscription, a report — to clients with maximums 0, 1 and 2.
func TestX5TopicAliasOut(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	w.row(t, "ta/a", "1")
	settle(t, b)
	for _, max := range []uint16{0, 1, 2} {
		t.Run(fmt.Sprint("max=", max), func(t *testing.T) {
			id := fmt.Sprint("ta", max)
			c, _ := x5Dial(t, b, 5, id, true, packets.Properties{TopicAliasMaximum: max})
			c.sub(t, packets.Properties{}, x5Sub("$sync/ta/+"), x5Sub("$tree/ta/+"), x5Sub("ta/+"), x5Sub(ErrorTopic+id))
			seen := map[string]int{}
			check := func(p packets.Packet) {
				t.Helper()
				if a := p.Properties.TopicAlias; a > max {
					t.Fatalf("%s: topic alias %d, over the client's %d", p.TopicName, a, max)
				}
				seen[p.TopicName]++
			}
			check(c.publish(t, true)) // the snapshot and the replay of ta/a
			check(c.publish(t, true))
			for i := range 3 {
				w.pub(t, packets.Packet{FixedHeader: packets.FixedHeader{Retain: true}, TopicName: "$tree/ta", Payload: []byte(fmt.Sprintf(`{"a":%d}`, i))})
				for range 3 {
					check(c.publish(t, true))
				}
			}
			// A refused tree publish of the client's own: its report.
			if rc := c.pub(t, packets.Packet{TopicName: "$tree/ta", Payload: []byte("{")}); rc != 0x99 {
				t.Fatalf("bad tree: %#x", rc)
			}
			check(c.publish(t, true))
			want := map[string]int{"$sync/ta/+": 4, "$tree/ta/+": 3, "ta/a": 4, ErrorTopic + id: 1}
			if fmt.Sprint(seen) != fmt.Sprint(want) {
				t.Fatalf("got %v, want %v", seen, want)
			}
		})
	}
}

// TestX5TopicAliasIn: a client may send a tree publish through a Topic
// Alias (MQTT 5 §3.3.2.3.4): the alias set by a PUBLISH to $tree/T (or
// to T with user property mote=tree) stands for that topic, so an
// alias-only PUBLISH is the same tree publish; an alias set again for a
// plain topic is plain from then on.
func TestX5TopicAliasIn(t *testing.T) {
	b := start(t, Options{})
	s, _ := x5Dial(t, b, 5, "s", true, packets.Properties{})
	s.sub(t, packets.Properties{}, x5Sub("$sync/tai/#"))
	if p := s.publish(t, true); string(p.Payload) != "{}" {
		t.Fatalf("snapshot %s", p.Payload)
	}
	c := x5Writer(t, b, "c")
	tree := packets.Properties{User: []packets.UserProperty{{Key: "mote", Val: "tree"}}}
	steps := []struct {
		topic string
		alias uint16
		props packets.Properties
		body  string
		want  string // the delta; "" for a publish refused 0x99
	}{
		{"$tree/tai", 1, packets.Properties{}, `{"a":1}`, `{"a":1}`},
		{"", 1, packets.Properties{}, `{"a":2,"b":3}`, `{"a":2,"b":3}`},
		{"tai/x", 2, tree, `{"c":4}`, `{"x":{"c":4}}`},
		{"", 2, tree, `{"c":5}`, `{"x":{"c":5}}`},
		{"tai/p", 1, packets.Properties{}, `6`, `{"p":6}`},
		{"", 1, packets.Properties{}, `7`, `{"p":7}`},
		// An alias set by a refused tree publish stands for its topic too
		// (mochi change 70): the next alias-only one is that tree publish.
		{"$tree/tai/r", 3, packets.Properties{}, `{`, ""},
		{"", 3, packets.Properties{}, `{"s":8}`, `{"r":{"s":8}}`},
	}
	for i, st := range steps {
		props := st.props
		props.TopicAlias, props.TopicAliasFlag = st.alias, true
		rc := c.pub(t, packets.Packet{FixedHeader: packets.FixedHeader{Retain: true}, TopicName: st.topic, Payload: []byte(st.body), Properties: props})
		if st.want == "" {
			if rc != 0x99 {
				t.Fatalf("step %d: PUBACK %#x, want 0x99", i, rc)
			}
			continue
		}
		if rc != 0 {
			t.Fatalf("step %d: PUBACK %#x", i, rc)
		}
		if p := s.publish(t, true); !jsonEqual(t, string(p.Payload), st.want) {
			t.Fatalf("step %d (%q alias %d %s): delta %s, want %s", i, st.topic, st.alias, st.body, p.Payload, st.want)
		}
	}
}

// TestX5ReceiveMaximum: MQTT 5 §3.3.4 — the server must not send more
// QoS 1 publishes than the client's Receive Maximum before their PUBACKs
// [MQTT-3.3.4-9]. A client with Receive Maximum 1 holding the snapshot
// unacknowledged gets nothing more; once it acknowledges, it gets the
// changes meanwhile, one message at a time, and its copy ends as the
// store.
func TestX5ReceiveMaximum(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	w.row(t, "rm/a", "0")
	settle(t, b)
	c, _ := x5Dial(t, b, 5, "rm", true, packets.Properties{ReceiveMaximum: 1})
	c.sub(t, packets.Properties{}, x5Sub("$sync/rm/+"), x5Sub("rm/+"))
	copyOf := map[string]any{}
	apply := func(p packets.Packet) {
		t.Helper()
		if p.TopicName == "$sync/rm/+" {
			merge1(t, copyOf, p.Payload)
		}
	}
	quiet := func() {
		t.Helper()
		settle(t, b)
		c.c.Write([]byte{0xc0, 0})
		if pk := c.next(t); pk.FixedHeader.Type != packets.Pingresp {
			t.Fatalf("%s %s %s while a QoS 1 publish is unacknowledged", packets.PacketNames[pk.FixedHeader.Type], pk.TopicName, pk.Payload)
		}
	}
	held := c.publish(t, false)
	for i := 1; i <= 5; i++ {
		w.row(t, "rm/a", strconv.Itoa(i))
		w.row(t, fmt.Sprint("rm/k", i), strconv.Itoa(i))
		quiet()
		apply(held)
		c.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: held.PacketID})
		held = c.publish(t, false)
	}
	for {
		apply(held)
		c.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: held.PacketID})
		if copyOf["a"] == float64(5) && len(copyOf) == 6 {
			break
		}
		held = c.publish(t, false)
	}
}

// TestX5SubscriptionIdentifier: MQTT 5 §3.3.4 — a publish carries the
// identifiers of the client's subscriptions it matches [MQTT-3.3.4-3],
// and only those. One client subscribed plain (id 1), $sync (2) and
// $tree (3) over the same rows: a tree publish's row reaches the plain
// subscription with 1, its deltas with 2 and 3; a SUBSCRIBE again with
// another identifier (5) or none replaces it [MQTT-3.8.4-3]; a paced
// delta, a resume and a $hist answer carry theirs.
func TestX5SubscriptionIdentifier(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	w.row(t, "si/a", "0")
	settle(t, b)
	c, _ := x5Dial(t, b, 5, "si", true, packets.Properties{})
	sub := func(filter string, id int, user ...packets.UserProperty) {
		t.Helper()
		if rc := c.sub(t, packets.Properties{SubscriptionIdentifier: []int{id}, User: user}, x5Sub(filter)); rc[0] > 2 {
			t.Fatalf("%s: %#x", filter, rc[0])
		}
	}
	ids := func(p packets.Packet) string { return fmt.Sprint(p.Properties.SubscriptionIdentifier) }
	sub("si/+", 1)
	if p := c.publish(t, true); p.TopicName != "si/a" || ids(p) != "[1]" {
		t.Fatalf("replay %s ids %s", p.TopicName, ids(p))
	}
	sub("$sync/si/+", 2)
	if p := c.publish(t, true); p.TopicName != "$sync/si/+" || ids(p) != "[2]" {
		t.Fatalf("snapshot %s ids %s", p.TopicName, ids(p))
	}
	sub("$tree/si/+", 3)
	w.row(t, "$tree/si", `{"a":1}`)
	want := map[string]string{"si/a": "[1]", "$sync/si/+": "[2]", "$tree/si/+": "[3]"}
	for range 3 {
		p := c.publish(t, true)
		if ids(p) != want[p.TopicName] {
			t.Fatalf("%s: ids %s, want %s", p.TopicName, ids(p), want[p.TopicName])
		}
		delete(want, p.TopicName)
	}
	c.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 3, Filters: packets.Subscriptions{{Filter: "si/+"}, {Filter: "$tree/si/+"}}})
	c.until(t, packets.Unsuback)
	cases := []struct {
		filter string
		id     int
		user   []packets.UserProperty
		first  string // the first message's mote-seq or topic check
	}{
		{"$sync/si/+", 5, nil, "snapshot"},
		{"$sync/si/+", 0, nil, "snapshot"},
		{"$sync.50ms/si/+", 6, nil, "snapshot"},
		{"$hist/si/+", 7, nil, "hist"},
		{"$sync/si/#", 8, []packets.UserProperty{{Key: "mote-since"}}, "resume"}, // since the last delta's mote-rev
	}
	rev := ""
	for i, tc := range cases {
		if len(tc.user) > 0 {
			tc.user[0].Val = rev
		}
		if tc.id == 0 {
			if rc := c.sub(t, packets.Properties{}, x5Sub(tc.filter)); rc[0] > 2 {
				t.Fatalf("%s: %#x", tc.filter, rc[0])
			}
		} else {
			sub(tc.filter, tc.id, tc.user...)
		}
		wantIDs := "[]"
		if tc.id > 0 {
			wantIDs = fmt.Sprint("[", tc.id, "]")
		}
		p := c.publish(t, true)
		if p.TopicName != tc.filter || ids(p) != wantIDs || (tc.first == "resume") != (user(p, "mote-resume") == "1") {
			t.Fatalf("%s: first message %s %s ids %s resume %q, want ids %s (%s)", tc.filter, p.TopicName, p.Payload, ids(p), user(p, "mote-resume"), wantIDs, tc.first)
		}
		w.row(t, "si/a", strconv.Itoa(10+i))
		for {
			p = c.publish(t, true)
			if p.TopicName == tc.filter {
				break
			}
		}
		if ids(p) != wantIDs {
			t.Fatalf("%s: delta %s ids %s, want %s", tc.filter, p.Payload, ids(p), wantIDs)
		}
		rev = user(p, "mote-rev")
		// The other subscriptions' deltas of that row, before or after.
		c.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 3, Filters: packets.Subscriptions{{Filter: tc.filter}}})
		for {
			if pk := c.next(t); pk.FixedHeader.Type == packets.Unsuback {
				break
			} else if pk.FixedHeader.Type == packets.Publish && pk.FixedHeader.Qos > 0 {
				c.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
			}
		}
	}
}

// TestX5NoLocalPlain: MQTT 5 §3.8.3.1 No Local [MQTT-3.8.3-3] with a
// client's overlapping subscriptions: its own publish is not forwarded
// for the subscription with No Local, and still is for one without
// (§3.3.4: the server must deliver it respecting the matching
// subscriptions [MQTT-3.3.4-2]). Both for a plain publish and the rows
// of a tree publish.
func TestX5NoLocalPlain(t *testing.T) {
	b := start(t, Options{})
	c, _ := x5Dial(t, b, 5, "nl", true, packets.Properties{})
	noLocal := func(s *packets.Subscription) { s.NoLocal = true }
	c.sub(t, packets.Properties{SubscriptionIdentifier: []int{1}}, x5Sub("nl/+", noLocal))
	c.sub(t, packets.Properties{SubscriptionIdentifier: []int{2}}, x5Sub("nl/#"))
	c.sub(t, packets.Properties{SubscriptionIdentifier: []int{3}}, x5Sub("nlo/+", noLocal))
	cases := []struct{ topic, payload, got string }{
		{"nl/a", "1", "nl/a"},
		{"$tree/nl", `{"b":1}`, "nl/b"}, // a row of a tree publish
	}
	for i, tc := range cases {
		c.pub(t, packets.Packet{TopicName: tc.topic, Payload: []byte(tc.payload)})
		c.pub(t, packets.Packet{TopicName: "nlo/x", Payload: []byte("x")}) // No Local alone: not forwarded
		w := x5Writer(t, b, fmt.Sprint("w", i))
		w.pub(t, packets.Packet{TopicName: "nlo/mark", Payload: []byte("m")}) // another's: forwarded
		if p := c.publish(t, true); p.TopicName != tc.got || fmt.Sprint(p.Properties.SubscriptionIdentifier) != "[2]" {
			t.Fatalf("%s: got %s %s ids %v first, want its own publish for the subscription without No Local (id 2 only)",
				tc.topic, p.TopicName, p.Payload, p.Properties.SubscriptionIdentifier)
		}
		if p := c.publish(t, true); p.TopicName != "nlo/mark" {
			t.Fatalf("%s: got %s %s, want the mark", tc.topic, p.TopicName, p.Payload)
		}
	}
}

// TestX5NoLocalTree: No Local [MQTT-3.8.3-3] on a $sync or $tree
// subscription: the client's own publish is not forwarded to it, so a
// delta holds only other clients' rows (and none is sent when only its
// own changed). Fixed (X2); the cases are in TestNoLocalTree.
func TestX5NoLocalTree(t *testing.T) {
	b := start(t, Options{})
	for _, filter := range []string{"$sync/nt/+", "$tree/nt/+"} {
		t.Run(filter, func(t *testing.T) {
			c, _ := x5Dial(t, b, 5, "nt", true, packets.Properties{})
			c.sub(t, packets.Properties{}, x5Sub(filter, func(s *packets.Subscription) { s.NoLocal = true }))
			if strings.HasPrefix(filter, "$sync") {
				c.publish(t, true)
			}
			c.row(t, "nt/own", "1")
			w := x5Writer(t, b, "w")
			w.row(t, "nt/other", "2")
			if p := c.publish(t, true); strings.Contains(string(p.Payload), "own") {
				t.Fatalf("delta %s holds the client's own row", p.Payload)
			}
		})
	}
}

// TestX5RetainAsPublished: MQTT 5 §3.8.3.1 Retain As Published — rows of
// a retained tree publish reach a plain subscription with RAP 1 retained,
// with RAP 0 not [MQTT-3.3.1-12, -13]; Mote's snapshots and deltas are
// retain 0 whatever (SPEC §2). MQTT 3.1.1: a snapshot is retain 0 too.
func TestX5RetainAsPublished(t *testing.T) {
	b := start(t, Options{})
	for _, rap := range []bool{false, true} {
		t.Run(fmt.Sprint("rap=", rap), func(t *testing.T) {
			c, _ := x5Dial(t, b, 5, "rap", true, packets.Properties{})
			opt := func(s *packets.Subscription) { s.RetainAsPublished = rap }
			c.sub(t, packets.Properties{}, x5Sub("rap/+", opt), x5Sub("$sync/rap/+", opt))
			c.publish(t, true)
			w := x5Writer(t, b, "w")
			w.row(t, "$tree/rap", `{"a":1}`)
			for range 2 {
				p := c.publish(t, true)
				want := rap && p.TopicName == "rap/a"
				if p.FixedHeader.Retain != want {
					t.Fatalf("%s %s retain %v, want %v", p.TopicName, p.Payload, p.FixedHeader.Retain, want)
				}
			}
		})
	}
}

// TestX5Properties: the properties of Mote's own publishes. A snapshot
// or delta has Mote's Content Type and mote-* user properties only,
// whatever the rows' publishes carried (Content Type, Payload Format
// Indicator, User Properties, Message Expiry, Response Topic); a CBOR
// one has no Payload Format Indicator 1 (it is not UTF-8 [MQTT-3.3.2-4]).
// A row of a tree publish reaches plain subscribers as if published
// alone (SPEC §4): without the tree publish's mote/mote-codec user
// properties and its tree Content Type; a retained row a tree publish
// overwrote is replayed without the properties of the plain publish
// before it.
func TestX5Properties(t *testing.T) {
	b := start(t, Options{})
	c, _ := x5Dial(t, b, 5, "pr", true, packets.Properties{})
	c.sub(t, packets.Properties{}, x5Sub("$sync/pr/+"), x5Sub("$sync.cbor/pr/+"), x5Sub("pr/+"))
	c.publish(t, true)
	c.publish(t, true)
	w := x5Writer(t, b, "w")
	plainProps := packets.Properties{ContentType: "text/plain", PayloadFormat: 1, PayloadFormatFlag: true,
		MessageExpiryInterval: 100, ResponseTopic: "pr/answer", CorrelationData: []byte("c"),
		User: []packets.UserProperty{{Key: "k", Val: "v"}}}
	w.pub(t, packets.Packet{FixedHeader: packets.FixedHeader{Retain: true}, TopicName: "pr/a", Payload: []byte(`"x"`), Properties: plainProps})
	treeProps := packets.Properties{ContentType: "application/json", PayloadFormat: 1, PayloadFormatFlag: true,
		User: []packets.UserProperty{{Key: "mote", Val: "tree"}, {Key: "k", Val: "t"}}}
	w.pub(t, packets.Packet{FixedHeader: packets.FixedHeader{Retain: true}, TopicName: "pr", Payload: []byte(`{"b":"y"}`), Properties: treeProps})
	// Each $sync subscription gets a's and b's rows, in two deltas or,
	// when the writer came to the first only after the second publish,
	// folded into one (SPEC §2): read until both copies hold both.
	jsonDoc := map[string]any{}
	seen := map[string]bool{}
	for !seen["pr/a"] || !seen["pr/b"] || !seen["cbor a"] || !seen["cbor b"] || len(jsonDoc) < 2 {
		p := c.publish(t, true)
		pp := p.Properties
		switch p.TopicName {
		case "$sync/pr/+", "$sync.cbor/pr/+":
			ct := "application/json"
			if p.TopicName == "$sync.cbor/pr/+" {
				ct = "application/cbor"
				if pp.PayloadFormatFlag && pp.PayloadFormat == 1 {
					t.Errorf("%s: Payload Format Indicator 1 on CBOR", p.TopicName)
				}
				// CBOR text keys "a" and "b" are the bytes 0x61 0x61 and 0x61 0x62.
				seen["cbor a"] = seen["cbor a"] || bytes.Contains(p.Payload, []byte{0x61, 'a'})
				seen["cbor b"] = seen["cbor b"] || bytes.Contains(p.Payload, []byte{0x61, 'b'})
			} else {
				merge1(t, jsonDoc, p.Payload)
			}
			if pp.ContentType != ct || pp.ResponseTopic != "" || len(pp.CorrelationData) > 0 || pp.MessageExpiryInterval != 0 {
				t.Errorf("%s: properties %+v", p.TopicName, pp)
			}
			for _, u := range pp.User {
				if !strings.HasPrefix(u.Key, "mote-") {
					t.Errorf("%s: user property %s=%s", p.TopicName, u.Key, u.Val)
				}
			}
		case "pr/a":
			seen["pr/a"] = true
			if pp.ContentType != "text/plain" || fmt.Sprint(pp.User) != fmt.Sprint(plainProps.User) || pp.ResponseTopic != "pr/answer" {
				t.Errorf("pr/a: properties %+v, want the publish's", pp)
			}
		case "pr/b":
			seen["pr/b"] = true
			if pp.ContentType != "" || len(pp.User) > 0 {
				t.Errorf("pr/b (a tree row): properties %+v, want none of the tree publish's", pp)
			}
		default:
			t.Fatalf("%s %s", p.TopicName, p.Payload)
		}
	}
	// A tree publish overwrites pr/a: its replay has no text/plain.
	w.pub(t, packets.Packet{FixedHeader: packets.FixedHeader{Retain: true}, TopicName: "$tree/pr", Payload: []byte(`{"a":"z"}`)})
	r, _ := x5Dial(t, b, 5, "pr2", true, packets.Properties{})
	r.sub(t, packets.Properties{}, x5Sub("pr/a"))
	if p := r.publish(t, true); string(p.Payload) != "z" || p.Properties.ContentType != "" || len(p.Properties.User) > 0 {
		t.Errorf("replay of pr/a: %q %+v, want z with no properties", p.Payload, p.Properties)
	}
}

// TestX5RetainHandlingSync: Retain Handling on a $sync SUBSCRIBE (MQTT 5
// §3.8.3.1). The snapshot is not a retained message (retain 0, SPEC
// §2): it comes after every SUBSCRIBE, whatever Retain Handling says
// (docs/spec-audit.md A5); the same SUBSCRIBE again is how a client that
// saw a mote-seq gap recovers.
func TestX5RetainHandlingSync(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	w.row(t, "rhs/a", "1")
	settle(t, b)
	for _, rh := range []byte{0, 1, 2} {
		t.Run(fmt.Sprint("rh=", rh), func(t *testing.T) {
			c, _ := x5Dial(t, b, 5, "rhs", true, packets.Properties{})
			for range 2 {
				c.sub(t, packets.Properties{}, x5Sub("$sync/rhs/+", func(s *packets.Subscription) { s.RetainHandling = rh }))
				if p := c.publish(t, true); user(p, "mote-seq") != "0" || !jsonEqual(t, string(p.Payload), `{"a":1}`) || p.FixedHeader.Retain {
					t.Fatalf("%s %s seq %s retain %v, want the snapshot", p.TopicName, p.Payload, user(p, "mote-seq"), p.FixedHeader.Retain)
				}
			}
		})
	}
}

// TestX5SessionResume: a $sync subscription in a session that outlives
// its connection (MQTT 5 Session Expiry Interval; 3.1.1 Clean Session 0).
// A CONNECT that finds the session (Session Present 1) keeps the
// subscription [MQTT-3.1.2-4], and what changed while away must reach
// the client's copy. SPEC §8's resume is asked by a SUBSCRIBE (mote-since),
// and there is none here: the broker answers the kept subscription with a
// fresh snapshot (mote-seq 0), not the deltas of the time away, then
// deltas from 1.
func TestX5SessionResume(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	w.row(t, "sr/a", "1")
	settle(t, b)
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprint("v=", v), func(t *testing.T) {
			id := fmt.Sprint("sr", v)
			props := packets.Properties{}
			if v == 5 {
				props.SessionExpiryInterval, props.SessionExpiryIntervalFlag = 300, true
			}
			c, _ := x5Dial(t, b, v, id, false, props)
			c.sub(t, packets.Properties{}, x5Sub("$sync/sr/+"))
			c.publish(t, true)
			c.c.Write([]byte{0xe0, 0})
			waitFor(t, "the connection gone", func() bool { return connGone(b, id) })
			w.row(t, "sr/a", fmt.Sprint(int(v)*10+2))
			w.row(t, "sr/b", fmt.Sprint(int(v)*10+3))
			settle(t, b)
			c, present := x5Dial(t, b, v, id, false, props)
			if !present {
				t.Fatal("session not present")
			}
			// The first message is a snapshot of the store as it is
			// (mote-seq 0 on MQTT 5): nothing queued while away
			// comes before it.
			p := c.publish(t, true)
			if want := fmt.Sprintf(`{"a":%d,"b":%d}`, v*10+2, v*10+3); !jsonEqual(t, string(p.Payload), want) || v == 5 && user(p, "mote-seq") != "0" {
				t.Fatalf("after the reconnect: %s seq %q, want the snapshot %s", p.Payload, user(p, "mote-seq"), want)
			}
			w.row(t, "sr/a", "0")
			if p := c.publish(t, true); !jsonEqual(t, string(p.Payload), `{"a":0}`) || v == 5 && user(p, "mote-seq") != "1" {
				t.Fatalf("then: %s seq %q, want the delta {\"a\":0} seq 1", p.Payload, user(p, "mote-seq"))
			}
		})
	}
}

// TestX5Shared: SPEC is silent on shared tree subscriptions; the broker
// refuses them as an invalid filter (docs/spec-audit.md A11) in each
// form: $share/G/$sync/F, $share/G/$tree/F, $share/G/$hist/F and
// $share/G/F with user property mote=sync — MQTT 5 0x8F, 3.1.1 0x80 —
// and serves the connection on.
func TestX5Shared(t *testing.T) {
	b := start(t, Options{})
	for _, v := range []byte{4, 5} {
		c, _ := x5Dial(t, b, v, fmt.Sprint("sh", v), true, packets.Properties{})
		want := byte(0x8f)
		if v == 4 {
			want = 0x80
		}
		cases := []struct {
			filter string
			mode   string
		}{
			{"$share/g/$sync/sh/+", ""}, {"$share/g/$tree/sh/+", ""}, {"$share/g/$hist/sh/+", ""},
			{"$share/g/sh/+", "sync"}, {"$share/g/sh/+", "tree"},
		}
		for _, tc := range cases {
			if tc.mode != "" && v == 4 {
				continue
			}
			var props packets.Properties
			if tc.mode != "" {
				props.User = []packets.UserProperty{{Key: "mote", Val: tc.mode}}
			}
			if rc := c.sub(t, props, x5Sub(tc.filter)); rc[0] != want {
				t.Errorf("v%d %s mote=%q: SUBACK %#x, want %#x", v, tc.filter, tc.mode, rc[0], want)
			}
		}
		c.row(t, "sh/a", "1")
	}
}

// TestX5ProblemInfo: Request Problem Information 0 (MQTT 5
// §3.1.2.11.7): the server must not send a Reason String or User
// Properties on any packet but PUBLISH, CONNACK and DISCONNECT
// [MQTT-3.1.2-29]. A refused tree publish's PUBACK (SPEC §5: 0x99 "with
// a Reason String") comes bare; Mote's own publishes keep their user
// properties (mote-seq, mote-rev), which a PUBLISH may carry; so does a
// delta in flight when the connection ended, sent again to the session's
// next connection [MQTT-4.4.0-1].
func TestX5ProblemInfo(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	w.row(t, "pi/a", "1")
	settle(t, b)
	props := packets.Properties{RequestProblemInfo: 0, RequestProblemInfoFlag: true, SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}
	c, _ := x5Dial(t, b, 5, "pi", true, props)
	if rc := c.sub(t, packets.Properties{}, x5Sub("$sync/pi/+")); rc[0] != 1 {
		t.Fatalf("SUBACK %x", rc)
	}
	if p := c.publish(t, true); user(p, "mote-seq") != "0" || user(p, "mote-rev") == "" {
		t.Fatalf("snapshot %s user properties %v", p.Payload, p.Properties.User)
	}
	c.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7, TopicName: "$tree/pi", Payload: []byte("{")})
	if ack := c.until(t, packets.Puback); ack.ReasonCode != 0x99 || ack.Properties.ReasonString != "" || len(ack.Properties.User) > 0 {
		t.Fatalf("PUBACK %#x reason %q user %v, want 0x99 bare", ack.ReasonCode, ack.Properties.ReasonString, ack.Properties.User)
	}
	w.row(t, "pi/a", "2")
	held := c.publish(t, false) // not acknowledged: in flight
	if user(held, "mote-seq") != "1" {
		t.Fatalf("delta %s user properties %v", held.Payload, held.Properties.User)
	}
	c.c.Write([]byte{0xe0, 0})
	waitFor(t, "the connection gone", func() bool { return connGone(b, "pi") })
	c, present := x5Dial(t, b, 5, "pi", false, props)
	if !present {
		t.Fatal("session not present")
	}
	for {
		p := c.publish(t, true)
		if p.PacketID == held.PacketID && p.FixedHeader.Dup {
			if user(p, "mote-seq") != "1" || user(p, "mote-rev") != user(held, "mote-rev") || p.Properties.ContentType != "application/json" {
				t.Fatalf("the delta sent again: %s user properties %v content type %q, want those it had", p.Payload, p.Properties.User, p.Properties.ContentType)
			}
			return
		}
		if user(p, "mote-seq") == "0" {
			t.Logf("the snapshot came before the delta sent again: %s", p.Payload)
		}
	}
}

// TestX5WillTree: a will is a publish the broker makes for a client
// (MQTT 5 §3.1.3.2); to $tree/T, or to T with the will's user property
// mote=tree, it is a tree publish (SPEC §4): a $sync subscriber gets one
// delta of its rows, a plain subscriber each row as if published alone,
// with the will's QoS and retain flag and without the will's properties
// (Content Type, Payload Format Indicator, User Properties name the tree,
// not the row).
func TestX5WillTree(t *testing.T) {
	b := start(t, Options{})
	s, _ := x5Dial(t, b, 5, "s", true, packets.Properties{})
	s.sub(t, packets.Properties{}, x5Sub("$sync/wt/+"), x5Sub("wt/+", func(f *packets.Subscription) { f.Qos = 2 }))
	s.publish(t, true)
	cases := []struct {
		topic string
		user  []packets.UserProperty
	}{
		{"$tree/wt", nil},
		{"wt", []packets.UserProperty{{Key: "mote", Val: "tree"}}},
	}
	for i, tc := range cases {
		id := fmt.Sprint("will", i)
		nc, err := net.Dial("tcp", b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		pk := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id,
				WillFlag: true, WillTopic: tc.topic, WillPayload: []byte(fmt.Sprintf(`{"a":%d,"b":"x"}`, i)), WillQos: 1, WillRetain: true,
				WillProperties: packets.Properties{ContentType: "application/json", PayloadFormat: 1, PayloadFormatFlag: true, User: append(tc.user, packets.UserProperty{Key: "k", Val: "v"})}},
		}
		nc.Write(ownerPacket(t, pk))
		if h, body, err := readPacketBody(bufio.NewReader(nc)); err != nil || h != 0x20 || body[1] != 0 {
			t.Fatalf("%s: CONNACK %#x % x %v", tc.topic, h, body, err)
		}
		nc.Close() // no DISCONNECT: the will goes
		got := map[string]packets.Packet{}
		for len(got) < 3 {
			p := s.publish(t, true)
			got[p.TopicName] = p
		}
		if d := got["$sync/wt/+"]; !jsonEqual(t, string(d.Payload), fmt.Sprintf(`{"a":%d,"b":"x"}`, i)) {
			t.Fatalf("%s: delta %s", tc.topic, d.Payload)
		}
		for topic, want := range map[string]string{"wt/a": fmt.Sprint(i), "wt/b": "x"} {
			p, ok := got[topic]
			if !ok || string(p.Payload) != want || p.FixedHeader.Qos != 1 || p.Properties.ContentType != "" || p.Properties.PayloadFormatFlag || len(p.Properties.User) > 0 {
				t.Fatalf("%s: %s %q QoS %d properties %+v, want %q at QoS 1 with none", tc.topic, topic, p.Payload, p.FixedHeader.Qos, p.Properties, want)
			}
		}
	}
}

// TestX5ReceiveMaximumParts: a snapshot in parts (SPEC §2, over the
// client's Maximum Packet Size) at QoS 1 to a client with Receive
// Maximum 1: one part in flight at a time [MQTT-3.3.4-9], every part
// comes, then the deltas.
func TestX5ReceiveMaximumParts(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	for i := range 8 {
		w.row(t, fmt.Sprint("rp/k", i), strconv.Quote(strings.Repeat("v", 40)))
	}
	settle(t, b)
	c, _ := x5Dial(t, b, 5, "rp", true, packets.Properties{ReceiveMaximum: 1, MaximumPacketSize: 200})
	c.sub(t, packets.Properties{}, x5Sub("$sync/rp/+"))
	doc := map[string]any{}
	for {
		p := c.publish(t, false)
		settle(t, b)
		c.c.Write([]byte{0xc0, 0})
		if pk := c.next(t); pk.FixedHeader.Type != packets.Pingresp {
			t.Fatalf("%s %s %q while a part is unacknowledged", packets.PacketNames[pk.FixedHeader.Type], pk.TopicName, pk.Payload)
		}
		merge1(t, doc, p.Payload)
		c.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: p.PacketID})
		part := user(p, "mote-part")
		if i, n, _ := strings.Cut(part, "/"); part == "" || i == n {
			break
		}
	}
	if len(doc) != 8 {
		t.Fatalf("%d rows in the parts, want 8", len(doc))
	}
	w.row(t, "rp/k0", "0")
	if p := c.publish(t, true); !jsonEqual(t, string(p.Payload), `{"k0":0}`) || user(p, "mote-seq") != "1" {
		t.Fatalf("delta %s seq %s", p.Payload, user(p, "mote-seq"))
	}
}

// TestX5TreeEventExpiry: Message Expiry Interval (MQTT 5 §3.3.2.3.3) on a
// tree publish. A retained one's rows never expire (SPEC §1, the caveat
// of broker/doc.go). A non-retained one's rows are events, each handled
// "as if published alone" (SPEC §4), so as a plain event with that expiry
// is: sent with the interval left [MQTT-3.3.2-6], and not sent once it
// passed [MQTT-3.3.2-5] — here to a session away when it resumes. (The
// test waits out the one-second interval on the clock: the expiry is the
// clock.)
func TestX5TreeEventExpiry(t *testing.T) {
	b := start(t, Options{})
	on, _ := x5Dial(t, b, 5, "on", true, packets.Properties{})
	on.sub(t, packets.Properties{}, x5Sub("me/+"))
	away, _ := x5Dial(t, b, 5, "away", true, packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true})
	away.sub(t, packets.Properties{}, x5Sub("me/+"))
	away.c.Write([]byte{0xe0, 0})
	waitFor(t, "the connection gone", func() bool { return connGone(b, "away") })
	w := x5Writer(t, b, "w")
	expiring := packets.Properties{MessageExpiryInterval: 1}
	for _, pk := range []packets.Packet{
		{TopicName: "$tree/me", Payload: []byte(`{"a":1}`), Properties: expiring},
		{TopicName: "me/b", Payload: []byte(`2`), Properties: expiring}, // a plain event, for comparison
		{FixedHeader: packets.FixedHeader{Retain: true}, TopicName: "$tree/me", Payload: []byte(`{"r":4}`), Properties: expiring},
	} {
		if rc := w.pub(t, pk); rc != 0 {
			t.Fatalf("%s: %#x", pk.TopicName, rc)
		}
	}
	for range 3 {
		p := on.publish(t, true)
		want := uint32(1)
		if p.TopicName == "me/r" {
			want = 0 // a row: it never expires
		}
		if p.Properties.MessageExpiryInterval != want {
			t.Errorf("%s: Message Expiry Interval %d, want %d", p.TopicName, p.Properties.MessageExpiryInterval, want)
		}
	}
	time.Sleep(2100 * time.Millisecond) // the interval passes
	w.pub(t, packets.Packet{TopicName: "$tree/me", Payload: []byte(`{"c":3}`)})
	away, _ = x5Dial(t, b, 5, "away", false, packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true})
	var got []string
	for {
		p := away.publish(t, true)
		got = append(got, p.TopicName)
		if p.TopicName == "me/c" {
			break
		}
	}
	if fmt.Sprint(got) != "[me/r me/c]" {
		t.Fatalf("the session away got %v, want [me/r me/c] (me/a and me/b expired)", got)
	}
}

// TestX5ResumeParts: a resume (SPEC §8, mote-since) whose delta is over
// the client's Maximum Packet Size comes in parts as a snapshot does
// (SPEC §2), each with mote-seq 0, mote-resume 1 and mote-part i/n, each
// within the limit [MQTT-3.1.2-24].
func TestX5ResumeParts(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	w.row(t, "rz/x", "0")
	settle(t, b)
	const limit = 200
	c, _ := x5Dial(t, b, 5, "rz", true, packets.Properties{MaximumPacketSize: limit})
	c.sub(t, packets.Properties{}, x5Sub("$sync/rz/+"))
	rev := user(c.publish(t, true), "mote-rev")
	c.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 3, Filters: packets.Subscriptions{{Filter: "$sync/rz/+"}}})
	c.until(t, packets.Unsuback)
	for i := range 6 {
		w.row(t, fmt.Sprint("rz/k", i), strconv.Quote(strings.Repeat("v", 40)))
	}
	settle(t, b)
	c.sub(t, packets.Properties{User: []packets.UserProperty{{Key: "mote-since", Val: rev}}}, x5Sub("$sync/rz/+"))
	doc := c.resumeParts(t, limit, "0")
	if len(doc) != 6 || doc["x"] != nil {
		t.Fatalf("the resume: %v, want the 6 rows changed since %s alone", doc, rev)
	}
}

// TestX5TreeContentType: the codec of a tree publish and its Content
// Type. The $tree/T form names its codec in the topic (SPEC §4: .json,
// the default, or .cbor) and the Content Type does not change it; the
// MQTT 5 form (mote=tree on T) takes Content Type application/cbor as
// its codec when no mote-codec says otherwise (docs/spec-audit-x5.md).
func TestX5TreeContentType(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	cbor := []byte{0xa1, 0x61, 0x61, 0x01} // {"a":1}
	tree := []packets.UserProperty{{Key: "mote", Val: "tree"}}
	cases := []struct {
		topic, ct string
		user      []packets.UserProperty
		body      []byte
		code      byte
	}{
		{"$tree/ct/p", "application/cbor", nil, cbor, 0x99},
		{"$tree/ct/q", "text/plain", nil, []byte(`{"a":1}`), 0},
		{"$tree.json/ct/r", "application/cbor", nil, []byte(`{"a":1}`), 0},
		{"$tree.cbor/ct/s", "application/json", nil, cbor, 0},
		{"ct/t", "application/cbor", tree, cbor, 0},
		{"ct/u", "application/cbor", append(tree, packets.UserProperty{Key: "mote-codec", Val: "json"}), []byte(`{"a":1}`), 0},
	}
	for _, tc := range cases {
		rc := w.pub(t, packets.Packet{FixedHeader: packets.FixedHeader{Retain: true}, TopicName: tc.topic, Payload: tc.body, Properties: packets.Properties{ContentType: tc.ct, User: tc.user}})
		if rc != tc.code {
			t.Errorf("%s, Content Type %s: PUBACK %#x, want %#x", tc.topic, tc.ct, rc, tc.code)
		}
	}
	got, _, err := b.Tree(testCtx(t), systemPrincipal, "ct/#", 0)
	if err != nil || !jsonEqual(t, string(got), `{"q":{"a":1},"r":{"a":1},"s":{"a":1},"t":{"a":1},"u":{"a":1}}`) {
		t.Fatalf("rows %s (%v)", got, err)
	}
}

// TestX5FoldWithinMaxPacket: deltas waiting in a client's queue fold
// (SPEC §2), but a fold the client's Maximum Packet Size cannot take
// would be skipped whole [MQTT-3.1.2-24] though each delta alone fits:
// the delta stays as it is and the next one queues behind it. A client
// with Receive Maximum 1 holds its snapshot unacknowledged while rows
// that each fit its limit change: the first's delta is the writer's,
// waiting for room; the second's and third's would fold past the limit:
// the client gets each (mote-seq 1, 2, 3, no gap), and a fourth small row
// still folds into the third's.
func TestX5FoldWithinMaxPacket(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	w.row(t, "fw/a", "0")
	settle(t, b)
	const limit = 300
	c, _ := x5Dial(t, b, 5, "fw", true, packets.Properties{MaximumPacketSize: limit, ReceiveMaximum: 1})
	c.sub(t, packets.Properties{}, x5Sub("$sync/fw/+"))
	snap := c.publish(t, false) // in flight: the deltas wait in the queue
	long := strconv.Quote(strings.Repeat("v", 120))
	w.row(t, "fw/b", long) // its delta is the writer's, waiting for room in flight
	w.row(t, "fw/c", long) // queued behind it
	w.row(t, "fw/d", long) // would fold into c's, past the limit
	w.row(t, "fw/e", "5")  // folds into d's
	settle(t, b)
	c.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: snap.PacketID})
	doc := map[string]any{}
	merge1(t, doc, snap.Payload)
	for i := 1; len(doc) < 5; i++ {
		p := c.publish(t, true)
		p.ProtocolVersion = 5
		if n := len(ownerPacket(t, p)); n > limit || user(p, "mote-seq") != strconv.Itoa(i) {
			t.Fatalf("%d bytes %s seq %s, want seq %d within %d bytes", n, p.Payload, user(p, "mote-seq"), i, limit)
		}
		merge1(t, doc, p.Payload)
	}
}

// TestX5PacedResubscribe: a SUBSCRIBE again of a paced $sync filter
// (SPEC §2) while it holds changes: the new snapshot holds them, mote-seq
// starts again at 0, and what was held is not sent after it as a delta
// of the old count (a client would read a gap and subscribe again, for
// ever). The next change is delta 1.
func TestX5PacedResubscribe(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	w.row(t, "pz/a", "0")
	settle(t, b)
	c, _ := x5Dial(t, b, 5, "c", true, packets.Properties{})
	const filter = "$sync.500ms/pz/+"
	c.sub(t, packets.Properties{}, x5Sub(filter))
	c.publish(t, true)
	w.row(t, "pz/a", "1") // idle: at once
	if p := c.publish(t, true); user(p, "mote-seq") != "1" {
		t.Fatalf("%s seq %s, want delta 1", p.Payload, user(p, "mote-seq"))
	}
	w.row(t, "pz/b", "2") // held
	settle(t, b)
	c.sub(t, packets.Properties{}, x5Sub(filter))
	if p := c.publish(t, true); user(p, "mote-seq") != "0" || !jsonEqual(t, string(p.Payload), `{"a":1,"b":2}`) {
		t.Fatalf("%s seq %s, want the snapshot with b", p.Payload, user(p, "mote-seq"))
	}
	w.row(t, "pz/c", "3")
	if p := c.publish(t, true); user(p, "mote-seq") != "1" || !jsonEqual(t, string(p.Payload), `{"c":3}`) {
		t.Fatalf("%s seq %s, want delta 1 {\"c\":3}", p.Payload, user(p, "mote-seq"))
	}
}

// TestX5TreeSessionAway: a $tree subscription (deltas only, SPEC §2) at
// QoS 1 in a session that outlives its connection. MQTT keeps, for a
// session away, the QoS 1 and 2 messages its subscriptions match and
// sends them when it resumes (§4.1, [MQTT-3.1.2-5]); a plain
// subscription of the same rows gets them. The $tree subscription's
// first message after the resume is SPEC §8's resume delta of the rows
// changed while it was away (mote-resume 1), its mote-seq the next
// number; the deltas after it go on counting (X5, fixed).
func TestX5TreeSessionAway(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	props := packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}
	c, _ := x5Dial(t, b, 5, "ta", false, props)
	c.sub(t, packets.Properties{}, x5Sub("$tree/tw/+"), x5Sub("tw/+"))
	w.row(t, "tw/x", "0")
	seq := ""
	for seq == "" {
		if p := c.publish(t, true); p.TopicName == "$tree/tw/+" {
			seq = user(p, "mote-seq")
		}
	}
	if seq != "1" {
		t.Fatalf("first delta mote-seq %s, want 1", seq)
	}
	c.c.Write([]byte{0xe0, 0})
	waitFor(t, "the connection gone", func() bool { return connGone(b, "ta") })
	w.row(t, "tw/a", "1") // while away
	settle(t, b)
	c, present := x5Dial(t, b, 5, "ta", false, props)
	if !present {
		t.Fatal("session not present")
	}
	plain := false
	for {
		p := c.publish(t, true)
		if p.TopicName == "tw/a" {
			plain = true
			continue
		}
		if p.TopicName != "$tree/tw/+" || !jsonEqual(t, string(p.Payload), `{"a":1}`) || user(p, "mote-seq") != "2" || user(p, "mote-resume") != "1" {
			t.Fatalf("%s %s seq %q resume %q, want the resume delta {\"a\":1}, seq 2, mote-resume 1", p.TopicName, p.Payload, user(p, "mote-seq"), user(p, "mote-resume"))
		}
		break
	}
	w.row(t, "tw/m", "3")
	for {
		p := c.publish(t, true)
		if p.TopicName == "tw/a" || p.TopicName == "tw/m" {
			plain = plain || p.TopicName == "tw/a"
			continue
		}
		if !jsonEqual(t, string(p.Payload), `{"m":3}`) || user(p, "mote-seq") != "3" || user(p, "mote-resume") != "" {
			t.Fatalf("%s %s seq %q, want the delta {\"m\":3}, seq 3", p.TopicName, p.Payload, user(p, "mote-seq"))
		}
		break
	}
	if !plain {
		t.Fatal("the plain subscription did not get tw/a")
	}
}

// resumeParts reads the parts of a resume delta (mote-resume 1, mote-seq
// seq, each packet within limit bytes) up to its last, acknowledging
// each, and returns them merged.
func (p *x5Peer) resumeParts(t *testing.T, limit int, seq string) map[string]any {
	t.Helper()
	doc := map[string]any{}
	for {
		pk := p.publish(t, true)
		pk.ProtocolVersion = 5
		if n := len(ownerPacket(t, pk)); n > limit || user(pk, "mote-seq") != seq || user(pk, "mote-resume") != "1" {
			t.Fatalf("%d bytes %s seq %q resume %q, want a part of the resume delta, seq %s, within %d", n, pk.Payload, user(pk, "mote-seq"), user(pk, "mote-resume"), seq, limit)
		}
		merge1(t, doc, pk.Payload)
		part := user(pk, "mote-part")
		if i, n, _ := strings.Cut(part, "/"); part == "" || i == n {
			return doc
		}
	}
}
