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

	"golang.org/x/sys/unix"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
)

// rawIO is a plain TCP connection's reads into lent buffers (ReadLent)
// and its non-blocking writes made straight on its file descriptor by
// functions built once (no allocation per call). The descriptor is
// non-blocking, so a call returns at once: writes are made as raw system
// calls, without telling the scheduler the thread may block
// (entersyscall, which wakes the runtime's monitor thread, sysmon, when
// the process was idle: a futex wake-up and a run of 20-µs sleeps on
// every message to an idle broker, a quarter of its CPU in the latency
// scenario). Reads of a connection whose reader waits between packets
// are raw too (rawNext), but one in syscallEvery of a broker that reads
// often and one every syscallGap of one that reads
// (readBufPool.syscallDue), which goes through entersyscall: sysmon must
// not stay parked while the broker only reads and writes sockets, for it
// is what polls the network when every P has work (on 2026-12-03 a
// stress test of 10,000 connections under CPU contention lost
// connections when every read was raw: bench/README.md, "Latency: hops,
// wake-ups and allocations"; not reproduced since). Under the netConn's
// wmu.
type rawIO struct {
	rc syscall.RawConn

	// The read side, the connection's read goroutine's: read reads into a
	// buffer of bufs taken once the socket has input (rbuf, rn bytes, or
	// rerr), and gives it back when it has none, to wait bufferless;
	// lent is the buffer ReadLent lent and the reader has not given back,
	// or, with spare set, the one it gave back last, kept for the read
	// that follows (ReturnLent).
	bufs *readBufPool
	read func(fd uintptr) bool
	rbuf []byte
	rerr syscall.Errno
	lent []byte

	write func(fd uintptr) bool
	wp    []byte
	werr  syscall.Errno

	// The bytes the last read and write took (a read at most a lent
	// buffer of clientReadBuffer bytes, a write(2) at most 0x7ffff000
	// bytes on Linux) and drained, in one word: rawIO is 160 bytes, a
	// size class below 176. drained is the reads' history, a bit a read,
	// the last in bit 0: 1 if it found the socket empty (EAGAIN).
	rn      int16
	drained uint8
	spare   bool // lent was given back (ReturnLent) and is kept for the next read
	wn      int32

	// rest is what a non-blocking write left of the packets it began:
	// whatever is written next to the connection, by anyone (the writer,
	// or mochi writing an ack with the client's lock), goes after it, so
	// no packet is ever cut by another.
	rest []byte
}

