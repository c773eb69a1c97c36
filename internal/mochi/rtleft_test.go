package mqtt

// mote: red-team tests of README changes 9 and 10 (a CONNECT failing after
// Clients.Add ends its session; a SUBSCRIBE never files behind its
// client's takeover).

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// rtReadPacket reads one MQTT packet: its first byte and its body.
func rtReadPacket(r *bufio.Reader) (byte, []byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for {
		b, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mul
		if b&0x80 == 0 {
			break
		}
		mul *= 128
	}
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	return h, body, err
}

// TestMoteConnackFailKeepsInflight: a client resuming a persistent
// session (v5, Session Expiry 120 s) takes the old client's in-flight
// QoS 1 message and subscription, then its CONNACK cannot be written
// (change 9 ends its session): the session, now on the failed client,
// keeps both, and the next connection gets the message resent (DUP)
// after its CONNACK with Session Present.
func TestMoteConnackFailKeepsInflight(t *testing.T) {
	s := newServer()
	defer s.Close()

	old := s.NewClient(nil, "tcp", "zen", false)
	old.Properties.ProtocolVersion = 5
	old.Properties.EditProps().SessionExpiryInterval = 120
	old.Stop(nil)
	sub := packets.Subscription{Filter: "a/#", Qos: 1}
	s.Topics.Subscribe("zen", sub)
	old.State.Subscriptions.Add(sub.Filter, sub)
	old.State.Inflight.Set(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		PacketID:    7, TopicName: "a/b", Payload: []byte("kept"), Created: time.Now().Unix(),
	})
	s.Clients.Add(old)

	resume := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: "zen"},
		Properties:      packets.Properties{SessionExpiryInterval: 120, SessionExpiryIntervalFlag: true},
	}
	var buf bytes.Buffer
	if err := resume.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}

	// 1: the CONNACK cannot be written.
	r, w := net.Pipe()
	done := make(chan error, 1)
	go func() {
		serve, err := s.EstablishSession("tcp", r)
		if serve != nil {
			t.Error("the first resume was served")
		}
		done <- err
	}()
	if _, err := w.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	w.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the first resume did not fail")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("EstablishSession did not return")
	}
	cl, ok := s.Clients.Get("zen")
	if !ok || cl == old {
		t.Fatalf("the session's client: %v (old %v), want the failed one", ok, cl == old)
	}
	if _, ok := cl.State.Inflight.Get(7); !ok {
		t.Error("the failed client lost the session's in-flight message")
	}
	if _, ok := cl.State.Subscriptions.Get("a/#"); !ok {
		t.Error("the failed client lost the session's subscription")
	}

	// 2: the next connection resumes it.
	r2, w2 := net.Pipe()
	defer w2.Close()
	type result struct {
		serve func() error
		err   error
	}
	done2 := make(chan result, 1)
	go func() {
		serve, err := s.EstablishSession("tcp", r2)
		done2 <- result{serve, err}
	}()
	w2.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := w2.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(w2)
	h, body, err := rtReadPacket(br)
	if err != nil || h != 0x20 || len(body) < 2 {
		t.Fatalf("no CONNACK: %#x % x %v", h, body, err)
	}
	if body[0]&1 != 1 || body[1] != 0 {
		t.Errorf("CONNACK flags %#x reason %#x, want Session Present and success", body[0], body[1])
	}
	h, body, err = rtReadPacket(br)
	if err != nil || h&0xf0 != 0x30 {
		t.Fatalf("no PUBLISH resent: %#x % x %v", h, body, err)
	}
	if h&0x08 == 0 || !bytes.Contains(body, []byte("kept")) {
		t.Errorf("resent %#x % x, want the kept message with DUP", h, body)
	}
	var res result
	select {
	case res = <-done2:
	case <-time.After(10 * time.Second):
		t.Fatal("EstablishSession did not return")
	}
	if res.err != nil || res.serve == nil {
		t.Fatalf("the second resume: %v", res.err)
	}
	served := make(chan error, 1)
	go func() { served <- res.serve() }()
	w2.Close()
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return")
	}
}

