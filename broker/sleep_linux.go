//go:build linux

package broker

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Sleeping readers (issue 15, idle connections). Every connection has a
// read goroutine while it is served (mochi's model), and a goroutine
// waiting in the netpoller keeps its stack: 4 KiB, most of what an idle
// connection costs. A plain TCP connection whose reader has waited
// between packets for Options.ReaderSleep lets it go instead: the sweep
// (every half ReaderSleep) sets the waiting reader's read deadline to the
// past (kick), the reader, woken, answers mochi ErrAsleep (ReadLent, with
// nothing read and nothing held), mochi's serveClient returns it without
// ending the session, and Broker.serve hands the connection to sleep:
// its descriptor goes into the sleepers' epoll set (one-shot), and the
// goroutine ends. Input (or the client's close), the keep-alive deadline
// (a timer) or the connection's Close wakes it: a new goroutine runs the
// same serve function, and mochi reads on as if it had waited itself.
//
// netConn.sleep says where a connection's reader is, one word, changed
// by compare-and-swap:
//
//	awake    reading, or waiting inside a packet (never kicked there)
//	epoch e  waiting between packets since the sweep's epoch e
//	kicked   the sweep set its read deadline to the past (under dmu)
//	asleep   no reader: the descriptor is in the epoll set (under mu)
//	closing  Close began: the reader never sleeps again, and its next
//	         wait between packets fails at once
//	expired  woken by its read deadline's timer: the reader's next wait
//	         between packets fails at once, as the wait would have
//
// Owners: the sleepers' goroutine (run) owns the epoll wait, the epoch
// and the sweep's scratch; mu guards byFD, stopped and every change of
// the epoll set; a netConn's reader owns its read deadline but while it
// is kicked (the sweep's, under the netConn's dmu). The Broker starts the
// goroutine (newSleepers, Start) and stops it (stop, in shutdown).
type sleepers struct {
	b     *Broker
	after time.Duration // Options.ReaderSleep
	epfd  int
	f     *os.File // epfd, waited on through the netpoller
	rc    syscall.RawConn
	epoch atomic.Uint32
	evs   []unix.EpollEvent // run's
	kicks []*netConn        // sweep's

	mu      sync.Mutex
	byFD    map[int32]*sleeper
	stopped bool
	done    chan struct{}
}

