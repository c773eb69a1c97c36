package broker

import (
	"runtime"
	"sync/atomic"
	"time"
)

// Read turns: a client flooding refused packets pays for them with its
// own reading, not with everyone's latency.
//
// A connection's read goroutine reads a buffer of input, handles its
// packets and reads again. A client that sends faster than the broker
// refuses never lets that goroutine wait for input, and Go polls the
// network for the other connections only when a P has nothing else to
// run, or from sysmon every 10 ms: four such clients on two cores made a
// normal client's publish wait for its turn 8–20 ms (bench/README.md,
// "Refusal floods"). So a read that brought input after the connection
// refused at least turnRefusals packets of the read before it is handled
// only in a read turn: the broker has one fewer than GOMAXPROCS (at least
// one), taken for one read's packets and given back at the next read.
// The flooders take turns on the other cores; one stays free for
// everyone else and polls the network. A turn is waited for at most
// turnWait, so a turn that is never given back (a reader stuck in a hook)
// only slows the flooders.
//
// Only plain TCP connections take turns (ReadLent): TLS and WebSocket
// connections read through netConn.Read and never wait for one. Eight
// WebSocket flooders of refused publishes cost a normal client's publish
// the same at main and here (p50 27–44 ms; bench/README.md, "Refusal
// floods, red team"). A WebSocket read returns one message, usually one
// packet, so a count of one read's refusals would not tell a flooder
// there anyway.

// turnRefusals is how many refusals of one read make the next read's
// packets wait for a turn. A client refused now and then never waits.
const turnRefusals = 16

// turnWait bounds the wait for a read turn.
const turnWait = 20 * time.Millisecond

// newTurns is the broker's read turns.
func newTurns() chan struct{} {
	return make(chan struct{}, max(1, runtime.GOMAXPROCS(0)-1))
}

// readTurn is a connection's side of the read turns: touched only by its
// read goroutine.
type readTurn struct {
	seen    uint32 // refusals when it last read
	holding bool   // it holds a turn
}

// next gives back the turn held for the read before (the reader is about
// to read again) to turns.
func (t *readTurn) next(turns chan struct{}) {
	if t.holding {
		t.holding = false
		<-turns
	}
}

// take waits, for at most turnWait, for a turn for the packets just read
// if the connection refused turnRefusals or more of the read before;
// refusals is the connection's count of them (logSlot.refusals), nil
// until its session exists.
func (t *readTurn) take(turns chan struct{}, refusals *atomic.Uint32) {
	if refusals == nil || turns == nil {
		return
	}
	n := refusals.Load()
	flooding := n-t.seen >= turnRefusals
	t.seen = n
	if !flooding {
		return
	}
	select {
	case turns <- struct{}{}:
		t.holding = true
		return
	default:
	}
	timer := time.NewTimer(turnWait) // a flooder's: not kept, so that an idle connection carries no timer
	select {
	case turns <- struct{}{}:
		t.holding = true
	case <-timer.C:
	}
	timer.Stop()
}

// refusals is the count of refusals of the connection's filed conn, nil
// while none is filed (before its CONNACK, after it ends).
func (c *netConn) refusals() *atomic.Uint32 {
	if fc := c.filed.Load(); fc != nil {
		return &fc.logs.refusals
	}
	return nil
}

// turns is the broker's read turns, or nil for a connection without a
// broker (tests).
func (c *netConn) turns() chan struct{} {
	if c.b == nil {
		return nil
	}
	return c.b.turns
}
