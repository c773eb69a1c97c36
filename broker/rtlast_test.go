package broker

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// The last red team of the session: a hostile client against the merged
// changes that were not attacked after they were written (mochi changes
// 28–35, enhanced-auth refusal, SplitSkip, LetWritesFirst).

// wsStream is a WebSocket connection as a byte stream: each Write one
// binary message, Read reading messages in turn.
type wsStream struct {
	c *websocket.Conn
	r io.Reader
}

func (s *wsStream) Write(p []byte) (int, error) {
	if err := s.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *wsStream) Read(p []byte) (int, error) {
	for {
		if s.r != nil {
			n, err := s.r.Read(p)
			if err == io.EOF {
				s.r = nil
				if n > 0 {
					return n, nil
				}
				continue
			}
			return n, err
		}
		_, r, err := s.c.NextReader()
		if err != nil {
			return 0, err
		}
		s.r = r
	}
}

// TestLastBodiesDribbled: PUBLISH bodies of every size around the body
// step (4 KiB) and the read buffer's, and well past them, sent in pieces
// of 1, 7, 4095 and 4097 bytes over TCP, TLS and WebSocket (mochi change 29
// reads a body as it arrives into a buffer that doubles): each arrives
// byte for byte at a subscriber and is acknowledged.
func TestLastBodiesDribbled(t *testing.T) {
	certFile, keyFile, pool := testCert(t)
	tc, err := LoadTLS(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{TLS: "127.0.0.1:0", TLSConfig: tc})
	bodies := []int{1, 4094, 4095, 4096, 4097, 8191, 8192, 8193, 12289, 65535, 65536, 65537, 200003}
	for _, transport := range []string{"tcp", "tls", "ws"} {
		for _, piece := range []int{1, 7, 4095, 4097} {
			t.Run(fmt.Sprint(transport, "/", piece), func(t *testing.T) {
				var rw io.ReadWriter
				if transport != "ws" {
					var nc net.Conn
					var err error
					if transport == "tcp" {
						nc, err = net.Dial("tcp", b.TCPAddr())
					} else {
						nc, err = tls.Dial("tcp", b.TLSAddr(), &tls.Config{RootCAs: pool})
					}
					if err != nil {
						t.Fatal(err)
					}
					defer nc.Close()
					nc.SetDeadline(time.Now().Add(testTimeout))
					rw = nc
				} else {
					d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: testTimeout}
					c, _, err := d.Dial("ws://"+b.WSAddr()+"/mqtt", nil)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					c.SetReadDeadline(time.Now().Add(testTimeout))
					rw = &wsStream{c: c}
				}
				id := fmt.Sprint("pub", transport, piece)
				watch := dial3(t, b, "w"+id, true)
				watch.sub(t, "rb/"+id, 0)
				r := bufio.NewReader(rw)
				if _, err := rw.Write(connectPacket(5, id)); err != nil {
					t.Fatal(err)
				}
				if h, _, err := readPacketBody(r); err != nil || h>>4 != 2 {
					t.Fatalf("no CONNACK: %#x %v", h, err)
				}
				topic := "rb/" + id
				var want []string
				for i, n := range bodies {
					over := 2 + len(topic) + 2 + 1 // topic, packet id, properties length
					if piece == 1 && n > 9000 {
						continue // a byte a write: the small ones
					}
					payload := strings.Repeat(string(rune('a'+i%26)), max(n-over, 1))
					pk := hxPublish(topic, 1, uint16(i+1), hxProps(), payload)
					for off := 0; off < len(pk); off += piece {
						if _, err := rw.Write(pk[off:min(off+piece, len(pk))]); err != nil {
							t.Fatal(err)
						}
					}
					h, body, err := readPacketBody(r)
					if err != nil || h != 0x40 || !bytes.HasPrefix(body, hxID(uint16(i+1))) || (len(body) > 2 && body[2] != 0) {
						t.Fatalf("body %d: answer %#x % x %v, want PUBACK 0x00", n, h, body, err)
					}
					want = append(want, payload)
				}
				got := watch.wait(t, len(want))
				for i := range want {
					if got[i].payload != want[i] {
						t.Errorf("message %d: %d bytes, want %d (or differs)", i, len(got[i].payload), len(want[i]))
					}
				}
			})
		}
	}
	alive(t, b)
}