// sleeper is a connection asleep: what wakes it needs to serve it again.
type sleeper struct {
	nc    *netConn
	fd    int32
	id    string       // its listener's
	serve func() error // mochi's serve function (Server.EstablishSession)
	timer *time.Timer  // its keep-alive deadline, if any
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

// sleepTicks is how many sweeps a reader waits through before it is
// kicked: it has waited ReaderSleep at least, 1.5 × ReaderSleep at most.
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

func openSleepers(b *Broker) (*sleepers, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("broker: epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("broker: epoll set non-blocking: %w", err)
	}
	f := os.NewFile(uintptr(epfd), "sleepers")
	if err := f.SetReadDeadline(time.Time{}); err != nil { // os.ErrNoDeadline: not in the netpoller
		f.Close()
		return nil, fmt.Errorf("broker: epoll set not pollable: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("broker: epoll set: %w", err)
	}
	s := &sleepers{b: b, after: b.opts.ReaderSleep, epfd: epfd, f: f, rc: rc,
		evs: make([]unix.EpollEvent, 64), byFD: map[int32]*sleeper{}, done: make(chan struct{})}
	s.epoch.Store(1)
	return s, nil
}

// run waits for the epoll set's events and sweeps every half ReaderSleep,
// until stop closes the set.
func (s *sleepers) run() {
	defer close(s.done)
	tick := max(s.after/sleepTicks, time.Millisecond)
	next := time.Now().Add(tick)
	for {
		if now := time.Now(); !now.Before(next) {
			s.sweep()
			next = now.Add(tick)
		}
		s.f.SetReadDeadline(next) //nolint:errcheck // pollable (openSleepers)
		err := s.rc.Read(s.poll)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return // closed (stop)
		}
	}
}

// poll takes the events ready in the epoll set, without waiting, and
// wakes their connections; false (wait for more) when there were none.
func (s *sleepers) poll(fd uintptr) bool {
	n, err := unix.EpollWait(int(fd), s.evs, 0)
	if err != nil {
		return !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) // closed: run's Read ends
	}
	if n == 0 {
		return false
	}
	for i := range s.evs[:n] {
		s.wakeFD(s.evs[i].Fd)
	}
	return true
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
		if e := nc.sleep.Load(); e != awake && e <= maxEpoch && now-e >= sleepTicks && now > e {
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

// woke is the reader's, after a wait marked waiting at epoch e: true
// when the sweep kicked it (and not the client's keep-alive deadline,
// which has not passed), so that it may sleep; its read deadline is its
// own again either way.
func (c *netConn) woke(e uint32) bool {
	if c.sleep.CompareAndSwap(e, awake) {
		return false
	}
	c.dmu.Lock() // the kick's deadline is set
	defer c.dmu.Unlock()
	if !c.sleep.CompareAndSwap(kicked, awake) {
		return false // closing
	}
	d := c.rdl.Load()
	if d == 0 {
		c.Conn.SetReadDeadline(time.Time{}) //nolint:errcheck // as mochi's own
		return true
	}
	c.Conn.SetReadDeadline(time.Unix(0, d)) //nolint:errcheck // as mochi's own
	return time.Now().UnixNano() < d
}

// sleep puts c, whose reader answered ErrAsleep, to sleep: its descriptor
// waits in the epoll set for input (or the client's close), a timer for
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
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: fd}
		err = unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	}
	if err != nil {
		nc.sleep.Store(awake)
		s.b.log.Debug().Err(err).Str("remote", nc.RemoteAddr().String()).Msg("reader kept awake")
		go s.b.serve(id, nc, serve)
		return
	}
	sl := &sleeper{nc: nc, fd: fd, id: id, serve: serve}
	if d := nc.rdl.Load(); d != 0 {
		sl.timer = time.AfterFunc(time.Until(time.Unix(0, d)), func() { s.wakeSleeper(sl, expired) })
	}
	s.byFD[fd] = sl
}

// wakeFD wakes the connection asleep on descriptor fd, if any.
func (s *sleepers) wakeFD(fd int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sl := s.byFD[fd]; sl != nil {
		s.wakeLocked(sl, awake)
	}
}

// wakeSleeper wakes sl, if it still sleeps, to state to.
func (s *sleepers) wakeSleeper(sl *sleeper, to uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byFD[sl.fd] == sl {
		s.wakeLocked(sl, to)
	}
}

// wakeLocked takes sl out of the set and serves its connection again, on
// a new goroutine, its state set to to (awake, closing or expired). mu
// held.
func (s *sleepers) wakeLocked(sl *sleeper, to uint32) {
	delete(s.byFD, sl.fd)
	unix.EpollCtl(s.epfd, unix.EPOLL_CTL_DEL, int(sl.fd), nil) //nolint:errcheck // one-shot: it reports nothing more either way
	if sl.timer != nil {
		sl.timer.Stop()
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
			if fd, err := nc.fd(); err == nil && s.byFD[fd] != nil && s.byFD[fd].nc == nc {
				s.wakeLocked(s.byFD[fd], closing)
				return
			}
			for _, sl := range s.byFD { // its descriptor closed already: by pointer
				if sl.nc == nc {
					s.wakeLocked(sl, closing)
					return
				}
			}
			nc.sleep.Store(closing)
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
	return len(s.byFD)
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
	s.mu.Lock()
	s.stopped = true
	for _, sl := range s.byFD {
		s.wakeLocked(sl, awake)
	}
	s.mu.Unlock()
	s.f.Close()
	<-s.done
}

// quiet reports whether c's reader, between packets, has nothing read
// and unhandled: no input in a lent buffer, no failed packet to report
// (its next read would fail without reading). Such a connection can wait
// asleep from the start: the guard puts it to sleep after its CONNECT.
// The reader's.
func (c *netConn) quiet() bool {
	return c.raw != nil && c.raw.lent == nil && c.state < stateFailed
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
