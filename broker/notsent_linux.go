//go:build linux

package broker

import (
	"net"

	"golang.org/x/sys/unix"
)

// notSentLowat is how many bytes written to a client connection may wait
// unsent in the kernel (TCP_NOTSENT_LOWAT): past it the socket takes no
// more and polls writable only once the client has read the rest down
// below it. Without it the kernel took up to its send buffer's autotuned
// size (4 MiB at most) of a retained replay the client had not read yet,
// and a PINGRESP, which mochi writes straight to the socket, landed behind
// all of it (392 KB for a slow client in TestPingrespNotBehindReplay):
// Paho drops a client whose PINGRESP is 10 s late (issue 15). With it,
// what the client has not read waits in the connection's queue, behind
// the writer (which reads a replay's rows off the loop only as the socket
// takes them), and a PINGRESP or an ack goes out behind about this much
// (the kernel fills its last segment past it), one writer flush (flushAt)
// and the client's own receive buffer. One flush's worth keeps the
// writer's writes whole.
const notSentLowat = flushAt

// lowatMaxSeg is the largest segment size (MSS) of a connection that gets
// notSentLowat. A client's receive window opens a segment at a time, and
// with the bound a write waits for it: over Ethernet (1448 bytes) that is
// steady progress, but over loopback (a 64 KiB MSS) a client reading
// 20 KB/s let a write progress only every 3 s, and in the live dashboard
// (500 subscribers in one busy process) 472 writes passed the 10 s
// WriteTimeout and their clients were closed (bench/README.md, issue 15).
// Loopback connections keep the kernel's buffering.
const lowatMaxSeg = 8 << 10

// setNotSentLowat bounds what waits unsent in the kernel for c
// (notSentLowat), on the TCP connection under TLS or WebSocket layers
// too, when its segments are at most lowatMaxSeg; a connection that is
// not TCP, or has larger segments (loopback), is left as it is. A failure
// is only logged by the caller: the connection works as before, without
// the bound.
func setNotSentLowat(c net.Conn) error {
	tc := tcpOf(c)
	if tc == nil {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		mss, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG)
		if err != nil || mss > lowatMaxSeg {
			serr = err
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, notSentLowat)
	}); err != nil {
		return err
	}
	return serr
}
