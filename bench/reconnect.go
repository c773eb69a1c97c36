package bench

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	paho "github.com/eclipse/paho.mqtt.golang"
)

// reconnectChanges is how many rows change while the subscriber is away.
const reconnectChanges = 10

// reconnect measures a dashboard coming back (SPEC §8): Rows retained
// rows, a subscriber that had them all goes away, reconnectChanges rows
// change, and it subscribes again. value = bytes it receives until its
// copy is current again (topics and payloads of the PUBLISH packets);
// extra "ms" = how long that takes.
//
//   - "plain" (every broker): a plain subscription, the retained replay of
//     every row, as a plain client has to;
//   - "sync": a fresh $sync snapshot;
//   - "resume": $sync with mote-since = the revision of its last message.
func reconnect(ctx context.Context, addr string, s Sizes, variant string) (outcome, error) {
	if err := loadRows(addr, s.Rows, "rc"); err != nil {
		return outcome{}, err
	}
	const filter = "dev/+/state"
	var rev string
	if variant != "plain" {
		// The first visit: the whole tree, and the revision it reflects.
		c, got, err := dial5(ctx, addr, "rc-first")
		if err != nil {
			return outcome{}, err
		}
		if err := subscribe5(ctx, c, "$sync/"+filter, nil); err != nil {
			return outcome{}, err
		}
		select {
		case p := <-got:
			rev = p.Properties.User.Get("mote-rev")
		case <-time.After(30 * time.Second):
			return outcome{}, fmt.Errorf("bench: no snapshot")
		}
		c.Disconnect(&paho5.Disconnect{})
	}
	pub, err := dial(addr, "rc-pub", nil)
	if err != nil {
		return outcome{}, err
	}
	for i := range reconnectChanges {
		if err := wait(pub.Publish(fmt.Sprintf("dev/d%06d/state", i*s.Rows/reconnectChanges), 1, true, "7")); err != nil {
			return outcome{}, err
		}
	}
	pub.Disconnect(0)

	var bytes, msgs atomic.Int64
	start := time.Now()
	if variant == "plain" {
		done := make(chan struct{})
		c, err := dial(addr, "rc-plain", func(_ paho.Client, m paho.Message) {
			bytes.Add(int64(len(m.Topic()) + len(m.Payload())))
			if msgs.Add(1) == int64(s.Rows) {
				close(done)
			}
		})
		if err != nil {
			return outcome{}, err
		}
		defer c.Disconnect(0)
		if err := wait(c.Subscribe(filter, 0, nil)); err != nil {
			return outcome{}, err
		}
		select {
		case <-done:
		case <-time.After(60 * time.Second):
		}
	} else {
		c, got, err := dial5(ctx, addr, "rc-again")
		if err != nil {
			return outcome{}, err
		}
		defer c.Disconnect(&paho5.Disconnect{})
		var props paho5.UserProperties
		if variant == "resume" {
			props = paho5.UserProperties{{Key: "mote-since", Value: rev}}
		}
		if err := subscribe5(ctx, c, "$sync/"+filter, props); err != nil {
			return outcome{}, err
		}
		select {
		case p := <-got:
			bytes.Add(int64(len(p.Topic) + len(p.Payload)))
			msgs.Add(1)
			if variant == "resume" && p.Properties.User.Get("mote-resume") != "1" {
				return outcome{}, fmt.Errorf("bench: resume from %s answered with a full snapshot", rev)
			}
		case <-time.After(30 * time.Second):
			return outcome{}, fmt.Errorf("bench: nothing after reconnecting")
		}
	}
	el := time.Since(start)
	out := outcome{value: float64(bytes.Load()), msgs: msgs.Load(), bytes: bytes.Load(),
		extra: map[string]float64{"ms": float64(el.Microseconds()) / 1000}}
	if variant == "plain" {
		out.lost = int64(s.Rows) - msgs.Load()
	}
	return out, nil
}

// dial5 connects an MQTT 5 client (paho.golang) that hands every publish
// it receives to the returned channel.
func dial5(ctx context.Context, addr, id string) (*paho5.Client, chan *paho5.Publish, error) {
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, nil, fmt.Errorf("bench: dial %s: %w", addr, err)
	}
	got := make(chan *paho5.Publish, 16)
	c := paho5.NewClient(paho5.ClientConfig{Conn: nc, OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) {
			select {
			case got <- p.Packet:
			default:
			}
			return true, nil
		},
	}})
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	max := uint32(256 << 20)
	if _, err := c.Connect(cctx, &paho5.Connect{ClientID: id, CleanStart: true, KeepAlive: 30,
		Properties: &paho5.ConnectProperties{MaximumPacketSize: &max}}); err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("bench: connect %s: %w", id, err)
	}
	return c, got, nil
}

func subscribe5(ctx context.Context, c *paho5.Client, filter string, props paho5.UserProperties) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ack, err := c.Subscribe(cctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: filter, QoS: 0}},
		Properties: &paho5.SubscribeProperties{User: props}})
	if err != nil {
		return fmt.Errorf("bench: subscribe %s: %w", filter, err)
	}
	if ack.Reasons[0] >= 0x80 {
		return fmt.Errorf("bench: subscribe %s: reason %#x", filter, ack.Reasons[0])
	}
	return nil
}
