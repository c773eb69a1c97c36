//go:build linux

package broker

import (
	"container/heap"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Sleeping readers (issue 15, idle connections). Every connection has a
// read goroutine while it is served (mochi's model), and a goroutine
// waiting in the netpoller keeps its stack: 2–4 KiB, about a third of
// what an idle connection cost (bench/README.md). A plain TCP connection whose reader has waited
// between packets for Options.ReaderSleep lets it go instead: the sweep
// (every half ReaderSleep) sets the waiting reader's read deadline to the
// past (kick), the reader, woken, answers mochi ErrAsleep (ReadLent, with
// nothing read and nothing held), mochi's serveClient returns it without
// ending the session, and Broker.serve hands the connection to sleep:
// its descriptor is armed in the sleepers' epoll set (one-shot), and the
// goroutine ends. A fresh connection whose CONNECT left nothing unread
// sleeps from its CONNACK on (guard). Input (or the client's close), the
// keep-alive deadline (kept in a heap the epoll goroutine waits on) or
// the connection's Close wakes it: a new goroutine runs the same serve
// function, and mochi reads on as if it had waited itself.
//
// netConn.sleep says where a connection's reader is, one word, changed
// by compare-and-swap:
//
//	awake    reading, or waiting inside a packet (never kicked there)
//	epoch e  waiting between packets since the sweep's epoch e
//	kicked   the sweep set its read deadline to the past (under dmu)
//	asleep   no reader: the descriptor is armed in the epoll set (under mu)
//	closing  Close began: the reader never sleeps again, and its next
//	         wait between packets fails at once
//	expired  woken by its read deadline: the reader's next wait
//	         between packets fails at once, as the wait would have
//
// Owners: the sleepers' goroutine (run) owns the epoll wait (it blocks in
// epoll_wait: one thread), the epoch and the sweep's scratch; mu guards
// byFD, dues, waitTo, stopped, every change of the epoll set and each
// netConn's inEpoll; a netConn's reader owns its read deadline but while
// it is kicked (the sweep's, under the netConn's dmu). The Broker starts
// the goroutine (newSleepers, Start), halts the sleeps (halt, as Close
// begins) and stops it (stop, once the sessions ended).
type sleepers struct {
	b     *Broker
	after time.Duration // Options.ReaderSleep
	epfd  int
	efd   int // an eventfd in the set: wakes run (stop, or an earlier deadline)
	epoch atomic.Uint32
	evs   []unix.EpollEvent // run's
	kicks []*netConn        // sweep's
	done  chan struct{}     // closed when run returns

	mu      sync.Mutex
	byFD    fdTable
	dues    dueHeap // the sleepers with a read deadline
	waitTo  int64   // when run's epoll_wait returns at the latest (ns since Broker.born)
	stopped bool
}

// sleeper is a connection asleep: what wakes it needs to serve it again.
// Its place in the heap (at) an int32 beside fd, so that it is 48 bytes,
// not 56 (the 64 class).
type sleeper struct {
	nc    *netConn
	fd    int32
	at    int32        // its place in sleepers.dues; -1: not there
	id    string       // its listener's
	serve func() error // mochi's serve function (Server.EstablishSession)
	due   int64        // its read deadline (netConn.rdl: ns since Broker.born; 0: none)
}

// fdTable is the sleepers by descriptor: a slice indexed by descriptor
// number (the kernel gives the lowest free one, so they are dense), 8
// bytes a descriptor up to the highest seen, where a map took ~29 bytes
// a sleeper. Under sleepers.mu.
type fdTable struct {
	by []*sleeper
	n  int // non-nil entries
}

// get is fd's sleeper, nil if none.
func (t *fdTable) get(fd int32) *sleeper {
	if fd < 0 || int(fd) >= len(t.by) {
		return nil
	}
	return t.by[fd]
}

// set files sl under its descriptor, which has none.
func (t *fdTable) set(sl *sleeper) {
	if int(sl.fd) >= len(t.by) {
		t.by = append(t.by, make([]*sleeper, int(sl.fd)+1-len(t.by))...)
		t.by = t.by[:cap(t.by)]
	}
	if t.by[sl.fd] == nil {
		t.n++
	}
	t.by[sl.fd] = sl
}

// del removes fd's sleeper, if any.
func (t *fdTable) del(fd int32) {
	if fd >= 0 && int(fd) < len(t.by) && t.by[fd] != nil {
		t.by[fd] = nil
		t.n--
	}
}

// each calls f for each sleeper, until f returns false; f may delete it.
func (t *fdTable) each(f func(*sleeper) bool) {
	for _, sl := range t.by {
		if sl != nil && !f(sl) {
			return
		}
	}
}

// dueHeap is the sleepers with a read deadline, soonest first
// (container/heap). Under sleepers.mu.
type dueHeap []*sleeper

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].at, h[j].at = int32(i), int32(j)
}
func (h *dueHeap) Push(x any) {
	sl := x.(*sleeper)
	sl.at = int32(len(*h))
	*h = append(*h, sl)
}
func (h *dueHeap) Pop() any {
	old := *h
	sl := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	sl.at = -1
	return sl
}

