package mqtt

// mote: tests of the changes Mote made to mochi (README.md, "Changes").

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/internal/mochi/system"
)

// moteSession accepts one TCP connection on 127.0.0.1 and runs
// EstablishSession on it; the client side is returned with the result.
func moteSession(t *testing.T, s *Server, connect []byte) (c net.Conn, r *bufio.Reader, serve func() error, err error) {
	t.Helper()
	ln, lerr := net.Listen("tcp", "127.0.0.1:0")
	if lerr != nil {
		t.Fatal(lerr)
	}
	defer ln.Close()
	type result struct {
		serve func() error
		err   error
	}
	done := make(chan result, 1)
	go func() {
		sc, aerr := ln.Accept()
		if aerr != nil {
			done <- result{err: aerr}
			return
		}
		serve, err := s.EstablishSession("tcp", sc)
		done <- result{serve, err}
	}()
	c, lerr = net.Dial("tcp", ln.Addr().String())
	if lerr != nil {
		t.Fatal(lerr)
	}
	t.Cleanup(func() { c.Close() })
	deadline := time.Now().Add(10 * time.Second)
	c.SetDeadline(deadline)
	if _, werr := c.Write(connect); werr != nil {
		t.Fatal(werr)
	}
	select {
	case res := <-done:
		return c, bufio.NewReader(c), res.serve, res.err
	case <-time.After(time.Until(deadline)):
		t.Fatal("EstablishSession did not return")
	}
	return
}

// moteReadPacket reads one packet: its first byte and its body.
func moteReadPacket(r *bufio.Reader) (byte, []byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, shift := 0, 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			return h, nil, err
		}
		n |= int(b&0x7f) << shift
		if b&0x80 == 0 {
			break
		}
		shift += 7
	}
	body := make([]byte, n)
	_, err = io.ReadFull(r, body)
	return h, body, err
}

// runServe calls serve on a goroutine of its own, as Mote does, and
// returns its result.
func runServe(serve func() error) <-chan error {
	done := make(chan error, 1)
	go func() { done <- serve() }()
	return done
}

func waitServe(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return after the connection closed")
	}
	return nil
}

// TestMoteWriteLoopOnDemand: an attached client has no WriteLoop until a
// packet is queued to its outbound channel; the first one starts it and
// is written.
func TestMoteWriteLoopOnDemand(t *testing.T) {
	s := newServer()
	defer s.Close()
	c, r, serve, err := moteSession(t, s, packets.TPacketData[packets.Connect].Get(packets.TConnectClean).RawBytes)
	if err != nil {
		t.Fatal(err)
	}
	if h, _, err := moteReadPacket(r); err != nil || h != 0x20 {
		t.Fatalf("no CONNACK: %#x %v", h, err)
	}
	id := packets.TPacketData[packets.Connect].Get(packets.TConnectClean).Packet.Connect.ClientIdentifier
	cl, ok := s.Clients.Get(id)
	if !ok {
		t.Fatalf("client %q not attached", id)
	}
	done := runServe(serve)
	if cl.State.flag(flagWriting) {
		t.Fatal("a WriteLoop runs before anything was queued")
	}
	if !s.Topics.Subscribe(cl.ID, packets.Subscription{Filter: "a/b"}) {
		t.Fatal("subscribe")
	}
	s.publishToSubscribers(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: []byte("x")})
	h, body, err := moteReadPacket(r)
	if err != nil || h&0xf0 != 0x30 || string(body[len(body)-1:]) != "x" {
		t.Fatalf("got %#x % x %v, want the PUBLISH", h, body, err)
	}
	if !cl.State.flag(flagWriting) {
		t.Error("the PUBLISH was written but no WriteLoop is marked started")
	}
	c.Close()
	waitServe(t, done)
	if n := atomic.LoadInt64(&s.Info.ClientsConnected); n != 0 {
		t.Errorf("%d clients connected after serve returned", n)
	}
	s.Listeners.ClientsWg.Wait() // serve did its Done
}

// TestMoteEstablishSessionFails: a connection that fails before its
// session is established returns no serve, is stopped, and leaves the
// listeners' ClientsWg and the connected count as they were.
func TestMoteEstablishSessionFails(t *testing.T) {
	s := newServer()
	defer s.Close()
	_, r, serve, err := moteSession(t, s, packets.TPacketData[packets.Pingreq].Get(packets.TPingreq).RawBytes)
	if err == nil || serve != nil {
		t.Fatalf("serve %v, err %v: want an error for a first packet not CONNECT", serve != nil, err)
	}
	if !errors.Is(err, packets.ErrProtocolViolationRequireFirstConnect) {
		t.Errorf("err %v", err)
	}
	if _, err := r.ReadByte(); err == nil {
		t.Error("connection still open")
	}
	if n := atomic.LoadInt64(&s.Info.ClientsConnected); n != 0 {
		t.Errorf("%d clients connected", n)
	}
	s.Listeners.ClientsWg.Wait()
}

// TestMoteMalformedSubscribe: an MQTT 5 SUBSCRIBE whose filter lacks its
// options byte made SubscribeDecode panic; now the client gets DISCONNECT
// 0x81 and the connection ends with ErrMalformedQos.
func TestMoteMalformedSubscribe(t *testing.T) {
	s := newServer()
	defer s.Close()
	c, r, serve, err := moteSession(t, s, packets.TPacketData[packets.Connect].Get(packets.TConnectMqtt5).RawBytes)
	if err != nil {
		t.Fatal(err)
	}
	if h, _, err := moteReadPacket(r); err != nil || h != 0x20 {
		t.Fatalf("no CONNACK: %#x %v", h, err)
	}
	done := runServe(serve)
	c.Write([]byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61})
	h, body, err := moteReadPacket(r)
	if err != nil || h != 0xE0 || len(body) == 0 || body[0] != 0x81 {
		t.Fatalf("got %#x % x %v, want DISCONNECT 0x81", h, body, err)
	}
	if err := waitServe(t, done); !errors.Is(err, packets.ErrMalformedQos) {
		t.Errorf("serve returned %v, want %v", err, packets.ErrMalformedQos)
	}
}

