//go:build linux

package broker

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"golang.org/x/sys/unix"
)

// A subscriber that reads slowly (Ethernet-sized segments, a small
// receive buffer, nothing read while the broker writes) and sends a PINGREQ in the middle of a large
// retained replay gets its PINGRESP behind a bounded number of bytes: what
// the kernel holds unsent (notSentLowat), one writer flush and its own
// receive buffer, not the broker's send buffer's autotuned size (issue 15:
// Paho drops a client whose PINGRESP is 10 s late, and 400 of 500 slow
// subscribers of a 10k-row replay were). The PINGREQ is sent once the
// connection has written all the socket takes (its writer parked on
// the socket, or done), so the bound is measured where it is widest; the replay
// then arrives whole and in order.
func TestPingrespNotBehindReplay(t *testing.T) {
	const rows = 20_000
	b := start(t, Options{WriteTimeout: 10 * time.Minute})
	ctx := testCtx(t)
	payload := bytes.Repeat([]byte("v"), 100)
	for i := range rows {
		if err := b.Publish(ctx, Principal{ClientID: "pub"}, Message{Topic: fmt.Sprintf("r/%05d", i), Payload: payload, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	nc := dialSmallMSS(t, b)
	sub := benchConn(t, nc, "slow")
	sub.subscribe(t, "r/+")

	waitWriterParked(ctx, t, b, "slow")
	notsent := serverNotSent(t, b)
	received := atomic.LoadInt64(&b.server.Info.PacketsReceived)
	sub.write(t, []byte{0xc0, 0}) // PINGREQ
	// Nothing is read until the broker has read the PINGREQ: read at once,
	// the replay flowed on for as long as the broker's read goroutine
	// waited for a core (under load, 100 KB and more ahead of the PINGRESP,
	// one run in four on a busy 2-core machine), which measured the
	// scheduler, not the bound.
	for atomic.LoadInt64(&b.server.Info.PacketsReceived) == received {
		if ctx.Err() != nil {
			t.Fatal("the broker never read the PINGREQ")
		}
		runtime.Gosched()
	}

	before, publishes := 0, 0
	for {
		typ := sub.read(t)
		if typ == packets.Pingresp {
			break
		}
		if typ != packets.Publish {
			t.Fatalf("packet type %d before the PINGRESP", typ)
		}
		publishes++
		before += 2 + len(sub.buf) // a replayed row's packet: fixed header, then the rest
	}
	// The kernel's unsent bytes, a flush under way (flushAt and the packet
	// that crosses it) and the client's receive buffer (4 KiB asked, which
	// Linux doubles), and bufio's read-ahead of the SUBACK's read.
	bound := notSentLowat + flushAt + 2*(2+7+len(payload)) + 2*4096 + 64<<10
	t.Logf("PINGRESP behind %d bytes (%d publishes); the broker's socket held %d unsent when the PINGREQ was sent; bound %d", before, publishes, notsent, bound)
	if before > bound {
		t.Errorf("PINGRESP behind %d bytes of the replay (%d publishes), over %d: the kernel held %d bytes unsent", before, publishes, bound, notsent)
	}
	for publishes < rows {
		if typ := sub.read(t); typ != packets.Publish {
			t.Fatalf("packet type %d after %d of %d rows", typ, publishes, rows)
		}
		if want := fmt.Sprintf("r/%05d", publishes); !strings.HasPrefix(string(sub.buf[2:]), want) {
			t.Fatalf("row %d: got topic %q, want %s", publishes, sub.buf[2:2+len(want)], want)
		}
		publishes++
	}
}

// The broker's client sockets with Ethernet-sized segments are set with
// TCP_NOTSENT_LOWAT; loopback's (64 KiB segments) are not (lowatMaxSeg).
func TestNotSentLowatSet(t *testing.T) {
	for _, tc := range []struct {
		name string
		mss  bool // dialled with Ethernet-sized segments: the bound is set
	}{
		{"ethernet MSS", true},
		{"loopback MSS", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			if tc.mss {
				benchConn(t, dialSmallMSS(t, b), "c")
			} else {
				dial3(t, b, "c", true)
			}
			var v int
			var serr error
			serverFD(t, b, func(fd int) { v, serr = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT) })
			if serr != nil || (v == notSentLowat) != tc.mss {
				t.Errorf("TCP_NOTSENT_LOWAT = %d (%v); set (%d) wanted: %v", v, serr, notSentLowat, tc.mss)
			}
		})
	}
}

// dialSmallMSS dials b's TCP listener as a slow client over Ethernet
// would: 1,400-byte segments (TCP_MAXSEG before connecting: the broker
// sends no larger ones) and a 4 KiB receive buffer.
func dialSmallMSS(t testing.TB, b *Broker) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: testTimeout, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG, 1400); serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096)
			}
		}); err != nil {
			return err
		}
		return serr
	}}
	nc, err := d.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	return nc
}

// serverFD calls fn with the descriptor of b's one client connection.
func serverFD(t *testing.T, b *Broker, fn func(fd int)) {
	t.Helper()
	b.rawMu.Lock()
	var conns []*netConn
	for nc := range b.raw {
		conns = append(conns, nc)
	}
	b.rawMu.Unlock()
	if len(conns) != 1 {
		t.Fatalf("%d connections", len(conns))
	}
	rc, err := conns[0].Conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Control(func(fd uintptr) { fn(int(fd)) }); err != nil {
		t.Fatal(err)
	}
}

// serverNotSent is how many bytes b's one client socket holds unsent.
func serverNotSent(t *testing.T, b *Broker) int {
	var ti *unix.TCPInfo
	var err error
	serverFD(t, b, func(fd int) { ti, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO) })
	if err != nil {
		t.Fatal(err)
	}
	return int(ti.Notsent_bytes)
}

// waitWriterParked waits until the connection of client id has written
// all the socket takes: its writer is parked on the socket (its goroutine
// in writeLoop waits in the network poller), or it has nothing left to
// write (the kernel took everything queued); or ctx ends.
func waitWriterParked(ctx context.Context, t *testing.T, b *Broker, id string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	for ctx.Err() == nil {
		if c := b.connByID(id); c != nil {
			c.q.mu.Lock()
			idle := c.q.role == roleNone && c.q.held == 0 && c.q.head == len(c.q.items)
			c.q.mu.Unlock()
			if idle {
				return
			}
		}
		n := runtime.Stack(buf, true)
		for g := range strings.SplitSeq(string(buf[:n]), "\n\n") {
			if strings.Contains(g, "[IO wait") && strings.Contains(g, "(*conn).writeLoop") {
				return
			}
		}
		runtime.Gosched()
	}
	t.Fatal("the writer neither parked on its socket nor done before the deadline")
}