// TestLastDollarTopics: after mochi change 34 a PUBLISH to $SYSTEM/a is
// delivered. A subscriber to # or +/… must not get a topic beginning
// with $ [MQTT-4.7.2-1], and no client may publish into the broker's
// $SYS level in any case ($sys/…, $SYS alone, $Sys/mote/errors/<id>):
// each is answered (no silent drop) and reaches no subscriber.
func TestLastDollarTopics(t *testing.T) {
	b := start(t, Options{})
	wild := dial3(t, b, "wild", true)
	wild.sub(t, "#", 0)
	wild.sub(t, "+/a", 0)
	wild.sub(t, "+", 0)
	exact := dial3(t, b, "exact", true)
	for _, f := range []string{"$sys/x", "$SYS", "$Sys/mote/errors/hx", "$SYS/x", "$sys"} {
		exact.sub(t, f, 0)
	}
	var send [][]byte
	topics := []string{"$SYSTEM/a", "$sysfoo", "$sys/x", "$SYS", "$sys", "$Sys/mote/errors/hx", "$SYS/x", "$SYS/mote/errors/hx"}
	for i, tp := range topics {
		send = append(send, hxPublish(tp, 1, uint16(i+1), hxProps(), "evil"))
	}
	send = append(send, hxPublish("m/a", 1, 99, hxProps(), "marker"))
	got := hxExchange(t, b.TCPAddr(), 5, "hx", send...)
	if len(got) != len(topics)+1 {
		t.Fatalf("answers %q: want one ack per publish (%d)", got, len(topics)+1)
	}
	for i, a := range got[:len(topics)] {
		if i < 2 && a != fmt.Sprintf("40:00 %02x", i+1) {
			t.Errorf("%s: %q, want PUBACK 0x00", topics[i], a)
		}
		if i >= 2 && !strings.HasPrefix(a, fmt.Sprintf("40:00 %02x 90", i+1)) {
			t.Errorf("%s: %q, want PUBACK 0x90", topics[i], a)
		}
	}
	msgs := wild.wait(t, 1)
	for _, m := range msgs {
		if strings.HasPrefix(m.topic, "$") {
			t.Errorf("wildcard subscriber got %s %q [MQTT-4.7.2-1]", m.topic, m.payload)
		}
	}
	exact.mu.Lock()
	for _, m := range exact.msgs {
		if m.payload == "evil" {
			t.Errorf("a client published into %s", m.topic)
		}
	}
	exact.mu.Unlock()
	alive(t, b)
}

// TestLastAuthEdges: around the enhanced-authentication refusal. A CONNECT
// with Authentication Data and no Authentication Method is a Protocol
// Error (§3.1.2.11.10): CONNACK 0x82 and closed, or closed. An AUTH packet
// first, before any CONNECT, or from an MQTT 3.1.1 client (where packet
// type 15 is reserved) is answered by closing the connection, with no
// CONNACK or DISCONNECT 0x82 an MQTT 3.1.1 client cannot read.
func TestLastAuthEdges(t *testing.T) {
	b := start(t, Options{})
	roundTrip := func(t *testing.T, send ...[]byte) []string {
		nc, err := net.Dial("tcp", b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(testTimeout))
		for _, p := range send {
			nc.Write(p) //nolint:errcheck // the reads say
		}
		r := bufio.NewReader(nc)
		var got []string
		for {
			h, body, err := readPacketBody(r)
			if err != nil {
				return append(got, "closed")
			}
			got = append(got, fmt.Sprintf("%x:% x", h, body))
		}
	}
	connect5 := func(props []byte) []byte {
		return hxPacket(0x10, hxStr("MQTT"), []byte{5, 0x02, 0, 60}, props, hxStr("hx-ad"))
	}
	for _, c := range []struct {
		name string
		send [][]byte
		ok   func([]string) bool
	}{
		{"auth data without method", [][]byte{connect5(hxProps(append([]byte{0x16}, hxStr("data")...)))},
			func(g []string) bool {
				return hxMatch(g, []string{"20:00 82*", "closed"}) || hxMatch(g, []string{"closed"})
			}},
		{"auth before connect", [][]byte{hxPacket(0xF0, []byte{0x18}, hxProps())},
			func(g []string) bool { return hxMatch(g, []string{"closed"}) }},
		{"auth from 3.1.1", [][]byte{connectPacket(4, "hx-v4"), {0xF0, 0}},
			func(g []string) bool { return hxMatch(g, []string{"20:00 00", "closed"}) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			if g := roundTrip(t, c.send...); !c.ok(g) {
				t.Errorf("got %q", g)
			}
		})
	}
	alive(t, b)
}

