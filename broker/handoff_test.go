package broker

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/broker/auth"
)

// The hand-off of a persistent session's queued QoS 1/2 messages when its
// connection ends (conn.finish): these tests stop the hand-off at the
// moments a slow writer, a takeover or a reconnect can leave it, with the
// broker's own locks and mochi's hooks as barriers, and check that the
// session gets every message, once, in order.

// awayQueued connects a raw MQTT 5 client id with a persistent session
// that accepts one message in flight, subscribed to q/# at QoS 1, and
// publishes q/1..q/3: q/1 is in flight, never acknowledged; q/2 and q/3
// wait for it (queued, or taken by the writer). It returns the raw
// connection, the broker's conn, its mochi client and the publisher.
func awayQueued(t *testing.T, b *Broker, id string) (net.Conn, *conn, *mqtt.Client, *paho5.Client) {
	t.Helper()
	return awayQueuedAs(t, b, "", id)
}

// awayQueuedAs is awayQueued as user (password user-pw; none if "").
func awayQueuedAs(t *testing.T, b *Broker, user, id string) (net.Conn, *conn, *mqtt.Client, *paho5.Client) {
	t.Helper()
	raw, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	connect := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: id},
		Properties:      packets.Properties{ReceiveMaximum: 1, SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true},
	}
	pcp := &paho5.Connect{CleanStart: true}
	if user != "" {
		connect.Connect.UsernameFlag, connect.Connect.Username = true, []byte(user)
		connect.Connect.PasswordFlag, connect.Connect.Password = true, []byte(user+"-pw")
		pcp.UsernameFlag, pcp.Username, pcp.PasswordFlag, pcp.Password = true, user, true, []byte(user+"-pw")
	}
	var buf bytes.Buffer
	if err := connect.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	body := []byte{0, 1, 0, 0, 3, 'q', '/', '#', 1}
	buf.Write(append(append([]byte{0x82}, varint(len(body))...), body...))
	raw.Write(buf.Bytes())
	raw.SetReadDeadline(time.Now().Add(testTimeout))
	r := bufio.NewReader(raw)
	for _, want := range []byte{0x20, 0x90} { // CONNACK, SUBACK
		if h, err := readPacket(r); err != nil || h != want {
			t.Fatalf("got packet %#x (%v), want %#x", h, err, want)
		}
	}
	pub := dial5(t, b, id+"-pub", paho5.ClientConfig{}, pcp)
	for i := 1; i <= 3; i++ {
		publishQ(t, pub, i)
	}
	if h, err := readPacket(r); err != nil || h&0xf0 != 0x30 {
		t.Fatalf("got packet %#x (%v), want a PUBLISH", h, err)
	}
	c := b.connOf(t, id)
	return raw, c, c.out.(*mqttOut).cl, pub
}

// publishQ publishes q/i at QoS 1: once it returns, the broker delivered
// it (queued, or held for the session).
func publishQ(t *testing.T, pub *paho5.Client, i int) {
	t.Helper()
	if _, err := pub.Publish(testCtx(t), &paho5.Publish{Topic: "q/" + itoa(i), QoS: 1, Payload: []byte(itoa(i))}); err != nil {
		t.Fatal(err)
	}
}

// resume connects id again, resuming its session, and records the topics
// it receives.
func resume(t *testing.T, b *Broker, id string) *inbox[string] {
	t.Helper()
	in, cfg, cp := resumeConfig(id)
	dial5(t, b, id, cfg, cp)
	return in
}

func resumeConfig(id string) (*inbox[string], paho5.ClientConfig, *paho5.Connect) {
	in := &inbox[string]{got: make(chan struct{}, 1)}
	expiry := uint32(300)
	cfg := paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { in.add(p.Packet.Topic); return true, nil },
	}}
	return in, cfg, &paho5.Connect{ClientID: id, KeepAlive: 30, CleanStart: false, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}}
}

