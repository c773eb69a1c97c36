package mqtt

import (
	"bufio"
	"errors"
	"io"
)

// BufferLender is a net.Conn that can wait for input without a buffer and
// lend one only once input has come (mote change 62): a connection
// waiting for its next packet then holds no read buffer (bench/README.md,
// "Idle connections").
type BufferLender interface {
	// ReadLent waits for input and reads it into a buffer of the
	// connection's: buf[:n], n > 0, is the input, or err says why there
	// is none (buf then nil). buf is the caller's until it gives it back
	// with ReturnLent. ErrNoLending: the connection cannot wait without
	// a buffer (not asked again). next: the reader waits between packets
	// (Client.Read's wait for the next one), where the connection may
	// answer ErrAsleep instead of waiting (mote change 75).
	ReadLent(next bool) (buf []byte, n int, err error)
	// ReturnLent gives back a buffer ReadLent lent, read to its end. A
	// reader that stops reading with input unread (its client stopped)
	// does not: the lender takes the buffer back once the connection's
	// reads are over (Mote: netConn.takeBackLent).
	ReturnLent(buf []byte)
}

// ErrNoLending is ReadLent's answer when the connection cannot lend.
var ErrNoLending = errors.New("connection lends no read buffers")

// ErrAsleep is ReadLent's answer, between packets only, when the
// connection lets its read goroutine go for a while (mote change 75): the
// client was idle, and its connection waits for input without a goroutine
// (Mote: broker/sleep_linux.go). Client.Read returns it with nothing
// unread and nothing held; Server.serveClient then returns it without
// ending the session, and whoever put it to sleep calls the serve
// function again (a new goroutine) once input, the read deadline or a
// close comes.
var ErrAsleep = errors.New("connection's reader asleep")

// mote: connReader is the client's buffered reader of its connection
// (change 62), in place of upstream's bufio.Reader, with the methods mochi
// reads by (Peek, ReadByte, Read, Buffered). With a BufferLender
// connection it holds a buffer only while that holds unread input: once
// read to its end the buffer goes back, and the next wait is the
// lender's, bufferless. Otherwise it keeps a buffer of size bytes, made
// at its first read. Only the client's read goroutine uses it.
type connReader struct {
	rd   io.Reader
	lend BufferLender // rd's, or nil
	size int
	buf  []byte
	r, w int   // buf[r:w] is unread
	lent bool  // buf is the lender's
	next bool  // the read waits between packets (waitPacket)
	err  error // a read's error that came with bytes, for the next read
}

// newConnReader reads rd with a buffer of size bytes (or rd's).
func newConnReader(rd io.Reader, size int) *connReader {
	b := &connReader{rd: rd, size: max(size, 16)}
	b.lend, _ = rd.(BufferLender)
	return b
}

// Buffered is how many bytes can be read without reading rd.
func (b *connReader) Buffered() int { return b.w - b.r }

// giveBack returns a lent buffer read to its end.
func (b *connReader) giveBack() {
	if b.lent && b.r == b.w {
		b.lend.ReturnLent(b.buf)
		b.buf, b.r, b.w, b.lent = nil, 0, 0, false
	}
}

// fill reads at least one more byte after the unread ones, or fails.
func (b *connReader) fill() error {
	if b.err != nil {
		err := b.err
		b.err = nil
		return err
	}
	if b.r == b.w {
		b.giveBack()
		b.r, b.w = 0, 0
		if b.lend != nil {
			buf, n, err := b.lend.ReadLent(b.next)
			if n > 0 {
				b.buf, b.w, b.lent = buf, n, true
				b.err = err
				return nil
			}
			if !errors.Is(err, ErrNoLending) {
				if err == nil {
					err = io.ErrNoProgress
				}
				return err
			}
			b.lend = nil
		}
	}
	if b.buf == nil {
		b.buf = make([]byte, b.size)
	}
	if b.r > 0 {
		b.w = copy(b.buf, b.buf[b.r:b.w])
		b.r = 0
	}
	if b.w == len(b.buf) {
		return bufio.ErrBufferFull
	}
	for range 100 { // as bufio's maxConsecutiveEmptyReads
		n, err := b.rd.Read(b.buf[b.w:])
		if n < 0 || n > len(b.buf)-b.w {
			return bufio.ErrNegativeCount
		}
		b.w += n
		if n > 0 {
			b.err = err
			return nil
		}
		if err != nil {
			return err
		}
	}
	return io.ErrNoProgress
}

// Peek returns the next n bytes without reading them, reading rd until
// they are there; n must be at most the buffer's size.
func (b *connReader) Peek(n int) ([]byte, error) {
	if n > b.size {
		return nil, bufio.ErrBufferFull
	}
	for b.w-b.r < n {
		if err := b.fill(); err != nil {
			return b.buf[b.r:b.w], err
		}
	}
	return b.buf[b.r : b.r+n], nil
}

// fresh reports whether b is as newConnReader made it, for a connection
// that lends: no buffer, nothing unread, no error kept (mote change 84: a
// reader that went to sleep gives it up, and makes a new one when served
// again).
func (b *connReader) fresh() bool {
	return b.lend != nil && b.buf == nil && !b.lent && b.r == b.w && b.err == nil && !b.next
}

// waitPacket waits for the next packet's first byte, as Peek(1): the one
// read at which a BufferLender may let the reader go (ErrAsleep).
func (b *connReader) waitPacket() error {
	b.next = true
	_, err := b.Peek(1)
	b.next = false
	return err
}

// ReadByte reads one byte.
func (b *connReader) ReadByte() (byte, error) {
	for b.r == b.w {
		if err := b.fill(); err != nil {
			return 0, err
		}
	}
	c := b.buf[b.r]
	b.r++
	b.giveBack()
	return c, nil
}

// Read reads up to len(p) bytes: what is buffered, or else, for a p at
// least the buffer's size, straight from rd.
func (b *connReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if b.r == b.w {
		if len(p) >= b.size && b.err == nil {
			b.giveBack()
			return b.rd.Read(p)
		}
		if err := b.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, b.buf[b.r:b.w])
	b.r += n
	b.giveBack()
	return n, nil
}
