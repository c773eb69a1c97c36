package broker

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// readPub is a PUBLISH a rawSession read.
type readPub struct {
	topic   string
	qos     byte
	payload string
}

// readUntil reads packets, acknowledging QoS 1 PUBLISHes and collecting
// them, until done says the last one collected is the one awaited, or a
// packet of type stop (the high nibble; 0: none) comes, whose body it
// returns.
func (s *rawSession) readUntil(what string, stop byte, done func(readPub) bool) ([]readPub, []byte) {
	s.t.Helper()
	var got []readPub
	for {
		h, body, err := readWhole(s.r)
		if err != nil {
			s.t.Fatalf("%s: %v (read %d publishes: %v)", what, err, len(got), got)
		}
		if h&0xf0 == stop && stop != 0 {
			return got, body
		}
		if h&0xf0 != 0x30 {
			s.t.Fatalf("%s: got packet %#x %x", what, h, body)
		}
		p := readPub{qos: h >> 1 & 3}
		n := int(body[0])<<8 | int(body[1])
		p.topic, body = string(body[2:2+n]), body[2+n:]
		if p.qos > 0 {
			s.send(0x40, body[:2]) // PUBACK
			body = body[2:]
		}
		if s.v == 5 {
			props, k := 0, 0
			for shift := 0; ; shift += 7 {
				props |= int(body[k]&0x7f) << shift
				k++
				if body[k-1] < 0x80 {
					break
				}
			}
			body = body[k+props:]
		}
		p.payload = string(body)
		got = append(got, p)
		if done != nil && done(p) {
			return got, nil
		}
	}
}

// rawSub is a filter of a SUBSCRIBE and its options byte (QoS, and in
// MQTT 5 No Local 0x04, Retain As Published 0x08, Retain Handling << 4).
type rawSub struct {
	filter string
	opts   byte
}

// subscribe sends a SUBSCRIBE of subs with packet id id and returns the
// SUBACK's reason codes; PUBLISHes before it are acknowledged and skipped.
func (s *rawSession) subscribe(id byte, subs ...rawSub) []byte {
	s.t.Helper()
	body := []byte{0, id}
	if s.v == 5 {
		body = append(body, 0)
	}
	for _, f := range subs {
		body = append(append(append(body, 0, byte(len(f.filter))), f.filter...), f.opts)
	}
	s.send(0x82, body)
	_, ack := s.readUntil("SUBACK", 0x90, nil)
	if s.v == 5 {
		return ack[3:]
	}
	return ack[2:]
}

// fillQueue counts c's queue full, as if its client did not read, and
// returns what undoes it (white box: a client that stops reading fills it
// only as fast as its socket buffers do).
func fillQueue(c *conn) (undo func()) {
	c.q.mu.Lock()
	c.q.bytes += c.q.max
	c.q.mu.Unlock()
	return func() { c.q.reserve(-c.q.max) }
}