// waitFor waits, with the test's deadline, until cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// wantOrder checks, once q/last arrived, that everything before it
// arrived once and in order: a message that arrives late, twice, or never
// fails without waiting out the test's deadline.
func wantOrder(t *testing.T, in *inbox[string], last int) {
	t.Helper()
	want := make([]string, last)
	for i := range want {
		want[i] = "q/" + itoa(i+1)
	}
	deadline := time.After(testTimeout)
	for {
		in.mu.Lock()
		got := append([]string(nil), in.msgs...)
		in.mu.Unlock()
		for _, g := range got {
			if g == want[last-1] {
				if !slices.Equal(got, want) {
					t.Fatalf("got %v, want %v", got, want)
				}
				return
			}
		}
		select {
		case <-in.got:
		case <-deadline:
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

// lockFor takes mu for a test, which can give it back early: the
// returned func, idempotent, also runs when the test ends.
func lockFor(t *testing.T, mu *sync.Mutex) func() {
	mu.Lock()
	var once sync.Once
	unlock := func() { once.Do(mu.Unlock) }
	t.Cleanup(unlock)
	return unlock
}

// waitDropped waits until the broker took in that cl's connection ended
// (dropConn): it was filed off and its queue closed.
func waitDropped(t *testing.T, b *Broker, c *conn, cl *mqtt.Client) {
	t.Helper()
	waitFor(t, "the end of the connection", func() bool { _, ok := b.conns.Load(cl); return !ok && c.q.isClosed() })
}

// parkedFor reports whether c's messages wait for the connection of a
// client taking its session over.
func parkedFor(b *Broker, c *conn) bool {
	c.endMu.Lock()
	defer c.endMu.Unlock()
	_, ok := b.parked.Load(c)
	return ok && c.parkedLocked()
}

// TestQueuedHandoffOrderOffline: a publish made while a persistent
// session's connection ends, before its writer has handed the queued
// messages on, is held for the session after them. It used to be held
// first (the connection left byID before it handed them on): on resume it
// came before older messages.
func TestQueuedHandoffOrderOffline(t *testing.T) {
	b := start(t, Options{})
	raw, c, cl, pub := awayQueued(t, b, "away")
	unlock := lockFor(t, &c.endMu) // the hand-off waits: a writer slow to stop
	raw.Close()
	waitDropped(t, b, c, cl)
	publishQ(t, pub, 4)
	unlock()
	waitClosed(t, "the hand-off", c.handOf().handed.wait())
	in := resume(t, b, "away")
	wantOrder(t, in, 4)
}

// TestQueuedHandoffOrderResumed: the session comes back (a reconnect, or a
// takeover) before the old connection has handed its queued messages on
// (its writer is slow to stop): a publish made meanwhile waits behind
// them. It used to reach the new connection first.
func TestQueuedHandoffOrderResumed(t *testing.T) {
	for _, takeover := range []bool{false, true} {
		t.Run(map[bool]string{false: "reconnect", true: "takeover"}[takeover], func(t *testing.T) {
			b := start(t, Options{})
			raw, c, cl, pub := awayQueued(t, b, "away")
			unlock := lockFor(t, &c.q.mu) // the old connection's writer cannot stop
			if !takeover {
				raw.Close()
				waitFor(t, "the end of the connection", func() bool { _, ok := b.conns.Load(cl); return !ok })
			}
			in := resume(t, b, "away")
			waitFor(t, "the new connection", func() bool { nc := b.connByID("away"); return nc != nil && nc != c })
			publishQ(t, pub, 4)
			in.wait(t, 1) // q/1, resent by mochi
			unlock()
			wantOrder(t, in, 4)
		})
	}
}

// blockHook stops mochi at one hook call for a client, until released.
type blockHook struct {
	mqtt.HookBase
	on      byte
	cl      func(*mqtt.Client) bool
	blocked chan struct{}
	release chan struct{}
	once    atomic.Bool
}

func (h *blockHook) ID() string           { return "test-block" }
func (h *blockHook) Provides(b byte) bool { return b == h.on }

func (h *blockHook) OnQosPublish(cl *mqtt.Client, _ packets.Packet, _ int64, _ int) { h.block(cl) }

func (h *blockHook) OnQosDropped(cl *mqtt.Client, _ packets.Packet) { h.block(cl) }

func (h *blockHook) block(cl *mqtt.Client) {
	if !h.cl(cl) || !h.once.CompareAndSwap(false, true) {
		return
	}
	close(h.blocked)
	<-h.release
}

func addBlockHook(t *testing.T, b *Broker, on byte, which func(*mqtt.Client) bool) *blockHook {
	t.Helper()
	h := &blockHook{on: on, cl: which, blocked: make(chan struct{}), release: make(chan struct{})}
	if err := b.server.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-h.release:
		default:
			close(h.release)
		}
	})
	return h
}

func waitClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// dialAsync connects id (resuming its session) on another goroutine:
// mochi may be held in a hook before its CONNACK.
func dialAsync(t *testing.T, b *Broker, id string, cfg paho5.ClientConfig, cp *paho5.Connect) <-chan *paho5.Client {
	done := make(chan *paho5.Client, 1)
	ctx := testCtx(t)
	go func() {
		conn, err := net.Dial("tcp", b.TCPAddr())
		if err != nil {
			t.Error(err)
			done <- nil
			return
		}
		cfg.Conn = conn
		c := paho5.NewClient(cfg)
		if _, err := c.Connect(ctx, cp); err != nil {
			t.Error(err)
			conn.Close()
			done <- nil
			return
		}
		done <- c
	}()
	return done
}

func waitDialed(t *testing.T, ch <-chan *paho5.Client) {
	t.Helper()
	c := <-ch // Connect ends with the test's deadline
	if c == nil {
		t.FailNow()
	}
	t.Cleanup(func() { c.Disconnect(&paho5.Disconnect{}) })
}

// TestQueuedHandoffResumeWindow: the old connection's messages are handed
// on while the resuming client is past mochi's resend of its in-flight
// messages but before the broker filed its connection. They used to be
// held in the new client's in-flight state, which nobody sends again while
// it is connected (and, with a small Receive Maximum, they block its
// writer): now they wait for its connection.
func TestQueuedHandoffResumeWindow(t *testing.T) {
	b := start(t, Options{})
	raw, c, old, pub := awayQueued(t, b, "away")
	h := addBlockHook(t, b, mqtt.OnQosPublish, func(cl *mqtt.Client) bool { return cl != old }) // in the resend
	unlock := lockFor(t, &c.q.mu)
	raw.Close()
	waitFor(t, "the end of the connection", func() bool { _, ok := b.conns.Load(old); return !ok })
	in, cfg, cp := resumeConfig("away")
	dialed := dialAsync(t, b, "away", cfg, cp)
	waitClosed(t, "the resend", h.blocked)
	unlock()
	waitFor(t, "the hand-off to wait", func() bool { return parkedFor(b, c) })
	close(h.release)
	waitDialed(t, dialed)
	waitFor(t, "the new connection", func() bool { nc := b.connByID("away"); return nc != nil && nc != c })
	publishQ(t, pub, 4)
	wantOrder(t, in, 4)
}

// TestQueuedHandoffTakeoverWindow: the old connection's messages are
// handed on while mochi moves a taken-over session to its new client:
// after it copied and cleared the old client's in-flight messages, before
// it filed the new client. They used to go to the old client, which nobody
// reads again: lost. Now they wait for the new client's connection.
func TestQueuedHandoffTakeoverWindow(t *testing.T) {
	b := start(t, Options{})
	_, c, old, pub := awayQueued(t, b, "away")
	h := addBlockHook(t, b, mqtt.OnQosDropped, func(cl *mqtt.Client) bool { return cl == old && cl.IsTakenOver() }) // ClearInflights
	unlock := lockFor(t, &c.q.mu)
	in, cfg, cp := resumeConfig("away")
	dialed := dialAsync(t, b, "away", cfg, cp)
	waitClosed(t, "the takeover", h.blocked)
	unlock()
	waitFor(t, "the hand-off to wait", func() bool { return parkedFor(b, c) })
	close(h.release)
	waitDialed(t, dialed)
	waitFor(t, "the new connection", func() bool { nc := b.connByID("away"); return nc != nil && nc != c })
	publishQ(t, pub, 4)
	wantOrder(t, in, 4)
}