// newRawIO is c's raw reader and writer, its read buffers lent by bufs;
// nil for a connection that is not plain TCP (TLS and WebSocket
// connections read and write through their layers).
func newRawIO(c net.Conn, bufs *readBufPool) *rawIO {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	w := &rawIO{rc: rc, bufs: bufs}
	w.read = func(fd uintptr) bool {
		if w.rbuf == nil {
			if w.spare { // the buffer the reader gave back last
				w.rbuf, w.lent, w.spare = w.lent, nil, false
			} else {
				w.rbuf = w.bufs.get()
			}
		}
		for {
			var n int
			var err error
			if w.bufs.syscallDue() || !w.rawNext() {
				n, err = syscall.Read(int(fd), w.rbuf) // wakes sysmon if parked
			} else {
				n, err = rawRead(fd, w.rbuf)
			}
			w.drained <<= 1
			if err == nil {
				w.rn = int16(n)
				return true
			}
			// The error as an Errno, then compared: comparing the error
			// interface with syscall.EAGAIN called the runtime's
			// interface comparison twice at each drained read (EINTR,
			// then EAGAIN), 0.5% of a round trip's CPU (issue 15).
			e, ok := err.(syscall.Errno)
			switch {
			case !ok:
				w.rerr = syscall.EIO
			case e == syscall.EINTR:
				continue
			case e == syscall.EAGAIN:
				w.drained |= 1
				w.bufs.put(w.rbuf) // wait without it
				w.rbuf = nil
				return false
			default:
				w.rerr = e
			}
			return true
		}
	}
	w.write = func(fd uintptr) bool {
		for {
			n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(w.wp))), uintptr(len(w.wp)))
			switch e {
			case 0:
				w.wn = int32(n)
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

// rawNext reports whether the next read is to be raw: one of the last two
// found the socket empty. So a connection whose reader waits between
// packets (a read that drains, the netpoller's wake-up, a read that
// brings the next) reads raw, and the monitor thread is not woken for
// each of its packets when the broker was idle; one whose input never
// runs dry (a flood, a busy publisher) reads through the scheduler, as
// the net package reads, and a busy broker keeps its monitor thread
// awake (with those reads raw too, fan-in QoS 0 read 0.65–0.92× main
// in runs at load 5–10, a loss this machine could not confirm).
func (w *rawIO) rawNext() bool { return w.drained&3 != 0 }

// rawRead is read(2) on the non-blocking descriptor fd as a raw system
// call (no entersyscall), with syscall.Read's results.
func rawRead(fd uintptr, p []byte) (int, error) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// ReadLent implements mochi's BufferLender (change 62): a plain TCP
// connection waits for input through the netpoller without a buffer
// (its RawConn, which keeps the read deadline) and reads it into a
// buffer of the broker's pool, lent to mochi's reader until it has read
// it all (ReturnLent). One read(2) a wake-up, as the net package's Read;
// what is read is scanned as Read scans it. A connection that is not
// plain TCP answers ErrNoLending, and its reader keeps a buffer.
//
// next: the wait is between packets, where the reader may be let go
// (sleep_linux.go): a wait the sweep cut short answers mochi.ErrAsleep,
// and one of a connection whose Close began fails at once (net.ErrClosed).
func (c *netConn) ReadLent(next bool) ([]byte, int, error) {
	w := c.raw
	if w == nil || w.bufs == nil {
		return nil, 0, mqtt.ErrNoLending
	}
	c.turn.next(c.turns())
	if c.state >= stateFailed { // a packet over the limits ended the read before
		c.releaseSpare()
		_, err := c.scanned(nil, 0, nil)
		return nil, 0, err
	}
	var e uint32
	var watched bool
	if next {
		switch e, watched = c.waiting(); e {
		case expired:
			c.releaseSpare()
			return nil, 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.ErrDeadlineExceeded}
		case closing:
			c.releaseSpare()
			return nil, 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: net.ErrClosed}
		}
	}
	err := w.rc.Read(w.read)
	c.releaseSpare() // (read never ran: a deadline, a closed connection)
	if watched {
		switch c.woke(e) {
		case wokeSleep:
			if w.rbuf == nil && errors.Is(err, os.ErrDeadlineExceeded) {
				return nil, 0, mqtt.ErrAsleep
			}
		case wokeClosed:
			if w.rbuf == nil && errors.Is(err, os.ErrDeadlineExceeded) {
				err = net.ErrClosed // the kick's timeout: the connection is closing
			}
		}
	}
	buf, n, rerr := w.rbuf, int(w.rn), w.rerr
	w.rbuf, w.rn, w.rerr = nil, 0, 0
	if err == nil && rerr != 0 {
		err = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	}
	if err == nil && n == 0 {
		err = io.EOF
	}
	if err != nil {
		if buf != nil {
			w.bufs.put(buf)
		}
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "raw-read" {
			oe.Op = "read" // as the net package says it: a deadline, a closed connection
		}
		return nil, 0, err
	}
	if n, err = c.scanned(buf, n, nil); err != nil {
		w.bufs.put(buf)
		return nil, 0, err
	}
	w.lent = buf
	c.turn.take(c.turns(), c.refusals())
	return buf, n, nil
}

// ReturnLent takes back a buffer ReadLent lent. It is kept (rawIO.spare)
// for the connection's next read, which mochi's reader makes once it has
// handled the packet: the read that finds the socket drained, between
// two packets, then reads into it and gives it to the pool before it
// waits (rawIO.read), instead of taking one from the pool and giving it
// back, a sync.Pool Get and Put a message (bench/README.md, branch
// h-plat). So a reader holds one buffer while it handles a packet, and
// none while it waits; a connection that ends or goes to sleep without
// reading again gives it back then (takeBackLent, releaseSpare).
func (c *netConn) ReturnLent(buf []byte) {
	if w := c.raw; w != nil && w.bufs != nil {
		if w.spare { // (not from ReadLent: never two kept)
			w.bufs.put(w.lent)
		}
		w.lent, w.spare = buf, cap(buf) == clientReadBuffer
		if !w.spare {
			w.lent = nil
			w.bufs.put(buf)
		}
	}
}

