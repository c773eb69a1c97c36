package broker

import (
	"bufio"
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/wire"
)

// roomClient is a raw MQTT 5 client with a Maximum Packet Size (0: none):
// it reads publishes, acknowledges those of QoS 1 and fails the test on
// any packet over its limit.
type roomClient struct {
	id    string
	limit int
	nc    net.Conn
	r     *bufio.Reader
	alias map[uint16]string // the topics of the aliases the broker set
}

// dialRoom connects a clean MQTT 5 client id with Maximum Packet Size
// limit (0: none) and no Topic Alias Maximum.
func dialRoom(t *testing.T, b *Broker, id string, limit int) *roomClient {
	t.Helper()
	return dialRoomWith(t, b, id, limit, 0)
}

// dialRoomWith is dialRoom with a Topic Alias Maximum.
func dialRoomWith(t *testing.T, b *Broker, id string, limit int, aliases uint16) *roomClient {
	t.Helper()
	nc := hxDial(t, b.TCPAddr())
	cp := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id},
		Properties:      packets.Properties{MaximumPacketSize: uint32(limit), TopicAliasMaximum: aliases},
	}
	if _, err := nc.Write(ownerPacket(t, cp)); err != nil {
		t.Fatal(err)
	}
	c := &roomClient{id: id, limit: limit, nc: nc, r: bufio.NewReader(nc), alias: map[uint16]string{}}
	h, body, err := readPacketBody(c.r)
	if err != nil || h != 0x20 || len(body) < 2 || body[1] != 0 {
		t.Fatalf("%s: CONNACK %#x %x %v", id, h, body, err)
	}
	return c
}

// subscribe subscribes to filter at QoS 1 with subscription identifier
// subID (0: none); the SUBACK is read by next.
func (c *roomClient) subscribe(t *testing.T, filter string, subID int) {
	t.Helper()
	sp := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: 5,
		PacketID:        1,
		Filters:         packets.Subscriptions{{Filter: filter, Qos: 1}},
	}
	if subID > 0 {
		sp.Properties.SubscriptionIdentifier = []int{subID}
	}
	if _, err := c.nc.Write(ownerPacket(t, sp)); err != nil {
		t.Fatal(err)
	}
}

// next reads up to the next PUBLISH and returns it with its size, its
// topic resolved if it came as an alias.
func (c *roomClient) next(t *testing.T) (packets.Packet, int) {
	t.Helper()
	for {
		h, body, err := readPacketBody(c.r)
		if err != nil {
			t.Fatalf("%s: %v", c.id, err)
		}
		size := 1 + len(varint(len(body))) + len(body)
		if c.limit > 0 && size > c.limit {
			t.Fatalf("%s: a %d-byte packet %#x, over the client's %d", c.id, size, h, c.limit)
		}
		if h>>4 != packets.Publish {
			continue
		}
		pk := packets.Packet{ProtocolVersion: 5}
		if err := pk.FixedHeader.Decode(h); err != nil {
			t.Fatal(err)
		}
		pk.FixedHeader.Remaining = len(body)
		if err := pk.PublishDecode(body); err != nil {
			t.Fatalf("%s: %v", c.id, err)
		}
		if a := pk.Properties.TopicAlias; a > 0 && pk.TopicName != "" {
			c.alias[a] = pk.TopicName
		} else if a > 0 {
			pk.TopicName = c.alias[a]
		}
		if pk.FixedHeader.Qos > 0 {
			if _, err := c.nc.Write([]byte{0x40, 2, byte(pk.PacketID >> 8), byte(pk.PacketID)}); err != nil {
				t.Fatal(err)
			}
		}
		return pk, size
	}
}

func propOf(pk packets.Packet, key string) string {
	for _, u := range pk.Properties.User {
		if u.Key == key {
			return u.Val
		}
	}
	return ""
}

// treePacketAt is the size of the PUBLISH (QoS 1) the broker sends for a
// tree message, encoded here from what it carries: topic, packet id,
// Content Type, mote-seq, mote-rev, mote-part if any, the subscription
// identifier, the payload.
func treePacketAt(t *testing.T, topic string, seq, rev uint64, part string, subID int, payload []byte) int {
	t.Helper()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: 1},
		ProtocolVersion: 5,
		PacketID:        1,
		TopicName:       topic,
		Payload:         payload,
		Properties: packets.Properties{
			ContentType: "application/json",
			User: []packets.UserProperty{
				{Key: "mote-seq", Val: strconv.FormatUint(seq, 10)},
				{Key: "mote-rev", Val: strconv.FormatUint(rev, 10)},
			},
			SubscriptionIdentifier: []int{subID},
		},
	}
	if part != "" {
		pk.Properties.User = append(pk.Properties.User, packets.UserProperty{Key: "mote-part", Val: part})
	}
	return len(ownerPacket(t, pk))
}