// The states of netConn.sleep other than the epochs (1 to maxEpoch).
const (
	awake    uint32 = 0
	kicked   uint32 = ^uint32(0)
	asleep   uint32 = ^uint32(0) - 1
	closing  uint32 = ^uint32(0) - 2
	expired  uint32 = ^uint32(0) - 3
	maxEpoch uint32 = ^uint32(0) - 4
)

// sleepTicks is how many sweeps (ReaderSleep apart in all) a reader has
// waited past the epoch it began waiting in when it is kicked, at the
// next: it has waited more than ReaderSleep, 1.5 × ReaderSleep at most.
const sleepTicks = 2

// aLongTimeAgo is the read deadline of a kick: any past time wakes the
// reader.
var aLongTimeAgo = time.Unix(1, 0)

// newSleepers makes b's sleepers and starts their goroutine; nil when
// readers never sleep (Options.ReaderSleep < 0) or the epoll set cannot
// be made or waited on through the netpoller (logged).
func newSleepers(b *Broker) *sleepers {
	if b.opts.ReaderSleep < 0 {
		return nil
	}
	s, err := openSleepers(b)
	if err != nil {
		b.log.Warn().Err(err).Msg("idle connections keep their read goroutines")
		return nil
	}
	go s.run()
	return s
}

// The epoll set is waited on by a goroutine of its own, in epoll_wait (a
// thread of the process blocked there), not through the netpoller: an
// epoll set inside another (Go's) makes every EPOLL_CTL_ADD to it check
// the nesting under a kernel-wide lock, 10 µs a descriptor (a kicked
// reader's whole cost, measured).
func openSleepers(b *Broker) (*sleepers, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("broker: epoll_create1: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("broker: eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(efd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		unix.Close(efd)
		unix.Close(epfd)
		return nil, fmt.Errorf("broker: epoll_ctl of the eventfd: %w", err)
	}
	s := &sleepers{b: b, after: b.opts.ReaderSleep, epfd: epfd, efd: efd,
		evs: make([]unix.EpollEvent, 64), done: make(chan struct{})}
	s.epoch.Store(1)
	return s, nil
}

// run waits for the epoll set's events until the next sweep (every half
// ReaderSleep) or the soonest read deadline of a sleeper, whichever comes
// first, until stop.
func (s *sleepers) run() {
	defer close(s.done)
	tick := max(s.after/sleepTicks, time.Millisecond)
	next := time.Now().Add(tick)
	for {
		now := time.Now()
		if !now.Before(next) {
			s.sweep()
			next = now.Add(tick)
		}
		wait := s.expire(int64(now.Sub(s.b.born)), int64(next.Sub(s.b.born)))
		n, err := unix.EpollWait(s.epfd, s.evs, int(wait/int64(time.Millisecond))+1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			s.b.log.Error().Err(err).Msg("epoll_wait of the sleeping readers failed; they are woken, and no reader sleeps again")
			s.stopWaking()
			return
		}
		for i := range s.evs[:n] {
			if int(s.evs[i].Fd) != s.efd {
				s.wakeFD(s.evs[i].Fd)
				continue
			}
			var b [8]byte
			unix.Read(s.efd, b[:]) //nolint:errcheck // drained: it only wakes run
			if s.isStopped() {
				return
			}
		}
	}
}

// expire wakes the sleepers whose read deadline passed (now), and returns
// how long run may wait: until the soonest deadline left, or sweep.
func (s *sleepers) expire(now, sweep int64) (wait int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.dues) > 0 && s.dues[0].due <= now {
		s.wakeLocked(s.dues[0], expired)
	}
	s.waitTo = sweep
	if len(s.dues) > 0 && s.dues[0].due < sweep {
		s.waitTo = s.dues[0].due
	}
	return max(s.waitTo-now, 0)
}

func (s *sleepers) isStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