// blockingSubscribed holds OnSubscribed until released, once entered.
type blockingSubscribed struct {
	HookBase
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (*blockingSubscribed) ID() string           { return "blocking-subscribed" }
func (*blockingSubscribed) Provides(b byte) bool { return b == OnSubscribed }
func (h *blockingSubscribed) OnSubscribed(*Client, packets.Packet, []byte) {
	h.once.Do(func() {
		close(h.entered)
		<-h.release
	})
}

// TestMoteExpiryWaitsForSubscribe: UnsubscribeClient (the broker's
// OnClientExpired, a session's end) on a client whose SUBSCRIBE is being
// filed waits for it, then unfiles what it filed: nothing is left in the
// index under the client id.
func TestMoteExpiryWaitsForSubscribe(t *testing.T) {
	s := newServer()
	defer s.Close()
	h := &blockingSubscribed{entered: make(chan struct{}), release: make(chan struct{})}
	if err := s.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	cl := s.NewClient(nil, "tcp", "exp", false)
	cl.Properties.ProtocolVersion = 5
	s.Clients.Add(cl)
	subDone := make(chan error, 1)
	go func() {
		subDone <- s.processSubscribe(cl, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Subscribe},
			PacketID:    1,
			Filters:     packets.Subscriptions{{Filter: "x/1"}, {Filter: "$share/g/x/2"}},
		})
	}()
	select {
	case <-h.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("OnSubscribed not reached")
	}
	cl.Stop(nil)
	unsubDone := make(chan struct{})
	go func() {
		s.UnsubscribeClient(cl)
		close(unsubDone)
	}()
	close(h.release)
	for _, c := range []chan struct{}{unsubDone} {
		select {
		case <-c:
		case <-time.After(10 * time.Second):
			t.Fatal("UnsubscribeClient did not return")
		}
	}
	select {
	case <-subDone:
	case <-time.After(10 * time.Second):
		t.Fatal("processSubscribe did not return")
	}
	if n := cl.State.Subscriptions.Len(); n != 0 {
		t.Errorf("%d subscriptions left on the client", n)
	}
	for _, topic := range []string{"x/1", "x/2"} {
		if subs := s.Topics.Subscribers(topic); len(subs.Subscriptions)+len(subs.Shared) != 0 {
			t.Errorf("%s: still filed: %+v", topic, subs)
		}
	}
}

// TestMoteUnsubscribeReportsClient: TopicsIndex.Unsubscribe reports
// whether the client's subscription existed, not whether another client
// still holds the filter: a client unsubscribed twice (a takeover's
// UnsubscribeClient and the old session's end) counts
// Info.Subscriptions down once.
func TestMoteUnsubscribeReportsClient(t *testing.T) {
	for _, filter := range []string{"a/b", "a/+", "$share/g/a/b", "$SHARE/g/a/#"} {
		x := NewTopicsIndex()
		x.Subscribe("x", packets.Subscription{Filter: filter})
		x.Subscribe("y", packets.Subscription{Filter: filter})
		if !x.Unsubscribe(filter, "x") {
			t.Errorf("%s: the first unsubscribe of x found nothing", filter)
		}
		if x.Unsubscribe(filter, "x") {
			t.Errorf("%s: the second unsubscribe of x found it again (y holds the filter)", filter)
		}
		if x.Unsubscribe(filter, "z") {
			t.Errorf("%s: z never subscribed, unsubscribe found it", filter)
		}
		if !x.Unsubscribe(filter, "y") {
			t.Errorf("%s: the unsubscribe of y found nothing", filter)
		}
	}

	s := newServer()
	defer s.Close()
	for _, id := range []string{"x", "y"} {
		cl := s.NewClient(nil, "tcp", id, false)
		cl.Properties.ProtocolVersion = 5
		s.Clients.Add(cl)
		_ = s.processSubscribe(cl, packets.Packet{ // filed whether or not the SUBACK is written
			FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: 1,
			Filters: packets.Subscriptions{{Filter: "t/1"}},
		})
	}
	x, _ := s.Clients.Get("x")
	before := x.State.Subscriptions.GetAll()
	s.UnsubscribeClient(x)
	for f := range before { // a second unsubscribe, as a concurrent takeover's
		if s.Topics.Unsubscribe(f, "x") {
			atomic.AddInt64(&s.Info.Subscriptions, -1)
		}
	}
	if n := atomic.LoadInt64(&s.Info.Subscriptions); n != 1 {
		t.Errorf("Info.Subscriptions = %d with y subscribed, want 1", n)
	}
}

