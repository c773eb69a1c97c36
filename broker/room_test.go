package broker

import (
	"bufio"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// roomClient is a raw MQTT 5 client with a Maximum Packet Size (0: none):
// it reads publishes, acknowledges those of QoS 1 and fails the test on
// any packet over its limit.
type roomClient struct {
	id    string
	limit int
	nc    net.Conn
	r     *bufio.Reader
}

// dialRoom connects a clean MQTT 5 client id with Maximum Packet Size
// limit (0: none) and no Topic Alias Maximum.
func dialRoom(t *testing.T, b *Broker, id string, limit int) *roomClient {
	t.Helper()
	nc, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(testTimeout))
	cp := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id},
		Properties:      packets.Properties{MaximumPacketSize: uint32(limit)},
	}
	if _, err := nc.Write(ownerPacket(t, cp)); err != nil {
		t.Fatal(err)
	}
	c := &roomClient{id: id, limit: limit, nc: nc, r: bufio.NewReader(nc)}
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

// next reads up to the next PUBLISH and returns it with its size.
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
// it in parts, or, when it cannot be split (a single value), no snapshot:
// the refusal is counted and its report, which does not fit that limit
// either, is dropped and counted, never sent over it.
func TestSnapshotFitsExactly(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rows  map[string]string
		split bool // one byte less: parts (else refused)
	}{
		{"rows", map[string]string{"a": "1", "b": `"bb"`, "c": `{"x":[1,2,3]}`, "d": `"dddddddd"`, "e": "true", "f": "2.5"}, true},
		{"one 120-byte row", map[string]string{"big": strconv.Quote(strings.Repeat("B", 120))}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			w := dialTree5(t, b, "w")
			for k, v := range tc.rows {
				w.pub(t, "fx/"+k, v)
			}
			settle(t, b)
			const filter, subID = "$sync/fx/+", 268435455 // the longest identifier

			ref := dialRoom(t, b, "ref", 0)
			ref.subscribe(t, filter, subID)
			pk, size := ref.next(t)
			if propOf(pk, "mote-seq") != "0" || propOf(pk, "mote-part") != "" {
				t.Fatalf("ref: %s seq %q part %q, want the whole snapshot", pk.TopicName, propOf(pk, "mote-seq"), propOf(pk, "mote-part"))
			}
			rev, _ := strconv.ParseUint(propOf(pk, "mote-rev"), 10, 64)
			if want := treePacketAt(t, filter, 0, rev, "", subID, pk.Payload); size != want {
				t.Fatalf("the snapshot is a %d-byte packet; encoded from what it carries it is %d", size, want)
			}
			whole := mergeParts(t, [][]byte{pk.Payload})
			t.Logf("single-packet snapshot: %d bytes (payload %d)", size, len(pk.Payload))

			exact := dialRoom(t, b, "exact", size)
			exact.subscribe(t, ErrorTopic+"exact", 0)
			if parts, reports := exact.readSnapshot(t, filter, subID); len(parts) != 1 {
				t.Errorf("limit %d (the snapshot's size): %d parts, want 1 (reports %q)", size, len(parts), reports)
			}

			refused, tooLarge := b.stats.Refused.Load(), b.stats.TooLarge.Load()
			less := dialRoom(t, b, "less", size-1)
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
			if parts != nil || reports != nil {
				t.Errorf("limit %d: snapshot %q, reports %q; want neither (the report does not fit)", size-1, parts, reports)
			}
			if got := b.stats.Refused.Load() - refused; got != 1 {
				t.Errorf("%d refusals, want 1 (the snapshot)", got)
			}
			if got := b.stats.TooLarge.Load() - tooLarge; got != 1 {
				t.Errorf("%d messages counted too large, want 1 (the report)", got)
			}
		})
	}
}
