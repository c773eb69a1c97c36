package broker

import (
	"testing"
	"time"
)

// TestOrderRowsThenEvent checks MQTT 4.6 [MQTT-4.6.0-6]: a client's
// publishes on one topic reach a subscriber in the order the client sent
// them, also when the first changes a row (a retained plain publish, a
// tree publish: the loop delivers it) and the loop is busy, and the second
// is a plain event (delivered on the publisher's goroutine). The loop is
// held by a call while both are sent, so the first is queued.
func TestOrderRowsThenEvent(t *testing.T) {
	cases := []struct {
		name         string
		topic, first string // the first publish, changing a row of ord/a
		retain       bool
		want1        string // what an ord/a subscriber gets of it
	}{
		{name: "retained plain", topic: "ord/a", first: "1", retain: true, want1: "1"},
		{name: "tree", topic: "$tree/ord", first: `{"a":1}`, retain: true, want1: "1"},
		{name: "tree event", topic: "$tree/ord", first: `{"a":1}`, retain: false, want1: "1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			sub := dial3(t, b, "sub", true)
			sub.sub(t, "ord/a", 1)
			pub := dial3(t, b, "pub", true)

			ctx := testCtx(t)
			held, release := make(chan struct{}), make(chan struct{})
			released := false
			defer func() {
				if !released {
					close(release)
				}
			}()
			go b.onLoop(ctx.Done(), func() { close(held); <-release }) // the loop is busy
			<-held
			pub.pub(t, tc.topic, 1, tc.retain, tc.first) // queued behind the call: acknowledged without waiting
			tok := pub.Publish("ord/a", 1, false, "2")   // a plain event
			// Either the event is delivered at once (and acknowledged), or
			// it waits behind the queued publish: then the loop's inbox
			// holds both the publish and what the event waits on.
			deadline := time.After(testTimeout)
		wait:
			for {
				select {
				case <-tok.Done():
					break wait
				case <-deadline:
					t.Fatal("the event was neither delivered nor queued behind the publish")
				case <-time.After(time.Millisecond):
					if b.reqs.len() >= 2 {
						break wait
					}
				}
			}
			close(release)
			released = true
			if !waitTok(t, "publish 2", tok) {
				return
			}
			got := sub.wait(t, 2)
			if got[0].payload != tc.want1 || got[1].payload != "2" {
				t.Fatalf("received %+v, want %q then %q, as published", got, tc.want1, "2")
			}
		})
	}
}