// establishBarrier holds OnConnect until two connections are in it, then
// lets both go: their takeovers of one client id race. (It held
// OnSessionEstablish, which now runs under the id's takeover lock, change
// 24: the second connection waits for the lock there.)
type establishBarrier struct {
	HookBase
	mu      sync.Mutex
	n       int
	release chan struct{}
}

func (*establishBarrier) ID() string           { return "establish-barrier" }
func (*establishBarrier) Provides(b byte) bool { return b == OnConnect }
func (h *establishBarrier) OnConnect(*Client, packets.Packet) error {
	h.mu.Lock()
	h.n++
	if h.n%2 == 0 {
		close(h.release)
	}
	release := h.release
	h.mu.Unlock()
	<-release
	return nil
}

// TestMoteConcurrentTakeoversLeaveOne: two CONNECTs of one client id that
// reach the takeover together (a third connection holds the id) leave one
// connection open, the one filed in s.Clients: the other is taken over
// [MQTT-3.1.4-3]. Upstream let both look the old client up before either
// filed itself: both disconnected the old one, the second filed replaced
// the first in s.Clients, and the first stayed connected, its read loop
// running, under an id that was no longer its (the broker then handed its
// deliveries to the second: it got nothing more).
func TestMoteConcurrentTakeoversLeaveOne(t *testing.T) {
	s := newServer()
	defer s.Close()
	h := &establishBarrier{}
	if err := s.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	connect := func(id string) []byte {
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: 5,
			Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id},
		}
		var buf bytes.Buffer
		if err := pk.ConnectEncode(&buf); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	type conn struct {
		cl    *Client
		w     net.Conn
		serve func() error
	}
	for round := range 300 {
		old := s.NewClient(nil, "tcp", "dup", false)
		old.Properties.ProtocolVersion = 5
		s.Clients.Add(old)
		h.mu.Lock()
		h.release = make(chan struct{})
		h.mu.Unlock()
		conns := make(chan conn, 2)
		for range 2 {
			r, w := net.Pipe()
			go func() {
				go io.Copy(io.Discard, w) //nolint:errcheck // until closed
				cl := s.NewClient(r, "tcp", "", false)
				serve, _ := s.establishClient(cl, "tcp") // the one taken over may fail its CONNACK
				conns <- conn{cl, w, serve}
			}()
			if _, err := w.Write(connect("dup")); err != nil {
				t.Fatal(err)
			}
		}
		var got []conn
		for range 2 {
			select {
			case c := <-conns:
				got = append(got, c)
			case <-time.After(10 * time.Second):
				t.Fatal("a CONNECT did not complete")
			}
		}
		cur, _ := s.Clients.Get("dup")
		open := 0
		for _, c := range got {
			if !c.cl.Closed() {
				open++
				if c.cl != cur {
					t.Errorf("round %d: a connection not filed in Clients is still open", round)
				}
			}
		}
		if open != 1 {
			t.Errorf("round %d: %d connections of one client id open, want 1", round, open)
		}
		for _, c := range got {
			c.w.Close()
			if c.serve != nil {
				c.serve() //nolint:errcheck // ends with the pipe
			}
		}
		if t.Failed() {
			return
		}
	}
	s.takeovers.mu.Lock()
	defer s.takeovers.mu.Unlock()
	if n := len(s.takeovers.by); n != 0 {
		t.Errorf("%d client ids' takeover locks kept, want none", n)
	}
}

