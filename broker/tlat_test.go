package broker

import (
	"fmt"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestTreeMessagesV311: tree messages to MQTT 3.1.1 clients at QoS 0 are
// encoded as plain QoS 0 publishes (sendTree0, written directly and by
// the writers) and must still be what SPEC §2 says: on the filter
// subscribed to, retain 0, no properties; a QoS 1 subscription's deltas
// at QoS 1 with a packet id, and an MQTT 5 client's with mote-seq and
// Content Type (send's way); a payload past flushAt too.
func TestTreeMessagesV311(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "tw")
	w.row(t, "tq/a", "1")
	settle(t, b)
	type kind struct {
		name   string
		v      byte
		filter string
		qos    byte
		snap   bool // a $sync subscription: a snapshot first
	}
	kinds := []kind{
		{"sync-v4-qos0", 4, "$sync/tq/+", 0, true},
		{"tree-v4-qos0", 4, "$tree/tq/+", 0, false},
		{"tree-v4-qos1", 4, "$tree/tq/+", 1, false},
		{"tree-v5-qos0", 5, "$tree/tq/+", 0, false},
	}
	const each = 3 // more than directPerMessage a delta: most written by their writers
	type peer struct {
		k kind
		p *x5Peer
	}
	var peers []peer
	for _, k := range kinds {
		for i := range each {
			p, _ := x5Dial(t, b, k.v, fmt.Sprintf("tq-%s-%d", k.name, i), true, packets.Properties{})
			p.sub(t, packets.Properties{}, x5Sub(k.filter, func(s *packets.Subscription) { s.Qos = k.qos }))
			peers = append(peers, peer{k, p})
		}
	}
	check := func(pr peer, p packets.Packet, seq int, want string) {
		t.Helper()
		where := fmt.Sprintf("%s %s message %d", pr.k.name, pr.p.c.LocalAddr(), seq)
		if p.TopicName != pr.k.filter || p.FixedHeader.Retain || p.FixedHeader.Qos != pr.k.qos {
			t.Errorf("%s: topic %q retain %v QoS %d, want %q, 0, %d", where, p.TopicName, p.FixedHeader.Retain, p.FixedHeader.Qos, pr.k.filter, pr.k.qos)
		}
		if pr.k.qos > 0 && p.PacketID == 0 {
			t.Errorf("%s: QoS %d without a packet id", where, p.FixedHeader.Qos)
		}
		if !jsonEqual(t, string(p.Payload), want) {
			t.Errorf("%s: %.60s, want %.60s", where, p.Payload, want)
		}
		switch got := user(p, "mote-seq"); {
		case pr.k.v == 5 && (got != fmt.Sprint(seq) || p.Properties.ContentType != "application/json"):
			t.Errorf("%s: mote-seq %q, Content Type %q; want %d, application/json", where, got, p.Properties.ContentType, seq)
		case pr.k.v != 5 && len(p.Properties.User)+len(p.Properties.ContentType) > 0:
			t.Errorf("%s: properties %+v to an MQTT 3.1.1 client", where, p.Properties)
		}
	}
	for _, pr := range peers {
		if pr.k.snap {
			check(pr, pr.p.publish(t, true), 0, `{"a":1}`)
		}
	}
	big := strings.Repeat("x", 20<<10) // past flushAt: send writes it apart
	// Each delta read by every peer before the next publish: none folds.
	for i, d := range []string{`{"b":2}`, `{"big":"` + big + `"}`, `{"c":3}`} {
		if rc := w.pub(t, packets.Packet{FixedHeader: packets.FixedHeader{Retain: true}, TopicName: "$tree/tq", Payload: []byte(d)}); rc != 0 {
			t.Fatalf("tree publish: %#x", rc)
		}
		for _, pr := range peers {
			check(pr, pr.p.publish(t, true), i+1, d)
		}
	}
}
