package broker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// Attack on mochi change 25 (packets by pointer, the read loop's packet
// lent from a pool and cleared when it comes back) and change 26 (the
// read deadline refreshed only before a read that may wait).

// ptrPublish is the j-th publish of publisher i: a topic of five per
// publisher, sent through a topic alias (the topic itself only the first
// time the alias is used), a payload and a User Property that name it,
// the QoS cycling 0, 1, 2, every seventh retained.
func ptrPublish(i, j int, aliased map[uint16]bool) (packets.Packet, string) {
	alias := uint16(j%5 + 1)
	topic := fmt.Sprintf("ptr/%d/%d", i, j%5)
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Qos: byte(j % 3), Retain: j%7 == 0},
		ProtocolVersion: 5,
		TopicName:       topic,
		Payload:         []byte(fmt.Sprintf("payload %d.%d %s", i, j, bytes.Repeat([]byte{'a' + byte(j%26)}, j%40))),
		Properties: packets.Properties{
			TopicAlias: alias, TopicAliasFlag: true,
			User: []packets.UserProperty{{Key: "k", Val: fmt.Sprintf("%d.%d", i, j)}, {Key: "pad", Val: topic}},
		},
	}
	if pk.FixedHeader.Qos > 0 {
		pk.PacketID = uint16(j + 1)
	}
	if aliased[alias] {
		pk.TopicName = ""
	}
	aliased[alias] = true
	return pk, topic
}