// moteReadPublishes reads n packets with ReadFixedHeader and ReadPacket from
// a client whose connection holds data.
func moteReadPublishes(t *testing.T, data []byte, n int) []packets.Packet {
	t.Helper()
	cl, _, _ := newTestClient()
	defer cl.Stop(errClientStop)
	cl.Net.bconn = newConnReader(bytes.NewReader(data), 4096)
	var pks []packets.Packet
	for range n {
		var fh packets.FixedHeader
		if err := cl.ReadFixedHeader(&fh); err != nil {
			t.Fatal(err)
		}
		pk, err := cl.ReadPacket(&fh)
		if err != nil {
			t.Fatal(err)
		}
		pks = append(pks, pk)
	}
	return pks
}

// moteEncodePublish is a QoS 0 MQTT 3.1.1 PUBLISH of payload to topic.
func moteEncodePublish(t *testing.T, topic, payload string) []byte {
	t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: topic, Payload: []byte(payload), ProtocolVersion: 4}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestReadPacketOwnsBody: ReadPacket decodes the body it reads without a
// second copy (README.md, change 7), and a packet it returned still holds
// its own topic and payload (both alias the body it was decoded from)
// after the next packets are read from the same
// connection, through the same bufio.Reader (reading a body the same size
// and a larger one, which would reuse the buffer if the body were shared).
func TestReadPacketOwnsBody(t *testing.T) {
	data := append(moteEncodePublish(t, "a/b", "first-payload"), moteEncodePublish(t, "c/d", "other-payload")...)
	data = append(data, moteEncodePublish(t, "e/f/g/h", "a longer payload than both")...)
	pks := moteReadPublishes(t, data, 3)
	for i, want := range []struct{ topic, payload string }{
		{"a/b", "first-payload"}, {"c/d", "other-payload"}, {"e/f/g/h", "a longer payload than both"},
	} {
		if pks[i].TopicName != want.topic || string(pks[i].Payload) != want.payload {
			t.Errorf("packet %d: topic %q payload %q, want %q %q", i, pks[i].TopicName, pks[i].Payload, want.topic, want.payload)
		}
	}
	if &pks[0].Payload[0] == &pks[1].Payload[0] {
		t.Error("two packets share a payload buffer")
	}
}

// TestReadPacketPublishAllocs: reading a QoS 0 PUBLISH allocates its body
// once, nothing more (its topic and payload alias the body: decodeString is
// unsafe.String); upstream allocated twice, the body and its second copy.
func TestReadPacketPublishAllocs(t *testing.T) {
	one := moteEncodePublish(t, "a/b", "0123456789")
	const runs = 100
	// AllocsPerRun counts the allocations of the whole process, and
	// goroutines left by earlier tests (with -count) allocate too: under
	// load it saw 8 and 93 a run. Others only add to the count, so the
	// fewest of a few measurements is ReadPacket's own.
	const tries = 5
	data := bytes.Repeat(one, tries*(runs+1))
	cl, _, _ := newTestClient()
	defer cl.Stop(errClientStop)
	cl.Net.bconn = newConnReader(bytes.NewReader(data), len(data))
	if _, err := cl.Net.bconn.Peek(len(data)); err != nil {
		t.Fatal(err)
	}
	allocs := float64(-1)
	for i := 0; i < tries && allocs != 1; i++ {
		a := testing.AllocsPerRun(runs, func() {
			var fh packets.FixedHeader
			if err := cl.ReadFixedHeader(&fh); err != nil {
				t.Fatal(err)
			}
			if _, err := cl.ReadPacket(&fh); err != nil {
				t.Fatal(err)
			}
		})
		if allocs < 0 || a < allocs {
			allocs = a
		}
	}
	t.Logf("%.1f allocations", allocs)
	if allocs > 1 {
		t.Errorf("ReadPacket of a PUBLISH: %.1f allocations, want 1 (the body)", allocs)
	}
}

// BenchmarkReadPacketPublish: mochi's read of one QoS 0 PUBLISH (fixed
// header, body, decode, the OnPacketRead dispatch with no hooks) from
// memory, no syscalls: the share of the read path that is mochi's code.
func BenchmarkReadPacketPublish(b *testing.B) {
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "bench/t", Payload: []byte("0123456789"), ProtocolVersion: 4}
	if err := pk.PublishEncode(&buf); err != nil {
		b.Fatal(err)
	}
	one := buf.Bytes()
	cl, _, _ := newTestClient()
	defer cl.Stop(errClientStop)
	src := bytes.NewReader(nil)
	data := bytes.Repeat(one, 1024)
	cl.Net.bconn = newConnReader(src, 4096)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if n%1024 == 0 {
			src.Reset(data)
		}
		n++
		var fh packets.FixedHeader
		if err := cl.ReadFixedHeader(&fh); err != nil {
			b.Fatal(err)
		}
		if _, err := cl.ReadPacket(&fh); err != nil {
			b.Fatal(err)
		}
	}
}

// mote: waitFor and waitWritten replace the fixed sleeps (100 µs – 50 ms)
// by which upstream's tests waited for another goroutine: under load the
// goroutine had not run yet and the test read an empty stream (README.md,
// "Changes", tests). Both are safe to call from any goroutine: on timeout
// they report with t.Errorf and return, so the caller goes on to close its
// pipe and the reader's assertions fail rather than hang.

// waitDeadline bounds waitFor: far beyond any wait a loaded machine makes,
// well inside go test's own timeout.
const waitDeadline = 10 * time.Second

// waitFor polls cond until it holds or waitDeadline passes.
func waitFor(t testing.TB, what string, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(waitDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Errorf("waited %v for %s", waitDeadline, what)
			return false
		}
		time.Sleep(50 * time.Microsecond)
	}
	return true
}

// waitWritten waits until every packet queued to cl's outbound channel has
// been written: publishToClient counts a packet in outboundQty after
// queueing it and WriteLoop counts it out after WritePacket returned, which
// on a net.Pipe means the reader has taken all its bytes. Call it after the
// call that queues has returned.
func waitWritten(t testing.TB, cl *Client) bool {
	t.Helper()
	return waitFor(t, "client "+cl.ID+"'s queued packets to be written", func() bool {
		return atomic.LoadInt32(&cl.State.outboundQty) == 0
	})
}

