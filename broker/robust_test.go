package broker

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/bench/rawmqtt"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// connectPacket is a CONNECT for protocol version v (4 = 3.1.1, 5).
func connectPacket(v byte, id string) []byte {
	return connectPacketKeepalive(v, id, 30)
}

// connectPacketKeepalive is connectPacket with the given keepalive (s).
func connectPacketKeepalive(v byte, id string, keepalive uint16) []byte {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        keepalive,
			ClientIdentifier: id,
		},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// alive checks the broker still serves: a fresh client connects,
// subscribes and gets its own publish back.
func alive(t *testing.T, b *Broker) {
	t.Helper()
	c := dial3(t, b, "probe", true)
	c.sub(t, "probe/x", 0)
	c.pub(t, "probe/x", 0, false, "ok")
	c.wait(t, 1)
	c.Disconnect(0)
}

// TestSubscribeDecodeMalformed: mochi v2.7.9 panicked in SubscribeDecode
// on an MQTT 5 SUBSCRIBE whose filter lacks its options byte (the broker
// recovered it per connection). The decoder in internal/mochi refuses it:
// DISCONNECT 0x81 Malformed Packet, the connection closes, no panic, and
// everyone else is served.
func TestSubscribeDecodeMalformed(t *testing.T) {
	b := start(t, Options{})
	other := dial3(t, b, "bystander", true)
	other.sub(t, "b/#", 0)
	c, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(connectPacket(5, "evil"))
	c.SetReadDeadline(time.Now().Add(testTimeout))
	r := bufio.NewReader(c)
	if h, err := readPacket(r); err != nil || h != 0x20 {
		t.Fatalf("no CONNACK: %#x %v", h, err)
	}
	c.Write([]byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61})
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("connection not closed: %v (read % x)", err, got)
	}
	if len(got) < 3 || got[0] != 0xE0 || got[2] != 0x81 {
		t.Errorf("got % x, want DISCONNECT 0x81 Malformed Packet and the end of the connection", got)
	}
	if n := b.stats.Panics.Load(); n != 0 {
		t.Errorf("%d panics counted", n)
	}
	alive(t, b)
	pub := dial3(t, b, "pub", true)
	pub.pub(t, "b/1", 0, false, "still here")
	other.wait(t, 1)
}

// validPackets are well-formed packets of every type a client sends, the
// seeds the mutation test and the fuzz target start from.
func validPackets(v byte) [][]byte {
	enc := func(pk packets.Packet) []byte {
		pk.ProtocolVersion = v
		var buf bytes.Buffer
		var err error
		switch pk.FixedHeader.Type {
		case packets.Publish:
			err = pk.PublishEncode(&buf)
		case packets.Subscribe:
			err = pk.SubscribeEncode(&buf)
		case packets.Unsubscribe:
			err = pk.UnsubscribeEncode(&buf)
		case packets.Puback:
			err = pk.PubackEncode(&buf)
		case packets.Pubrec:
			err = pk.PubrecEncode(&buf)
		case packets.Pubrel:
			err = pk.PubrelEncode(&buf)
		case packets.Pubcomp:
			err = pk.PubcompEncode(&buf)
		case packets.Pingreq:
			err = pk.PingreqEncode(&buf)
		case packets.Disconnect:
			err = pk.DisconnectEncode(&buf)
		case packets.Auth:
			err = pk.AuthEncode(&buf)
		}
		if err != nil {
			panic(err)
		}
		return buf.Bytes()
	}
	props := packets.Properties{User: []packets.UserProperty{{Key: "mote", Val: "tree"}}, ContentType: "application/json"}
	out := [][]byte{
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "a/b", Payload: []byte("1")}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true}, PacketID: 7, TopicName: "$tree/a/+", Payload: []byte(`{"x":{"y":1}}`)}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 2}, PacketID: 8, TopicName: "$set/a/#", Payload: []byte(`0`)}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 9, TopicName: "t/+", Payload: []byte(`{"k":[1,2]}`), Properties: props}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 10, Filters: packets.Subscriptions{{Filter: "$sync/a/+", Qos: 1}, {Filter: "a/#", Qos: 2}}}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 11, Filters: packets.Subscriptions{{Filter: "$tree.cbor/#", Qos: 0}}}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: 12, Filters: packets.Subscriptions{{Filter: "$sync/a/+"}}}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 1}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrec}, PacketID: 1}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 8}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubcomp}, PacketID: 1}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}),
	}
	if v == 5 {
		out = append(out, enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Auth}, ReasonCode: 0x18}))
	}
	// Hostile payloads: deep nesting in JSON, CBOR and MessagePack (within and far past
	// the limit), long topics, lengths declared far beyond the bytes sent.
	deepJSON := []byte(strings.Repeat("[", 5000) + strings.Repeat("]", 5000))
	deepCBOR := append(bytes.Repeat([]byte{0x81}, 5000), 0x00)
	hugeCBOR := []byte{0xa1, 0x61, 'k', 0x9b, 0, 0, 0, 1, 0, 0, 0, 0, 0} // an array of 2^32 items, none sent
	deepMsgPack := append(bytes.Repeat([]byte{0x91}, 5000), 0x00)
	hugeMsgPack := []byte{0x81, 0xa1, 'k', 0xdf, 0xff, 0xff, 0xff, 0xff} // a map of 2^32-1 pairs, none sent
	out = append(out,
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: "deep/json", Payload: deepJSON}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 13, TopicName: "$set/deep/+", Payload: deepJSON}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 14, TopicName: "$tree/deep", Payload: []byte(strings.Repeat(`{"a":`, 40) + "1" + strings.Repeat("}", 40))}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 15, TopicName: "$tree.cbor/deep", Payload: deepCBOR}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 16, TopicName: "$tree.cbor/huge", Payload: hugeCBOR}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 18, TopicName: "$tree.msgpack/deep", Payload: deepMsgPack}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 19, TopicName: "$tree.msgpack/huge", Payload: hugeMsgPack}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, TopicName: strings.Repeat("long/", 2000), Payload: []byte("1")}),
		enc(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 17, Filters: packets.Subscriptions{{Filter: "$sync/" + strings.Repeat("x/", 3000) + "#"}}}),
		append([]byte{0x30}, varint(60<<20)...), // a PUBLISH declaring 60 MiB
	)
	return out
}