// TestPooledPacketsNotAliased: many MQTT 5 publishers, each pipelining
// hundreds of publishes in few writes (so that the read loop's pooled
// packet is reused at once, packet after packet in the buffer), of
// distinct topics (through topic aliases), payloads and User Properties,
// at QoS 0, 1 and 2, some retained: a subscriber receives each of them
// byte for byte as sent — no later packet's data in an earlier message.
func TestPooledPacketsNotAliased(t *testing.T) {
	const pubs, per = 6, 240
	b := start(t, Options{})

	type got struct {
		topic, payload string
		user           []paho5.UserProperty
	}
	in := &inbox[got]{got: make(chan struct{}, 1)}
	cfg := paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) {
			g := got{topic: p.Packet.Topic, payload: string(p.Packet.Payload)}
			if p.Packet.Properties != nil {
				g.user = append(g.user, p.Packet.Properties.User...)
			}
			in.add(g)
			return true, nil
		},
	}}
	sub := dial5(t, b, "ptr-sub", cfg, nil)
	if _, err := sub.Subscribe(testCtx(t), &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "ptr/#", QoS: 2}}}); err != nil {
		t.Fatal(err)
	}

	want := map[string]got{} // by payload
	var wg sync.WaitGroup    // the publishers' goroutines
	var conns []net.Conn
	defer func() { // cleanups run after: keepAliveDial's close would come after wg.Wait
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	for i := range pubs {
		aliased := map[uint16]bool{}
		var batches [][]byte
		var buf bytes.Buffer
		for j := range per {
			pk, topic := ptrPublish(i, j, aliased)
			if err := pk.PublishEncode(&buf); err != nil {
				t.Fatal(err)
			}
			want[string(pk.Payload)] = got{topic: topic, payload: string(pk.Payload),
				user: []paho5.UserProperty{{Key: "k", Value: pk.Properties.User[0].Val}, {Key: "pad", Value: topic}}}
			if j%60 == 59 {
				batches = append(batches, bytes.Clone(buf.Bytes()))
				buf.Reset()
			}
		}
		c, r, _ := keepAliveDial(t, b, 5, fmt.Sprintf("ptr-pub-%d", i), 30)
		conns = append(conns, c)
		c.SetReadDeadline(time.Time{})
		var wmu sync.Mutex // the writes of the batches and of the PUBRELs
		wg.Add(2)
		go func() { // acks: a PUBREL for each PUBREC
			defer wg.Done()
			for {
				h, body, err := readPacketBody(r)
				if err != nil {
					return
				}
				if h>>4 == packets.Pubrec {
					wmu.Lock()
					_, err = c.Write([]byte{0x62, 0x02, body[0], body[1]})
					wmu.Unlock()
					if err != nil {
						return
					}
				}
			}
		}()
		go func() {
			defer wg.Done()
			for _, bt := range batches {
				wmu.Lock()
				_, err := c.Write(bt)
				wmu.Unlock()
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}

	t0 := time.Now()
	msgs := in.wait(t, pubs*per)
	t.Logf("received all in %v", time.Since(t0))
	seen := map[string]bool{}
	for _, m := range msgs {
		w, ok := want[m.payload]
		if !ok {
			t.Errorf("received a payload never sent: %q on %q", m.payload, m.topic)
			continue
		}
		if seen[m.payload] {
			t.Errorf("received twice: %q", m.payload)
		}
		seen[m.payload] = true
		if m.topic != w.topic || fmt.Sprint(m.user) != fmt.Sprint(w.user) {
			t.Errorf("payload %q: got topic %q user %v, want %q %v", m.payload, m.topic, m.user, w.topic, w.user)
		}
	}
}

// dribble writes p to c one byte every gap until c is closed by the
// broker (reported by closed) or p is spent; it returns how many bytes
// it wrote.
func dribble(c net.Conn, p []byte, gap time.Duration, closed <-chan struct{}) int {
	tick := time.NewTicker(gap)
	defer tick.Stop()
	for i := range p {
		select {
		case <-closed:
			return i
		case <-tick.C:
		}
		if _, err := c.Write(p[i : i+1]); err != nil {
			return i
		}
	}
	return len(p)
}

// TestReadDeadlineAfterPipelinedPackets (change 26): a client with
// keep-alive 1 s that sends packets pipelined in one write, or a packet
// and half of the next, then stalls, or dribbles a packet a byte at a
// time (slower than keep-alive × 1.5 for the whole packet), is cut
// [MQTT-3.1.2-22]: never before keep-alive × 1.5 from its last packet,
// and, for the dribbler, before it has sent its packet (20 s of bytes).
func TestReadDeadlineAfterPipelinedPackets(t *testing.T) {
	pub := func(j int) []byte {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 0},
			ProtocolVersion: 4, TopicName: "dl/" + itoa(j), Payload: bytes.Repeat([]byte{'x'}, 100)}
		var buf bytes.Buffer
		if err := pk.PublishEncode(&buf); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	var pipelined []byte
	for j := range 50 {
		pipelined = append(pipelined, pub(j)...)
	}
	half := append(pub(1), pub(2)[:40]...)
	for _, tc := range []struct {
		name    string
		stall   []byte // written at once, then nothing
		dribble []byte // then written a byte at a time
	}{
		{"pipelined", pipelined, nil},
		{"pipelined-then-half", append(bytes.Clone(pipelined), pub(99)[:30]...), nil},
		{"one-and-a-half", half, nil},
		{"header-byte", []byte{0x30}, nil},
		{"dribbler", nil, pub(7)[:100]},
		{"pipelined-then-dribbler", pipelined, pub(7)[:100]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := start(t, Options{})
			c, r, _ := keepAliveDial(t, b, 4, "stall", 1)
			closed := make(chan struct{})
			go func() { // the broker's end of the connection, seen as a read error
				defer close(closed)
				c.SetReadDeadline(time.Now().Add(testTimeout))
				for {
					if _, err := readPacket(r); err != nil {
						if errors.Is(err, os.ErrDeadlineExceeded) {
							t.Errorf("not disconnected within %v", testTimeout)
						}
						return
					}
				}
			}()
			last := time.Now()
			if _, err := c.Write(tc.stall); err != nil {
				t.Fatal(err)
			}
			if tc.dribble != nil {
				if n := dribble(c, tc.dribble, 200*time.Millisecond, closed); n == len(tc.dribble) {
					t.Fatalf("the dribbler sent its whole packet (%d bytes, %v) without being cut", n, time.Since(last))
				}
			}
			<-closed
			if took := time.Since(last); took < 1500*time.Millisecond {
				t.Fatalf("disconnected after %v, before keep-alive × 1.5", took)
			}
		})
	}
}