// disconnectCounter counts OnDisconnect calls.
type disconnectCounter struct {
	HookBase
	n atomic.Int32
}

func (*disconnectCounter) ID() string           { return "disconnect-counter" }
func (*disconnectCounter) Provides(b byte) bool { return b == OnDisconnect }
func (h *disconnectCounter) OnDisconnect(*Client, error, bool) {
	h.n.Add(1)
}

// TestMoteConnackFailEndsSession: a connection whose CONNACK cannot be
// written (its client closed it after the CONNECT) fails after its client
// was filed in s.Clients: its session ends as a read loop's end would
// (endSession): OnDisconnect runs once and a clean session leaves
// s.Clients. Upstream left the client there, closed, for
// MaximumSessionExpiryInterval, without OnDisconnect.
func TestMoteConnackFailEndsSession(t *testing.T) {
	v5Clean := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "zen"},
	}
	var buf bytes.Buffer
	if err := v5Clean.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		pk    []byte
		filed int // clients left in s.Clients: a session that outlives its connection stays, closed
	}{
		{"v3 clean", packets.TPacketData[packets.Connect].Get(packets.TConnectClean).RawBytes, 0},
		{"v5 clean", buf.Bytes(), 0},
		{"v5 session expiry 120 s", packets.TPacketData[packets.Connect].Get(packets.TConnectMqtt5).RawBytes, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer()
			defer s.Close()
			h := new(disconnectCounter)
			if err := s.AddHook(h, nil); err != nil {
				t.Fatal(err)
			}
			r, w := net.Pipe()
			defer r.Close()
			type result struct {
				serve func() error
				err   error
			}
			done := make(chan result, 1)
			go func() {
				serve, err := s.EstablishSession("tcp", r)
				done <- result{serve, err}
			}()
			if _, err := w.Write(tc.pk); err != nil { // returns once the CONNECT is read
				t.Fatal(err)
			}
			w.Close()
			var res result
			select {
			case res = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("EstablishSession did not return")
			}
			if res.serve != nil || !errors.Is(res.err, io.ErrClosedPipe) {
				t.Fatalf("serve %v, err %v: want the CONNACK write's error", res.serve != nil, res.err)
			}
			if n := h.n.Load(); n != 1 {
				t.Errorf("OnDisconnect ran %d times, want 1", n)
			}
			if n := s.Clients.Len(); n != tc.filed {
				t.Errorf("%d clients filed, want %d", n, tc.filed)
			}
			for _, cl := range s.Clients.GetAll() {
				if !cl.Closed() || cl.StopTime() == 0 {
					t.Errorf("the kept session's client is not stopped")
				}
			}
			if n := atomic.LoadInt64(&s.Info.ClientsConnected); n != 0 {
				t.Errorf("%d clients connected", n)
			}
			s.Listeners.ClientsWg.Wait()
		})
	}
}

// deadlineConn counts the deadlines set on it and keeps the last.
type deadlineConn struct {
	net.Conn
	sets int
	last time.Time
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.sets++
	c.last = t
	return nil
}

// SetDeadline would move the write deadline too: refreshDeadline must not.
func (c *deadlineConn) SetDeadline(t time.Time) error {
	panic("SetDeadline: refreshDeadline moves the read deadline only")
}

// TestRefreshDeadlineCoalesced: mote change 21. The read deadline is set
// once for many packets, never earlier than keepalive × 1.5 from the
// latest packet and at most deadlineSlack later; keep-alive 0 clears it
// once.
func TestRefreshDeadlineCoalesced(t *testing.T) {
	cl, r, w := newTestClient()
	defer r.Close()
	defer w.Close()
	dc := &deadlineConn{Conn: w}
	cl.Net.Conn = dc

	for range 1000 {
		before := time.Now()
		cl.refreshDeadline(10)
		if want := before.Add(15 * time.Second); dc.last.Before(want) {
			t.Fatalf("deadline %v is before keepalive × 1.5 from the packet (%v)", dc.last, want)
		}
	}
	if dc.last.After(time.Now().Add(15*time.Second + deadlineSlack)) {
		t.Fatalf("deadline %v is more than %v past keepalive × 1.5", dc.last, deadlineSlack)
	}
	if dc.sets > 2 { // once, twice if the loop took over a second
		t.Fatalf("%d deadlines set for 1000 packets, want 1", dc.sets)
	}

	// Once it is nearer than keepalive × 1.5 (as if the time had passed:
	// change 97's test by the monotonic clock), it is moved again.
	sets := dc.sets
	cl.Net.deadline = time.Now().Add(15*time.Second - time.Millisecond)
	before := time.Now()
	cl.refreshDeadline(10)
	if dc.sets != sets+1 || dc.last.Before(before.Add(15*time.Second)) {
		t.Fatalf("deadline nearer than keep-alive × 1.5: %d more set, last %v from now; want one, at least 15s", dc.sets-sets, time.Until(dc.last))
	}
	cl.Net.deadline = time.Now().Add(15*time.Second + 500*time.Millisecond)
	cl.refreshDeadline(10)
	if dc.sets != sets+1 {
		t.Fatalf("deadline past keep-alive × 1.5 moved again: %d more set, want none", dc.sets-sets-1)
	}

	sets = dc.sets
	cl.refreshDeadline(0)
	cl.refreshDeadline(0)
	if dc.sets != sets+1 || !dc.last.IsZero() {
		t.Fatalf("keep-alive 0: %d more deadlines set, last %v; want one, zero", dc.sets-sets, dc.last)
	}
	cl.refreshDeadline(10)
	if dc.sets != sets+2 || dc.last.IsZero() {
		t.Fatalf("keep-alive 10 after 0: %d more deadlines set, last %v; want two, not zero", dc.sets-sets, dc.last)
	}
}

// mote: pkp is a copy of pk for processPacket, processPublish and
// receivePacket, which take the packet by pointer and change it in place
// (change 25): the golden table's packets (packets.TPacketData) stay as
// they are for the tests after.
func pkp(pk packets.Packet) *packets.Packet { return &pk }