// willConnects are CONNECT packets with hostile wills: Mote's and $SYS
// prefixes, a deep tree, a delayed $set.
func willConnects(v byte, id string) [][]byte {
	var out [][]byte
	for _, w := range []struct {
		topic, payload string
		delay          uint32
	}{
		{"$tree/dev", `{"online":0}`, 0},
		{"$set/+/x", "0", 1},
		{"$SYS/broker/version", "forged", 0},
		{"$sync/a/#", "{}", 0},
		{"deep/will", strings.Repeat("[", 3000) + strings.Repeat("]", 3000), 0},
		{"$tree.cbor/w", string(append(bytes.Repeat([]byte{0xa1, 0x61, 'k'}, 40), 0x01)), 0},
		{"$tree.msgpack/w", string(append(bytes.Repeat([]byte{0x81, 0xa1, 'k'}, 40), 0x01)), 0},
	} {
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: v,
			Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id,
				WillFlag: true, WillTopic: w.topic, WillPayload: []byte(w.payload), WillQos: 1, WillRetain: true},
		}
		if v == 5 {
			pk.Connect.WillProperties.WillDelayInterval = w.delay
		}
		var buf bytes.Buffer
		if err := pk.ConnectEncode(&buf); err != nil {
			panic(err)
		}
		out = append(out, buf.Bytes())
	}
	return out
}

// mutate flips, inserts, deletes or truncates a few bytes; half the time
// only in the body, with the remaining length fixed up to match, so the
// damage reaches the decoders instead of the framing.
func mutate(r *rand.Rand, p []byte) []byte {
	if r.IntN(2) == 0 {
		if first, body, ok := splitFrame(p); ok {
			body = mutateBytes(r, body)
			return append(append([]byte{first}, varint(len(body))...), body...)
		}
	}
	return mutateBytes(r, p)
}

// splitFrame splits a packet into its first byte and body.
func splitFrame(p []byte) (byte, []byte, bool) {
	n, mult := 0, 1
	for i := 1; i < len(p) && i <= 4; i++ {
		n += int(p[i]&0x7f) * mult
		mult *= 128
		if p[i]&0x80 == 0 {
			return p[0], p[i+1:], n == len(p)-i-1
		}
	}
	return 0, nil, false
}

// varint is n as an MQTT Variable Byte Integer.
func varint(n int) []byte { return rawmqtt.AppendVarint(nil, n) }

func mutateBytes(r *rand.Rand, p []byte) []byte {
	p = append([]byte(nil), p...)
	for range 1 + r.IntN(3) {
		if len(p) == 0 {
			return []byte{byte(r.IntN(256))}
		}
		switch i := r.IntN(len(p)); r.IntN(5) {
		case 0, 1:
			p[i] = byte(r.IntN(256))
		case 2:
			p = append(p[:i], append([]byte{byte(r.IntN(256))}, p[i:]...)...)
		case 3:
			p = append(p[:i], p[i+1:]...)
		case 4:
			p = p[:i]
		}
	}
	return p
}

