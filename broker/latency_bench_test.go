package broker

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// BenchmarkRoundTrip: one QoS 0 publish → its one subscriber's receipt,
// through real TCP on 127.0.0.1, one message at a time (each op is a whole
// round trip: the time per op is the latency of the path, the allocations
// per op the broker's per message, the clients allocating none; cpu-ns/op
// the process's CPU a message, the clients' writes and reads in it). plain:
// a plain subscriber of a plain topic; plain-v5: the same with MQTT 5
// clients; plain-v5-props: and a content type and a user property on each
// message; tree: a $tree publish to a $sync subscriber (a delta, through
// the message loop).
func BenchmarkRoundTrip(b *testing.B) {
	for _, kind := range []string{"plain", "plain-v5", "plain-v5-props", "tree"} {
		b.Run(kind, func(b *testing.B) {
			br := start(b, Options{})
			roundTrip(b, br, br.TCPAddr(), kind)
		})
	}
	// The same client against Mosquitto, when installed: the yardstick of
	// issue 15 (plain only).
	b.Run("plain-mosquitto", func(b *testing.B) { roundTrip(b, nil, startMosquitto(b), "plain") })
}

// roundTrip measures publish → receipt on the broker at addr, one message
// at a time; for Mote (br), also the share of messages written directly
// (direct/op: no hand-off to the connection's writer).
func roundTrip(b *testing.B, br *Broker, addr, kind string) {
	version := byte(4)
	if kind != "plain" && kind != "tree" {
		version = 5
	}
	sub := dialBenchV(b, addr, "rt-sub", version)
	pub := dialBenchV(b, addr, "rt-pub", version)
	var pks [2][]byte
	switch kind {
	case "plain":
		sub.subscribe(b, "rt/t")
		pks[0], pks[1] = publish3("rt/t", "0123456789"), publish3("rt/t", "9876543210")
	case "plain-v5", "plain-v5-props":
		sub.subscribe(b, "rt/t")
		var props []byte
		if kind == "plain-v5-props" {
			props = append(append([]byte{0x03}, 0, 16), "application/json"...)
			props = append(append(append(props, 0x26, 0, 3), "seq"...), 0, 2, '4', '2')
		}
		pks[0], pks[1] = publish5("rt/t", props, "0123456789"), publish5("rt/t", props, "9876543210")
	default:
		pub.write(b, publish3("$tree/rt", `{"t":0}`))
		sub.subscribe(b, "$sync/rt/+")
		sub.readPublish(b) // the snapshot
		pks[0], pks[1] = publish3("$tree/rt", `{"t":1}`), publish3("$tree/rt", `{"t":2}`)
	}
	b.ReportAllocs()
	var direct int64
	if br != nil {
		direct = br.stats.Direct.Load()
	}
	i := 0
	cpu := processCPU()
	for b.Loop() {
		pub.write(b, pks[i&1])
		sub.readPublish(b)
		i++
	}
	b.ReportMetric(float64(processCPU()-cpu)/float64(i), "cpu-ns/op") // the broker's and the two clients'
	if br != nil {
		b.ReportMetric(float64(br.stats.Direct.Load()-direct)/float64(i), "direct/op")
	}
}