// mote: ptrHook is a hook for change 25's tests: it renames a PUBLISH's
// topic in OnPacketRead and OnPublish (in place), or refuses it with err,
// and keeps a copy of what OnPacketProcessed and OnPublished see.
type ptrHook struct {
	HookBase
	id        string
	rename    string // set the topic to this, if not empty
	err       error  // returned by OnPacketRead and OnPublish, if not nil
	processed []packets.Packet
	published []packets.Packet
}

func (h *ptrHook) ID() string { return h.id }
func (h *ptrHook) Provides(b byte) bool {
	switch b {
	case OnPacketRead, OnPublish, OnPacketProcessed, OnPublished, OnACLCheck, OnConnectAuthenticate:
		return true
	}
	return false
}
func (h *ptrHook) OnACLCheck(*Client, string, bool) bool              { return true }
func (h *ptrHook) OnConnectAuthenticate(*Client, packets.Packet) bool { return true }
func (h *ptrHook) OnPacketProcessed(_ *Client, pk *packets.Packet, _ error) {
	h.processed = append(h.processed, *pk)
}
func (h *ptrHook) OnPublished(_ *Client, pk *packets.Packet) { h.published = append(h.published, *pk) }

func (h *ptrHook) change(pk *packets.Packet) error {
	if h.err != nil {
		return h.err
	}
	if h.rename != "" {
		pk.TopicName = h.rename
	}
	return nil
}

func (h *ptrHook) OnPacketRead(_ *Client, pk *packets.Packet) error { return h.change(pk) }
func (h *ptrHook) OnPublish(_ *Client, pk *packets.Packet) error    { return h.change(pk) }

// TestMoteHookChainsByPointer: the OnPacketRead and OnPublish chains, now
// by pointer, end as upstream's by value did: each hook sees the changes of
// those before it, the caller sees every change when none refuses, and the
// packet as it came when one does (with two hooks: the first's change is
// undone).
func TestMoteHookChainsByPointer(t *testing.T) {
	refuse := []error{packets.ErrRejectPacket, packets.CodeSuccessIgnore, errTestHook}
	for _, tc := range []struct {
		name      string
		second    error
		read      bool // the OnPacketRead chain, else OnPublish
		wantErr   bool
		wantTopic string
	}{
		{name: "read, none refuses", read: true, wantTopic: "second"},
		{name: "read, second rejects", read: true, second: refuse[0], wantErr: true, wantTopic: "a/b"},
		{name: "read, second fails (passed over)", read: true, second: refuse[2], wantTopic: "first"},
		{name: "publish, none refuses", wantTopic: "second"},
		{name: "publish, second rejects", second: refuse[0], wantErr: true, wantTopic: "a/b"},
		{name: "publish, second ignores", second: refuse[1], wantErr: true, wantTopic: "a/b"},
		{name: "publish, second fails", second: refuse[2], wantErr: true, wantTopic: "a/b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &Hooks{Log: logger}
			if err := h.Add(&ptrHook{id: "first", rename: "first"}, nil); err != nil {
				t.Fatal(err)
			}
			second := &ptrHook{id: "second", rename: "second", err: tc.second}
			if err := h.Add(second, nil); err != nil {
				t.Fatal(err)
			}
			pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b"}
			var err error
			if tc.read {
				err = h.OnPacketRead(new(Client), pk)
			} else {
				err = h.OnPublish(new(Client), pk)
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want an error: %v", err, tc.wantErr)
			}
			if pk.TopicName != tc.wantTopic {
				t.Errorf("topic %q after the chain, want %q", pk.TopicName, tc.wantTopic)
			}
		})
	}
}

// TestMotePacketsByPointerSeenAsBefore: through the read loop, what
// processPublish changes in place reaches what follows it (OnPublished sees
// the origin and time it set), while OnPacketProcessed sees the packet as
// read, as upstream's copies did; and each packet is decoded into a zero
// Packet, though the Packet is the pool's (change 25). Fails without
// processPacket's copy or packetPool.put's clearing.
func TestMotePacketsByPointerSeenAsBefore(t *testing.T) {
	s := New(&Options{Logger: logger})
	h := &ptrHook{id: "ptr"}
	if err := s.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	r, w := net.Pipe()
	defer r.Close()
	cl := s.NewClient(r, "testing", "ptr-client", false)
	cl.Properties.ProtocolVersion = 5
	cl.State.Inflight.ResetReceiveQuota(10) // as an established session's
	var raw bytes.Buffer
	first := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: []byte("one"), ProtocolVersion: 5}
	first.Properties.ContentType = "text/plain"
	second := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "c/d", Payload: []byte("two"), ProtocolVersion: 5}
	for _, pk := range []packets.Packet{first, second} {
		if err := pk.PublishEncode(&raw); err != nil {
			t.Fatal(err)
		}
	}
	go func() {
		_, _ = w.Write(raw.Bytes())
		_ = w.Close()
	}()
	if err := cl.Read(s.receivePacket); !errors.Is(err, io.EOF) {
		t.Fatalf("Read: %v, want EOF", err)
	}
	if len(h.processed) != 2 || len(h.published) != 2 {
		t.Fatalf("%d processed, %d published; want 2 and 2", len(h.processed), len(h.published))
	}
	for i, want := range []struct{ topic, payload, contentType string }{{"a/b", "one", "text/plain"}, {"c/d", "two", ""}} {
		p, pub := h.processed[i], h.published[i]
		if p.TopicName != want.topic || string(p.Payload) != want.payload || p.Origin != "" || p.Created != 0 {
			t.Errorf("OnPacketProcessed %d saw topic %q payload %q origin %q created %d; want %q %q, no origin, no time", i, p.TopicName, p.Payload, p.Origin, p.Created, want.topic, want.payload)
		}
		if pub.TopicName != want.topic || pub.Origin != "ptr-client" || pub.Created == 0 {
			t.Errorf("OnPublished %d saw topic %q origin %q created %d; want %q, ptr-client, a time", i, pub.TopicName, pub.Origin, pub.Created, want.topic)
		}
		if p.Properties.ContentType != want.contentType {
			t.Errorf("packet %d: content type %q, want %q (a field of the packet before it?)", i, p.Properties.ContentType, want.contentType)
		}
	}
}

// createdHook records the Created and Expiry times OnPublish and
// OnPublished see, and ignores what its ignore says.
type createdHook struct {
	HookBase
	ignore            bool
	onPublish, onDone []packets.Packet
}