// endFilter is the barrier after a snapshot: a second tree subscription
// of the same client, to a filter nothing matches, whose snapshot ("{}")
// the writer sends after the first one's messages.
const endFilter = "$sync/e/+"

// readSnapshot subscribes c to filter (and then endFilter), reads up to
// endFilter's snapshot and returns filter's snapshot parts (nil: none;
// the test fails on an incomplete one) and the payloads of the reports
// on c's error topic.
func (c *roomClient) readSnapshot(t *testing.T, filter string, subID int) (parts [][]byte, reports []string) {
	t.Helper()
	c.subscribe(t, filter, subID)
	c.subscribe(t, endFilter, 0)
	complete := false
	for {
		pk, _ := c.next(t)
		switch {
		case pk.TopicName == endFilter:
			if len(parts) > 0 && !complete {
				t.Fatalf("%s: %d parts, not all of them", c.id, len(parts))
			}
			return parts, reports
		case pk.TopicName == ErrorTopic+c.id:
			reports = append(reports, string(pk.Payload))
			continue
		case pk.TopicName != filter || propOf(pk, "mote-seq") != "0" || complete:
			t.Fatalf("%s: %s %q seq %q, want the snapshot of %s", c.id, pk.TopicName, pk.Payload, propOf(pk, "mote-seq"), filter)
		}
		parts = append(parts, pk.Payload)
		part := propOf(pk, "mote-part")
		if part == "" {
			if len(parts) > 1 {
				t.Fatalf("%s: a part without mote-part after %d parts", c.id, len(parts)-1)
			}
			complete = true
			continue
		}
		i, n, _ := strings.Cut(part, "/")
		if i != strconv.Itoa(len(parts)) {
			t.Fatalf("%s: part %s is the %dth", c.id, part, len(parts))
		}
		complete = i == n
	}
}

func mergeParts(t *testing.T, parts [][]byte) map[string]any {
	t.Helper()
	doc := map[string]any{}
	for _, p := range parts {
		merge1(t, doc, p)
	}
	return doc
}

// TestSnapshotFitsExactly: SPEC §2 splits only a snapshot larger than the
// client's Maximum Packet Size. A client whose limit is the exact size of
// the single-packet snapshot (fixed header, topic, packet id, the
// properties as sent, payload) gets it in ONE publish; one byte less gets
// it in parts, or, when it cannot be split (a single value), a snapshot
// without that value ("{}"): the value left out is counted, and the
// report naming it, which does not fit that limit either, is dropped and
// counted, never sent over it. A client that
// allows Topic Aliases gets the first packet on a topic with both the
// topic and its alias: that is the exact size then.
func TestSnapshotFitsExactly(t *testing.T) {
	rows := map[string]string{"a": "1", "b": `"bb"`, "c": `{"x":[1,2,3]}`, "d": `"dddddddd"`, "e": "true", "f": "2.5"}
	for _, tc := range []struct {
		name    string
		rows    map[string]string
		aliases uint16 // the clients' Topic Alias Maximum
		split   bool   // one byte less: parts (else the row left out)
	}{
		{"rows", rows, 0, true},
		{"rows, topic aliases", rows, 10, true},
		{"one 120-byte row", map[string]string{"big": strconv.Quote(strings.Repeat("B", 120))}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			w := dialTree5(t, b, "w")
			for k, v := range tc.rows {
				w.pub(t, "fx/"+k, v)
			}
			settle(t, b)
			const filter, subID = "$sync/fx/+", 268435455 // the longest identifier

			ref := dialRoomWith(t, b, "ref", 0, tc.aliases)
			ref.subscribe(t, filter, subID)
			pk, size := ref.next(t)
			if propOf(pk, "mote-seq") != "0" || propOf(pk, "mote-part") != "" {
				t.Fatalf("ref: %s seq %q part %q, want the whole snapshot", pk.TopicName, propOf(pk, "mote-seq"), propOf(pk, "mote-part"))
			}
			rev, _ := strconv.ParseUint(propOf(pk, "mote-rev"), 10, 64)
			if tc.aliases > 0 {
				if pk.Properties.TopicAlias == 0 {
					t.Fatal("ref: no topic alias")
				}
				size -= 3 // the alias property, added to what treePacketAt encodes
			}
			if want := treePacketAt(t, filter, 0, rev, "", subID, pk.Payload); size != want {
				t.Fatalf("the snapshot is a %d-byte packet; encoded from what it carries it is %d", size, want)
			}
			whole := mergeParts(t, [][]byte{pk.Payload})

			if tc.aliases > 0 {
				size += 3
			}
			t.Logf("single-packet snapshot: %d bytes (payload %d)", size, len(pk.Payload))
			exact := dialRoomWith(t, b, "exact", size, tc.aliases)
			exact.subscribe(t, ErrorTopic+"exact", 0)
			if parts, reports := exact.readSnapshot(t, filter, subID); len(parts) != 1 {
				t.Errorf("limit %d (the snapshot's size): %d parts, want 1 (reports %q)", size, len(parts), reports)
			}

			refused, tooLarge := b.stats.Refused.Load(), b.stats.TooLarge.Load()
			less := dialRoomWith(t, b, "less", size-1, tc.aliases)
			less.subscribe(t, ErrorTopic+"less", 0)
			parts, reports := less.readSnapshot(t, filter, subID)
			if tc.split {
				if len(parts) < 2 {
					t.Errorf("limit %d: %d parts, want more than 1", size-1, len(parts))
				}
				if got := mergeParts(t, parts); !jsonEqualMaps(got, whole) {
					t.Errorf("limit %d: parts merge to %v, want %v", size-1, got, whole)
				}
				return
			}
			if len(parts) != 1 || string(parts[0]) != "{}" || reports != nil {
				t.Errorf("limit %d: snapshot %q, reports %q; want {} and no report (it does not fit)", size-1, parts, reports)
			}
			if got := b.stats.Refused.Load() - refused; got != 1 {
				t.Errorf("%d refusals, want 1 (the row left out)", got)
			}
			if got := b.stats.TooLarge.Load() - tooLarge; got != 2 {
				t.Errorf("%d counted too large, want 2 (the row left out, the report)", got)
			}
		})
	}
}

