package broker

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// reconnectCase is one way a client cycles connect–disconnect.
type reconnectCase struct {
	name     string
	sameID   bool // every cycle the same client id (else a fresh one)
	clean    bool // Clean Start / Clean Session 1
	takeover bool // connect while the previous connection is still open
}

// reconnectCases are BenchmarkReconnect's cycles.
var reconnectCases = []reconnectCase{
	{name: "fresh-clean", clean: true},
	{name: "fresh-persistent"},
	{name: "same-clean", sameID: true, clean: true},
	{name: "same-persistent", sameID: true},
	{name: "takeover-persistent", sameID: true, takeover: true},
}

// BenchmarkReconnect: one op is a client's connect–disconnect cycle on
// raw loopback TCP: dial, CONNECT, CONNACK, DISCONNECT, and the broker's
// close read (EOF), so the broker's end of the session is in the op.
// Fresh ids or the same id; Clean Start 1 or 0 (MQTT 5: Session Expiry
// 300 s); and the same id connecting while its previous connection is
// still open (takeover: the op ends when the broker has closed the old
// one). A same-id persistent cycle resumes (Session Present 1, checked).
// A session not present subscribes to 0 or 10 filters of its own, as a
// device subscribes to its command topics; a resumed one has them. It
// reports the process's CPU per cycle (the client's share included)
// beside the wall time, which a loaded machine stretches.
func BenchmarkReconnect(b *testing.B) {
	for _, v := range []byte{4, 5} {
		for _, subs := range []int{0, 10} {
			for _, rc := range reconnectCases {
				b.Run(fmt.Sprintf("v%d/subs=%d/%s", v, subs, rc.name), func(b *testing.B) {
					benchReconnect(b, v, subs, rc)
				})
			}
		}
	}
}

// benchReconnect is one BenchmarkReconnect: MQTT version v, subs
// subscriptions a session, cycling as rc says.
func benchReconnect(b *testing.B, v byte, subs int, rc reconnectCase) {
	br := start(b, Options{})
	var prev *reconnPeer
	if rc.takeover {
		prev = reconnDial(b, br, v, "same", rc.clean, false, subs)
	}
	b.ReportAllocs()
	cpu0 := processCPU()
	var slowest time.Duration
	slow := 0 // cycles over 10 ms: waiting, not work
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		id := "same"
		if !rc.sameID {
			id = "fresh-" + strconv.Itoa(i)
		}
		present := rc.sameID && !rc.clean && (i > 0 || rc.takeover)
		p := reconnDial(b, br, v, id, rc.clean, present, subs)
		if rc.takeover {
			prev.closed(b, v) // the broker cut it off
			prev = p
		} else {
			p.disconnect(b)
		}
		d := time.Since(t0)
		slowest = max(slowest, d)
		if d > 10*time.Millisecond {
			slow++
		}
	}
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(slowest.Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(slow), "over-10ms")
	if prev != nil {
		prev.disconnect(b)
	}
}

// reconnPeer is a raw MQTT connection of BenchmarkReconnect.
type reconnPeer struct {
	c net.Conn
	r *bufio.Reader
}

// reconnDial connects id (MQTT version v, Clean Start clean; MQTT 5 with
// Session Expiry 300 s) and reads its CONNACK, which must be a success
// with Session Present present; a session not present is subscribed to
// subs filters of its own (dev/ID/K, QoS 1) in one SUBSCRIBE.
func reconnDial(b testing.TB, br *Broker, v byte, id string, clean, present bool, subs int) *reconnPeer {
	c, err := net.Dial("tcp", br.TCPAddr())
	if err != nil {
		b.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(testTimeout)) //nolint:errcheck // a failing deadline fails the reads
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: clean, Keepalive: 30, ClientIdentifier: id},
	}
	if v == 5 && !clean {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 300, true
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Write(buf.Bytes()); err != nil {
		b.Fatal(err)
	}
	p := &reconnPeer{c: c, r: bufio.NewReader(c)}
	h, body, err := readPacketBody(p.r)
	if err != nil || h != 0x20 || len(body) < 2 || body[1] != 0 {
		b.Fatalf("CONNACK of %s: %#x % x %v", id, h, body, err)
	}
	if got := body[0]&1 == 1; got != present {
		b.Fatalf("CONNACK of %s: Session Present %v, want %v", id, got, present)
	}
	if subs > 0 && !present { // as a device does: a resumed session has them
		sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: v, PacketID: 1}
		for k := range subs {
			sub.Filters = append(sub.Filters, packets.Subscription{Filter: fmt.Sprintf("dev/%s/%d", id, k), Qos: 1})
		}
		var sb bytes.Buffer
		if err := sub.SubscribeEncode(&sb); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(sb.Bytes()); err != nil {
			b.Fatal(err)
		}
		if h, body, err := readPacketBody(p.r); err != nil || h != 0x90 {
			b.Fatalf("SUBACK: %#x % x %v", h, body, err)
		}
	}
	return p
}

// disconnect sends DISCONNECT and waits until the broker closes the
// connection.
func (p *reconnPeer) disconnect(b testing.TB) {
	if _, err := p.c.Write([]byte{0xe0, 0}); err != nil {
		b.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, p.r); err != nil || n != 0 {
		b.Fatalf("after DISCONNECT: %d bytes, %v; want the close", n, err)
	}
	p.c.Close()
}

// closed waits until the broker closes the connection, taken over: MQTT
// 5 gets DISCONNECT 0x8E first.
func (p *reconnPeer) closed(b testing.TB, v byte) {
	rest, err := io.ReadAll(p.r)
	if err != nil {
		b.Fatalf("taken over: %v", err)
	}
	if v == 5 && (len(rest) < 3 || rest[0] != 0xe0 || rest[2] != 0x8e) {
		b.Fatalf("taken over: % x, want DISCONNECT 0x8E", rest)
	}
	p.c.Close()
}