func (h *createdHook) ID() string { return "created" }
func (h *createdHook) Provides(b byte) bool {
	return b == OnPublish || b == OnPublished || b == OnACLCheck
}
func (h *createdHook) OnACLCheck(*Client, string, bool) bool { return true }
func (h *createdHook) OnPublish(_ *Client, pk *packets.Packet) error {
	h.onPublish = append(h.onPublish, *pk)
	if h.ignore {
		pk.Ignore = true
	}
	return nil
}
func (h *createdHook) OnPublished(_ *Client, pk *packets.Packet) { h.onDone = append(h.onDone, *pk) }

// TestMoteCreatedOnDemand: with Options.CreatedOnDemand (change 44), a
// PUBLISH without an expiry reaches OnPublish without a Created time, and
// gets one only if it goes on (retained, delivered: not ignored); one
// with an expiry has both before OnPublish, as upstream. Without the
// option every publish has its time before OnPublish, as upstream.
func TestMoteCreatedOnDemand(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		onDemand, ignore       bool
		expiry, maxExpiry      uint32 // the message's, the server's maximum
		wantAtPublish, wantEnd bool   // a Created time seen by OnPublish, by OnPublished
		wantRetained           bool
	}{
		{"upstream", false, false, 0, 0, true, true, true},
		{"upstream ignored", false, true, 0, 0, true, true, false},
		{"on demand ignored", true, true, 0, 0, false, false, false},
		{"on demand delivered", true, false, 0, 0, false, true, true},
		{"on demand with expiry", true, true, 60, 0, true, true, false},
		{"on demand with the server's maximum", true, true, 0, 60, true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			caps := NewDefaultServerCapabilities()
			caps.MaximumMessageExpiryInterval = int64(tc.maxExpiry) // Mote's is 0
			s := New(&Options{Logger: logger, Capabilities: caps, CreatedOnDemand: tc.onDemand})
			h := &createdHook{ignore: tc.ignore}
			if err := s.AddHook(h, nil); err != nil {
				t.Fatal(err)
			}
			r, w := net.Pipe()
			defer r.Close()
			defer w.Close()
			cl := s.NewClient(r, "testing", "created-client", false)
			cl.Properties.ProtocolVersion = 5
			cl.State.Inflight.ResetReceiveQuota(10)
			pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: "c/" + tc.name,
				Payload: []byte("x"), ProtocolVersion: 5}
			pk.Properties.MessageExpiryInterval = tc.expiry
			before := time.Now().Unix()
			if err := s.processPublish(cl, pk); err != nil {
				t.Fatal(err)
			}
			if len(h.onPublish) != 1 || len(h.onDone) != 1 {
				t.Fatalf("OnPublish %d, OnPublished %d times; want once each", len(h.onPublish), len(h.onDone))
			}
			for _, seen := range []struct {
				what string
				pk   packets.Packet
				want bool
			}{{"OnPublish", h.onPublish[0], tc.wantAtPublish}, {"OnPublished", h.onDone[0], tc.wantEnd}} {
				if got := seen.pk.Created >= before; got != seen.want || (!seen.want && seen.pk.Created != 0) {
					t.Errorf("%s saw Created %d (now %d); want a time: %v", seen.what, seen.pk.Created, before, seen.want)
				}
				if e := max(tc.expiry, tc.maxExpiry); e > 0 && seen.pk.Expiry != seen.pk.Created+int64(e) {
					t.Errorf("%s saw Expiry %d, Created %d; want Created + %d", seen.what, seen.pk.Expiry, seen.pk.Created, e)
				}
			}
			kept, ok := s.Topics.Retained.Get(pk.TopicName)
			if ok != tc.wantRetained || (ok && kept.Created < before) {
				t.Errorf("retained %v (Created %d); want retained %v, with a time", ok, kept.Created, tc.wantRetained)
			}
		})
	}
}

// moteWillConnect is an MQTT 5 CONNECT of id with a will on will/<payload>
// held for delay seconds, and a session that outlives the connection.
func moteWillConnect(t *testing.T, id, payload string, delay uint32) []byte {
	t.Helper()
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: id,
			WillFlag: true, WillTopic: "will/" + payload, WillPayload: []byte(payload),
		},
	}
	pk.Connect.WillProperties.WillDelayInterval = delay
	pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 3600, true
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// connackHook runs fn as a CONNACK is written to a client: that client
// is filed under its id and its CONNECT has not yet cancelled the id's
// delayed will.
type connackHook struct {
	HookBase
	fn func(cl *Client)
}

func (h *connackHook) ID() string { return "connack-hook" }
func (h *connackHook) Provides(b byte) bool {
	return b == OnPacketSent
}
func (h *connackHook) OnPacketSent(cl *Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Connack {
		h.fn(cl)
	}
}

// TestMoteDelayedWillSparesNewClient: the delayed will of a client that
// left comes due while a client of the same id, with a will of its own,
// is connecting (filed, its CONNACK being written): sendDelayedLWT
// cleared the will of the client filed under the id — the new one — and
// when its connection ended no will was published. Now only the old
// client's will is cleared (change 50).
func TestMoteDelayedWillSparesNewClient(t *testing.T) {
	s := newServer()
	defer s.Close()
	first := true
	if err := s.AddHook(&connackHook{fn: func(cl *Client) {
		if first { // the old client's CONNACK
			first = false
			return
		}
		s.sendDelayedLWT(time.Now().Unix() + 7200) // the old will is due now
	}}, nil); err != nil {
		t.Fatal(err)
	}
	c, r, serve, err := moteSession(t, s, moteWillConnect(t, "dev", "old", 3600))
	if err != nil {
		t.Fatal(err)
	}
	if h, _, err := moteReadPacket(r); err != nil || h != 0x20 {
		t.Fatalf("no CONNACK: %#x %v", h, err)
	}
	old, _ := s.Clients.Get("dev")
	done := runServe(serve)
	c.Close() // no DISCONNECT: the will waits out its delay
	waitServe(t, done)
	if _, ok := s.loop.willDelayed.Get("dev"); !ok {
		t.Fatal("the old client's will is not delayed")
	}
	c, r, serve, err = moteSession(t, s, moteWillConnect(t, "dev", "new", 0))
	if err != nil {
		t.Fatal(err)
	}
	if h, _, err := moteReadPacket(r); err != nil || h != 0x20 {
		t.Fatalf("no CONNACK: %#x %v", h, err)
	}
	cl, _ := s.Clients.Get("dev")
	if cl == old {
		t.Fatal("the new client is not filed")
	}
	if atomic.LoadUint32(&cl.Properties.Will.Flag) != 1 || cl.Properties.Will.TopicName != "will/new" {
		t.Errorf("the new client's will is %+v, want its own (will/new)", cl.Properties.Will)
	}
	if w := old.Properties.Will; w != nil && atomic.LoadUint32(&w.Flag) != 0 { // nil: cleared (change 83)
		t.Error("the old client's will was not cleared as it was sent")
	}
	if _, ok := s.loop.willDelayed.Get("dev"); ok {
		t.Error("the old will is still delayed")
	}
	done = runServe(serve)
	c.Close()
	waitServe(t, done)
}

