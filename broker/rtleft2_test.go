package broker

import (
	"bufio"
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// dialStalledWS connects a WebSocket MQTT client (MQTT 5, client id id)
// subscribed to filter, over a socket with a small receive buffer that
// the test stops reading once the SUBACK is in: the raw socket is
// returned for the test to close.
func dialStalledWS(t *testing.T, b *Broker, id, filter string) *net.TCPConn {
	t.Helper()
	raw, err := net.DialTCP("tcp", nil, tcpAddr(t, b.WSAddr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	raw.SetReadBuffer(4096) //nolint:errcheck // smaller is faster to fill; any size fills
	raw.SetDeadline(time.Now().Add(testTimeout))
	c := dialWSStream(t, "ws://"+b.WSAddr()+"/mqtt", raw, nil)
	c.Write(connectPacket(5, id))
	r := bufio.NewReader(c)
	if h, _, err := readPacketBody(r); err != nil || h != 0x20 {
		t.Fatalf("no CONNACK: %#x %v", h, err)
	}
	c.Write(subscribePacket(5, []string{filter}))
	if h, _, err := readPacketBody(r); err != nil || h != 0x90 {
		t.Fatalf("no SUBACK: %#x %v", h, err)
	}
	return raw
}

// TestWebSocketWriteTimeout: a WebSocket client that stopped reading is
// closed once a write to it has waited WriteTimeout, as a TCP or TLS one
// is. gorilla's websocket sets the socket's write deadline to its own
// before each frame it writes, none unless set through it: the deadline
// the broker's connection set (netConn.armWrite) was undone, the write
// waited for ever, holding the client's lock, and so would the
// DISCONNECT of a takeover (its bound undone the same way) under the
// client id's takeover lock.
func TestWebSocketWriteTimeout(t *testing.T) {
	b := start(t, Options{WriteTimeout: 200 * time.Millisecond, QueueBytes: 64 << 20})
	dialStalledWS(t, b, "wsstall", "wsstall/#")
	waitFor(t, "the connection filed", func() bool { return b.connByID("wsstall") != nil })
	cl := b.connByID("wsstall").out.(*mqttOut).cl
	pub := dial3(t, b, "pub", true)
	// 16 MiB through -race on a loaded machine may take longer than pub's
	// 5 s (a CI run: 7 s).
	if tok := pub.Publish("wsstall/big", 0, false, string(make([]byte, 16<<20))); !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
		t.Fatalf("publish wsstall/big: %v", tok.Error())
	}
	waitFor(t, "the stalled WebSocket client closed after WriteTimeout", cl.Closed)
	alive(t, b)
}

// stormPackets encodes what a storm client sends: a CONNECT of id (MQTT
// version v; clean or a persistent session; with a will on will/<id>),
// and the SUBSCRIBE, UNSUBSCRIBE and DISCONNECT it may follow with.
func stormConnect(v byte, id string, clean, will bool) []byte {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            clean,
			Keepalive:        30,
			ClientIdentifier: id,
		},
	}
	if v == 5 && !clean {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 3600, true
	}
	if will {
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload = true, "will/"+id, []byte("gone")
	}
	return encodePacket(pk)
}

func encodePacket(pk packets.Packet) []byte {
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Unsubscribe:
		err = pk.UnsubscribeEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	}
	if err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// TestTakeoverStorm: clients of a few ids connect over and over, MQTT
// 3.1.1 and 5, clean and persistent sessions, with wills, subscribing and
// unsubscribing, some panicking (panicHook), some leaving with DISCONNECT,
// some closing before their CONNACK, some taken over. Once every client
// closed, the broker holds nothing of them but the persistent sessions:
// no connection (raw, conns, ClientsConnected), no CONNECT's will
// (connWills), no clean session filed, none filed connected, and mochi's
// subscription count and topic index agree with the sessions' lists.
func TestTakeoverStorm(t *testing.T) {
	b := start(t, Options{})
	addPanicHook(t, b)
	var wills atomic.Int64
	watch := dial3(t, b, "watch", true)
	watch.Subscribe("will/#", 0, func(paho.Client, paho.Message) { wills.Add(1) }).Wait()
	ids := []string{"sa", "sb", "sc"}
	const workers, rounds = 8, 25
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range rounds {
				id := ids[rng.IntN(len(ids))]
				v := byte(4)
				if rng.IntN(2) == 0 {
					v = 5
				}
				c, err := net.Dial("tcp", b.TCPAddr())
				if err != nil {
					t.Error(err)
					return
				}
				c.SetDeadline(time.Now().Add(testTimeout))
				out := stormConnect(v, id, rng.IntN(2) == 0, rng.IntN(2) == 0)
				out = append(out, encodePacket(packets.Packet{
					FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: v, PacketID: 1,
					Filters: packets.Subscriptions{{Filter: "st/" + id + "/a"}, {Filter: "st/" + id + "/b"}},
				})...)
				out = append(out, encodePacket(packets.Packet{
					FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, ProtocolVersion: v, PacketID: 2,
					Filters: packets.Subscriptions{{Filter: "st/" + id + "/a"}},
				})...)
				switch rng.IntN(5) {
				case 0: // leaves with DISCONNECT
					out = append(out, encodePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: v})...)
				case 1: // panics
					out = append(out, subscribePacket(v, []string{panicFilter})...)
				}
				c.Write(out)
				switch rng.IntN(3) {
				case 0: // gone at once: perhaps before its CONNACK
				case 1: // a moment
					readPacketBody(bufio.NewReader(c)) //nolint:errcheck // its CONNACK, or its end
				default: // until the broker closes it (DISCONNECT, panic) or it is taken over, or a moment
					c.SetReadDeadline(time.Now().Add(time.Duration(rng.IntN(20)) * time.Millisecond))
					io.Copy(io.Discard, c) //nolint:errcheck // ends either way
				}
				c.Close()
			}
		})
	}
	wg.Wait()
	waitFor(t, "every connection closed", func() bool {
		n := 0
		b.conns.Range(func(any, any) bool { n++; return true })
		return rawCount(b) == 1 && n == 1 && atomic.LoadInt64(&b.server.Info.ClientsConnected) == 1 // the watcher
	})
	waitFor(t, "no CONNECT's will left", func() bool {
		n := 0
		b.connWills.Range(func(any, any) bool { n++; return true })
		return n == 0
	})
	var subs int64
	for id, cl := range b.server.Clients.GetAll() {
		if id == "watch" {
			subs += int64(cl.State.Subscriptions.Len())
			continue
		}
		if !cl.Closed() {
			t.Errorf("%s: filed and open, with no connection", id)
		}
		if !sessionLasts(cl) {
			t.Errorf("%s: a clean session still filed", id)
		}
		listed := cl.State.Subscriptions.GetAll()
		subs += int64(len(listed))
		for _, f := range []string{"st/" + id + "/a", "st/" + id + "/b"} {
			_, inIndex := b.server.Topics.Subscribers(f).Subscriptions[id]
			if _, inSession := listed[f]; inIndex != inSession {
				t.Errorf("%s: %s in the topic index %v, in the session %v", id, f, inIndex, inSession)
			}
		}
	}
	if got := atomic.LoadInt64(&b.server.Info.Subscriptions); got != subs {
		t.Errorf("mochi counts %d subscriptions, the sessions list %d", got, subs)
	}
	t.Logf("%d panics, %d sessions left with %d subscriptions, %d wills published", b.stats.Panics.Load(), b.server.Clients.Len(), subs, wills.Load())
	alive(t, b)
}
