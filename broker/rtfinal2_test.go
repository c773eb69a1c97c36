package broker

import (
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestDelayedWillExpiryFromPublish (h-rtfinal2 attack on mochi change 44,
// CreatedOnDemand, with h-will's ended sessions): a will's Message Expiry
// Interval counts from when the will is published [MQTT-3.1.3-9]
// (§3.1.3.2.4: "the Publication Expiry Interval when the Server publishes
// the Will Message"), not from its CONNECT: a will published after its
// 2 s delay, or at once because a Clean Start 1 CONNECT ended its
// session, reaches a subscriber with its 30 s nearly whole (29 or 30).
func TestDelayedWillExpiryFromPublish(t *testing.T) {
	cases := []struct {
		name  string
		delay uint32
		clean bool // the id reconnects with Clean Start 1 after the close, ending the session
	}{
		{"after its delay", 2, false},
		{"session ended by clean start", 3600, true},
	}
	b := start(t, Options{})
	watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "exp-watcher", true, 0, nil))
	watcher.subscribe(t, 5, "will/#", 1)
	for n, tc := range cases {
		id := "exp-" + string(rune('a'+n))
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: 5,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: id,
				WillFlag: true, WillTopic: "will/" + id, WillPayload: []byte("gone"), WillQos: 1},
		}
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 3600, true
		pk.Connect.WillProperties.WillDelayInterval = tc.delay
		pk.Connect.WillProperties.MessageExpiryInterval = 30
		a, _, code := rawPeer(t, b.TCPAddr(), ownerPacket(t, pk))
		if code != 0 {
			t.Fatalf("%s: CONNACK %#x", tc.name, code)
		}
		a.c.Close()
		waitWillHeld(t, b, id)
		if tc.clean {
			rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id, true, 0, nil))
		}
		h, body := watcher.next(t, 3)
		got := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: h >> 1 & 3}, ProtocolVersion: 5}
		if err := got.PublishDecode(body); err != nil || got.TopicName != "will/"+id {
			t.Fatalf("%s: %v %q, want the will", tc.name, err, got.TopicName)
		}
		if e := got.Properties.MessageExpiryInterval; e < 29 || e > 30 {
			t.Errorf("%s: the will's Message Expiry Interval is %d, want 29 or 30", tc.name, e)
		}
		watcher.c.Write([]byte{0x40, 2, byte(got.PacketID >> 8), byte(got.PacketID)})
	}
}