// unsubscribedGate holds the first OnUnsubscribed of client id "gone"
// (its session's end, UnsubscribeClient) until released.
type unsubscribedGate struct {
	HookBase
	held    atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (*unsubscribedGate) ID() string           { return "unsubscribed-gate" }
func (*unsubscribedGate) Provides(b byte) bool { return b == OnUnsubscribed }
func (h *unsubscribedGate) OnUnsubscribed(cl *Client, _ packets.Packet) {
	if cl.ID != "gone" || !h.held.CompareAndSwap(false, true) {
		return
	}
	close(h.entered)
	<-h.release
}

// TestMoteSessionEndSparesTakeover: a clean session that ends (its read
// loop, endSession) while a new connection of its client id takes the id
// over leaves the new client filed in s.Clients. Its endSession checked
// IsTakenOver, then unsubscribed and deleted the id from s.Clients: a
// takeover in between lost its own filing, and stayed connected where no
// later CONNECT of the id would find it.
func TestMoteSessionEndSparesTakeover(t *testing.T) {
	s := newServer()
	defer s.Close()
	h := &unsubscribedGate{entered: make(chan struct{}), release: make(chan struct{})}
	if err := s.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	connect := func() []byte {
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: 5,
			Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "gone"},
		}
		var buf bytes.Buffer
		if err := pk.ConnectEncode(&buf); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	type result struct {
		cl    *Client
		serve func() error
		err   error
	}
	establish := func() (net.Conn, chan result) {
		r, w := net.Pipe()
		done := make(chan result, 1)
		go func() {
			cl := s.NewClient(r, "tcp", "", false)
			serve, err := s.establishClient(cl, "tcp")
			done <- result{cl, serve, err}
		}()
		w.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := w.Write(connect()); err != nil {
			t.Fatal(err)
		}
		if h, _, err := rtReadPacket(bufio.NewReader(w)); err != nil || h != 0x20 {
			t.Fatalf("no CONNACK: %#x %v", h, err)
		}
		return w, done
	}
	w1, done1 := establish()
	first := <-done1
	if first.err != nil {
		t.Fatal(first.err)
	}
	served := make(chan error, 1)
	go func() { served <- first.serve() }()
	w1.Close() // the first session ends: endSession holds in OnUnsubscribed
	select {
	case <-h.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the first session's end did not unsubscribe")
	}

	// The second CONNECT takes the id over, or waits for the first
	// session's end to let the id go (its takeover lock).
	r2, w2 := net.Pipe()
	defer w2.Close()
	go io.Copy(io.Discard, w2) //nolint:errcheck // until closed
	done2 := make(chan result, 1)
	go func() {
		cl := s.NewClient(r2, "tcp", "", false)
		serve, err := s.establishClient(cl, "tcp")
		done2 <- result{cl, serve, err}
	}()
	if _, err := w2.Write(connect()); err != nil {
		t.Fatal(err)
	}
	var second result
	deadline := time.Now().Add(10 * time.Second)
	for got := false; !got; {
		select {
		case second = <-done2:
			got = true
		default:
			s.takeovers.mu.Lock()
			waiting := s.takeovers.by["gone"] != nil && s.takeovers.by["gone"].refs == 2
			s.takeovers.mu.Unlock()
			if waiting {
				got = true
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the second CONNECT neither completed nor waited")
			}
			runtime.Gosched()
		}
	}
	close(h.release)
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("the first session did not end")
	}
	if second.cl == nil {
		select {
		case second = <-done2:
		case <-time.After(10 * time.Second):
			t.Fatal("the second CONNECT did not complete")
		}
	}
	if second.err != nil {
		t.Fatal(second.err)
	}
	if cur, ok := s.Clients.Get("gone"); !ok || cur != second.cl {
		t.Errorf("s.Clients holds %v (found %v) for the id, want the second client, connected (closed %v)", cur != nil, ok, second.cl.Closed())
	}
	served2 := make(chan error, 1)
	go func() { served2 <- second.serve() }() // its end lets s.Close go
	w2.Close()
	select {
	case <-served2:
	case <-time.After(10 * time.Second):
		t.Fatal("the second session did not end")
	}
}

// establishCounter counts OnSessionEstablish calls.
type establishCounter struct {
	HookBase
	n atomic.Int32
}

func (*establishCounter) ID() string                                   { return "establish-counter" }
func (*establishCounter) Provides(b byte) bool                         { return b == OnSessionEstablish }
func (h *establishCounter) OnSessionEstablish(*Client, packets.Packet) { h.n.Add(1) }

