package broker

import (
	"context"
	"fmt"
	"testing"
)

// TestRT2EmptyRetainedWill (red team of mochi change 85): a retained will
// with an empty payload, published when its connection drops (at once or
// after its Will Delay Interval), clears the retained row of its topic as
// an empty retained PUBLISH does [MQTT-3.3.1-6]: the watcher gets it, a
// later subscriber gets nothing retained.
func TestRT2EmptyRetainedWill(t *testing.T) {
	cases := []struct {
		name  string
		v     byte
		delay uint32
	}{
		{"3.1.1", 4, 0},
		{"5", 5, 0},
		{"5 delayed", 5, 1},
	}
	b := start(t, Options{})
	for n, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, topic := fmt.Sprint("rt2-ew-", n), fmt.Sprint("rt2/emptywill/", n)
			watcher, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id+"-watch", true, 0, nil))
			watcher.subscribe(t, 5, topic, 0)
			for _, payload := range []string{"kept", ""} {
				w := &rawWill{topic: topic, payload: payload, retain: true}
				if payload == "" {
					w.delay = tc.delay
				}
				a, _, code := rawPeer(t, b.TCPAddr(), rawConnect(t, tc.v, id, true, 60, w))
				if code != 0 {
					t.Fatalf("will %q: CONNACK %#x", payload, code)
				}
				resetConn(a.c)
				if m := watcher.readPublish(t, 5); m.topic != topic || m.payload != payload {
					t.Fatalf("watcher got %q %q, want the will %q", m.topic, m.payload, payload)
				}
			}
			if err := b.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
			late, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id+"-late", true, 0, nil))
			late.subscribe(t, 5, topic+"/after", 0) // first: subscribe skips PUBLISHes until its SUBACK
			late.subscribe(t, 5, topic, 0)
			watcher.publish1(t, 5, topic+"/after", "") // another peer: late reads every PUBLISH
			if got := late.topicsUntil(t, topic+"/after"); len(got) != 0 {
				t.Errorf("a later subscriber got %v retained, want nothing: the empty retained will did not clear the row", got)
			}
		})
	}
}
