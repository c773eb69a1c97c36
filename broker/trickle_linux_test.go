package broker

import (
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestTricklersTogether: plain TCP subscribers that read a little now and
// then (8 KiB a second, a 4 KiB receive buffer, segments of 1,000 bytes
// as on a network, not loopback's 64 KiB), so that their TCP stacks take
// bytes of a write that does not return for seconds, hold a QoS 1
// publish about one PublishWait, however many they are
// (TestQueueTricklingTogether on a broker); so do subscribers that never
// read and whose stacks take megabytes before they stop (8 MiB receive
// buffers). Before the fix a publish to 32 tricklers waited its limit,
// 5 × PublishWait.
func TestTricklersTogether(t *testing.T) {
	const wait = 250 * time.Millisecond
	cases := []struct {
		name   string
		n      int
		rate   int // bytes a second each subscriber reads; 0: none
		mss    int // 0: loopback's
		rcvbuf int // SO_RCVBUF (the kernel doubles it)
		k      int // publishes of 8 KiB: a subscriber's socket's buffers and queue over
	}{
		{"1 trickler", 1, 8 << 10, 1000, 4 << 10, 1000},
		{"32 tricklers", 32, 8 << 10, 1000, 4 << 10, 1000},
		{"8 never reading, 8 MiB buffers", 8, 0, 0, 4 << 20, 3000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{QueueBytes: 8 << 10, PublishWait: wait})
			stop := make(chan struct{})
			t.Cleanup(func() { close(stop) }) // before the connections close (cleanups run last first)
			for i := range tc.n {
				sub := connectRaw(t, dialSmall(t, b, tc.mss, tc.rcvbuf), fmt.Sprintf("sub-%d", i), 4, true, packets.Properties{})
				sub.subscribe(1, "tr/#", 0)
				if tc.rate > 0 {
					rc := &rateConn{Conn: sub.c, rate: tc.rate, chunk: 1 << 10, stop: stop}
					go io.Copy(io.Discard, rc) //nolint:errcheck // ends when the test closes the connection
				}
			}
			pub := dial3(t, b, "pub", true)
			payload := string(make([]byte, 8<<10))
			k := tc.k
			var held time.Duration // the longest publish
			start := time.Now()
			for range k {
				at := time.Now()
				if tok := pub.Publish("tr/x", 1, false, payload); !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
					t.Fatalf("publish: %v", tok.Error())
				}
				held = max(held, time.Since(at))
			}
			took := time.Since(start)
			m := b.meter
			t.Logf("%d publishes to %d subscribers took %v, the longest %v; dropped %d (no_wait %d, stalled %d, deadline %d)", k, tc.n, took, held,
				b.stats.Dropped.Load(), m.queueFull[fullNoWait].Load(), m.queueFull[fullStalled].Load(), m.queueFull[fullLate].Load())
			// A publish waits PublishWait in all for room, and past it up
			// to 5 × PublishWait while its subscribers are being written
			// (pubWait): the subscribers' stalls, together, are to end its
			// wait well before that. Measured 250–500 ms; a loaded machine
			// (load 4–7) took it to 1.05 s once in two full -race runs.
			if bound := 4 * wait; held > bound {
				t.Errorf("a publish to %d subscribers waited %v, want at most %v (about one PublishWait, two at most, whatever their number)", tc.n, held, bound)
			}
		})
	}
}

// dialSmall connects to b's TCP listener with segments of at most mss
// bytes (0: loopback's) and a receive buffer of rcvbuf bytes, set before
// the connection is made: with a small mss the window the client offers
// opens and the bytes it acknowledges grow by a segment or two at a time,
// as on a network.
func dialSmall(t *testing.T, b *Broker, mss, rcvbuf int) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			if mss > 0 {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG, mss)
			}
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
			}
		}); err != nil {
			return fmt.Errorf("dial: control: %w", err)
		}
		if serr != nil {
			return fmt.Errorf("dial: setsockopt: %w", serr)
		}
		return nil
	}}
	c, err := d.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	return c
}
