package broker

import (
	"bufio"
	"bytes"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker/auth"
	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// connectGate holds the first OnConnect of a CONNECT of user (after the
// broker's OnConnect, which passed it: it is added after the broker's
// hook), before mochi's takeover: entered is closed when it holds, and it
// goes on once release is.
type connectGate struct {
	mqtt.HookBase
	user    string
	held    atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (*connectGate) ID() string           { return "connect-gate" }
func (*connectGate) Provides(b byte) bool { return b == mqtt.OnConnect }
func (g *connectGate) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	if userOf(cl) != g.user || !g.held.CompareAndSwap(false, true) {
		return nil
	}
	close(g.entered)
	<-g.release
	return nil
}

// ownerPacket encodes pk, a CONNECT, SUBSCRIBE or PUBLISH.
func ownerPacket(t *testing.T, pk packets.Packet) []byte {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// connectUser is a CONNECT of client id as user (password user+"-pw"),
// MQTT version v; a persistent one (clean false) asks MQTT 5 for a session
// that outlives the connection.
func connectUser(t *testing.T, v byte, id, user string, clean bool) []byte {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: clean, Keepalive: 30, ClientIdentifier: id,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: true, Password: []byte(user + "-pw"),
		},
	}
	if v == 5 && !clean {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 300, true
	}
	return ownerPacket(t, pk)
}

// ownerPeer is a raw MQTT connection of a test.
type ownerPeer struct {
	c net.Conn
	r *bufio.Reader
}

func dialOwner(t *testing.T, b *Broker) *ownerPeer {
	t.Helper()
	c, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testTimeout))
	return &ownerPeer{c: c, r: bufio.NewReader(c)}
}

// next reads the next packet whose type (the first byte's high nibble)
// is typ (any, for 0), skipping others; it fails the test on an error.
func (p *ownerPeer) next(t *testing.T, typ byte) (byte, []byte) {
	t.Helper()
	for {
		h, body, err := readPacketBody(p.r)
		if err != nil {
			t.Fatalf("reading a packet of type %#x: %v", typ, err)
		}
		if typ == 0 || h>>4 == typ {
			return h, body
		}
	}
}

// ping writes PINGREQ and reads what comes next: it must be PINGRESP
// (nothing else was sent to the connection meanwhile).
func (p *ownerPeer) ping(t *testing.T, who string) {
	t.Helper()
	if _, err := p.c.Write([]byte{0xc0, 0x00}); err != nil {
		t.Fatalf("%s: PINGREQ: %v", who, err)
	}
	h, body, err := readPacketBody(p.r)
	if err != nil || h != 0xd0 {
		t.Fatalf("%s: got %#x % x %v after PINGREQ, want PINGRESP only", who, h, body, err)
	}
}