// TestResubscribeRefusedKeeps: a SUBSCRIBE of a filter the client holds
// that the broker refuses after mochi filed it (the client's queue is
// full: it asks for a snapshot or retained rows it would not read) leaves
// the subscription it would have replaced whole, in mochi's session and
// index and in the broker's (plain: its subscription index; tree: the
// loop's), as a refusal by mochi (the ACL) does. Before, mochi's copy was
// removed: a plain subscription was gone altogether, a tree subscription
// kept its deltas but was not restored when the session resumed, and
// $SYS/broker/subscriptions counted one less than the loop held.
func TestResubscribeRefusedKeeps(t *testing.T) {
	for _, tc := range []struct {
		name   string
		v      byte
		filter string // resubscribed; the marker is the same form of z/#
		marker string
		refuse byte // the SUBACK's code for the refused SUBSCRIBE
	}{
		{"plain 5", 5, "a/#", "z/#", packets.ErrQuotaExceeded.Code},
		{"plain 3.1.1", 4, "a/#", "z/#", packets.ErrUnspecifiedError.Code},
		{"sync 5", 5, "$sync/a/#", "$sync/z/#", packets.ErrQuotaExceeded.Code},
		{"sync 3.1.1", 4, "$sync/a/#", "$sync/z/#", packets.ErrUnspecifiedError.Code},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			ctx := testCtx(t)
			plain := !strings.HasPrefix(tc.filter, "$")
			subscribe := func(s *rawSession, id byte, qos byte, filters ...string) []byte {
				t.Helper()
				var subs []rawSub
				for _, f := range filters {
					subs = append(subs, rawSub{f, qos}) // Retain Handling 0
				}
				return s.subscribe(id, subs...)
			}
			// phase publishes a row under a/ and one under z/, and reads
			// until the second: the first came before it, or never.
			phase := func(s *rawSession, n int) {
				t.Helper()
				for _, topic := range []string{"a/x", "z/m"} {
					if err := b.Publish(ctx, systemPrincipal, Message{Topic: fmt.Sprintf("%s%d", topic, n), Payload: []byte(fmt.Sprintf(`"%s%d"`, topic[:1], n)), QoS: 1, Retain: true}); err != nil {
						t.Fatal(err)
					}
				}
				got, _ := s.readUntil(fmt.Sprintf("phase %d", n), 0, func(p readPub) bool {
					return strings.Contains(p.payload, fmt.Sprintf(`"z%d"`, n))
				})
				for _, p := range got {
					if strings.Contains(p.payload, fmt.Sprintf(`"a%d"`, n)) {
						if p.qos != 1 {
							t.Errorf("phase %d: %s came at QoS %d, want 1 (the subscription's before the refused SUBSCRIBE)", n, p.topic, p.qos)
						}
						return
					}
				}
				t.Errorf("phase %d: no message of %s before the marker's (got %v)", n, tc.filter, got)
			}
			// snapshots reads, for tree filters, the snapshots of filters
			// subscribed (or resumed) before: the deltas that follow come
			// in the order of their publishes.
			snapshots := func(s *rawSession, filters ...string) {
				t.Helper()
				if plain {
					return
				}
				left := map[string]bool{}
				for _, f := range filters {
					left[f] = true
				}
				s.readUntil("snapshots", 0, func(p readPub) bool {
					delete(left, p.topic)
					return len(left) == 0
				})
			}
			// held checks mochi's session and index, the broker's and the
			// counts all hold the subscription, at QoS 1.
			held := func(when string) {
				t.Helper()
				if err := b.Sync(ctx); err != nil {
					t.Fatal(err)
				}
				cl, ok := b.server.Clients.Get("re")
				if !ok {
					t.Fatalf("%s: no session", when)
				}
				if sub, ok := cl.State.Subscriptions.Get(tc.filter); !ok || sub.Qos != 1 {
					t.Errorf("%s: mochi's session holds %s: %v (QoS %d), want QoS 1", when, tc.filter, ok, sub.Qos)
				}
				if n := atomic.LoadInt64(&b.server.Info.Subscriptions); n != 2 {
					t.Errorf("%s: $SYS/broker/subscriptions %d, want 2", when, n)
				}
				if plain {
					sc := b.plainIdx.match("a/x", "")
					if len(sc.out) != 1 || sc.out[0].qos != 1 {
						t.Errorf("%s: the broker's index matches a/x for %v, want re at QoS 1", when, sc.out)
					}
					sc.release()
				} else if n := b.treeSubs.Load(); n != 2 {
					t.Errorf("%s: the loop holds %d tree subscriptions, want 2", when, n)
				}
			}

			s := dialSession(t, b, tc.v, "re", packets.Properties{})
			if codes := subscribe(s, 1, 1, tc.filter, tc.marker); string(codes) != "\x01\x01" {
				t.Fatalf("SUBACK %x, want 0101", codes)
			}
			snapshots(s, tc.filter, tc.marker)
			c := b.connOf(t, "re")
			undo := fillQueue(c)
			codes := subscribe(s, 2, 0, tc.filter)
			undo()
			if len(codes) != 1 || codes[0] != tc.refuse {
				t.Fatalf("SUBACK of the SUBSCRIBE with a full queue: %x, want %x", codes, tc.refuse)
			}
			held("refused")
			phase(s, 1)

			s.conn.Close()
			waitConnGone(t, b, "re")
			s = dialSession(t, b, tc.v, "re", packets.Properties{})
			b.connOf(t, "re")
			held("resumed")
			if !plain {
				// The resumed session's snapshots come before that of a
				// filter subscribed now (the loop queues them in order).
				if codes := subscribe(s, 3, 1, "$sync/y/#"); string(codes) != "\x01" {
					t.Fatalf("SUBACK %x, want 01", codes)
				}
				snapshots(s, "$sync/y/#")
			}
			phase(s, 2)
		})
	}
}

