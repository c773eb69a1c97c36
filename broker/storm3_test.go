package broker

import (
	"testing"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestIDSpacesBeginAllocates: idSpaces.begin, run for every client packet
// with an id, allocates only when it displaces one of the broker's
// deliveries. It moved the in-flight packet it reads to the heap for
// every QoS 1 and 2 publish (900 bytes each; h-storm3).
func TestIDSpacesBeginAllocates(t *testing.T) {
	cl := &mqtt.Client{}
	cl.State.Inflight = mqtt.NewInflights()
	var s idSpaces
	pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7}
	for _, c := range []struct {
		name      string
		inflight  *packets.Packet // in mochi's map under id 7 before begin
		maxAllocs float64
	}{
		{"nothing in flight", nil, 0},
		{"the client's own ack in flight", &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 7}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.inflight != nil {
				cl.State.Inflight.Set(*c.inflight)
				defer cl.State.Inflight.Delete(7)
			}
			got := testing.AllocsPerRun(100, func() {
				s.begin(cl, pk)
				s.end(cl, pk)
			})
			if got > c.maxAllocs {
				t.Errorf("%.1f allocations a publish, want at most %.0f", got, c.maxAllocs)
			}
		})
	}
	// A delivery under the same id is displaced and put back: still works.
	del := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7, TopicName: "x"}
	cl.State.Inflight.Set(del)
	s.begin(cl, pk)
	if _, ok := cl.State.Inflight.Get(7); ok || s.displaced == nil || s.displaced.TopicName != "x" {
		t.Fatalf("the delivery under id 7 was not displaced: %+v", s.displaced)
	}
	s.end(cl, pk)
	if got, ok := cl.State.Inflight.Get(7); !ok || got.TopicName != "x" {
		t.Fatalf("the delivery under id 7 was not put back: %+v %v", got, ok)
	}
}
