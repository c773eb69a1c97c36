package broker_test

import (
	"context"
	"fmt"

	"github.com/mote-mqtt/mote/broker"
)

// A front end that is not MQTT (an HTTP stream, a translator, a test)
// uses the broker's door: a session acting as a principal subscribes to a
// tree and publishes, with the same checks as an MQTT client.
func ExampleBroker_Open() {
	b, err := broker.New(broker.Options{TCP: "127.0.0.1:0", WS: "off"})
	if err != nil {
		panic(err)
	}
	if err := b.Start(); err != nil {
		panic(err)
	}
	defer b.Close()
	ctx := context.Background()
	p := broker.Principal{ClientID: "example"}

	got := make(chan broker.Delivery, 2)
	s := b.Open(p, func(d broker.Delivery) { got <- d })
	defer s.Close()
	if err := s.Subscribe("$sync/light/+/is_on", 0); err != nil {
		panic(err)
	}
	snapshot := <-got
	fmt.Println(snapshot.Topic, string(snapshot.Payload), snapshot.Seq())

	err = s.Publish(ctx, broker.Message{Topic: "$tree/light/bedroom", Payload: []byte(`{"is_on":1,"brightness":55}`), Retain: true})
	if err != nil {
		panic(err)
	}
	delta := <-got
	fmt.Println(delta.Topic, string(delta.Payload), delta.Seq())

	err = s.Publish(ctx, broker.Message{Topic: "$SYS/broker/version", Payload: []byte("forged")})
	fmt.Println(err)
	// Output:
	// $sync/light/+/is_on {} 0
	// $sync/light/+/is_on {"bedroom":1} 1
	// refused "$SYS/broker/version" (0x90 topic name invalid): wire: reserved topic: "$SYS/broker/version": topics starting with $SYS, $mote, $hist or a Mote verb are the broker's
}