// TestPooledPacketsKeepWills: the will of each of several MQTT 5
// clients, read in their CONNECT through the pool, is published byte for
// byte (topic, payload, User Properties) when the connection drops after
// hundreds of pipelined publishes that reused the pooled packet.
func TestPooledPacketsKeepWills(t *testing.T) {
	const clients, per = 4, 200
	b := start(t, Options{})
	type got struct {
		topic, payload string
		user           []paho5.UserProperty
	}
	in := &inbox[got]{got: make(chan struct{}, 1)}
	cfg := paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) {
			g := got{topic: p.Packet.Topic, payload: string(p.Packet.Payload)}
			if p.Packet.Properties != nil {
				g.user = append(g.user, p.Packet.Properties.User...)
			}
			in.add(g)
			return true, nil
		},
	}}
	sub := dial5(t, b, "will-sub", cfg, nil)
	if _, err := sub.Subscribe(testCtx(t), &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "will/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	want := map[string]got{}
	for i := range clients {
		topic := fmt.Sprintf("will/%d", i)
		payload := fmt.Sprintf("gone %d %s", i, bytes.Repeat([]byte{'w'}, 10*i))
		cp := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: 5,
			Connect: packets.ConnectParams{
				ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: fmt.Sprintf("will-%d", i),
				WillFlag: true, WillTopic: topic, WillPayload: []byte(payload), WillQos: 1,
				WillProperties: packets.Properties{User: []packets.UserProperty{{Key: "who", Val: itoa(i)}}},
			},
		}
		var buf bytes.Buffer
		if err := cp.ConnectEncode(&buf); err != nil {
			t.Fatal(err)
		}
		want[payload] = got{topic: topic, payload: payload, user: []paho5.UserProperty{{Key: "who", Value: itoa(i)}}}
		aliased := map[uint16]bool{}
		for j := range per {
			pk, _ := ptrPublish(i, j, aliased)
			pk.FixedHeader.Qos, pk.PacketID = 0, 0 // no acks to answer
			if err := pk.PublishEncode(&buf); err != nil {
				t.Fatal(err)
			}
		}
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
		if err := pk.PingreqEncode(&buf); err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(testTimeout))
		r := bufio.NewReader(c)
		for { // CONNACK, then PINGRESP: every publish before it was read
			h, err := readPacket(r)
			if err != nil {
				t.Fatal(err)
			}
			if h == 0xd0 {
				break
			}
		}
		c.Close() // no DISCONNECT: the will is published
	}
	for _, m := range in.wait(t, clients) {
		if w, ok := want[m.payload]; !ok || m.topic != w.topic || fmt.Sprint(m.user) != fmt.Sprint(w.user) {
			t.Errorf("will received as %q %q %v; sent as %+v", m.topic, m.payload, m.user, w)
		}
	}
}

// TestQueuedMessageExpiry: the broker's packets no longer carry Created
// (h-ptr); a message queued for an offline MQTT 5 session still expires
// by its Message Expiry Interval, counted from when the broker received
// it [MQTT-3.3.2-5], and one delivered later carries the time it has
// left [MQTT-3.3.2-6].
func TestQueuedMessageExpiry(t *testing.T) {
	b := start(t, Options{})
	type got struct {
		topic  string
		expiry *uint32
	}
	in := &inbox[got]{got: make(chan struct{}, 1)}
	expiry := uint32(300)
	cfg := paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) {
			g := got{topic: p.Packet.Topic}
			if p.Packet.Properties != nil {
				g.expiry = p.Packet.Properties.MessageExpiry
			}
			in.add(g)
			return true, nil
		},
	}}
	cp := &paho5.Connect{CleanStart: true, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}}
	sub := dial5(t, b, "exp-sub", cfg, cp)
	if _, err := sub.Subscribe(testCtx(t), &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "exp/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	if err := sub.Disconnect(&paho5.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the subscriber gone", func() bool { c, ok := b.server.Clients.Get("exp-sub"); return ok && c.Closed() })

	pub := dial5(t, b, "exp-pub", paho5.ClientConfig{}, nil)
	one, long := uint32(1), uint32(1000)
	for _, p := range []*paho5.Publish{
		{Topic: "exp/short", QoS: 1, Payload: []byte("s"), Properties: &paho5.PublishProperties{MessageExpiry: &one}},
		{Topic: "exp/long", QoS: 1, Payload: []byte("l"), Properties: &paho5.PublishProperties{MessageExpiry: &long}},
		{Topic: "exp/none", QoS: 1, Payload: []byte("n")},
	} {
		if _, err := pub.Publish(testCtx(t), p); err != nil {
			t.Fatal(err)
		}
	}
	settle(t, b)
	sent := time.Now()
	// exp/short's second, counted in whole seconds, must be past.
	waitFor(t, "2.1 s", func() bool { return time.Since(sent) > 2100*time.Millisecond })

	cp = &paho5.Connect{CleanStart: false, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}}
	dial5(t, b, "exp-sub", cfg, cp)
	in.wait(t, 2)
	// the last publish was exp/none: once it is in, anything before it is too
	if _, err := pub.Publish(testCtx(t), &paho5.Publish{Topic: "exp/last", QoS: 1}); err != nil {
		t.Fatal(err)
	}
	msgs := in.wait(t, 3)
	for _, m := range msgs {
		switch m.topic {
		case "exp/short":
			t.Errorf("exp/short delivered after its expiry")
		case "exp/long":
			if m.expiry == nil || *m.expiry >= long || *m.expiry < long-testTimeoutSeconds {
				t.Errorf("exp/long delivered with expiry %v, want what is left of %d", m.expiry, long)
			}
		case "exp/none", "exp/last":
			if m.expiry != nil {
				t.Errorf("%s delivered with expiry %d, want none", m.topic, *m.expiry)
			}
		}
	}
	if len(msgs) != 3 {
		t.Errorf("got %+v, want exp/long, exp/none, exp/last", msgs)
	}
}

const testTimeoutSeconds = uint32(testTimeout / time.Second)