// TestQueuedHandoffUnpark: a client that takes a session over and stops
// before it has a connection (its CONNACK could not be written, say)
// leaves the old connection's messages waiting for it; the $SYS ticker
// (unpark) hands them to the session, away, as any session's.
func TestQueuedHandoffUnpark(t *testing.T) {
	b := start(t, Options{})
	raw, c, old, _ := awayQueued(t, b, "away")
	unlock := lockFor(t, &c.q.mu)
	c.expect(old, false) // old stands for a client that will stop before its connection
	raw.Close()
	waitFor(t, "the end of the connection", func() bool { _, ok := b.conns.Load(old); return !ok })
	unlock()
	waitFor(t, "the hand-off to wait", func() bool { return parkedFor(b, c) || handedOff(c) })
	waitClosed(t, "the ticker's unpark", c.handOf().handed.wait())
	in := resume(t, b, "away")
	wantOrder(t, in, 3)
}

// TestQueuedHandoffOtherUser: alice's session ends with messages queued,
// and before they are handed on bob connects with the same client id
// (TakeoverFresh: he gets a new, empty session). Alice's messages are not
// his: he must not get them, whatever he may read.
func TestQueuedHandoffOtherUser(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic readwrite #\nuser bob\ntopic readwrite bob/#\n"))
	if err != nil {
		t.Fatal(err)
	}
	u := auth.NewUsers()
	u.Set("alice", "alice-pw", 10)
	u.Set("bob", "bob-pw", 10)
	b := start(t, Options{Users: u, ACL: acl, Takeover: TakeoverFresh})
	raw, c, cl, pub := awayQueuedAs(t, b, "alice", "shared")
	unlock := lockFor(t, &c.q.mu) // alice's writer is slow to stop
	raw.Close()
	waitFor(t, "the end of the connection", func() bool { _, ok := b.conns.Load(cl); return !ok })
	in, cfg, cp := resumeConfig("shared")
	cp.UsernameFlag, cp.Username, cp.PasswordFlag, cp.Password = true, "bob", true, []byte("bob-pw")
	bob := dial5(t, b, "shared", cfg, cp)
	if _, err := bob.Subscribe(testCtx(t), &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "bob/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	unlock()
	waitClosed(t, "the hand-off", c.handOf().handed.wait())
	publishQ(t, pub, 4) // alice's, and bob is not subscribed
	bobPub := dial5(t, b, "bob-pub", paho5.ClientConfig{}, &paho5.Connect{CleanStart: true, UsernameFlag: true, Username: "bob", PasswordFlag: true, Password: []byte("bob-pw")})
	if _, err := bobPub.Publish(testCtx(t), &paho5.Publish{Topic: "bob/x", QoS: 1}); err != nil {
		t.Fatal(err)
	}
	if got := in.wait(t, 1); len(got) != 1 || got[0] != "bob/x" {
		t.Fatalf("bob got %v, want only bob/x", got)
	}
}

// handedOff reports whether c's hand-off is over.
func handedOff(c *conn) bool {
	select {
	case <-c.handOf().handed.wait():
		return true
	default:
		return false
	}
}

// TestInboundIDFreesOutbound: the packet ids a client gives its own QoS
// 1/2 publishes, SUBSCRIBEs and UNSUBSCRIBEs and the ones the broker gives
// its deliveries are separate spaces [MQTT-2.2.1-2], but mochi keeps both
// in one in-flight map: a client's QoS 1 publish with the id of an
// unacknowledged delivery deleted the delivery (a persistent session
// never got it again), and a SUBSCRIBE with it was refused 0x91. Clients
// number from 1 as the broker does, so ids collide all the time
// (idSpaces).
func TestInboundIDFreesOutbound(t *testing.T) {
	b := start(t, Options{})
	raw, _, cl, pub := awayQueued(t, b, "away") // q/1 in flight, unacknowledged; q/2 and q/3 wait
	var id uint16
	for _, pk := range cl.State.Inflight.GetAll(false) {
		id = pk.PacketID
	}
	if id == 0 {
		t.Fatal("no delivery in flight")
	}
	r := bufio.NewReader(raw)
	send := func(h byte, body []byte) {
		t.Helper()
		if _, err := raw.Write(append(append([]byte{h}, varint(len(body))...), body...)); err != nil {
			t.Fatal(err)
		}
	}
	// want reads the next packet: its type, and its reason code (the
	// byte after the packet id and, for SUBACK, the properties).
	want := func(what string, typ byte, reasonAt int, reason byte) {
		t.Helper()
		h, body, err := readWhole(r)
		if err != nil || h&0xf0 != typ {
			t.Fatalf("%s: got packet %#x %x (%v), want %#x", what, h, body, err, typ)
		}
		if reasonAt >= 0 && (len(body) <= reasonAt || body[reasonAt] != reason) {
			t.Fatalf("%s: got %x, want reason %#x at %d", what, body, reason, reasonAt)
		}
	}
	hi, lo := byte(id>>8), byte(id)
	// The client's QoS 1 publish with the delivery's id: acknowledged,
	// and the delivery stays in flight (nothing else is sent: Receive
	// Maximum 1).
	send(0x32, append([]byte{0, 3, 'r', '/', 'x', hi, lo, 0}, "mine"...))
	want("PUBACK", 0x40, -1, 0)
	// A SUBSCRIBE with it is granted, not refused 0x91.
	send(0x82, []byte{hi, lo, 0, 0, 3, 's', '/', 'x', 1})
	want("SUBACK", 0x90, 3, 1)
	// A QoS 2 publish with it, and its PUBREL.
	send(0x34, append([]byte{0, 3, 'r', '/', 'y', hi, lo, 0}, "mine"...))
	want("PUBREC", 0x50, -1, 0)
	send(0x62, []byte{hi, lo})
	want("PUBCOMP", 0x70, -1, 0)
	// An UNSUBSCRIBE with it.
	send(0xa2, []byte{hi, lo, 0, 0, 3, 's', '/', 'x'})
	want("UNSUBACK", 0xb0, 3, 0)
	// (Put back once mochi processed the UNSUBSCRIBE, just after it wrote
	// the UNSUBACK.)
	waitFor(t, "the delivery in flight", func() bool { _, ok := cl.State.Inflight.Get(id); return ok })
	raw.Close()
	waitConnGone(t, b, "away")
	in := resume(t, b, "away")
	publishQ(t, pub, 4)
	wantOrder(t, in, 4)
}

// readWhole reads one packet: its first byte and its body.
func readWhole(r *bufio.Reader) (byte, []byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, shift := 0, 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n |= int(b&0x7f) << shift
		if b < 0x80 {
			break
		}
		shift += 7
	}
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	return h, body, err
}

