package broker

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"
)

// BenchmarkDeliverAway: publishes through the door (Broker.Publish) to N
// persistent sessions that are away (MQTT 3.1.1, clean session false),
// each subscribed to # at QoS 1, and to nobody else: the cost of a
// message to subscribers that are not there (a retained flood kept the
// loop busy for 100 s with 260 of them). A retained publish is applied
// and delivered by the loop, an event on the caller's goroutine; Publish
// returns once it is delivered. A QoS 0 message is not held for an away
// session. A QoS 1 one is, until the session holds MaxInflight (64 here),
// after which each is dropped and counted: the sessions are filled before
// the clock starts, so every QoS 1 op is a flood's steady state (a held
// message's own cost is BenchmarkHoldAway's). One op is one publish.
func BenchmarkDeliverAway(b *testing.B) {
	for _, n := range []int{10, 260} {
		for _, tc := range []struct {
			name   string
			qos    byte
			retain bool
		}{
			{"qos0-retained", 0, true},
			{"qos1-retained", 1, true},
			{"qos0-event", 0, false},
			{"qos1-event", 1, false},
		} {
			b.Run(fmt.Sprintf("away=%d/%s", n, tc.name), func(b *testing.B) {
				const maxInflight = 64
				br := start(b, Options{MaxInflight: maxInflight})
				leaveAway(b, br, n, "#", 1)
				ctx := context.Background()
				p := Principal{ClientID: "pub"}
				i := 0
				publish := func() {
					m := Message{Topic: "flood/" + strconv.Itoa(i%1000), Payload: strconv.AppendInt(nil, int64(i), 10), QoS: tc.qos, Retain: tc.retain}
					if err := br.Publish(ctx, p, m); err != nil {
						b.Fatal(err)
					}
					i++
				}
				if tc.qos > 0 {
					for range maxInflight {
						publish()
					}
				}
				b.ReportAllocs()
				for b.Loop() {
					publish()
				}
			})
		}
	}
}

// leaveAway leaves n persistent MQTT 3.1.1 sessions (away-0 …)
// subscribed to filter at qos, their connections ended.
func leaveAway(t testing.TB, br *Broker, n int, filter string, qos byte) {
	t.Helper()
	for i := range n {
		c := dial3(t, br, "away-"+strconv.Itoa(i), false)
		c.sub(t, filter, qos)
		c.Disconnect(0)
	}
	deadline := time.Now().Add(testTimeout)
	for i := range n {
		for br.connByID("away-"+strconv.Itoa(i)) != nil {
			if time.Now().After(deadline) {
				t.Fatal("a session's connection did not end")
			}
			time.Sleep(time.Millisecond)
		}
	}
}
