package broker

import (
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mote-mqtt/mote/broker/auth"
	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestFreshTakeoverPublishesDelayedWill: alice's persistent MQTT 5
// session goes offline with a will waiting out its delay (an hour); bob,
// another user, takes the client id with TakeoverFresh: alice's session
// ends, so her will is published now — the delay runs until the Will
// Delay Interval passes or the session ends, whichever is first
// [MQTT-3.1.3-9]; bob's connection is not one to her session. Before, bob's
// OnSessionEstablished cancelled it as if alice had come back: another
// user could silence her will. Alice coming back herself still cancels it.
func TestFreshTakeoverPublishesDelayedWill(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic readwrite #\nuser bob\ntopic readwrite #\nuser carol\ntopic readwrite #\n"))
	if err != nil {
		t.Fatal(err)
	}
	u := auth.NewUsers()
	u.Set("alice", "alice-pw", 10)
	u.Set("bob", "bob-pw", 10)
	u.Set("carol", "carol-pw", 10)
	b := start(t, Options{Users: u, ACL: acl, Takeover: TakeoverFresh})
	watcher := dial3With(t, b, paho.NewClientOptions().SetClientID("watcher").SetUsername("carol").SetPassword("carol-pw").SetCleanSession(true))
	watcher.sub(t, "will/#", 1)

	connectWill := func(id, user string) *ownerPeer {
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: 5,
			Connect: packets.ConnectParams{
				ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: id,
				UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(user + "-pw"),
				WillFlag: true, WillQos: 1, WillTopic: "will/" + id, WillPayload: []byte(user),
			},
		}
		pk.Connect.WillProperties.WillDelayInterval = 3600
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 3600, true
		p := dialOwner(t, b)
		p.c.Write(ownerPacket(t, pk))
		if _, body := p.next(t, 2); len(body) < 2 || body[1] != 0 {
			t.Fatalf("%s's CONNACK % x, want 0", user, body)
		}
		return p
	}
	delayed := func(id string) bool {
		b.wills.mu.Lock()
		defer b.wills.mu.Unlock()
		return b.wills.delayed[id] != nil
	}

	// Alice comes back to her own session: the will is cancelled.
	a := connectWill("own", "alice")
	a.c.Close()
	waitWillHeld(t, b, "own")
	connectWill("own", "alice")
	waitFor(t, "alice's will cancelled as she came back", func() bool { return !delayed("own") })
	if got := len(watcher.wait(t, 0)); got != 0 {
		t.Fatalf("%d wills published, want none: alice came back", got)
	}

	// Bob takes the id of alice's offline session: her will goes now.
	a = connectWill("shared", "alice")
	a.c.Close()
	waitWillHeld(t, b, "shared") // her client stopped too: bob's CONNECT finds her offline
	connectWill("shared", "bob")
	got := watcher.wait(t, 1)
	if m := got[0]; m.topic != "will/shared" || m.payload != "alice" {
		t.Fatalf("got %+v, want alice's will", got)
	}
	if delayed("shared") {
		t.Error("a will still waits for the id")
	}
}

