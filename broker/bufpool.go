package broker

import (
	"bytes"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// flushAt is the size of a writer's encode buffer: publishes are encoded
// into it until the next would pass it, then written at once. 16 KiB
// writes cost loopback and TCP little more than 64 KiB ones, and 500
// writers replaying retained rows at once hold 8 MiB of buffers, not
// 60 (bench/README.md, issue 15).
const flushAt = 16 << 10

// bufPool lends writers their encode buffers (mqttOut), from the first
// publish encoded to the flush: only writers with something to write hold
// one. The zero value is ready; a buffer grown past four times flushAt (a large
// snapshot went through) is not kept.
type bufPool struct{ p sync.Pool }

func (p *bufPool) get() *bytes.Buffer {
	if b, ok := p.p.Get().(*bytes.Buffer); ok {
		return b
	}
	b := new(bytes.Buffer)
	b.Grow(flushAt)
	return b
}

func (p *bufPool) put(b *bytes.Buffer) {
	if b.Cap() > 4*flushAt {
		return
	}
	b.Reset()
	p.p.Put(b)
}

// encodedAtLeast is a lower bound of pk's encoded size: its topic, payload
// and fixed header.
func encodedAtLeast(pk *packets.Packet) int {
	return 2 + 2 + len(pk.TopicName) + len(pk.Payload)
}

// readBufPool lends plain TCP connections their read buffers, of
// clientReadBuffer bytes, from the read that finds input to the reader
// reading it all (netConn.ReadLent, mochi change 62), kept then for the
// reader's next read (netConn.ReturnLent): a connection waiting for its
// next packet holds none. The zero value is ready.
//
// It also counts the reads of those connections (syscallDue): of a
// broker that reads often, every syscallEvery-th is made through the
// scheduler's entersyscall; the others are raw system calls where the
// connection's reader waits between packets (rawIO.rawNext).
type readBufPool struct {
	p     sync.Pool
	out   atomic.Int64  // buffers lent and not yet given back
	reads atomic.Uint32 // reads of the broker's plain TCP connections
	// When the last syscallEvery-th read was made, and the last read
	// made through the scheduler for syscallDue, in ns by clock.
	counted, woke atomic.Int64
	clock         func() int64 // ns; nil: the wall clock (tests set it)
}

// syscallEvery is how many reads of the broker's plain TCP connections
// make one through entersyscall: a read so wakes the runtime's monitor
// thread if it is parked, as every read did before they were raw. A
// power of two.
const syscallEvery = 16

// syscallWindow and syscallGap decide whether the syscallEvery-th read
// goes through the scheduler: if those syscallEvery reads took less than
// syscallWindow (the broker reads more than 8,000 times a second: it is
// busy, and sysmon is to watch it), or if none did for syscallGap.
//
// A broker that reads less often leaves sysmon parked: between two of
// its reads every P is idle, so sysmon parks again at once, and waking it
// cost a futex call on the read's own path and a run of 20-µs sleeps on
// the other core. In the latency scenario (1,000 messages a second, two
// reads each) that was one message in eight, and 20% of the broker's CPU
// a run (bench/README.md, "Latency: what runs beside a message", branch
// h-tail). sysmon still wakes at the runtime's next timer (the $SYS
// ticker's, every second), at any other system call, and at the first
// syscallEvery-th read after syscallGap.
const (
	syscallWindow = 2 * time.Millisecond
	syscallGap    = 100 * time.Millisecond
)

// syscallDue reports whether this read is to be made through the
// scheduler (syscall.Read), which wakes the runtime's monitor thread if
// it is parked: one read in syscallEvery of a broker that reads often
// (syscallWindow), and one at least every syscallGap of one that reads.
// A step of the wall clock changes one such choice at most.
func (p *readBufPool) syscallDue() bool {
	if p.reads.Add(1)&(syscallEvery-1) != 0 {
		return false
	}
	now := p.now()
	if now-p.counted.Swap(now) >= int64(syscallWindow) && now-p.woke.Load() < int64(syscallGap) {
		return false
	}
	p.woke.Store(now)
	return true
}

// now is the pool's clock in ns.
func (p *readBufPool) now() int64 {
	if p.clock != nil {
		return p.clock()
	}
	return time.Now().UnixNano()
}

func (p *readBufPool) get() []byte {
	p.out.Add(1)
	if b, ok := p.p.Get().(*[clientReadBuffer]byte); ok {
		return b[:]
	}
	return new([clientReadBuffer]byte)[:]
}

// put takes back a buffer get lent.
func (p *readBufPool) put(b []byte) {
	p.out.Add(-1)
	if cap(b) == clientReadBuffer {
		p.p.Put((*[clientReadBuffer]byte)(b[:clientReadBuffer]))
	}
}