// TestMoteReadStoppedBetweenPackets: a client stopped while its read loop
// is between packets (change 54). Read returns nil — no will — only when
// the client left with DISCONNECT; stopped by a takeover, by the server
// or by its shutdown it returns why, as when the stop breaks a read under
// way, and the will is sent. Before, Read returned nil for every stop: the
// will of a connection taken over between two packets was lost.
func TestMoteReadStoppedBetweenPackets(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cause error
		want  error
	}{
		{"disconnect", packets.CodeDisconnect, nil},
		{"taken over", packets.ErrSessionTakenOver, packets.ErrSessionTakenOver},
		{"shutting down", packets.ErrServerShuttingDown, packets.ErrServerShuttingDown},
		{"stopped without a cause", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl, r, _ := newTestClient()
			defer r.Close()
			cl.Stop(tc.cause)
			err := cl.Read(func(*Client, *packets.Packet) error { return nil })
			if !errors.Is(err, tc.want) {
				t.Errorf("Read returned %v, want %v", err, tc.want)
			}
		})
	}
}

// moteBodies is a PublishBodies giving the bodies of its PUBLISHes from
// its own memory (length off by wrong, to test that a wrong length is
// not used).
type moteBodies struct {
	net.Conn
	mem   [][]byte
	wrong int
}

func (c *moteBodies) PublishBody(fh *packets.FixedHeader) []byte {
	p := make([]byte, fh.Remaining+c.wrong)
	c.mem = append(c.mem, p)
	return p
}

// TestNewClientPublishBodies: newClient keeps a conn's PublishBodies.
func TestNewClientPublishBodies(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	bc := &moteBodies{Conn: a}
	cl := newClient(bc, &ops{options: &Options{Capabilities: NewDefaultServerCapabilities()}, info: new(system.Info), hooks: new(Hooks), log: logger, pool: new(packetPool)})
	if _, ok := cl.Net.Conn.(PublishBodies); !ok {
		t.Errorf("conn %T, want the PublishBodies given", cl.Net.Conn)
	}
}

// TestPublishBodies (change 56): a PUBLISH read from a conn that is a
// PublishBodies is read into the memory it gives, topic and payload
// decoded from it; memory of the wrong length is not used (mochi makes
// the body), and a packet other than a PUBLISH never asks for it.
func TestPublishBodies(t *testing.T) {
	tests := []struct {
		name  string
		wrong int
		into  bool
	}{
		{"exact length", 0, true},
		{"one byte short", -1, false},
		{"one byte long", 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl, _, _ := newTestClient()
			defer cl.Stop(errClientStop)
			bc := &moteBodies{Conn: cl.Net.Conn, wrong: tt.wrong}
			cl.Net.Conn = bc                                                   // a conn that is a PublishBodies (change 80: asked of Conn)
			data := append(moteEncodePublish(t, "a/b", "payload"), 0xc0, 0x00) // and a PINGREQ
			cl.Net.bconn = newConnReader(bytes.NewReader(data), 4096)
			var fh packets.FixedHeader
			if err := cl.ReadFixedHeader(&fh); err != nil {
				t.Fatal(err)
			}
			pk, err := cl.ReadPacket(&fh)
			if err != nil {
				t.Fatal(err)
			}
			if pk.TopicName != "a/b" || string(pk.Payload) != "payload" {
				t.Fatalf("topic %q payload %q", pk.TopicName, pk.Payload)
			}
			if len(bc.mem) != 1 {
				t.Fatalf("%d bodies asked for, want 1", len(bc.mem))
			}
			start := uintptr(unsafe.Pointer(unsafe.SliceData(bc.mem[0])))
			at := uintptr(unsafe.Pointer(unsafe.SliceData(pk.Payload)))
			if got := at >= start && at < start+uintptr(len(bc.mem[0])); got != tt.into {
				t.Errorf("read into the memory given: %v, want %v", got, tt.into)
			}
			fh = packets.FixedHeader{}
			if err := cl.ReadFixedHeader(&fh); err != nil {
				t.Fatal(err)
			}
			if _, err := cl.ReadPacket(&fh); err != nil {
				t.Fatal(err)
			}
			if len(bc.mem) != 1 {
				t.Errorf("a PINGREQ asked for a body: %d asked for", len(bc.mem))
			}
		})
	}
}

// TestIsValidFilterPublishFast (change 57): the one-pass check of a
// publish topic not starting with '$' answers as the general checks.
func TestIsValidFilterPublishFast(t *testing.T) {
	tests := []struct {
		topic string
		valid bool
	}{
		{"", true},
		{"a", true},
		{"fan/17", true},
		{"a/b/", true},
		{"/", true},
		{"a/+", false},
		{"a/#", false},
		{"a+b", false},
		{"#", false},
		{"$SYS/a", false},
		{"$sys", false},
		{"$SYSTEM/a", true},
		{"$share/g/a", true},
		{"$share/g", false},
		{"$share", false},
		{"$tree/a", true},
	}
	for _, tt := range tests {
		if got, slow := IsValidFilter(tt.topic, true), isValidFilter(tt.topic, true); got != tt.valid || slow != tt.valid {
			t.Errorf("%q: fast %v, general %v, want %v", tt.topic, got, slow, tt.valid)
		}
	}
}

