package broker

import (
	"fmt"
	"testing"
)

// BenchmarkFanoutPersistentOnline: QoS 1 publishes through the door to
// 1,000 online MQTT 3.1.1 clients with persistent sessions (clean=false),
// each subscribed at QoS 1: the delivery path of a session that has its
// connection (does it take arriving's mutex?). One op is one publish
// (1,000 deliveries queued).
func BenchmarkFanoutPersistentOnline(b *testing.B) {
	br := start(b, Options{})
	const subs = 1000
	for i := range subs {
		c := dial3(b, br, fmt.Sprint("on-", i), false)
		c.sub(b, "fan/#", 1)
	}
	m := Message{Topic: "fan/x", Payload: []byte("0123456789abcdef"), QoS: 1}
	ctx := testCtx(b)
	b.ResetTimer()
	for range b.N {
		if err := br.Publish(ctx, Principal{ClientID: "bench"}, m); err != nil {
			b.Fatal(err)
		}
	}
}
