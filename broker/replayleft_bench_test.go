package broker

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// BenchmarkReplayLeftovers is the stress test's shape in process:
// sessions persistent MQTT 5 sessions (Receive Maximum 1) subscribe
// dev/+/state at QoS 1, take the first of rows retained rows in flight and
// end at once, the rest of each replay unread; their writers hand the rest
// on to the sessions (handReplaysOn). It reports the time from the ends
// until the last session was handed its messages (handed-ms), the longest
// a call on the message loop (Broker.Sync: what a publish waits behind)
// waited meanwhile (loop-wait-ms), and the heap held after, per session
// (heap-KiB/session: what the sessions keep, in mochi's in-flight state,
// within MaxOfflineBytes). Run it with -benchtime=1x.
func BenchmarkReplayLeftovers(b *testing.B) {
	for _, sz := range []struct{ sessions, rows int }{{2000, 300}} {
		b.Run(fmt.Sprintf("sessions=%d/rows=%d", sz.sessions, sz.rows), func(b *testing.B) {
			var handed, wait time.Duration
			var heap float64
			n := 0
			for b.Loop() {
				h, w, hp := replayLeftovers(b, sz.sessions, sz.rows)
				handed, wait, heap, n = handed+h, max(wait, w), heap+hp, n+1
			}
			b.ReportMetric(float64(handed.Milliseconds())/float64(n), "handed-ms")
			b.ReportMetric(float64(wait.Milliseconds()), "loop-wait-ms")
			b.ReportMetric(heap/float64(n)/float64(sz.sessions)/1024, "heap-KiB/session")
		})
	}
}

// replayLeftovers runs one round on a broker of its own: how long until
// every session was handed its messages, the longest loop wait meanwhile,
// and the live heap above where it stood before the sessions connected.
func replayLeftovers(b *testing.B, sessions, rows int) (handed, wait time.Duration, heap float64) {
	br := start(b, Options{})
	defer br.Close()
	loadRows(b, br, rows)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	nets := make([]net.Conn, sessions)
	conns := make([]*conn, sessions)
	for i := range sessions {
		id := fmt.Sprintf("away-%d", i)
		c, err := dialAwayMidReplay(br.TCPAddr(), id)
		if err != nil {
			b.Fatalf("%s: %v", id, err)
		}
		defer c.Close()
		nets[i], conns[i] = c, br.connOf(b, id)
	}

	// The loop's latency, sampled while the sessions are handed on.
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var probe sync.WaitGroup
	probe.Go(func() {
		for ctx.Err() == nil {
			t0 := time.Now()
			if br.Sync(ctx) != nil {
				return
			}
			wait = max(wait, time.Since(t0))
			time.Sleep(time.Millisecond) // a publish now and then, not a stream of them
		}
	})
	t0 := time.Now()
	for _, c := range nets {
		c.Close()
	}
	for i, c := range conns {
		select {
		case <-c.handOf().handed.wait():
		case <-ctx.Done():
			b.Fatalf("away-%d: not handed on after %v", i, time.Since(t0))
		}
	}
	handed = time.Since(t0)
	cancel()
	probe.Wait()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	return handed, wait, float64(after.HeapAlloc) - float64(before.HeapAlloc)
}

// dialAwayMidReplay connects id as a persistent MQTT 5 session with
// Receive Maximum 1, subscribes it to dev/+/state at QoS 1 and reads up
// to the first PUBLISH of its replay, which stays in flight.
func dialAwayMidReplay(addr, id string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(testTimeout))
	var buf bytes.Buffer
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 5,
		Connect:    packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 60, ClientIdentifier: id},
		Properties: packets.Properties{ReceiveMaximum: 1, SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}}
	subscribe := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: "dev/+/state", Qos: 1}}}
	if err := connect.ConnectEncode(&buf); err == nil {
		err = subscribe.SubscribeEncode(&buf)
	}
	if err == nil {
		_, err = c.Write(buf.Bytes())
	}
	for err == nil {
		var h [1]byte
		if _, err = io.ReadFull(c, h[:]); err != nil {
			break
		}
		var n uint64
		n, err = readVarint(c)
		if err == nil {
			_, err = io.CopyN(io.Discard, c, int64(n))
		}
		if err == nil && h[0]>>4 == packets.Publish {
			return c, nil
		}
	}
	c.Close()
	return nil, err
}

// readVarint reads an MQTT Variable Byte Integer.
func readVarint(r io.Reader) (uint64, error) {
	var n uint64
	var b [1]byte
	for shift := 0; shift < 28; shift += 7 {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, err
		}
		n |= uint64(b[0]&0x7f) << shift
		if b[0]&0x80 == 0 {
			return n, nil
		}
	}
	return 0, fmt.Errorf("malformed remaining length")
}