// TestMoteTakeoverCheck: Options.TakeoverCheck (change 24), asked under
// the id's lock about the client filed for the id, decides the takeover
// of a CONNECT resuming its session (Clean Start 0): inherited (the old
// client's subscription copied, session present), fresh (nothing copied,
// the old session abandoned), or refused (CONNACK with the check's code,
// mapped for 3.1.1; the old client untouched and still filed, the new
// one filed nowhere, OnSessionEstablish not called).
func TestMoteTakeoverCheck(t *testing.T) {
	for _, tc := range []struct {
		name      string
		v         byte
		d         Takeover
		code      byte // CONNACK reason code
		present   bool
		copied    bool // the old client's subscription is the new one's
		establish int32
	}{
		{"inherit v5", 5, Takeover{}, 0, true, true, 1},
		{"fresh v5", 5, Takeover{Fresh: true}, 0, false, false, 1},
		{"fresh v3", 4, Takeover{Fresh: true}, 0, false, false, 1},
		{"refuse v5", 5, Takeover{Refuse: true, Code: packets.ErrClientIdentifierNotValid}, 0x85, false, false, 0},
		{"refuse v3", 4, Takeover{Refuse: true, Code: packets.ErrClientIdentifierNotValid}, 0x02, false, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer()
			defer s.Close()
			var asked atomic.Int32
			var oldSeen *Client
			s.Options.TakeoverCheck = func(old, cl *Client, _ packets.Packet) Takeover {
				asked.Add(1)
				oldSeen = old
				return tc.d
			}
			h := new(establishCounter)
			if err := s.AddHook(h, nil); err != nil {
				t.Fatal(err)
			}
			old := s.NewClient(nil, "tcp", "dup", false)
			old.Properties.ProtocolVersion = 5
			old.Properties.EditProps().SessionExpiryInterval = 300
			old.Stop(nil) // offline
			s.Clients.Add(old)
			old.State.Subscriptions.Add("t", packets.Subscription{Filter: "t", Qos: 1})
			s.Topics.Subscribe("dup", packets.Subscription{Filter: "t", Qos: 1})

			pk := packets.Packet{
				FixedHeader:     packets.FixedHeader{Type: packets.Connect},
				ProtocolVersion: tc.v,
				Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: "dup"},
			}
			if tc.v == 5 {
				pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 300, true
			}
			var buf bytes.Buffer
			if err := pk.ConnectEncode(&buf); err != nil {
				t.Fatal(err)
			}
			r, w := net.Pipe()
			defer w.Close()
			cl := s.NewClient(r, "tcp", "", false)
			type result struct {
				serve func() error
				err   error
			}
			done := make(chan result, 1)
			go func() {
				serve, err := s.establishClient(cl, "tcp")
				done <- result{serve, err}
			}()
			if _, err := w.Write(buf.Bytes()); err != nil {
				t.Fatal(err)
			}
			rd := bufio.NewReader(w)
			hd, body, err := rtReadPacket(rd)
			if err != nil || hd != 0x20 || len(body) < 2 {
				t.Fatalf("got %#x % x %v, want a CONNACK", hd, body, err)
			}
			if body[1] != tc.code || (body[0]&1 == 1) != tc.present {
				t.Errorf("CONNACK % x, want code %#x, session present %v", body, tc.code, tc.present)
			}
			var res result
			select {
			case res = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("establishClient did not return")
			}
			if asked.Load() != 1 || oldSeen != old {
				t.Errorf("the check was asked %d times (old %v), want once about the old client", asked.Load(), oldSeen == old)
			}
			if n := h.n.Load(); n != tc.establish {
				t.Errorf("OnSessionEstablish called %d times, want %d", n, tc.establish)
			}
			cur, _ := s.Clients.Get("dup")
			if tc.d.Refuse {
				if res.serve != nil || res.err == nil {
					t.Errorf("serve %v, err %v: want refused", res.serve != nil, res.err)
				}
				if cur != old || old.IsTakenOver() || old.State.Subscriptions.Len() != 1 {
					t.Errorf("the old client was touched: filed %v, taken over %v, %d subscriptions", cur == old, old.IsTakenOver(), old.State.Subscriptions.Len())
				}
				if subs := s.Topics.Subscribers("t"); len(subs.Subscriptions) != 1 {
					t.Errorf("%d subscribers of t, want the old client's", len(subs.Subscriptions))
				}
				if !cl.Closed() {
					t.Error("the refused client is not closed")
				}
				return
			}
			if res.err != nil || res.serve == nil {
				t.Fatalf("serve %v, err %v: want established", res.serve != nil, res.err)
			}
			if cur != cl {
				t.Error("the new client is not filed")
			}
			if got := cl.State.Subscriptions.Len() == 1; got != tc.copied {
				t.Errorf("the old subscription copied: %v, want %v", got, tc.copied)
			}
			want := 0
			if tc.copied {
				want = 1
			}
			if subs := s.Topics.Subscribers("t"); len(subs.Subscriptions) != want {
				t.Errorf("%d subscribers of t in the index, want %d", len(subs.Subscriptions), want)
			}
			w.Close()
			res.serve() //nolint:errcheck // ends with the pipe
		})
	}
}
