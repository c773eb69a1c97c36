package broker

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestReadLent reads a plain TCP connection through ReadLent (mochi
// change 62): the input comes in a buffer of the broker's pool, scanned
// as Read scans it; a deadline, the peer's close and a packet over the
// limit end the read with the error the net package's Read gives, and no
// buffer stays lent.
func TestReadLent(t *testing.T) {
	tests := []struct {
		name    string
		send    []byte
		close   bool
		timeout bool
		want    []byte
		wantErr error
	}{
		{name: "input", send: []byte{0xc0, 0x00}, want: []byte{0xc0, 0x00}},
		{name: "deadline", timeout: true, wantErr: os.ErrDeadlineExceeded},
		{name: "closed by the peer", close: true, wantErr: io.EOF},
		{name: "packet over the limit", send: []byte{0x30, 0xff, 0x01}, wantErr: errPacketTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cli, srv := tcpPair(t)
			var pool readBufPool
			nc := &netConn{Conn: srv, raw: newRawIO(srv, &pool), maxConnect: 1 << 20, maxPacket: 100, packets: 1, connected: true}
			srv.SetReadDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck // a hang fails the test
			if tt.timeout {
				srv.SetReadDeadline(time.Now().Add(50 * time.Millisecond)) //nolint:errcheck
			}
			if tt.send != nil {
				cli.Write(tt.send) //nolint:errcheck
			}
			if tt.close {
				cli.Close()
			}
			buf, n, err := nc.ReadLent(false)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			var oe *net.OpError
			if errors.As(err, &oe) && oe.Op != "read" {
				t.Errorf("error's Op %q, want read", oe.Op)
			}
			if string(buf[:n]) != string(tt.want) {
				t.Errorf("read % x, want % x", buf[:n], tt.want)
			}
			if buf != nil {
				if cap(buf) != clientReadBuffer {
					t.Errorf("lent a buffer of %d bytes, want %d", cap(buf), clientReadBuffer)
				}
				nc.ReturnLent(buf)
			}
			nc.takeBackLent() // the connection's end: the buffer ReturnLent kept goes back
			if out := pool.out.Load(); out != 0 {
				t.Errorf("%d buffers still lent", out)
			}
		})
	}
}

// TestReadLentKeepsSpare: the buffer the reader gives back (ReturnLent)
// is kept for its next read, not given to the pool and taken again
// (branch h-plat: a sync.Pool Put and Get a message). That read reads
// into it: the next packet comes in the same buffer; a read that finds
// the socket drained gives it to the pool before it waits, so a waiting
// connection holds none; so does one put to sleep (releaseSpare) or
// ended (takeBackLent). Without the spare, ReturnLent leaves 0 buffers
// lent and the second packet may come in another buffer.
func TestReadLentKeepsSpare(t *testing.T) {
	ping := []byte{0xc0, 0x00}
	tests := []struct {
		name string
		end  func(nc *netConn) // after the second packet was given back
	}{
		{name: "drained read", end: func(nc *netConn) {
			nc.SetReadDeadline(time.Now().Add(20 * time.Millisecond)) //nolint:errcheck
			if _, _, err := nc.ReadLent(true); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("drained read: %v, want a deadline", err)
			}
		}},
		{name: "asleep", end: func(nc *netConn) { nc.releaseSpare() }},
		{name: "ended", end: func(nc *netConn) { nc.takeBackLent() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cli, srv := tcpPair(t)
			var pool readBufPool
			nc := &netConn{Conn: srv, raw: newRawIO(srv, &pool), maxConnect: 1 << 20, maxPacket: 100, packets: 1, connected: true}
			srv.SetReadDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck // a hang fails the test
			var first *byte
			for i := range 2 {
				if _, err := cli.Write(ping); err != nil {
					t.Fatal(err)
				}
				buf, n, err := nc.ReadLent(false)
				if err != nil || string(buf[:n]) != string(ping) {
					t.Fatalf("read %d: % x, %v; want % x", i, buf[:n], err, ping)
				}
				if i == 0 {
					first = &buf[0]
				} else if &buf[0] != first {
					t.Errorf("the second packet came in another buffer, want the one given back")
				}
				nc.ReturnLent(buf)
				if out := pool.out.Load(); out != 1 {
					t.Fatalf("%d buffers lent once given back, want 1 (kept for the next read)", out)
				}
			}
			tt.end(nc)
			if out := pool.out.Load(); out != 0 {
				t.Errorf("%d buffers lent, want 0", out)
			}
		})
	}
}

