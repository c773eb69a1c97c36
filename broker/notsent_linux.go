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
// size (~100 KiB a connection in the live dashboard) of a retained replay
// the client had not read yet, and a PINGRESP, which mochi writes straight
// to the socket, landed behind all of it: Paho drops a client whose
// PINGRESP is 10 s late (issue 15). With it, what the client has not read
// waits in the connection's queue, behind the writer (which reads a
// replay's rows off the loop only as the socket takes them), and a
// PINGRESP or an ack goes out behind at most this much, one writer flush
// (flushAt) and the client's own receive buffer. One flush's worth keeps
// the writer's writes whole.
const notSentLowat = flushAt

// setNotSentLowat bounds what waits unsent in the kernel for c
// (notSentLowat), on the TCP connection under TLS or WebSocket layers
// too; a connection that is not TCP is left as it is. A failure is only
// logged by the caller: the connection works as before, without the bound.
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
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, notSentLowat)
	}); err != nil {
		return err
	}
	return serr
}
