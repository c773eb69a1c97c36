package broker

import (
	"testing"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
)

// TestHookProvides: the broker's mochi hook says it provides exactly the
// hook methods it implements, over every byte (mochi's constants run from
// SetOptions to StoredSysInfo; the rest must be false too).
func TestHookProvides(t *testing.T) {
	want := map[byte]bool{
		mqtt.OnConnect: true, mqtt.OnConnectAuthenticate: true, mqtt.OnACLCheck: true,
		mqtt.OnSessionEstablish: true, mqtt.OnSessionEstablished: true, mqtt.OnDisconnect: true,
		mqtt.OnPacketRead: true, mqtt.OnPublish: true, mqtt.OnPacketProcessed: true,
		mqtt.OnSubscribe: true, mqtt.OnSubscribed: true, mqtt.OnUnsubscribe: true, mqtt.OnUnsubscribed: true,
		mqtt.OnWill: true, mqtt.OnPacketEncode: true, mqtt.OnRetainMessage: true,
		mqtt.OnQosComplete: true, mqtt.OnQosDropped: true, mqtt.OnClientExpired: true, mqtt.OnAuthPacket: true,
	}
	h := &hook{}
	for b := range 256 {
		if got := h.Provides(byte(b)); got != want[byte(b)] {
			t.Errorf("Provides(%d) = %v, want %v", b, got, want[byte(b)])
		}
	}
}

// BenchmarkHookProvides: what mochi's hook dispatch pays per question, of
// which it asks one for every hook call (several per packet read).
func BenchmarkHookProvides(b *testing.B) {
	h := &hook{}
	n := 0
	for b.Loop() {
		if h.Provides(mqtt.OnPublish) {
			n++
		}
		if h.Provides(mqtt.OnPublished) {
			n++
		}
	}
	if n == 0 {
		b.Fatal("OnPublish not provided")
	}
}