// releaseSpare gives back the buffer ReturnLent kept, if any. The
// reader's.
func (c *netConn) releaseSpare() {
	if w := c.raw; w != nil && w.spare {
		w.bufs.put(w.lent)
		w.lent, w.spare = nil, false
	}
}

// takeBackLent takes back the buffer ReadLent lent last if the reader
// never gave it back: its connection ended (a DISCONNECT, a refused or
// malformed packet, a panic) with input in it unread; and the one
// ReturnLent kept. Called on the connection's read goroutine once mochi
// has read its last (connEnded).
func (c *netConn) takeBackLent() {
	c.turn.next(c.turns()) // and its read turn
	if c.raw != nil && c.raw.lent != nil && !c.raw.spare {
		c.ReturnLent(c.raw.lent)
	}
	c.releaseSpare()
}

// tryWrite writes as much of p as the socket takes at once, without
// waiting, and keeps the rest (rawIO.rest) for the next write to the
// connection to write first: n is how much of p it wrote, took whether
// it took p (false when another write is under way), and err is a real
// failure of the connection, or an earlier write's (netConn.failed):
// nothing is written after a failed write (TestNoDirectWriteAfterFailedWrite).
// A short write must not leave the rest to the caller: mochi may write an
// ack between the caller's unlock and its next write, into the middle of
// a packet (red team, TestDirectRestFirst).
func (c *netConn) tryWrite(p []byte) (int, bool, error) {
	if c.raw == nil || len(p) == 0 || !c.wmu.TryLock() {
		return 0, false, nil
	}
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, false, c.werr // the failed write may have cut a packet: nothing goes after it
	}
	w := c.raw
	w.wp = p
	err := w.rc.Write(w.write)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// The deadline of an earlier blocking write passed since: this
		// write has none (the next blocking one sets its own).
		c.Conn.SetWriteDeadline(time.Time{}) //nolint:errcheck // the retry fails too if this failed
		err = w.rc.Write(w.write)
	}
	n, e := int(w.wn), w.werr
	w.wp, w.wn, w.werr = nil, 0, 0
	switch {
	case err != nil:
		return 0, false, c.failed(&net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err})
	case e != 0:
		return 0, false, c.failed(&net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("write", e)})
	}
	if n < len(p) {
		w.rest = append(w.rest[:0], p[n:]...)
	}
	return n, true, nil
}

// hasRest reports whether a non-blocking write left bytes to write
// before anything else.
func (c *netConn) hasRest() bool {
	if c.raw == nil {
		return false
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return len(c.raw.rest) > 0
}

// writeRest writes what a non-blocking write left, with the connection's
// write deadline; n is how much of it was written.
func (c *netConn) writeRest() (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	c.armWrite()
	n, err := c.writeRestLocked()
	if err != nil {
		c.failed(err)
	}
	return n, err
}

// writeRestLocked writes what a non-blocking write left (wmu held, the
// deadline set); n is how much of it was written.
func (c *netConn) writeRestLocked() (int, error) {
	if c.raw == nil || len(c.raw.rest) == 0 {
		return 0, nil
	}
	n, err := c.Conn.Write(c.raw.rest)
	c.raw.rest = nil // short writes are rare: no buffer kept per connection (written, or the connection fails)
	return n, err
}

// acked is how many bytes the client's TCP stack has acknowledged so far
// (TCP_INFO's tcpi_bytes_acked, Linux 4.2 and later; 0 before): the
// queue's look at a client that its writer waits on (outQueue.acked).
// False for a connection that is not plain TCP, or once it is closed.
func (c *netConn) acked() (uint64, bool) {
	if c.raw == nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var err error
	if cerr := c.raw.rc.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); cerr != nil || err != nil {
		return 0, false
	}
	return info.Bytes_acked, true
}