// TestReadBufsBackAtEnd: a connection that ends with input its reader
// never read (a DISCONNECT, a refused or malformed packet with more
// bytes behind it in the same read) gives back the read buffer that
// input is in: the pool's count of buffers lent (readBufPool.out) is 0
// once every connection has ended. The reader gave a buffer back only
// once read to its end, so each of these left one lent for good.
func TestReadBufsBackAtEnd(t *testing.T) {
	connect := []byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, 1, 'a'}
	ping := []byte{0xc0, 0x00}
	tests := []struct {
		name    string
		connect bool   // send a CONNECT and wait for its CONNACK first
		send    []byte // then these bytes, in one write
	}{
		{name: "DISCONNECT with a PINGREQ behind", connect: true, send: []byte{0xe0, 0x00, 0xc0, 0x00}},
		{name: "malformed PUBLISH with a PINGREQ behind", connect: true, send: []byte{0x36, 0x00, 0xc0, 0x00}},
		{name: "PINGREQ before CONNECT", send: append(append([]byte{}, ping...), ping...)},
		{name: "refused protocol level with a PINGREQ behind", send: append([]byte{0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 9, 2, 0, 30, 0, 1, 'a'}, ping...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := start(t, Options{})
			c, err := net.Dial("tcp", b.TCPAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(testTimeout)) //nolint:errcheck // a hang fails the test
			r := bufio.NewReader(c)
			if tt.connect {
				if _, err := c.Write(connect); err != nil {
					t.Fatal(err)
				}
				if h, body, err := readPacketBody(r); err != nil || h != 0x20 || len(body) != 2 || body[1] != 0 {
					t.Fatalf("CONNACK %#x % x, %v; want 0x20 00 00", h, body, err)
				}
			}
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, r) //nolint:errcheck // until the broker closes the connection
			waitFor(t, "the connection to end", func() bool { return rawCount(b) == 0 })
			if out := b.readBufs.out.Load(); out != 0 {
				t.Errorf("%d read buffers still lent once the connection ended, want 0", out)
			}
		})
	}
}

// TestReadsRawButOneInSyscallEvery: the broker's plain TCP reads are raw
// system calls but one in syscallEvery, made through the scheduler
// (syscall.Read) so that it wakes the runtime's monitor thread if parked
// (readBufPool.syscallDue); both kinds read the same bytes. 3 ×
// syscallEvery PINGREQs, each read in its own ReadLent, come back whole
// and in order, and the pool counted every read(2) (at least one a
// ReadLent).
func TestReadsRawButOneInSyscallEvery(t *testing.T) {
	var due int
	var p readBufPool
	for range 4 * syscallEvery {
		if p.syscallDue() {
			due++
		}
	}
	if due != 4 {
		t.Fatalf("%d reads of %d through the scheduler, want 4", due, 4*syscallEvery)
	}

	cli, srv := tcpPair(t)
	var pool readBufPool
	nc := &netConn{Conn: srv, raw: newRawIO(srv, &pool), maxConnect: 1 << 20, maxPacket: 100, packets: 1, connected: true}
	srv.SetReadDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck // a hang fails the test
	for i := range 3 * syscallEvery {
		if _, err := cli.Write([]byte{0xc0, 0x00}); err != nil {
			t.Fatal(err)
		}
		buf, n, err := nc.ReadLent(false)
		if err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if string(buf[:n]) != "\xc0\x00" {
			t.Fatalf("read %d: % x, want c0 00", i, buf[:n])
		}
		nc.ReturnLent(buf)
	}
	if got := pool.reads.Load(); got < 3*syscallEvery {
		t.Errorf("%d reads counted, want at least %d", got, 3*syscallEvery)
	}
}

// TestRawNext: a read is raw when one of the connection's last two reads
// found its socket empty (a reader that waits between packets); reads
// of input that never runs dry go through the scheduler, as the net
// package's do.
func TestRawNext(t *testing.T) {
	tests := []struct {
		name    string
		drained []bool // the reads before, oldest first: found the socket empty
		raw     bool
	}{
		{"first read", nil, false},
		{"after a drained read", []bool{true}, true},
		{"data after a drained read", []bool{true, false}, true},
		{"two reads of data", []bool{true, false, false}, false},
		{"a flood", []bool{false, false, false, false}, false},
		{"waits between packets", []bool{true, false, true, false, true, false}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w rawIO
			for _, d := range tt.drained {
				w.drained <<= 1
				if d {
					w.drained |= 1
				}
			}
			if got := w.rawNext(); got != tt.raw {
				t.Errorf("rawNext %v, want %v", got, tt.raw)
			}
		})
	}
}