// FuzzIsValidFilter: IsValidFilter answers as the general checks for any
// publish topic and any filter.
func FuzzIsValidFilter(f *testing.F) {
	for _, s := range []string{"", "a/b", "fan/1", "a/+", "#", "$SYS/x", "$share/g/a", "a#", "+/+",
		"$mote/publish", "$tree/a/b", "$SYS", "$sys/", "$share", "$share/", "$share/g", "$SHARE/g/",
		"$ſhare/g", "$ſhare/g/t", "$ſys/a", "$tree/+", "$tree/#", "$", "$/", "$//"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, pub := range []bool{true, false} {
			if got, want := IsValidFilter(s, pub), isValidFilter(s, pub); got != want {
				t.Errorf("%q (publish %v): %v, general checks %v", s, pub, got, want)
			}
		}
	})
}

// TestIsValidDollarTopic (change 98): the one pass answers as the general
// checks for '$' publish topics, by every case of $SYS and $share, with
// and without levels after them, the long s that folds to s, wildcards
// anywhere; and refuses those that must be refused.
func TestIsValidDollarTopic(t *testing.T) {
	var topics []string
	for _, first := range []string{"$SYS", "$sys", "$Sys", "$ſys", "$SYSx", "$SY", "$SHARE", "$share",
		"$Share", "$ſhare", "$sharex", "$shar", "$mote", "$tree", "$", "$+", "$#"} {
		for _, rest := range []string{"", "/", "//", "/g", "/g/", "/g/t", "/g/t/u", "/+", "/g/#", "/g/+/t", "/a#"} {
			topics = append(topics, first+rest)
		}
	}
	for _, s := range topics {
		if got, want := isValidDollarTopic(s), isValidFilter(s, true); got != want {
			t.Errorf("%q: %v, general checks %v", s, got, want)
		}
	}
	for _, s := range []string{"$SYS/x", "$sys", "$share/g", "$SHARE", "$tree/+", "$tree/a/#"} {
		if isValidDollarTopic(s) {
			t.Errorf("%q taken", s)
		}
	}
	for _, s := range []string{"$mote/publish", "$tree/lat", "$share/g/t", "$SYSTEM/a"} {
		if !isValidDollarTopic(s) {
			t.Errorf("%q refused", s)
		}
	}
}

// BenchmarkIsValidFilterPublish (change 57): the check of a fan-in's
// publish topic, one pass (IsValidFilter) against the general checks.
func BenchmarkIsValidFilterPublish(b *testing.B) {
	for _, bb := range []struct {
		name string
		fn   func(string, bool) bool
	}{{"one pass", IsValidFilter}, {"general", isValidFilter}} {
		b.Run(bb.name, func(b *testing.B) {
			for b.Loop() {
				if !bb.fn("fan/17", true) {
					b.Fatal("refused")
				}
			}
		})
	}
}

// TestMoteTakeoverOfStalledConnack: a client filed but unanswered, its
// CONNACK's write blocked (its peer reads nothing) and holding the
// client's lock, is taken over. disconnectTakenOver waits for that lock
// (change 59) after bounding the connection's writes, so it returns once
// takeoverWriteWait has cut the CONNACK short, not when the peer reads;
// the client is closed, and neither the CONNACK nor a DISCONNECT is
// written.
func TestMoteTakeoverOfStalledConnack(t *testing.T) {
	s := newServer()
	cl, r, _ := newTestClient()
	defer r.Close()
	cl.Properties.ProtocolVersion = 5
	cl.State.setFlag(flagUnanswered)
	acked := make(chan error, 1)
	go func() { acked <- s.SendConnack(cl, packets.CodeSuccess, false, nil) }()
	waitFor(t, "the CONNACK's write to hold the client's lock", func() bool {
		if cl.TryLock() {
			cl.Unlock()
			return false
		}
		return true
	})
	took := make(chan struct{})
	go func() {
		s.disconnectTakenOver(cl)
		close(took)
	}()
	select {
	case <-took:
	case <-time.After(waitDeadline):
		t.Fatalf("the takeover waited %v for a stalled CONNACK", waitDeadline)
	}
	if err := <-acked; err == nil {
		t.Error("the stalled CONNACK was written")
	}
	if !cl.Closed() {
		t.Error("the client taken over is not closed")
	}
	r.SetReadDeadline(time.Now().Add(waitDeadline))
	if n, err := r.Read(make([]byte, 16)); n > 0 || err == nil {
		t.Errorf("the peer read %d bytes (%v), want only the close", n, err)
	}
}

// TestClearExpiredInflightsCopiesNone: the once-a-second sweep of a
// client holding 1,024 messages, none expired, allocates nothing (change
// 67); upstream copied all of them out and sorted them (GetAll), 800
// bytes a message, a second, for every session away. What expired is
// still deleted (TestClientClearExpiredInflights).
func TestClearExpiredInflightsCopiesNone(t *testing.T) {
	cl, _, _ := newTestClient()
	defer cl.Stop(errClientStop)
	now := time.Now().Unix()
	for id := range uint16(1024) {
		cl.State.Inflight.Set(packets.Packet{ProtocolVersion: 5, PacketID: id + 1, Created: now, Expiry: now + 3600})
	}
	// The fewest of a few measurements: other goroutines' allocations
	// count too (TestReadPacketPublishAllocs).
	allocs := float64(-1)
	for i := 0; i < 5 && allocs != 0; i++ {
		a := testing.AllocsPerRun(20, func() {
			if deleted := cl.ClearExpiredInflights(now, 86400); len(deleted) != 0 {
				t.Fatalf("deleted %v, none expired", deleted)
			}
		})
		if allocs < 0 || a < allocs {
			allocs = a
		}
	}
	if allocs != 0 {
		t.Errorf("the sweep of 1,024 messages held, none expired: %.0f allocations, want none", allocs)
	}
	if n := cl.State.Inflight.Len(); n != 1024 {
		t.Errorf("%d messages held after the sweep, want 1024", n)
	}
}

