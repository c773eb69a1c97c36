package mqtt

import (
	"sync/atomic"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestMoteTakeoverMovesInflight (change 74): a takeover moves the old
// client's in-flight messages to the new client in one step, so what the
// old connection does to its map afterwards is its own. Here, right after
// the messages left (the takeover held on the new client's subscriptions
// lock, where it copies the old client's filters), the old connection's
// reader sets the PUBREC of a QoS 2 PUBLISH it was processing (id 9) and
// its writer takes back a delivery it had just put in flight (id 1), as
// they did in TestQoS2ReconnectStorm (broker). Before, the takeover
// cloned the map here and cleared it later: the PUBREC was cleared (the
// client's resend of it was then delivered again) and the delivery,
// still the new client's, was counted out of Info.Inflight by the
// writer: −1 once all was complete.
func TestMoteTakeoverMovesInflight(t *testing.T) {
	s := newServer()
	old := s.NewClient(nil, "t", "mv", false)
	old.Properties.ProtocolVersion = 5
	old.Properties.EditProps().SessionExpiryInterval = 300
	old.State.Subscriptions.Add("a/b", packets.Subscription{Filter: "a/b", Qos: 2})
	delivery := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, PacketID: 1, TopicName: "a/b"}
	old.State.Inflight.Set(delivery)
	atomic.AddInt64(&s.Info.Inflight, 1)
	s.Clients.Add(old)

	cl := s.NewClient(nil, "t", "mv", false)
	cl.Properties.ProtocolVersion = 5
	cl.Properties.EditProps().SessionExpiryInterval = 300
	cl.State.Subscriptions.Lock() // the takeover stops where it files the old client's filters for cl
	done := make(chan bool)
	go func() {
		done <- s.inheritClientSession(packets.Packet{Connect: packets.ConnectParams{ClientIdentifier: "mv"}}, cl)
	}()
	waitFor(t, "the takeover to copy the filters", func() bool {
		return len(s.Topics.Subscribers("a/b").Subscriptions) == 1
	})
	// The old reader: mochi's processPublish sets its PUBREC.
	if old.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: 9}) {
		atomic.AddInt64(&s.Info.Inflight, 1)
	}
	// The old writer: Mote's dropInflight, the delivery taken back.
	if old.State.Inflight.Delete(delivery.PacketID) {
		atomic.AddInt64(&s.Info.Inflight, -1)
	}
	cl.State.Subscriptions.Unlock()
	if !<-done {
		t.Fatal("session not resumed")
	}
	if pk, ok := cl.State.Inflight.Get(1); !ok || pk.FixedHeader.Type != packets.Publish || cl.State.Inflight.Len() != 1 {
		t.Errorf("the new client holds %v: want the delivery 1 alone", cl.State.Inflight.GetAll(false))
	}
	if pk, ok := old.State.Inflight.Get(9); !ok || pk.FixedHeader.Type != packets.Pubrec {
		t.Errorf("the old client holds %v: want the PUBREC set after the takeover, 9", old.State.Inflight.GetAll(false))
	}
	if n := atomic.LoadInt64(&s.Info.Inflight); n != 2 {
		t.Errorf("Info.Inflight %d, want 2 (the delivery and the PUBREC)", n)
	}
}