// TestResubscribeRefusedInPacket: filters repeated in one SUBSCRIBE are
// taken in order [MQTT-3.8.4-3], a refused one changing nothing: after the
// packet the client holds what its last granted one filed, or what it held
// before. The client holds a/# at QoS 1; its queue is full, so a/# with
// Retain Handling 0 (retained rows) is refused, with Retain Handling 2
// granted. Before, a refused one removed the subscription whatever came
// before or after it in the packet.
func TestResubscribeRefusedInPacket(t *testing.T) {
	const rows, noRows = 0x00, 0x20 // Retain Handling 0 and 2
	q0, q2 := rawSub{"a/#", 0 | rows}, rawSub{"a/#", 2 | noRows}
	quota := packets.ErrQuotaExceeded.Code
	for _, tc := range []struct {
		name  string
		subs  []rawSub
		codes []byte
		qos   byte // of the subscription held after
	}{
		{"granted then refused", []rawSub{q2, q0}, []byte{2, quota}, 2},
		{"refused then granted", []rawSub{q0, q2}, []byte{quota, 2}, 2},
		{"refused twice", []rawSub{q0, q0}, []byte{quota, quota}, 1},
		{"granted then refused twice", []rawSub{q2, q0, q0}, []byte{2, quota, quota}, 2},
		{"refused between grants", []rawSub{q2, q0, {"a/#", 0 | noRows}}, []byte{2, quota, 0}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			s := dialSession(t, b, 5, "in", packets.Properties{})
			if codes := s.subscribe(1, rawSub{"a/#", 1}); string(codes) != "\x01" {
				t.Fatalf("SUBACK %x, want 01", codes)
			}
			undo := fillQueue(b.connOf(t, "in"))
			codes := s.subscribe(2, tc.subs...)
			undo()
			if string(codes) != string(tc.codes) {
				t.Errorf("SUBACK %x, want %x", codes, tc.codes)
			}
			cl, _ := b.server.Clients.Get("in")
			if sub, ok := cl.State.Subscriptions.Get("a/#"); !ok || sub.Qos != tc.qos {
				t.Errorf("mochi's session holds a/#: %v (QoS %d), want QoS %d", ok, sub.Qos, tc.qos)
			}
			sc := b.plainIdx.match("a/x", "")
			defer sc.release()
			if len(sc.out) != 1 || sc.out[0].qos != tc.qos {
				t.Errorf("the broker's index matches a/x for %v, want in at QoS %d", sc.out, tc.qos)
			}
			if n := atomic.LoadInt64(&b.server.Info.Subscriptions); n != 1 {
				t.Errorf("$SYS/broker/subscriptions %d, want 1", n)
			}
		})
	}
}

// TestSharedSubscribeQueueFull: a shared subscription gets no retained
// rows (MQTT 5 §4.8.2), so a client whose queue is full is not refused one
// for that, new or replacing; before, it was refused 0x97 and the
// subscription it replaced was removed.
func TestSharedSubscribeQueueFull(t *testing.T) {
	b := start(t, Options{})
	s := dialSession(t, b, 5, "sh", packets.Properties{})
	if codes := s.subscribe(1, rawSub{"$share/g/a/#", 1}); string(codes) != "\x01" {
		t.Fatalf("SUBACK %x, want 01", codes)
	}
	undo := fillQueue(b.connOf(t, "sh"))
	codes := s.subscribe(2, rawSub{"$share/g/a/#", 0}, rawSub{"$share/g/b/#", 0})
	undo()
	if string(codes) != "\x00\x00" {
		t.Errorf("SUBACK %x, want 0000", codes)
	}
	cl, _ := b.server.Clients.Get("sh")
	for _, f := range []string{"$share/g/a/#", "$share/g/b/#"} {
		if sub, ok := cl.State.Subscriptions.Get(f); !ok || sub.Qos != 0 {
			t.Errorf("mochi's session holds %s: %v (QoS %d), want QoS 0", f, ok, sub.Qos)
		}
	}
	if n := atomic.LoadInt64(&b.server.Info.Subscriptions); n != 2 {
		t.Errorf("$SYS/broker/subscriptions %d, want 2", n)
	}
}

// TestRefusedFilterLevels: a filter mochi refuses (here its ACL check,
// 0x87) takes nothing of the client's filter levels quota; before, what
// OnSubscribe counted of it stayed counted, and a later SUBSCRIBE within
// the quota was refused.
func TestRefusedFilterLevels(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte("user bob\ntopic read ok/#\n"))
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Users: users(t), ACL: acl, MaxSubscriptions: 1}) // 4 filter levels in all
	ctx := testCtx(t)
	bob := dialAs(t, b, "bob")
	nothing := func(client.Message) {}
	for range 3 {
		if err := bob.Subscribe(ctx, "no/x/y", client.Plain, client.JSON, 0, nothing); err == nil {
			t.Fatal("subscribe no/x/y: granted, want refused")
		}
	}
	if err := bob.Subscribe(ctx, "ok/a", client.Plain, client.JSON, 0, nothing); err != nil {
		t.Errorf("subscribe ok/a, within the quota: %v", err)
	}
	if c := b.connOf(t, "bob"); c.levels != 2 {
		t.Errorf("%d filter levels counted, want 2", c.levels)
	}
}
