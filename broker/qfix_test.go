package broker

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestTakeoverNotHeldByBlockedPublish: a CONNECT taking over a session
// whose connection has a QoS 1 PUBLISH blocked on a full subscriber
// queue (publish_wait, a minute here) gets its CONNACK at once: the
// takeover waits for no publish past mochi's id lookup. It waited
// lateWait (5 s) under the id's takeover lock.
func TestTakeoverNotHeldByBlockedPublish(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) { takeoverNotHeld(t, v) })
	}
}

func takeoverNotHeld(t *testing.T, v byte) {
	b := start(t, Options{QueueBytes: 1000, PublishWait: time.Minute})
	release := make(chan struct{})
	released := false
	free := func() {
		if !released {
			released = true
			close(release)
		}
	}
	defer free()
	got := make(chan struct{}, 1)
	s := b.Open(Principal{ClientID: "qf-sub"}, func(Delivery) {
		select {
		case got <- struct{}{}:
		default:
		}
		<-release // the subscriber's reader is stuck: its queue fills
	})
	defer s.Close()
	if err := s.Subscribe("rt/qf", 0); err != nil {
		t.Fatal(err)
	}
	pub := Principal{ClientID: "qf-fill"}
	ctx := testCtx(t)
	if err := b.Publish(ctx, pub, Message{Topic: "rt/qf", Payload: []byte("first")}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-ctx.Done():
		t.Fatal("first message not delivered")
	}
	for func() bool {
		s.c.q.mu.Lock()
		defer s.c.q.mu.Unlock()
		return s.c.q.bytes+400 <= s.c.q.max
	}() {
		if err := b.Publish(ctx, pub, Message{Topic: "rt/qf", Payload: []byte("fill")}); err != nil {
			t.Fatal(err)
		}
	}
	props := packets.Properties{SessionExpiryInterval: 60, SessionExpiryIntervalFlag: true}
	old := dialRaw(t, b, "qf-tk", v, false, props)
	big := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: v,
		TopicName: "rt/qf", PacketID: 1, Payload: make([]byte, 450)}
	var buf bytes.Buffer
	if err := big.PublishEncode(&buf); err != nil {
		t.Fatal(err)
	}
	old.write(buf.Bytes())
	waitFor(t, "the publish to block in OnPublish", func() bool {
		c, ok := b.byID.Load("qf-tk")
		if !ok {
			return false
		}
		o, ok := c.(*conn).outOf()
		if !ok {
			return false
		}
		o.ids.mu.Lock()
		defer o.ids.mu.Unlock()
		return o.ids.reserved == 1 && o.ids.phase == 1
	})
	began := time.Now()
	dialRaw(t, b, "qf-tk", v, false, props) // reads its CONNACK
	if took := time.Since(began); took > lateWait/2 {
		t.Fatalf("CONNACK of the takeover took %v, want well under lateWait (%v) and publish_wait", took, lateWait)
	}
}
