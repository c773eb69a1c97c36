package broker

import (
	"bytes"
	"fmt"
	"sync"
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
	defer fullSubscriber(t, b, "qf-sub", "rt/qf", nil)()
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

// fullSubscriber opens a session of id subscribed to topic whose reader
// is stuck (its first delivery never returns) and fills its queue (b's
// QueueBytes, a few hundred bytes of room left): a publish of more to
// topic waits in OnPublish (publish_wait). seen, if not nil, is called
// with each delivery. free lets the reader go; the session is closed at
// the test's end.
func fullSubscriber(t *testing.T, b *Broker, id, topic string, seen func(Delivery)) (free func()) {
	t.Helper()
	return fullSubscriberTo(t, b, id, topic, topic, seen)
}

// fullSubscriberTo is fullSubscriber subscribed to filter, its queue
// filled by publishes to fill, a topic filter matches.
func fullSubscriberTo(t *testing.T, b *Broker, id, filter, fill string, seen func(Delivery)) (free func()) {
	t.Helper()
	release := make(chan struct{})
	var once sync.Once
	free = func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	got := make(chan struct{}, 1)
	s := b.Open(Principal{ClientID: id}, func(d Delivery) {
		if seen != nil {
			seen(d)
		}
		select {
		case got <- struct{}{}:
		default:
		}
		<-release // the subscriber's reader is stuck: its queue fills
	})
	t.Cleanup(func() { s.Close() })
	if err := s.Subscribe(filter, 0); err != nil {
		t.Fatal(err)
	}
	pub := Principal{ClientID: id + "-fill"}
	ctx := testCtx(t)
	if err := b.Publish(ctx, pub, Message{Topic: fill, Payload: []byte("first")}); err != nil {
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
		if err := b.Publish(ctx, pub, Message{Topic: fill, Payload: []byte("fill")}); err != nil {
			t.Fatal(err)
		}
	}
	return free
}