// TestHeldWhileResuming: a message published to a persistent session
// while its client is coming back, after mochi resent the session's
// in-flight messages but before the broker filed the connection, finds no
// connection and is held in the new client's in-flight state, which
// nobody sends while it is connected (before the resend, while mochi
// copies the session, it is held in the old client: lost). The session's
// messages published then should wait in the new connection's queue.
func TestHeldWhileResuming(t *testing.T) {

	b := start(t, Options{})
	raw, _, old, pub := awayQueued(t, b, "away")
	raw.Close()
	waitConnGone(t, b, "away") // q/2 and q/3 were held in flight with q/1
	// Stop mochi in the resend.
	h := addBlockHook(t, b, mqtt.OnQosPublish, func(cl *mqtt.Client) bool { return cl != old })
	in, cfg, cp := resumeConfig("away")
	dialed := dialAsync(t, b, "away", cfg, cp)
	waitClosed(t, "the resend", h.blocked)
	publishQ(t, pub, 4)
	close(h.release)
	waitDialed(t, dialed)
	waitFor(t, "the new connection", func() bool { return b.connByID("away") != nil })
	publishQ(t, pub, 5)
	wantOrder(t, in, 5)
}

// TestPanickedSessionEnds: a connection whose goroutine panicked ends as
// mochi would have ended it: a clean session goes (it used to stay in
// mochi's clients and index, and QoS 1/2 messages were held for it, out
// of the offline budget of every session, for good), a persistent one
// keeps what its connection did not write.
func TestPanickedSessionEnds(t *testing.T) {
	for _, persistent := range []bool{false, true} {
		t.Run(map[bool]string{false: "clean", true: "persistent"}[persistent], func(t *testing.T) {
			b := start(t, Options{})
			raw, err := net.Dial("tcp", b.TCPAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			connect := packets.Packet{
				FixedHeader:     packets.FixedHeader{Type: packets.Connect},
				ProtocolVersion: 5,
				Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: !persistent, Keepalive: 30, ClientIdentifier: "evil"},
				Properties:      packets.Properties{ReceiveMaximum: 1},
			}
			if persistent {
				connect.Properties.SessionExpiryInterval, connect.Properties.SessionExpiryIntervalFlag = 300, true
			}
			var buf bytes.Buffer
			if err := connect.ConnectEncode(&buf); err != nil {
				t.Fatal(err)
			}
			body := []byte{0, 1, 0, 0, 3, 'p', '/', '#', 1}
			buf.Write(append(append([]byte{0x82}, varint(len(body))...), body...))
			raw.Write(buf.Bytes())
			raw.SetReadDeadline(time.Now().Add(testTimeout))
			r := bufio.NewReader(raw)
			for _, want := range []byte{0x20, 0x90} { // CONNACK, SUBACK
				if h, err := readPacket(r); err != nil || h != want {
					t.Fatalf("got packet %#x (%v), want %#x", h, err, want)
				}
			}
			pub := dial5(t, b, "pub", paho5.ClientConfig{}, nil)
			p := func(topic string) {
				t.Helper()
				if _, err := pub.Publish(testCtx(t), &paho5.Publish{Topic: topic, QoS: 1, Payload: []byte(topic)}); err != nil {
					t.Fatal(err)
				}
			}
			p("p/1") // in flight
			if h, err := readPacket(r); err != nil || h&0xf0 != 0x30 {
				t.Fatalf("got packet %#x (%v), want a PUBLISH", h, err)
			}
			p("p/2") // queued
			addPanicHook(t, b)
			raw.Write([]byte{0x82, 0x0d, 0x00, 0x02, 0x00, 0x00, 0x07, 'p', 'a', 'n', 'i', 'c', '/', '!', 0x00}) // panicHook panics on it
			waitFor(t, "the panic", func() bool { return b.stats.Panics.Load() == 1 })
			waitConnGone(t, b, "evil")
			p("p/3")
			if !persistent {
				// connPanicked removes it after it let go of the
				// connection (waitConnGone).
				waitFor(t, "the clean session gone", func() bool { _, ok := b.server.Clients.Get("evil"); return !ok })
				if n := atomic.LoadInt64(&b.server.Info.Inflight); n != 0 {
					t.Fatalf("Info.Inflight %d once the clean session went, want 0", n)
				}
				return
			}
			cl, ok := b.server.Clients.Get("evil")
			switch {
			case !ok:
				t.Fatal("the persistent session went")
			case cl.State.Inflight.Len() != 3:
				t.Fatalf("the persistent session holds %d messages, want p/1, p/2 and p/3", cl.State.Inflight.Len())
			}
		})
	}
}