// plainPacketAt is the size of a plain PUBLISH (QoS 1) the broker sends
// for a publish without properties.
func plainPacketAt(t *testing.T, topic string, payload []byte) int {
	t.Helper()
	return len(ownerPacket(t, packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: 1},
		ProtocolVersion: 5,
		PacketID:        1,
		TopicName:       topic,
		Payload:         payload,
	}))
}

// TestDeltaFitsExactly: deltas and plain messages are not split: one
// whose packet is exactly the client's Maximum Packet Size is sent, one
// byte more and it is discarded as if sent [MQTT-3.1.2-25] and counted;
// a delta also reported, its mote-seq left as a gap. Row values are sized
// so that the delta (then the plain message) is exactly the limit.
func TestDeltaFitsExactly(t *testing.T) {
	const limit, filter, subID = 500, "$sync/dx/+", 9
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	w.pub(t, "dx/a", "0")
	settle(t, b)
	c := dialRoom(t, b, "c", limit)
	c.subscribe(t, ErrorTopic+"c", 0)
	parts, _ := c.readSnapshot(t, filter, subID)
	if len(parts) != 1 {
		t.Fatalf("snapshot: %d parts", len(parts))
	}
	p := dialRoom(t, b, "p", limit)
	p.subscribe(t, "dx/+", 0)
	if pk, _ := p.next(t); pk.TopicName != "dx/a" || string(pk.Payload) != "0" {
		t.Fatalf("p: %s %q, want the retained dx/a", pk.TopicName, pk.Payload)
	}
	// mote-rev is a store revision of 16 digits (microseconds): the next
	// ones have as many.
	const rev = 1_000_000_000_000_000
	value := func(n int) []byte { return []byte(strconv.Quote(strings.Repeat("v", n))) }
	fit := func(size func(n int) int) int {
		for n := 0; n < limit; n++ {
			if size(n) == limit {
				return n
			}
		}
		t.Fatalf("no value makes a %d-byte packet", limit)
		return 0
	}
	deltaN := fit(func(n int) int {
		return treePacketAt(t, filter, 1, rev, "", subID, append(append([]byte(`{"a":`), value(n)...), '}'))
	})
	plainN := fit(func(n int) int { return plainPacketAt(t, "dx/a", value(n)) })
	tooLarge := b.stats.TooLarge.Load()

	// c: what comes next on the tree subscription, or a report.
	delta := func(wantSeq string, wantSize int) {
		t.Helper()
		pk, size := c.next(t)
		switch {
		case wantSeq == "":
			if pk.TopicName != ErrorTopic+"c" || !strings.Contains(string(pk.Payload), "exceeds your Maximum Packet Size") {
				t.Fatalf("c: %s %.80q, want the report of a skipped delta", pk.TopicName, pk.Payload)
			}
		case pk.TopicName != filter || propOf(pk, "mote-seq") != wantSeq:
			t.Fatalf("c: %s %.80q seq %q, want the delta seq %s", pk.TopicName, pk.Payload, propOf(pk, "mote-seq"), wantSeq)
		case wantSize > 0 && size != wantSize:
			t.Fatalf("c: delta seq %s is %d bytes, want %d", wantSeq, size, wantSize)
		}
	}
	// p: the next plain message.
	plain := func(topic string, n int) {
		t.Helper()
		pk, size := p.next(t)
		if pk.TopicName != topic || len(pk.Payload) != n {
			t.Fatalf("p: %s of %d bytes (packet %d), want %s of %d", pk.TopicName, len(pk.Payload), size, topic, n)
		}
	}
	w.pub(t, "dx/a", string(value(deltaN))) // the delta: exactly the limit
	delta("1", limit)
	plain("dx/a", deltaN+2)
	w.pub(t, "dx/a", string(value(deltaN+1))) // one byte more: skipped
	delta("", 0)
	plain("dx/a", deltaN+3)
	w.pub(t, "dx/a", string(value(plainN))) // the plain message: exactly the limit
	delta("", 0)
	if pk, size := p.next(t); pk.TopicName != "dx/a" || size != limit {
		t.Fatalf("p: %s, a %d-byte packet, want dx/a of %d", pk.TopicName, size, limit)
	}
	w.pub(t, "dx/a", string(value(plainN+1))) // one byte more: dropped
	delta("", 0)
	w.pub(t, "dx/b", "1")
	delta("5", 0) // 2, 3 and 4 skipped
	plain("dx/b", 1)
	if got := b.stats.TooLarge.Load() - tooLarge; got != 4 {
		t.Errorf("%d messages counted too large, want 4 (3 deltas, 1 plain)", got)
	}
}