// TestFreshTakeoverCountsHeld: messages held for alice's offline
// persistent session (in her mochi client's in-flight state) are dropped
// when bob, another user, takes the client id with TakeoverFresh — none
// reaches bob — and counted as session_ended, as a replaced session's
// queued messages are. Before, they went silently.
func TestFreshTakeoverCountsHeld(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic readwrite #\nuser bob\ntopic readwrite #\nuser carol\ntopic readwrite #\n"))
	if err != nil {
		t.Fatal(err)
	}
	u := auth.NewUsers()
	u.Set("alice", "alice-pw", 10)
	u.Set("bob", "bob-pw", 10)
	u.Set("carol", "carol-pw", 10)
	b := start(t, Options{Users: u, ACL: acl, Takeover: TakeoverFresh})
	carol := dial3With(t, b, paho.NewClientOptions().SetClientID("carol").SetUsername("carol").SetPassword("carol-pw").SetCleanSession(true))

	alice := dialOwner(t, b)
	alice.c.Write(connectUser(t, 5, "shared", "alice", false))
	if _, body := alice.next(t, 2); len(body) < 2 || body[1] != 0 {
		t.Fatalf("alice's CONNACK % x, want 0", body)
	}
	alice.c.Write(ownerPacket(t, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5,
		PacketID: 1, Filters: packets.Subscriptions{{Filter: "t", Qos: 1}},
	}))
	alice.next(t, 9) // SUBACK
	alice.c.Write([]byte{0xe0, 0x00})
	waitConnGone(t, b, "shared")
	aliceCl, ok := b.server.Clients.Get("shared")
	if !ok {
		t.Fatal("alice's session is gone")
	}
	carol.pub(t, "t", 1, false, "one")
	carol.pub(t, "t", 1, false, "two")
	waitFor(t, "both held for alice", func() bool { return aliceCl.State.Inflight.Len() == 2 })

	before := b.meter.dropped[dropSessionEnded].Load()
	bob := dialOwner(t, b)
	bob.c.Write(connectUser(t, 5, "shared", "bob", false))
	if _, body := bob.next(t, 2); len(body) < 2 || body[1] != 0 || body[0]&1 != 0 {
		t.Fatalf("bob's CONNACK % x, want 0, no session present", body)
	}
	bob.ping(t, "bob") // nothing of alice's
	if got := b.meter.dropped[dropSessionEnded].Load() - before; got != 2 {
		t.Errorf("session_ended grew by %d, want 2 (alice's held messages)", got)
	}
}

// TestRefusedTakeoverLeavesNoWill: bob's CONNECT, with a will, passes
// OnConnect while the client id is free and is held; alice takes the id
// meanwhile; bob is refused under the id's lock (0x85). His will is never
// published (his CONNECT was never accepted), nothing of his is filed,
// and the broker's connection count is back to alice and the watcher.
func TestRefusedTakeoverLeavesNoWill(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic readwrite #\nuser bob\ntopic readwrite #\nuser carol\ntopic readwrite #\n"))
	if err != nil {
		t.Fatal(err)
	}
	u := auth.NewUsers()
	u.Set("alice", "alice-pw", 10)
	u.Set("bob", "bob-pw", 10)
	u.Set("carol", "carol-pw", 10)
	b := start(t, Options{Users: u, ACL: acl, Takeover: TakeoverRefuse})
	carol := dial3With(t, b, paho.NewClientOptions().SetClientID("carol").SetUsername("carol").SetPassword("carol-pw").SetCleanSession(true))
	carol.sub(t, "will/#", 1)
	gate := &connectGate{user: "bob", entered: make(chan struct{}), release: make(chan struct{})}
	if err := b.server.AddHook(gate, nil); err != nil {
		t.Fatal(err)
	}
	released := false
	defer func() {
		if !released {
			close(gate.release)
		}
	}()

	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "shared",
			UsernameFlag: true, Username: []byte("bob"), PasswordFlag: true, Password: []byte("bob-pw"),
			WillFlag: true, WillQos: 1, WillTopic: "will/bob", WillPayload: []byte("bob"),
		},
	}
	bob := dialOwner(t, b)
	bob.c.Write(ownerPacket(t, pk))
	select {
	case <-gate.entered:
	case <-time.After(testTimeout):
		t.Fatal("bob's CONNECT was not held")
	}
	alice := dialOwner(t, b)
	alice.c.Write(connectUser(t, 5, "shared", "alice", true))
	if _, body := alice.next(t, 2); len(body) < 2 || body[1] != 0 {
		t.Fatalf("alice's CONNACK % x, want 0", body)
	}
	close(gate.release)
	released = true
	if h, body := bob.next(t, 2); h != 0x20 || len(body) < 2 || body[1] != 0x85 {
		t.Fatalf("bob's CONNACK %#x % x, want 0x85", h, body)
	}
	if _, _, err := readPacketBody(bob.r); err == nil {
		t.Fatal("bob's refused connection was not closed")
	}
	alice.ping(t, "alice")
	carol.pub(t, "will/marker", 1, false, "marker")
	got := carol.wait(t, 1)
	if got[0].topic != "will/marker" {
		t.Fatalf("got %+v first, want the marker only: bob's will was published", got)
	}
	waitFor(t, "bob's connection untracked", func() bool {
		return atomic.LoadInt64(&b.server.Info.ClientsConnected) == 2
	})
	b.connWills.Range(func(k, _ any) bool {
		t.Errorf("a will kept for %s", k.(*mqtt.Client).ID)
		return true
	})
}