// TestLastAcksDuringReplay: mochi change 27 lets mochi's own writes (acks,
// PINGRESP) take the client's lock before the writer's next flush. A
// client that gets a QoS 1 replay of 1,500 retained rows (acknowledging
// each) while it pipelines 300 QoS 1 publishes and a PINGREQ gets every
// message, every PUBACK and its PINGRESP: no writer spins the others out,
// nothing deadlocks on the client's lock. Two such clients at once.
func TestLastAcksDuringReplay(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	var tree strings.Builder
	tree.WriteString("{")
	const rows, pubs = 1500, 300
	for i := range rows {
		if i > 0 {
			tree.WriteString(",")
		}
		fmt.Fprintf(&tree, `"r%d":"%s"`, i, strings.Repeat("v", 300))
	}
	tree.WriteString("}")
	if err := b.Publish(ctx, Principal{ClientID: "seed"}, Message{Topic: "$tree/lr/+", Payload: []byte(tree.String()), QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	settle(t, b)
	done := make(chan error, 2)
	for k := range 2 {
		go func() { done <- ackReplay(b.TCPAddr(), fmt.Sprint("ar", k), rows, pubs) }()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	alive(t, b)
}

// ackReplay is one client of TestLastAcksDuringReplay.
func ackReplay(addr, id string, rows, pubs int) error {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(testTimeout))
	r := bufio.NewReader(nc)
	if _, err := nc.Write(connectPacket(5, id)); err != nil {
		return err
	}
	if h, _, err := readPacketBody(r); err != nil || h>>4 != 2 {
		return fmt.Errorf("%s: no CONNACK: %#x %v", id, h, err)
	}
	acks := make(chan []byte, rows+pubs+2)
	writerDone := make(chan error, 1)
	go func() { // the only writer: the subscribe, the publishes, the PINGREQ, then the PUBACKs
		var out bytes.Buffer
		out.Write(hxSubscribe(1, hxProps(), "lr/#", 1))
		for i := range pubs {
			out.Write(hxPublish("lp/"+id, 1, uint16(100+i), hxProps(), "p"))
		}
		out.Write([]byte{0xC0, 0})
		if _, err := nc.Write(out.Bytes()); err != nil {
			writerDone <- err
			return
		}
		for a := range acks {
			if _, err := nc.Write(a); err != nil {
				writerDone <- err
				return
			}
		}
		writerDone <- nil
	}()
	got, pubacks, pong := 0, 0, false
	for got < rows || pubacks < pubs || !pong {
		h, body, err := readPacketBody(r)
		if err != nil {
			close(acks)
			return fmt.Errorf("%s: %d of %d rows, %d of %d PUBACKs, PINGRESP %v: %v", id, got, rows, pubacks, pubs, pong, err)
		}
		switch {
		case h>>4 == 3:
			got++
			if h>>1&3 == 1 {
				tl := int(body[0])<<8 | int(body[1])
				acks <- hxPacket(0x40, body[2+tl:4+tl])
			}
		case h == 0x40:
			pubacks++
		case h == 0xD0:
			pong = true
		}
	}
	close(acks)
	return <-writerDone
}
