package broker

import (
	"slices"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// The two races between a takeover and the broker putting messages into a
// session's mochi client (see the storms in rtidle_test.go), each stopped
// at the moment it lost messages, with mochi's hooks and the broker's own
// barriers.

// TestHeldAfterInflightCopy: a message for a session that is away,
// published while mochi moves the session to a client coming back (after
// it copied the old client's in-flight messages to the new one, before it
// filed the new one), waits for the new client's connection. It used to
// be held in the old client's in-flight state, which mochi had copied
// already and was clearing: lost, no drop counted.
func TestHeldAfterInflightCopy(t *testing.T) {
	b := start(t, Options{})
	raw, c, old, pub := awayQueued(t, b, "away")
	raw.Close()
	waitClosed(t, "the hand-off", c.handed)                                                                         // away: q/1..q/3 held in old's in-flight state
	h := addBlockHook(t, b, mqtt.OnQosDropped, func(cl *mqtt.Client) bool { return cl == old && cl.IsTakenOver() }) // ClearInflights, after the copy
	in, cfg, cp := resumeConfig("away")
	dialed := dialAsync(t, b, "away", cfg, cp)
	waitClosed(t, "mochi's copy of the in-flight messages", h.blocked)
	publishQ(t, pub, 4)
	close(h.release)
	waitDialed(t, dialed)
	wantOrder(t, in, 4)
}

// TestHandOnToNewerClient: a connection ends with messages queued while
// its session's mochi client is another one, which took the session over
// without going through the connection (its CONNECT came while the
// connection was not filed: mochi filed it, the broker never told the
// connection). Its leftovers go to that client: held for its connection
// while it is live, in its in-flight state when it is away, and dropped
// and counted when it is another user's. They used to be dropped
// silently.
func TestHandOnToNewerClient(t *testing.T) {
	for _, tc := range []struct {
		name   string
		user   string // the newer client's
		closed bool
	}{
		{"live", "", false},
		{"away", "", true},
		{"other user", "bob", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			raw, c, _, _ := awayQueued(t, b, "away") // q/1 in flight, q/2 and q/3 queued
			newer := b.server.NewClient(nil, "test", "away", false)
			newer.Properties.Username = []byte(tc.user)
			newer.Properties.ProtocolVersion = 5
			if tc.closed {
				newer.Stop(nil)
			}
			b.server.Clients.Add(newer) // mochi's takeover, unknown to c
			droppedBefore := b.meter.dropped[dropSessionEnded].Load()
			raw.Close()
			waitClosed(t, "the hand-off", c.handed)
			var got []string
			switch {
			case tc.user != "":
			case tc.closed:
				for _, pk := range newer.State.Inflight.GetAll(false) {
					got = append(got, pk.TopicName)
				}
			default:
				b.arriving.mu.Lock()
				if s := b.arriving.by["away"]; s != nil && s.cl == newer {
					for _, m := range s.msgs {
						got = append(got, m.msg.topic)
					}
				}
				b.arriving.mu.Unlock()
			}
			dropped := b.meter.dropped[dropSessionEnded].Load() - droppedBefore
			want, wantDropped := []string{"q/2", "q/3"}, int64(0)
			if tc.user != "" {
				want, wantDropped = nil, 2
			}
			if !slices.Equal(got, want) || dropped != wantDropped {
				t.Fatalf("the newer client holds %v and %d were dropped (session ended), want %v and %d", got, dropped, want, wantDropped)
			}
		})
	}
}
