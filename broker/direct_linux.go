//go:build linux

package broker

import (
	"errors"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// rawIO is a plain TCP connection's non-blocking writes made straight on
// its file descriptor by a function built once (no allocation per call).
// The descriptor is non-blocking, so the call returns at once: it is made
// as a raw system call, without telling the scheduler the thread may
// block (entersyscall, which wakes the runtime's monitor thread when the
// process was idle). Reads stay the net package's: raw reads too saved
// that wake-up on every message, but the monitor thread then stayed
// parked while the broker only read and wrote sockets, and a stress test
// of 10,000 connections under CPU contention failed (bench/README.md).
// Under the netConn's wmu.
type rawIO struct {
	rc syscall.RawConn

	write func(fd uintptr) bool
	wp    []byte
	wn    int
	werr  syscall.Errno
}

// newRawIO is c's raw writer; nil for a connection that is not
// plain TCP (TLS and WebSocket connections write through their layers).
func newRawIO(c net.Conn) *rawIO {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	w := &rawIO{rc: rc}
	w.write = func(fd uintptr) bool {
		for {
			n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(w.wp))), uintptr(len(w.wp)))
			switch e {
			case 0:
				w.wn = int(n)
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
			default:
				w.werr = e
			}
			return true // never wait for the socket to be writable
		}
	}
	return w
}

// tryWrite writes as much of p as the socket takes at once, without
// waiting: n may be short (0 when the socket buffer is full, or another
// write is under way), and err is a real failure of the connection.
func (c *netConn) tryWrite(p []byte) (int, error) {
	if c.raw == nil || len(p) == 0 || !c.wmu.TryLock() {
		return 0, nil
	}
	defer c.wmu.Unlock()
	w := c.raw
	w.wp = p
	err := w.rc.Write(w.write)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// The deadline of an earlier blocking write passed since: this
		// write has none (the next blocking one sets its own).
		c.Conn.SetWriteDeadline(time.Time{}) //nolint:errcheck // the retry fails too if this failed
		err = w.rc.Write(w.write)
	}
	n, e := w.wn, w.werr
	w.wp, w.wn, w.werr = nil, 0, 0
	switch {
	case err != nil:
		return 0, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	case e != 0:
		return 0, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("write", e)}
	}
	return n, nil
}