// TestMutatedPackets sends mutated packets of every type, MQTT 3.1.1 and 5,
// each connection a CONNECT and a burst; afterwards the broker must serve a
// fresh client, with goroutines back to about where they started.
// MOTE_MUTATIONS sets the count (default 20,000; the figure in the README
// is from 100,000).
func TestMutatedPackets(t *testing.T) {
	n := 20_000
	if s := os.Getenv("MOTE_MUTATIONS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	if testing.Short() {
		n = 2_000
	}
	b := start(t, Options{})
	runtime.GC()
	baseGoroutines := runtime.NumGoroutine()
	baseMem := heapAndStacks()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	seeds := map[byte][][]byte{4: validPackets(4), 5: validPackets(5)}
	const perConn, workers = 5, 16
	// The mutators stop at n packets or at the deadline, whichever comes
	// first, well inside waitGroup's testTimeout: on a loaded machine
	// they send fewer, and say how many (at least a tenth of n, or the
	// run proves little).
	deadline := time.Now().Add(testTimeout * 2 / 3)
	var sent atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, uint64(w)))
			for sent.Load() < int64(n) && time.Now().Before(deadline) {
				v := byte(4 + r.IntN(2))
				c, err := net.Dial("tcp", b.TCPAddr())
				if err != nil {
					t.Error(err)
					return
				}
				id := fmt.Sprint("m", w, "-", sent.Load())
				burst := connectPacket(v, id)
				if r.IntN(4) == 0 { // a CONNECT with a hostile will, sometimes mutated too
					wills := willConnects(v, id)
					burst = wills[r.IntN(len(wills))]
					if r.IntN(2) == 0 {
						burst = mutate(r, burst)
					}
					burst = append([]byte(nil), burst...)
				}
				for range perConn {
					burst = append(burst, mutate(r, seeds[v][r.IntN(len(seeds[v]))])...)
				}
				sent.Add(perConn)
				c.SetDeadline(time.Now().Add(300 * time.Millisecond))
				c.Write(burst)
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						break // the broker closed it, or the deadline passed
					}
				}
				c.Close()
			}
		}()
	}
	waitGroup(t, "mutators", &wg)
	t.Logf("%d mutated packets sent", sent.Load())
	if sent.Load() < int64(n/10) {
		t.Errorf("only %d of %d mutated packets sent before the deadline", sent.Load(), n)
	}
	alive(t, b)
	settle(t, b)
	var got int
	for deadline := time.Now().Add(testTimeout); ; time.Sleep(50 * time.Millisecond) {
		runtime.GC()
		if got = runtime.NumGoroutine(); got <= baseGoroutines+10 || time.Now().After(deadline) {
			break
		}
	}
	if got > baseGoroutines+10 {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after the run, %d before\n%s", got, baseGoroutines, buf[:runtime.Stack(buf, true)])
	}
	// Connections still ending (a few goroutines above the base) hold
	// their buffers a moment longer on a loaded machine: what counts is
	// that the memory comes back.
	mem := heapAndStacks()
	for deadline := time.Now().Add(testTimeout); mem > baseMem+32<<20 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		mem = heapAndStacks()
	}
	if mem > baseMem+32<<20 {
		t.Errorf("heap and stacks grew from %d to %d KiB", baseMem>>10, mem>>10)
	}
	t.Logf("%d mutated packets, %d connection panics recovered, goroutines %d → %d, heap+stacks %d → %d KiB",
		sent.Load(), b.stats.Panics.Load(), baseGoroutines, got, baseMem>>10, mem>>10)
}

// FuzzBroker drives the whole broker: a CONNECT (MQTT 3.1.1 or 5) followed
// by arbitrary bytes on one connection — or, when v says so, bytes that
// start with a CONNECT of their own (wills). The broker must stay up and
// serve a fresh client afterwards.
func FuzzBroker(f *testing.F) {
	for _, v := range []byte{4, 5} {
		for _, p := range validPackets(v) {
			f.Add(v, p)
		}
		for _, w := range willConnects(v, "fuzz") {
			f.Add(v+2, append(w, validPackets(v)[0]...))
		}
	}
	f.Add(byte(5), []byte{0x82, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61}) // mochi's SubscribeDecode panic
	b := start(f, Options{})
	n := 0
	f.Fuzz(func(t *testing.T, v byte, data []byte) {
		ownConnect := v%4 >= 2
		v = 4 + v%2
		c, err := net.Dial("tcp", b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Millisecond))
		if !ownConnect {
			data = append(connectPacket(v, "fuzz"), data...)
		}
		c.Write(data)
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		if n++; n%200 == 0 {
			p, err := net.Dial("tcp", b.TCPAddr())
			if err != nil {
				t.Fatalf("broker down: %v", err)
			}
			p.SetDeadline(time.Now().Add(testTimeout))
			p.Write(connectPacket(4, "probe"))
			if _, err := p.Read(buf); err != nil || buf[0] != 0x20 {
				t.Fatalf("broker does not answer a fresh client: %v", err)
			}
			p.Close()
		}
	})
}