// sweep moves the epoch on and kicks the readers that have waited
// between packets for sleepTicks epochs or more. The connections are
// read under the broker's rawMu, and kicked after it.
func (s *sleepers) sweep() {
	now := s.epoch.Load() + 1
	if now > maxEpoch {
		now = 1 // after 2^32 sweeps: a reader waiting since before is kicked late once
	}
	s.epoch.Store(now)
	s.b.rawMu.Lock()
	for nc := range s.b.raw {
		if e := nc.sleep.Load(); e != awake && e <= maxEpoch && now-e > sleepTicks && now > e {
			s.kicks = append(s.kicks, nc)
		}
	}
	s.b.rawMu.Unlock()
	for i, nc := range s.kicks {
		nc.kick()
		s.kicks[i] = nil
	}
	s.kicks = s.kicks[:0]
}

// kick wakes c's reader, waiting between packets, to let its goroutine go:
// its read deadline is set to the past, under dmu, so that the reader,
// once woken, sets its own back after it (woke).
func (c *netConn) kick() {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if e := c.sleep.Load(); e != awake && e <= maxEpoch && c.sleep.CompareAndSwap(e, kicked) {
		c.Conn.SetReadDeadline(aLongTimeAgo) //nolint:errcheck // a closed connection's reader wakes anyway
	}
}

// waiting marks c's reader as waiting between packets; it reports whether
// it did (false: the connection is closing, or readers never sleep), and
// e is expired when the reader was woken by its read deadline: its wait
// fails at once (mochi moved the deadline on before it, as before any
// wait, which would have kept a silent client forever); closing when
// Close has begun: its wait fails at once too, and the session ends
// (a reader woken asleep by the Close waited for the client's input or
// the Close's linger, lingerFor, before: red team h-rtsleep,
// TestClosingReaderEndsAtOnce).
func (c *netConn) waiting() (e uint32, ok bool) {
	if c.b == nil || c.b.sleepers == nil {
		return 0, false
	}
	s := c.b.sleepers
	if c.sleep.CompareAndSwap(expired, awake) {
		return expired, false
	}
	if c.sleep.Load() == closing {
		return closing, false
	}
	e = s.epoch.Load()
	return e, c.sleep.CompareAndSwap(awake, e)
}

// What a reader does after a wait marked waiting (woke).
const (
	wokeOn     = iota // as after any wait
	wokeSleep         // the sweep kicked it: it may sleep
	wokeClosed        // kicked, but the connection began closing since
)

// woke is the reader's, after a wait marked waiting at epoch e: wokeSleep
// when the sweep kicked it (and not the client's keep-alive deadline,
// which has not passed), its read deadline then its own again;
// wokeClosed when it was kicked and the connection began closing since:
// the deadline is Close's then (it bounds the drain of a gentle close),
// and the kick's timeout is the close's error.
func (c *netConn) woke(e uint32) int {
	if c.sleep.CompareAndSwap(e, awake) {
		return wokeOn
	}
	c.dmu.Lock() // the kick's deadline is set
	defer c.dmu.Unlock()
	if !c.sleep.CompareAndSwap(kicked, awake) {
		return wokeClosed
	}
	d := c.rdl.Load()
	if d == 0 {
		c.Conn.SetReadDeadline(time.Time{}) //nolint:errcheck // as mochi's own
		return wokeSleep
	}
	c.Conn.SetReadDeadline(c.b.born.Add(time.Duration(d))) //nolint:errcheck // as mochi's own
	if int64(time.Since(c.b.born)) >= d {
		return wokeOn // the keep-alive's deadline passed too
	}
	return wokeSleep
}

// sleep puts c, whose reader answered ErrAsleep, to sleep: its descriptor
// waits in the epoll set for input (or the client's close), the dues heap for
// its read deadline. A connection closing, or one the set does not take,
// is served on at once.
func (s *sleepers) sleep(nc *netConn, id string, serve func() error) {
	if s == nil {
		go nc.b.serve(id, nc, serve)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || !nc.sleep.CompareAndSwap(awake, asleep) {
		go s.b.serve(id, nc, serve) // closing: its read fails at once
		return
	}
	fd, err := nc.fd()
	if err == nil {
		err = s.armLocked(nc, fd)
	}
	if err != nil {
		nc.sleep.Store(awake)
		s.b.log.Debug().Err(err).Str("remote", nc.RemoteAddr().String()).Msg("reader kept awake")
		go s.b.serve(id, nc, serve)
		return
	}
	sl := &sleeper{nc: nc, fd: fd, id: id, serve: serve, due: nc.rdl.Load(), at: -1}
	if sl.due != 0 {
		heap.Push(&s.dues, sl)
		if sl.due < s.waitTo { // run waits past it: wake it to wait less
			one := [8]byte{1}
			unix.Write(s.efd, one[:]) //nolint:errcheck // a full counter wakes run too
		}
	}
	s.byFD.set(sl)
}

// armLocked has the epoll set report input (or the client's close) on nc's
// descriptor fd once. A connection stays in the set from its first sleep
// to its close (the kernel takes a descriptor out when it closes), armed
// again at each sleep (EPOLL_CTL_MOD): adding and removing it at every
// sleep and wake-up cost two system calls, 10 µs, a cycle. An event for
// a descriptor not asleep (armed, then woken by its deadline or a Close) is
// dropped by wakeFD. mu held.
func (s *sleepers) armLocked(nc *netConn, fd int32) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: fd}
	if nc.inEpoll {
		err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
		if !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	if err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev); err != nil {
		return err
	}
	nc.inEpoll = true
	return nil
}

