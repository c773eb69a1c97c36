//go:build linux

package broker

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// rawIO is a plain TCP connection's reads and non-blocking writes made
// straight on its file descriptor, each by a function built once (no
// allocation per call). The descriptor is non-blocking, so each call
// returns at once: it is made as a raw system call, without telling the
// scheduler a thread may block (entersyscall), which wakes the runtime's
// monitor thread whenever the process was idle — a futex wake-up per
// message, the largest cost left on the delivery path (bench/README.md).
// Waiting for the socket, deadlines and closing are the net package's, as
// for any read (syscall.RawConn). Reads are the read goroutine's; writes
// are under the netConn's wmu.
type rawIO struct {
	rc syscall.RawConn

	read  func(fd uintptr) bool
	rp    []byte
	rn    int
	rerr  syscall.Errno
	write func(fd uintptr) bool
	wp    []byte
	wn    int
	werr  syscall.Errno
}

// newRawIO is c's raw reader and writer; nil for a connection that is not
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
	w.read = func(fd uintptr) bool {
		for {
			n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(w.rp))), uintptr(len(w.rp)))
			switch e {
			case 0:
				w.rn = int(n)
				return true
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // wait until readable
			}
			w.rerr = e
			return true
		}
	}
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

// readRaw reads into p as net.Conn.Read does: it waits until something
// arrives (or the read deadline passes, or the connection closes); io.EOF
// once the client closed its side.
func (c *netConn) readRaw(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r := c.raw
	r.rp = p
	err := r.rc.Read(r.read)
	n, e := r.rn, r.rerr
	r.rp, r.rn, r.rerr = nil, 0, 0
	switch {
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
	case e != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", e)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
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