// startMosquitto runs mosquitto on a free loopback port for one benchmark
// (or test), with the extra config lines conf, and returns its address;
// it skips without mosquitto.
func startMosquitto(b testing.TB, conf ...string) string {
	path, err := exec.LookPath("mosquitto")
	if err != nil {
		b.Skip("mosquitto not installed")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	file := filepath.Join(b.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(file, []byte("listener "+port+" 127.0.0.1\nallow_anonymous true\n"+strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(path, "-c", file)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) //nolint:errcheck // killed
	for deadline := time.Now().Add(testTimeout); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			b.Fatalf("mosquitto did not listen on %s: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// benchClient is a raw MQTT 3.1.1 client that allocates nothing per
// message: it writes encoded packets and reads into one buffer.
type benchClient struct {
	c   net.Conn
	r   *bufio.Reader
	buf []byte
	v5  bool
}

func dialBench(b testing.TB, addr, id string) *benchClient {
	b.Helper()
	return dialBenchV(b, addr, id, 4)
}

// dialBenchV is dialBench for MQTT version v (4: 3.1.1, 5).
func dialBenchV(b testing.TB, addr, id string, v byte) *benchClient {
	b.Helper()
	c, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		b.Fatal(err)
	}
	// One deadline for the whole benchmark: a hang fails it, not the
	// whole test binary's timeout.
	return newBenchClientV(b, c, id, 5*time.Minute, v)
}

// newBenchClient connects (MQTT 3.1.1) on c, which has deadline d.
func newBenchClient(b testing.TB, c net.Conn, id string, d time.Duration) *benchClient {
	b.Helper()
	return newBenchClientV(b, c, id, d, 4)
}

// newBenchClientV is newBenchClient for MQTT version v.
func newBenchClientV(b testing.TB, c net.Conn, id string, d time.Duration, v byte) *benchClient {
	b.Helper()
	b.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(d)) //nolint:errcheck // fails the reads if it fails
	cl := &benchClient{c: c, r: bufio.NewReaderSize(c, 64<<10), buf: make([]byte, 0, 64<<10), v5: v == 5}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: v,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 60, ClientIdentifier: id}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		b.Fatal(err)
	}
	cl.write(b, buf.Bytes())
	if typ := cl.read(b); typ != packets.Connack {
		b.Fatalf("%s: got packet type %d, want a CONNACK", id, typ)
	}
	return cl
}

func (c *benchClient) write(b testing.TB, p []byte) {
	if _, err := c.c.Write(p); err != nil {
		b.Fatal(err)
	}
}

// read reads one packet into c.buf and returns its type.
func (c *benchClient) read(b testing.TB) byte {
	h, err := c.r.ReadByte()
	if err != nil {
		b.Fatal(err)
	}
	n, shift := 0, 0
	for {
		v, err := c.r.ReadByte()
		if err != nil {
			b.Fatal(err)
		}
		n |= int(v&0x7f) << shift
		shift += 7
		if v&0x80 == 0 {
			break
		}
	}
	if n > cap(c.buf) {
		b.Fatalf("a %d-byte packet", n)
	}
	c.buf = c.buf[:n]
	if _, err := io.ReadFull(c.r, c.buf); err != nil {
		b.Fatal(err)
	}
	return h >> 4
}

// readPublish reads packets until a PUBLISH.
func (c *benchClient) readPublish(b testing.TB) {
	for c.read(b) != packets.Publish {
	}
}

// subscribe subscribes at QoS 0 and waits for the SUBACK.
func (c *benchClient) subscribe(b testing.TB, filter string) {
	body := binary.BigEndian.AppendUint16(nil, 1)
	if c.v5 {
		body = append(body, 0) // no properties
	}
	body = binary.BigEndian.AppendUint16(body, uint16(len(filter)))
	body = append(append(body, filter...), 0)
	c.write(b, append(append([]byte{0x82}, varint(len(body))...), body...))
	for {
		typ := c.read(b)
		if typ == packets.Suback {
			if c.buf[len(c.buf)-1] >= 0x80 {
				b.Fatalf("SUBSCRIBE %s refused", filter)
			}
			return
		}
	}
}

// publish5 is an MQTT 5 QoS 0 PUBLISH with the properties props.
func publish5(topic string, props []byte, payload string) []byte {
	body := binary.BigEndian.AppendUint16(nil, uint16(len(topic)))
	body = append(append(body, topic...), varint(len(props))...)
	body = append(append(body, props...), payload...)
	return append(append([]byte{0x30}, varint(len(body))...), body...)
}

// publish3 is an MQTT 3.1.1 QoS 0 PUBLISH.
func publish3(topic, payload string) []byte {
	body := binary.BigEndian.AppendUint16(nil, uint16(len(topic)))
	body = append(append(body, topic...), payload...)
	if len(body) > 127 {
		panic(fmt.Sprintf("publish3: %d bytes", len(body)))
	}
	return append([]byte{0x30, byte(len(body))}, body...)
}