// wakeFD wakes the connection asleep on descriptor fd, if any.
func (s *sleepers) wakeFD(fd int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl := s.byFD.get(fd); sl != nil {
		s.wakeLocked(sl, awake)
	}
}

// wakeLocked takes sl out of the set and serves its connection again, on
// a new goroutine, its state set to to (awake, closing or expired). mu
// held.
func (s *sleepers) wakeLocked(sl *sleeper, to uint32) {
	s.byFD.del(sl.fd) // its descriptor stays in the set, disarmed or not (armLocked)
	if sl.at >= 0 {
		heap.Remove(&s.dues, int(sl.at))
	}
	sl.nc.sleep.Store(to)
	go s.b.serve(sl.id, sl.nc, sl.serve)
}

// closing is netConn.Close's, before the connection closes: a reader
// asleep is woken to end the session (its read fails), and no reader of
// the connection sleeps after.
func (s *sleepers) closing(nc *netConn) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		switch e := nc.sleep.Load(); e {
		case closing:
			return
		case asleep:
			if fd, err := nc.fd(); err == nil && s.byFD.get(fd) != nil && s.byFD.get(fd).nc == nc {
				s.wakeLocked(s.byFD.get(fd), closing)
				return
			}
			woken := false
			s.byFD.each(func(sl *sleeper) bool { // its descriptor closed already: by pointer
				if sl.nc == nc {
					s.wakeLocked(sl, closing)
					woken = true
				}
				return !woken
			})
			if !woken {
				nc.sleep.Store(closing)
			}
			return
		default:
			if nc.sleep.CompareAndSwap(e, closing) {
				return
			}
		}
	}
}

// asleepNow is how many connections sleep.
func (s *sleepers) asleepNow() int {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byFD.n
}

// halt makes every reader stay awake from now on (Broker.Close): one the
// sweep kicks is served on at once. Those asleep stay so until woken:
// the broker's Close of each wakes it, and its read fails at once
// (closing). stop woke them all, awake, before the sessions were
// stopped, and each session then ended only after its Close's linger
// (lingerFor, 2 s) with a client that stays connected (red team
// h-rtsleep, TestSleepingCloseBounded).
func (s *sleepers) halt() {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
}

// stop wakes every connection asleep, stops the sweep and closes the
// epoll set; no reader sleeps after.
func (s *sleepers) stop() {
	if s == nil {
		return
	}
	s.stopWaking()
	one := [8]byte{1}
	unix.Write(s.efd, one[:]) //nolint:errcheck // a full counter wakes run too
	<-s.done
	unix.Close(s.efd)
	unix.Close(s.epfd)
}

// stopWaking wakes every connection asleep; none sleeps after.
func (s *sleepers) stopWaking() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	s.byFD.each(func(sl *sleeper) bool {
		s.wakeLocked(sl, awake)
		return true
	})
}

// quiet reports whether c's reader, between packets, has nothing read
// and unhandled: no input in a lent buffer, no failed packet to report
// (its next read would fail without reading). Such a connection can wait
// asleep from the start: the guard puts it to sleep after its CONNECT,
// once it gave back the read buffer ReturnLent kept (releaseSpare).
// The reader's.
func (c *netConn) quiet() bool {
	return c.raw != nil && (c.raw.lent == nil || c.raw.spare) && c.state < stateFailed
}

// fd is the connection's descriptor (plain TCP only).
func (c *netConn) fd() (int32, error) {
	if c.raw == nil {
		return 0, errors.New("broker: not plain TCP")
	}
	var fd int32
	if err := c.raw.rc.Control(func(d uintptr) { fd = int32(d) }); err != nil {
		return 0, err
	}
	return fd, nil
}
