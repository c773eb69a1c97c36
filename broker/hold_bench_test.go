package broker

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkHoldAway: QoS 1 publishes, from parallel publishers, to 64
// persistent sessions that are away: each is held in flight for every
// session (arriving.give, under the one ordering point for which client
// holds a session) until a session holds MaxInflight, then dropped and
// counted. One op is one publish (64 holds or drops).
func BenchmarkHoldAway(b *testing.B) {
	br := start(b, Options{})
	const sessions = 64
	for i := range sessions {
		id := fmt.Sprint("away-", i)
		c := dial3(b, br, id, false)
		c.sub(b, "hold/#", 1)
		c.Disconnect(0)
	}
	for i := range sessions {
		deadline := testCtx(b)
		for br.connByID(fmt.Sprint("away-", i)) != nil {
			if deadline.Err() != nil {
				b.Fatal("a session's connection did not end")
			}
			time.Sleep(time.Millisecond)
		}
	}
	m := Message{Topic: "hold/x", Payload: []byte("0123456789abcdef"), QoS: 1}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := testCtx(b)
		for pb.Next() {
			if err := br.Publish(ctx, Principal{ClientID: "bench"}, m); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
