package broker

import (
	"testing"

	paho5 "github.com/eclipse/paho.golang/paho"
)

// Red team of the takeover fix (arriving's mutex as the one ordering
// point for which mochi client holds a session).

// TestCleanStartTakeoverCountsQueued: a client that takes a persistent
// session over with a clean start replaces it; the QoS 1 messages queued
// on the old connection go away, and are counted as session_ended
// (docs/metrics.md, README), not dropped silently.
func TestCleanStartTakeoverCountsQueued(t *testing.T) {
	b := start(t, Options{})
	_, c, _, _ := awayQueued(t, b, "clean") // q/1 in flight, q/2 and q/3 queued
	before := b.meter.dropped[dropSessionEnded].Load()
	dial5(t, b, "clean", paho5.ClientConfig{}, &paho5.Connect{ClientID: "clean", KeepAlive: 30, CleanStart: true})
	waitClosed(t, "the hand-off", c.handed)
	if got := b.meter.dropped[dropSessionEnded].Load() - before; got < 2 {
		t.Fatalf("session_ended grew by %d, want at least 2 (q/2 and q/3, queued on the replaced session)", got)
	}
}
