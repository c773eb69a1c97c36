package broker

import (
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
)

// TestSubIndexSessionExpiry: an MQTT 5 session whose Session Expiry
// Interval elapsed while its client was away is gone, subscriptions and
// all [MQTT-3.1.2-23]: the broker's index holds none of them, and a new
// session of the same client id (Session Present 0) gets no message on
// a filter only the expired session held. Mochi's clearExpiredClients
// forgets the client without unsubscribing it (no OnUnsubscribed).
func TestSubIndexSessionExpiry(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	expiry := uint32(1)
	away := dial5(t, b, "expiring", paho5.ClientConfig{}, &paho5.Connect{CleanStart: false, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}})
	if _, err := away.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "exp/#", QoS: 1}, {Topic: "$share/g/exp/+", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	if sc := b.plainIdx.match("exp/x"); len(sc.out) != 1 {
		t.Fatalf("exp/x matches %q, want the subscriber", sc.text())
	} else {
		sc.release()
	}
	if err := away.Disconnect(&paho5.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the session to expire", func() bool { _, ok := b.server.Clients.Get("expiring"); return !ok })
	if sc := b.plainIdx.match("exp/x"); len(sc.out) != 0 {
		t.Fatalf("exp/x matches %q after the only subscriber's session expired", sc.text())
	}
	if !b.plainIdx.root.empty() {
		t.Fatalf("the index holds %q with no session left", b.plainIdx.dump())
	}

	// The same client id again, a new session: only what it subscribes.
	got := make(chan *paho5.Publish, 10)
	back := dial5(t, b, "expiring", paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
	}}, &paho5.Connect{CleanStart: false, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}})
	if _, err := back.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "mark", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	pub := dial5(t, b, "exp-pub", paho5.ClientConfig{}, nil)
	for _, topic := range []string{"exp/x", "mark"} {
		if _, err := pub.Publish(ctx, &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte(topic)}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case p := <-got:
		if p.Topic != "mark" {
			t.Fatalf("the new session got %s, a filter of the expired one", p.Topic)
		}
	case <-time.After(testTimeout):
		t.Fatal("timed out waiting for mark")
	}
}
