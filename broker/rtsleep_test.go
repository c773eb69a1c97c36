//go:build linux

package broker

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// Red team h-rtsleep: sleeping readers (sleep_linux.go) and the Close of
// their connections.

// TestCloseLingerDeadlineStands: once Close has set the read deadline of
// its linger (lingerFor), a keep-alive deadline the reader sets after it
// (mochi's refreshDeadline, by a reader woken by the Close or just back
// from a packet) does not move it: the read ends within lingerFor.
//
// Failing at first: a reader woken from sleep, or every reader at
// Broker.Close (sleepers.stop), refreshed its keep-alive after the Close
// and waited keep-alive × 1.5 (91 s in TestReaderSleeps, which failed 2
// of 15 -race runs at GOMAXPROCS 4 with Close not done within 10 s,
// both readers in ReadLent and both Close drains waiting for their read
// lock). Here the read waited the minute the reader set.
func TestCloseLingerDeadlineStands(t *testing.T) {
	cli, srv := tcpPair(t)
	defer cli.Close()
	var pool readBufPool
	nc := &netConn{Conn: srv, raw: newRawIO(srv, &pool), maxConnect: 1 << 20, maxPacket: 1 << 20, packets: 1, connected: true}
	nc.Close()
	began := time.Now()
	nc.SetReadDeadline(time.Now().Add(time.Minute)) // the reader's refreshDeadline, after the Close
	done := make(chan error, 1)
	go func() {
		buf, _, err := nc.ReadLent(true)
		if buf != nil {
			nc.ReturnLent(buf)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("read after Close succeeded, want an error")
		}
		if took := time.Since(began); took > lingerFor+time.Second {
			t.Fatalf("read ended after %v, want within lingerFor (%v)", took, lingerFor)
		}
	case <-time.After(lingerFor + 3*time.Second):
		t.Fatalf("read still waiting %v after Close, want it ended within lingerFor (%v)", lingerFor+3*time.Second, lingerFor)
	}
}

// TestSleepingCloseBounded: Broker.Close with connections asleep whose
// clients stay connected and silent (keep-alive 60), round after round:
// their sessions end at once (each Close wakes its reader, whose wait
// fails), well within the Close's linger (lingerFor); Close returns once
// the lingers ended, within lingerFor and a margin, and leaves none of
// its sockets open.
//
// Failing at first (sleepers.stop where halt is now): the sessions ended
// after 2.0 s in 12 of 16 rounds (2 runs; 13 of 16 again with the
// lingers waited for): every reader was woken, awake, before the
// sessions were stopped, and waited for its linger. With halt but Close
// not waiting for the lingers: 8 of 8 rounds left the connections'
// sockets open, and their drain goroutines running, after Close. (Before
// the linger's deadline stood, TestReaderSleeps's Close took over 10 s
// in 2 of 15 runs: TestCloseLingerDeadlineStands.)
func TestSleepingCloseBounded(t *testing.T) {
	const rounds, clients = 8, 6
	for r := range rounds {
		base := sockets(t)
		b := start(t, sleepOpts())
		if b.sleepers == nil {
			t.Skip("no epoll set here")
		}
		for i := range clients {
			dialRaw(t, b, "cl-"+strconv.Itoa(i), byte(4+i%2), true, packets.Properties{})
		}
		awaitAsleep(t, b, clients)
		began := time.Now()
		closed := make(chan struct{})
		go func() { b.Close(); close(closed) }()
		waitFor(t, "every session ended", func() bool { return rawCount(b) == 0 })
		// Held by the linger, they end after lingerFor (2.0 s) or more;
		// the bound below it leaves a loaded -race run room.
		if took := time.Since(began); took >= lingerFor*3/4 {
			t.Errorf("round %d: the sessions of %d connections asleep ended after %v, want under %v (the linger is %v)", r, clients, took, lingerFor*3/4, lingerFor)
		}
		select {
		case <-closed:
		case <-time.After(lingerFor + 4*time.Second):
			t.Fatalf("round %d: Close took over %v with %d connections asleep", r, lingerFor+4*time.Second, clients)
		}
		if n := sockets(t) - base - clients; n != 0 { // the clients' ends are open
			t.Errorf("round %d: %d of the broker's sockets still open after Close (lingering)", r, n)
		}
	}
}

// sockets is how many sockets the process has open.
func sockets(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// TestClosingReaderEndsAtOnce: a sleeping client taken over (the old
// connection's Close wakes its reader) ends at once, round after round:
// its connection is untracked (its session's end done: OnDisconnect, the
// read buffer back) well within the Close's linger, which the woken
// reader does not wait for (its wait between packets fails: closing).
//
// Failing at first (-race, 4 runs of both versions at each GOMAXPROCS):
// at GOMAXPROCS 2, 7 rounds of 160 took 2.0 s (lingerFor), at 4, 39 of
// 160 (every run failed); at 1 none. The woken reader found its client
// not yet stopped (Stop closes the connection first) and waited for
// input or the linger's deadline.
func TestClosingReaderEndsAtOnce(t *testing.T) {
	const rounds = 20
	for _, v := range []byte{4, 5} {
		t.Run("v"+strconv.Itoa(int(v)), func(t *testing.T) {
			b := start(t, sleepOpts())
			if b.sleepers == nil {
				t.Skip("no epoll set here")
			}
			dialRaw(t, b, "taken", v, true, packets.Properties{})
			for r := range rounds {
				awaitAsleep(t, b, 1)
				began := time.Now()
				dialRaw(t, b, "taken", v, true, packets.Properties{})
				waitFor(t, "the old connection untracked", func() bool { return rawCount(b) == 1 })
				// Held by the linger, it ends after lingerFor (2.0 s):
				// the bound below it leaves a loaded -race run room.
				if took := time.Since(began); took >= lingerFor*3/4 {
					t.Errorf("round %d: the taken-over connection ended after %v, want under %v (the linger is %v)", r, took, lingerFor*3/4, lingerFor)
				}
			}
		})
	}
}
