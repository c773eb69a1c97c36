package broker

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
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
// The churn cases have 8 clients beside the publisher resuming 8 of the
// sessions and leaving at once, in a loop, as a hostile run's did
// (bench/README.md, "Churning clients and away sessions").
func BenchmarkDeliverAway(b *testing.B) {
	for _, n := range []int{10, 260} {
		for _, tc := range []struct {
			name   string
			qos    byte
			retain bool
			churn  bool
		}{
			{"qos0-retained", 0, true, false},
			{"qos1-retained", 1, true, false},
			{"qos0-event", 0, false, false},
			{"qos1-event", 1, false, false},
			{"qos0-event-churn", 0, false, true},
			{"qos1-event-churn", 1, false, true},
		} {
			b.Run(fmt.Sprintf("away=%d/%s", n, tc.name), func(b *testing.B) {
				const maxInflight = 64
				br := start(b, Options{MaxInflight: maxInflight})
				leaveAway(b, br, n, "#", 1)
				if tc.churn {
					stop := churnAway(br, min(n, 8))
					defer stop()
				}
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

// churnAway starts k clients resuming the sessions away-0 … away-(k-1)
// (MQTT 3.1.1, clean session false) and leaving at once (DISCONNECT), in
// a loop, until the returned stop, which waits for them.
func churnAway(br *Broker, k int) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for i := range k {
		id := "away-" + strconv.Itoa(i)
		connect := append([]byte{0x10, byte(12 + len(id)), 0, 4, 'M', 'Q', 'T', 'T', 4, 0, 0, 30, 0, byte(len(id))}, id...)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ack := make([]byte, 4)
			for {
				select {
				case <-done:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", br.TCPAddr(), 5*time.Second)
				if err != nil {
					continue
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(connect); err == nil {
					if _, err := io.ReadFull(c, ack); err == nil {
						c.Write([]byte{0xe0, 0})
					}
				}
				c.Close()
			}
		}()
	}
	return func() {
		close(done)
		wg.Wait()
	}
}