// TestClearExpiredInflightsAsUpstream: change 67 deletes what upstream's
// sweep deleted (every held message, GetAll, filtered), in the same
// order: v5 messages past their Message Expiry Interval, and with a
// server maximum every kind held past it (PUBRELs and MQTT 3.1.1
// messages too, as upstream), nothing else.
func TestClearExpiredInflightsAsUpstream(t *testing.T) {
	const now = int64(1_000_000)
	upstream := func(held []packets.Packet, maximumExpiry int64) []uint16 {
		var out []uint16
		i := NewInflights()
		for _, pk := range held {
			i.Set(pk)
		}
		for _, tk := range i.GetAll(false) {
			expired := tk.ProtocolVersion == 5 && tk.Expiry > 0 && tk.Expiry < now
			enforced := maximumExpiry > 0 && now-tk.Created > maximumExpiry
			if expired || enforced {
				out = append(out, tk.PacketID)
			}
		}
		return out
	}
	for seed := range uint64(50) {
		r := rand.New(rand.NewPCG(seed, 67))
		var held []packets.Packet
		for id := uint16(1); id <= 200; id++ {
			pk := packets.Packet{
				FixedHeader:     packets.FixedHeader{Type: []byte{packets.Publish, packets.Pubrel, packets.Pubrec}[r.IntN(3)], Qos: 1 + byte(r.IntN(2))},
				ProtocolVersion: []byte{3, 4, 5}[r.IntN(3)],
				PacketID:        id,
				Created:         now - int64(r.IntN(20))*65536 + int64(id), // distinct as uint16: one order
				Expiry:          []int64{0, -1, now - 1, now, now + 1}[r.IntN(5)],
			}
			held = append(held, pk)
		}
		for _, maximumExpiry := range []int64{0, 10 * 65536} {
			cl, _, _ := newTestClient()
			for _, pk := range held {
				cl.State.Inflight.Set(pk)
			}
			want := upstream(held, maximumExpiry)
			got := cl.ClearExpiredInflights(now, maximumExpiry)
			if !slices.Equal(got, want) {
				t.Fatalf("seed %d, maximum %d: deleted %v, upstream %v", seed, maximumExpiry, got, want)
			}
			if n := cl.State.Inflight.Len(); n != len(held)-len(want) {
				t.Fatalf("seed %d: %d held after, want %d", seed, n, len(held)-len(want))
			}
			cl.Stop(errClientStop)
		}
	}
}

// withoutUserProps is the encoding of the golden packet of type typ and
// case c without its User Properties: the SUBACK and UNSUBACK a server
// sends, which no longer echo the request's (change 68).
func withoutUserProps(t *testing.T, typ, c byte) []byte {
	t.Helper()
	pk := *packets.TPacketData[typ].Get(c).Packet
	pk.Properties.User = nil
	var b bytes.Buffer
	var err error
	switch typ {
	case packets.Suback:
		err = pk.SubackEncode(&b)
	case packets.Unsuback:
		err = pk.UnsubackEncode(&b)
	default:
		t.Fatalf("type %d", typ)
	}
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return b.Bytes()
}

// unsubHook counts the OnUnsubscribe calls it sees.
type unsubHook struct {
	HookBase
	calls int
}

func (h *unsubHook) ID() string           { return "unsub" }
func (h *unsubHook) Provides(b byte) bool { return b == OnUnsubscribe }
func (h *unsubHook) OnUnsubscribe(_ *Client, pk packets.Packet) packets.Packet {
	h.calls++
	return pk
}

// TestMoteUnsubscribeInUseNoHook (change 71): an UNSUBSCRIBE refused
// whole, its packet id in use (0x91), unsubscribes nothing and is not
// handed to OnUnsubscribe; one not refused is.
func TestMoteUnsubscribeInUseNoHook(t *testing.T) {
	for _, tc := range []struct {
		name      string
		inUse     bool
		wantCalls int
		wantAck   []byte
	}{
		{"in use", true, 0, withoutUserProps(t, packets.Unsuback, packets.TUnsubackPacketIDInUse)},
		{"free", false, 1, withoutUserProps(t, packets.Unsuback, packets.TUnsubackMqtt5)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer()
			h := &unsubHook{}
			if err := s.AddHook(h, nil); err != nil {
				t.Fatal(err)
			}
			cl, r, w := newTestClient()
			cl.Properties.ProtocolVersion = 5
			s.Topics.Subscribe(cl.ID, packets.Subscription{Filter: "a/b", Qos: 0})
			pk := *packets.TPacketData[packets.Unsubscribe].Get(packets.TUnsubscribeMqtt5).Packet
			if tc.inUse {
				cl.State.Inflight.Set(packets.Packet{PacketID: pk.PacketID, FixedHeader: packets.FixedHeader{Type: packets.Publish}})
			}
			done := make(chan error, 1)
			go func() {
				done <- s.processPacket(cl, &pk)
				_ = w.Close()
			}()
			buf, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, tc.wantAck) {
				t.Errorf("UNSUBACK %x, want %x", buf, tc.wantAck)
			}
			if h.calls != tc.wantCalls {
				t.Errorf("OnUnsubscribe called %d times, want %d", h.calls, tc.wantCalls)
			}
		})
	}
}

// slowHaltHandler is a slog handler that records messages and takes its
// time over the event loop's last line, as a busy test logger might.
type slowHaltHandler struct {
	mu   *sync.Mutex
	msgs *[]string
}

func (h slowHaltHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h slowHaltHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h slowHaltHandler) WithGroup(string) slog.Handler            { return h }
func (h slowHaltHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "system event loop halted" {
		time.Sleep(50 * time.Millisecond)
	}
	h.mu.Lock()
	*h.msgs = append(*h.msgs, r.Message)
	h.mu.Unlock()
	return nil
}

// TestCloseWaitsForEventLoop (change 81): once Close returns, the event
// loop Serve started has returned and logged its last line; a test
// logger used after its test ended panics. Before, the loop logged
// "system event loop halted" whenever it next ran.
func TestCloseWaitsForEventLoop(t *testing.T) {
	var mu sync.Mutex
	var msgs []string
	s := New(&Options{Logger: slog.New(slowHaltHandler{mu: &mu, msgs: &msgs})})
	_ = s.AddHook(new(AllowHook), nil)
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Contains(msgs, "system event loop halted") {
		t.Fatalf("Close returned before the event loop ended; logged: %q", msgs)
	}
}