// TestTakeoverChecksOwnerUnderLock: a CONNECT of one user checked in
// OnConnect while its client id was free, then held (a hook) before
// mochi's takeover while another user's client connects with the same id,
// subscribes and has a QoS 1 message in flight, does not take that
// session over: the ownership is decided again under the id's takeover
// lock (mochi's Options.TakeoverCheck). The other user's live connection
// stays up and keeps its subscription and in-flight message, and the
// CONNECT is refused (0x85, 3.1.1 0x02); with TakeoverFresh and the other
// user's session offline by then, the new client starts an empty session
// (session present 0, no subscription, nothing resent) and the old one is
// dropped. Before, the takeover cut the live connection off and a
// persistent CONNECT was given the other user's subscriptions and
// in-flight messages (resent to it at once).
func TestTakeoverChecksOwnerUnderLock(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic readwrite #\nuser bob\ntopic readwrite #\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		v       byte
		policy  TakeoverPolicy
		offline bool // alice's session is offline when bob's CONNECT goes on
		code    byte // bob's CONNACK code
	}{
		{"refuse live v3", 4, TakeoverRefuse, false, 0x02},
		{"refuse live v5", 5, TakeoverRefuse, false, 0x85},
		{"fresh live v3", 4, TakeoverFresh, false, 0x02},
		{"fresh live v5", 5, TakeoverFresh, false, 0x85},
		{"refuse offline v3", 4, TakeoverRefuse, true, 0x02},
		{"refuse offline v5", 5, TakeoverRefuse, true, 0x85},
		{"fresh offline v3", 4, TakeoverFresh, true, 0x00},
		{"fresh offline v5", 5, TakeoverFresh, true, 0x00},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := auth.NewUsers()
			u.Set("alice", "alice-pw", 10)
			u.Set("bob", "bob-pw", 10)
			b := start(t, Options{Users: u, ACL: acl, Takeover: tc.policy})
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

			// Bob's CONNECT passes OnConnect (nobody holds the id) and is held.
			bob := dialOwner(t, b)
			bob.c.Write(connectUser(t, tc.v, "shared", "bob", false))
			select {
			case <-gate.entered:
			case <-time.After(testTimeout):
				t.Fatal("bob's CONNECT was not held")
			}

			// Alice takes the id meanwhile, subscribes, and leaves a QoS 1
			// message in flight (her own publish, delivered, not acked).
			alice := dialOwner(t, b)
			alice.c.Write(connectUser(t, tc.v, "shared", "alice", false))
			if _, body := alice.next(t, 2); len(body) < 2 || body[1] != 0 {
				t.Fatalf("alice's CONNACK % x, want 0", body)
			}
			alice.c.Write(ownerPacket(t, packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: tc.v,
				PacketID: 1, Filters: packets.Subscriptions{{Filter: "t", Qos: 1}},
			}))
			alice.next(t, 9) // SUBACK
			alice.c.Write(ownerPacket(t, packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, ProtocolVersion: tc.v,
				PacketID: 2, TopicName: "t", Payload: []byte("alice's"),
			}))
			for puback, delivery := false, false; !puback || !delivery; { // in either order
				switch h, _ := alice.next(t, 0); h >> 4 {
				case 3: // the delivery, left unacked
					delivery = true
				case 4:
					puback = true
				}
			}
			aliceCl, ok := b.server.Clients.Get("shared")
			if !ok || userOf(aliceCl) != "alice" {
				t.Fatal("alice's client is not filed for the id")
			}
			waitFor(t, "alice's delivery in flight", func() bool { return aliceCl.State.Inflight.Len() == 1 })
			if tc.offline {
				alice.c.Write([]byte{0xe0, 0x00})
				waitConnGone(t, b, "shared")
			}

			dropped := b.meter.dropped[dropSessionEnded].Load()
			close(gate.release)
			released = true
			h, body := bob.next(t, 2)
			if h != 0x20 || len(body) < 2 || body[1] != tc.code {
				t.Errorf("bob's CONNACK %#x % x, want code %#x", h, body, tc.code)
			}

			cur, ok := b.server.Clients.Get("shared")
			if !ok {
				t.Fatal("no client filed for the id")
			}
			if tc.code != 0 {
				// Refused: alice's session is untouched, bob's connection closes.
				if !tc.offline && aliceCl.Closed() {
					t.Error("alice's live connection was cut off")
				}
				if cur != aliceCl {
					t.Fatalf("the id's client is %q's, want alice's", userOf(cur))
				}
				if !tc.offline {
					alice.ping(t, "alice")
				}
				if n := aliceCl.State.Subscriptions.Len(); n != 1 {
					t.Errorf("alice's session has %d subscriptions, want 1", n)
				}
				if n := aliceCl.State.Inflight.Len(); n != 1 {
					t.Errorf("alice's session has %d messages in flight, want 1", n)
				}
				if _, ok := b.connWills.Load(cur); ok {
					t.Error("a will kept")
				}
				b.connWills.Range(func(k, _ any) bool {
					if userOf(k.(*mqtt.Client)) == "bob" {
						t.Error("bob's will kept")
					}
					return true
				})
				b.conns.Range(func(k, _ any) bool {
					if userOf(k.(*mqtt.Client)) == "bob" {
						t.Error("bob's connection filed")
					}
					return true
				})
				b.arriving.lock()
				if s := b.arriving.by["shared"]; s != nil && userOf(s.cl) == "bob" {
					t.Error("bob registered as the session's arriving client")
				}
				b.arriving.unlock()
				if _, _, err := readPacketBody(bob.r); err == nil {
					t.Error("bob's refused connection was not closed")
				}
			} else {
				// Fresh: bob starts an empty session; alice's is gone.
				if body[0]&1 != 0 {
					t.Error("bob's CONNACK says session present")
				}
				if userOf(cur) != "bob" {
					t.Fatalf("the id's client is %q's, want bob's", userOf(cur))
				}
				if n := cur.State.Subscriptions.Len(); n != 0 {
					t.Errorf("bob's session has %d subscriptions (alice's), want none", n)
				}
				if n := cur.State.Inflight.Len(); n != 0 {
					t.Errorf("bob's session has %d messages in flight (alice's), want none", n)
				}
				bob.ping(t, "bob") // nothing of alice's resent to bob
				if got := b.meter.dropped[dropSessionEnded].Load() - dropped; got != 1 {
					t.Errorf("session_ended grew by %d, want 1 (alice's delivery in flight)", got)
				}
				if n := aliceCl.State.Subscriptions.Len() + aliceCl.State.Inflight.Len(); n != 0 {
					t.Errorf("alice's dropped session keeps %d subscriptions and messages", n)
				}
			}

			// Everything ends cleanly: the id's holder comes back with a
			// clean session and leaves, and the broker holds nothing.
			holder := "alice"
			if tc.code == 0 {
				holder = "bob"
			}
			bob.c.Close()
			alice.c.Close()
			last := dialOwner(t, b)
			last.c.Write(connectUser(t, tc.v, "shared", holder, true))
			if _, body := last.next(t, 2); len(body) < 2 || body[1] != 0 {
				t.Fatalf("%s's clean reconnect: CONNACK % x, want 0", holder, body)
			}
			last.c.Write([]byte{0xe0, 0x00})
			waitLeftovers(t, b)
		})
	}
}
