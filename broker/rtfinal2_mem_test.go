package broker

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestSubscriptionDoesNotPinPacket: a subscription keeps its filter, not
// the SUBSCRIBE it came in. mochi decodes a filter as a string over the
// packet's body (ReadPacket keeps that body), so a filter filed as it was
// decoded holds the whole packet: an MQTT 5 client sending 20 SUBSCRIBEs
// of one short filter and a 1 MiB of user properties each, all accepted, made
// the broker hold 20 MiB for 20 subscriptions of a few bytes. (By
// default such a SUBSCRIBE is now refused, 0x97: past
// max_user_property_bytes, TestRefuseUserProperties; the bound is lifted
// here to show the pin is gone too.)
func TestSubscriptionDoesNotPinPacket(t *testing.T) {
	b := start(t, Options{MaxUserPropertyBytes: -1})
	c, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout)) //nolint:errcheck // the reads fail if it fails
	if _, err := c.Write(connectPacket(5, "pin")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	if _, err := c.Read(buf); err != nil || buf[0] != 0x20 {
		t.Fatalf("no CONNACK: %v", err)
	}
	var big []packets.UserProperty // 1 MiB: 16 properties of 64 KiB (a string's bound)
	for range 16 {
		big = append(big, packets.UserProperty{Key: "k", Val: strings.Repeat("u", 65535-8)})
	}
	const subs = 60
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	for i := range subs {
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
			ProtocolVersion: 5,
			PacketID:        uint16(i + 1),
			Filters:         packets.Subscriptions{{Filter: fmt.Sprintf("pin/%d", i), Qos: 0}},
			Properties:      packets.Properties{User: big},
		}
		var out bytes.Buffer
		if err := pk.SubscribeEncode(&out); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(out.Bytes()); err != nil {
			t.Fatal(err)
		}
		if typ, err := skipPacket(c); err != nil || typ != 0x90 {
			t.Fatalf("SUBSCRIBE %d: no SUBACK (type %#x, %v)", i, typ, err)
		}
	}
	grown := int64(heap()) - int64(before)
	if sc := b.plainIdx.match("pin/3", ""); len(sc.out) != 1 {
		t.Fatalf("pin/3 matches %d clients, want 1", len(sc.out))
	} else {
		sc.release()
	}
	if grown > subs<<20/4 {
		t.Fatalf("%d subscriptions of a few bytes hold %d KiB of heap (each SUBSCRIBE carried 1 MiB of user property)", subs, grown>>10)
	}
	t.Logf("heap grew %d KiB for %d subscriptions", grown>>10, subs)
}

// skipPacket reads one whole packet from c and returns its first byte.
func skipPacket(c net.Conn) (byte, error) {
	var h [1]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return 0, err
	}
	n, mul := 0, 1
	for {
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return 0, err
		}
		n += int(b[0]&0x7f) * mul
		if b[0]&0x80 == 0 {
			break
		}
		mul <<= 7
	}
	_, err := io.CopyN(io.Discard, c, int64(n))
	return h[0], err
}

// TestTopicAliasDoesNotPinPacket: an inbound topic alias keeps its topic,
// not the PUBLISH that set it. mochi filed the decoded topic, a string
// over the packet's body, so each of a client's maxTopicAliases aliases
// could keep a whole PUBLISH (up to MaxPacketSize) alive for the
// connection's life: 60 aliases set by 1 MiB publishes held 60 MiB.
func TestTopicAliasDoesNotPinPacket(t *testing.T) {
	b := start(t, Options{})
	c, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(testTimeout)) //nolint:errcheck // the reads fail if it fails
	if _, err := c.Write(connectPacket(5, "alias")); err != nil {
		t.Fatal(err)
	}
	if typ, err := skipPacket(c); err != nil || typ != 0x20 {
		t.Fatalf("no CONNACK: %#x %v", typ, err)
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	const aliases = 60
	payload := bytes.Repeat([]byte("p"), 1<<20)
	before := heap()
	for i := range aliases {
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: 1},
			ProtocolVersion: 5,
			PacketID:        uint16(i + 1),
			TopicName:       fmt.Sprintf("alias/%d", i),
			Payload:         payload,
			Properties:      packets.Properties{TopicAlias: uint16(i + 1), TopicAliasFlag: true},
		}
		var out bytes.Buffer
		if err := pk.PublishEncode(&out); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(out.Bytes()); err != nil {
			t.Fatal(err)
		}
		if typ, err := skipPacket(c); err != nil || typ != 0x40 {
			t.Fatalf("PUBLISH %d: no PUBACK (type %#x, %v)", i, typ, err)
		}
	}
	grown := int64(heap()) - int64(before)
	if grown > aliases<<20/4 {
		t.Fatalf("%d topic aliases hold %d KiB of heap (each set by a 1 MiB PUBLISH)", aliases, grown>>10)
	}
	t.Logf("heap grew %d KiB for %d aliases", grown>>10, aliases)
}
