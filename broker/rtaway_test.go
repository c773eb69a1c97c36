package broker

import (
	"fmt"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// publishExpiring publishes at QoS 1 with a Message Expiry Interval of
// expiry seconds (MQTT 5) and waits for the PUBACK.
func (p *ownerPeer) publishExpiring(t *testing.T, topic, payload string, expiry uint32) {
	t.Helper()
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: 5,
		PacketID: 7, TopicName: topic, Payload: []byte(payload),
	}
	pk.Properties.MessageExpiryInterval = expiry
	p.c.Write(ownerPacket(t, pk))
	p.next(t, 4)
}

// leaveSubscribed connects a persistent session of id (MQTT version v,
// no username), subscribes it at QoS 1 to f/<id>, ends its connection
// without DISCONNECT and returns once the broker has seen the end (h).
func leaveSubscribed(t *testing.T, b *Broker, h *leftHook, v byte, id string) {
	t.Helper()
	p, present, code := rawPeer(t, b.TCPAddr(), rawConnect(t, v, id, false, 3600, nil))
	if code != 0 || present {
		t.Fatalf("%s: CONNACK code %#x, present %v", id, code, present)
	}
	p.subscribe(t, v, "f/"+id, 1)
	p.c.Close()
	h.wait(t, id, 1)
}

// TestAwayHeldExpired: messages held for a session away whose Message
// Expiry Interval passes are deleted by mochi (clearExpiredInflights,
// every second [MQTT-3.3.2-5]); what was counted for them against
// MaxOfflineBytes goes with them (OnQosDropped). The count is then what
// is held (nothing), and the session holds as many messages again
// without any dropped: the bound holds real messages, not expired ones.
//
// Before the change the count kept the expired messages' bytes (6,240
// with nothing held) until the session came back, and of the 6 messages
// published after, 5 were dropped offline_full for a bound of 8 KiB that
// held nothing (MQTT 5 and 3.1.1 alike, 3 runs of 3).
func TestAwayHeldExpired(t *testing.T) {
	const max, n = 8 << 10, 6 // n messages of ~1 KiB fit, 2n do not
	for _, tc := range []struct {
		name string
		v    byte
	}{
		{"MQTT 5", 5},
		{"MQTT 3.1.1", 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{MaxOfflineBytes: max})
			h := addLeftHook(t, b)
			const id = "exp"
			leaveSubscribed(t, b, h, tc.v, id)
			pub, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, "pub", true, 0, nil))
			for j := range n {
				pub.publishExpiring(t, "f/"+id, fmt.Sprint("expiring ", j), 1)
			}
			waitHeld(t, b, id, n)
			if got := b.offline.bytes.Load(); got == 0 {
				t.Fatalf("mote_offline_held_bytes 0 with %d messages held", n)
			}
			waitHeld(t, b, id, 0) // expired: mochi deleted them
			held, _ := awayHeld(b)
			if got := b.offline.bytes.Load(); got != held {
				t.Errorf("mote_offline_held_bytes %d once the held messages expired, held %d", got, held)
			}
			for j := range n {
				pub.publish1(t, 5, "f/"+id, fmt.Sprint("kept ", j))
			}
			dropped := func() int64 { return b.meter.dropped[dropOfflineFull].Load() }
			waitFor(t, "every message held or dropped", func() bool {
				cl, _ := b.server.Clients.Get(id)
				return int64(cl.State.Inflight.Len())+dropped() == n
			})
			if d := dropped(); d != 0 {
				t.Errorf("%d of %d messages dropped offline_full; nothing else is held (bound %d)", d, n, max)
			}
			held, _ = awayHeld(b)
			if got := b.offline.bytes.Load(); got != held {
				t.Errorf("mote_offline_held_bytes %d, held %d", got, held)
			}
		})
	}
}
