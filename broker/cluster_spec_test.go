package broker

import (
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mote-mqtt/mote/clients/client"
)

// checkSessionsStay: SPEC §12, "Sessions (QoS 1/2 state, persistent
// subscriptions) stay on the node the client is connected to". A
// persistent session made on node 0 keeps, while its client is away, a
// QoS 1 event published on node 1; the same client id connecting to
// node 1 finds no session there (nor the event), and back on node 0
// finds its session with the event. tn's nodes 0 and 1 run.
func checkSessionsStay(t *testing.T, tn *testNodes) {
	t.Helper()
	connect := func(b *Broker) (*v3, bool) {
		t.Helper()
		c := &v3{inbox: inbox[msg]{got: make(chan struct{}, 1)}}
		o := paho.NewClientOptions().AddBroker("tcp://" + b.TCPAddr()).SetClientID("roamer").SetCleanSession(false).
			SetAutoReconnect(false).SetOrderMatters(true).SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { c.record(m) })
		c.Client = paho.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
			t.Fatalf("connect roamer: %v", tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c, tok.(*paho.ConnectToken).SessionPresent()
	}
	ctx := testCtx(t)
	c, _ := connect(tn.b[0])
	c.sub(t, "roam/#", 1)
	c.Disconnect(0)
	// A witness on node 0: once it has the event, node 0's loop has
	// handed it to the roamer's session too (one fan-out).
	wit := dialNode(t, tn.b[0], "roam-witness")
	seen := newCollector()
	if err := wit.Subscribe(ctx, "roam/#", client.Plain, client.JSON, 1, seen.handle); err != nil {
		t.Fatal(err)
	}
	w := dialNode(t, tn.b[1], "roam-writer")
	if err := w.Publish(ctx, "roam/x", []byte("1"), client.PublishOptions{QoS: 1}); err != nil {
		t.Fatal(err)
	}
	seen.wait(t, 1)
	c1, present := connect(tn.b[1])
	if present {
		t.Error("node 1 has the session made on node 0")
	}
	settle(t, tn.b[1])
	c1.quiet(t, 0)
	c1.Disconnect(0)
	c0, present := connect(tn.b[0])
	if !present {
		t.Error("node 0 lost the client's session")
	}
	if got := c0.wait(t, 1); got[0].topic != "roam/x" || got[0].payload != "1" {
		t.Errorf("the session on node 0 kept %+v, want roam/x = 1", got)
	}
}