// TestTooLargeReport: a single value over the client's Maximum Packet
// Size is left out of the snapshot ("{}" here, its only row) with a 0x95
// report (SPEC §5). The report is a plain message: where it fits the
// client's limit it comes; where it does not, it is dropped and counted
// like any message over the limit, never sent over it; the client stays
// connected and its next subscription is served.
func TestTooLargeReport(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	w.pub(t, "tl/big", strconv.Quote(strings.Repeat("B", 600)))
	settle(t, b)
	for _, tc := range []struct {
		limit  int
		report bool
	}{
		{500, true},
		{150, false},
	} {
		t.Run(strconv.Itoa(tc.limit), func(t *testing.T) {
			refused, tooLarge := b.stats.Refused.Load(), b.stats.TooLarge.Load()
			id := "c" + strconv.Itoa(tc.limit)
			c := dialRoom(t, b, id, tc.limit) // next fails on a packet over the limit
			c.subscribe(t, ErrorTopic+id, 0)
			parts, reports := c.readSnapshot(t, "$sync/tl/+", 1)
			if len(parts) != 1 || string(parts[0]) != "{}" {
				t.Fatalf("a snapshot %q, want {}", parts)
			}
			if got := b.stats.Refused.Load() - refused; got != 1 {
				t.Errorf("%d refusals, want 1", got)
			}
			dropped := b.stats.TooLarge.Load() - tooLarge - 1 // the row left out
			if !tc.report {
				if reports != nil || dropped != 1 {
					t.Errorf("reports %q, %d dropped too large; want none, 1 (the report)", reports, dropped)
				}
				return
			}
			if reports == nil { // queued by the writer as it refused: after endFilter's snapshot
				pk, _ := c.next(t)
				if pk.TopicName != ErrorTopic+id {
					t.Fatalf("%s %.80q, want the report", pk.TopicName, pk.Payload)
				}
				reports = append(reports, string(pk.Payload))
			}
			if len(reports) != 1 || dropped != 0 {
				t.Fatalf("reports %q, %d dropped too large; want 1, none", reports, dropped)
			}
			var r Report
			if err := json.Unmarshal([]byte(reports[0]), &r); err != nil {
				t.Fatal(err)
			}
			if r.Code != 0x95 || r.Op != "subscribe" || r.Topic != "$sync/tl/+" || !strings.Contains(r.Error, "/big") {
				t.Errorf("report %+v", r)
			}
		})
	}
}

// BenchmarkTreePacketSize: measuring a snapshot's packet (once per
// snapshot, and per part when it is split).
func BenchmarkTreePacketSize(bb *testing.B) {
	b := start(bb, Options{})
	c := newConn(b, Principal{}, "x", true, &funcOut{})
	m := treeItem{topic: "$sync/fx/+", payload: make([]byte, 4096), qos: 1, seq: 0, rev: 1796333833831508, codec: wire.CodecJSON, subID: 7}
	bb.ReportAllocs()
	for bb.Loop() {
		if c.treePacketSize(&m) < len(m.payload) {
			bb.Fatal("too small")
		}
	}
}
