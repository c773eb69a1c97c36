package bench

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidwall/gjson"
)

// liveSub is one live-dashboard subscriber: a raw MQTT 3.1.1 client
// (clean session, keep-alive 0) read by one goroutine of its own, which
// hands every PUBLISH to a take function as it reads it.
//
// It is not a Paho client because 500 of those in the bench process could
// not keep up with a fast broker: Paho reads a packet in three read(2)
// calls straight off the socket and hands it on three times, goroutine to
// goroutine, before its handler runs (about 15 µs of the bench's CPU a
// message on the 2-core machine, 95 s for one run's 6.5M messages), and with keep-alive on it drops its own
// connection when a PINGRESP is not processed 10 s after its PINGREQ, which
// waits behind every message ahead of it in the kernel's buffers. This
// client reads through a buffer (one read(2) for many messages) and sends
// no PINGREQ, so however far behind it falls it never ends its connection
// itself: only the broker or the socket can, and that is a disconnect.
type liveSub struct {
	m       *mqttClient
	subbed  chan error    // the SUBACK's outcome (or the read's end before it), once
	done    chan struct{} // closed when the reader has returned
	closing atomic.Bool   // close was called: a read error is not a disconnect
}

// liveBufMax is the largest read buffer a live subscriber keeps between
// packets: a larger packet (a tree snapshot) gets a buffer of its own.
const liveBufMax = 64 << 10

// dialLive connects a live subscriber as id, subscribes to filter and
// waits for the SUBACK. take gets each PUBLISH (payload valid only during
// the call) in the reader goroutine; lost gets the error that ended the
// connection, unless close ended it.
func dialLive(addr, id, filter string, take func(retained bool, payload []byte), lost func(error)) (*liveSub, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("bench: connect %s: %w", id, err)
	}
	c.SetDeadline(time.Now().Add(15 * time.Second)) // CONNECT to CONNACK
	m, err := newMQTT(c, id)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("bench: connect %s: %w", id, err)
	}
	c.SetDeadline(time.Time{})
	s := &liveSub{m: m, subbed: make(chan error, 1), done: make(chan struct{})}
	go s.read(take, lost)
	if err := m.subscribe(filter); err != nil {
		s.close()
		return nil, fmt.Errorf("bench: subscribe %s: %w", id, err)
	}
	select {
	case err := <-s.subbed:
		if err != nil {
			s.close()
			return nil, fmt.Errorf("bench: subscribe %s: %w", id, err)
		}
	case <-time.After(30 * time.Second):
		s.close()
		return nil, fmt.Errorf("bench: subscribe %s: no SUBACK within 30 s", id)
	}
	return s, nil
}

// read reads packets until the connection ends.
func (s *liveSub) read(take func(bool, []byte), lost func(error)) {
	defer close(s.done)
	var buf []byte
	for {
		h, body, err := s.m.nextInto(buf)
		if err == nil && h>>4 == 3 {
			var payload []byte
			if payload, err = publishPayload(h, body); err == nil {
				take(h&1 != 0, payload)
			}
		}
		if err == nil && h>>4 == 9 {
			if len(body) < 3 || body[2] >= 0x80 {
				err = fmt.Errorf("bench: SUBSCRIBE refused: %x", body)
			}
			s.settle(err)
		}
		if err != nil {
			s.settle(err)
			s.m.c.Close() // a malformed packet ends the connection too
			if !s.closing.Load() {
				lost(err)
			}
			return
		}
		if cap(body) <= liveBufMax {
			buf = body[:0]
		}
	}
}

// settle reports the subscription's outcome, the first time only.
func (s *liveSub) settle(err error) {
	select {
	case s.subbed <- err:
	default:
	}
}

// close sends DISCONNECT, closes the connection and waits for the reader.
func (s *liveSub) close() {
	s.closing.Store(true)
	s.m.c.SetWriteDeadline(time.Now().Add(time.Second))
	s.m.c.Write([]byte{0xe0, 0})
	s.m.c.Close()
	<-s.done
}

// publishPayload is the payload of a PUBLISH with first byte h and body.
func publishPayload(h byte, body []byte) ([]byte, error) {
	if len(body) < 2 {
		return nil, errors.New("bench: malformed PUBLISH: no topic")
	}
	n := 2 + (int(body[0])<<8 | int(body[1]))
	if (h>>1)&3 > 0 {
		n += 2 // packet identifier
	}
	if n > len(body) {
		return nil, fmt.Errorf("bench: malformed PUBLISH: topic and identifier %d bytes of %d", n, len(body))
	}
	return body[n:], nil
}

// liveTally is the live dashboard's accounting, shared by its subscribers:
// every change is a row every subscriber must get once.
type liveTally struct {
	snap      bool           // tree subscriptions: a snapshot first, then deltas of rows (JSON)
	start     time.Time      // the run's start
	published []atomic.Int64 // change i's publish, ns after start

	msgs, bytes atomic.Int64 // live messages (not the replay, not the snapshot) and their payloads' bytes
	rows, dups  atomic.Int64 // live rows delivered the first time, and again
	retained    atomic.Int64 // replayed (retained) messages
	notLive     atomic.Int64 // live values that are no change: a loaded row a broker applied after a SUBSCRIBE, not a number
	arrived     atomic.Int64 // every message, to see progress
	ready       atomic.Int64 // subscribers that have their snapshot
	dropped     atomic.Int64 // connections ended but not by the bench
}

// newLiveTally is the accounting for changes changes.
func newLiveTally(changes int, snap bool, start time.Time) *liveTally {
	return &liveTally{snap: snap, start: start, published: make([]atomic.Int64, changes)}
}

// liveSeen is what one live-dashboard subscriber has received.
type liveSeen struct {
	mu           sync.Mutex
	snapped      bool            // its snapshot came (trees)
	seen         []bool          // change i arrived
	lags         []time.Duration // each change's delay from its publish to its arrival
	lastRetained time.Duration   // the last retained row's arrival, after the run's start
}

// subscriber is the accounting of a new subscriber.
func (t *liveTally) subscriber() *liveSeen {
	return &liveSeen{seen: make([]bool, len(t.published))}
}

// take counts one message to sn: a tree's snapshot, a retained row of the
// replay, or live rows (plain: the payload is liveBase + the change's
// number; trees: every leaf of the JSON delta is one).
func (t *liveTally) take(sn *liveSeen, retained bool, payload []byte) {
	t.arrived.Add(1)
	sn.mu.Lock()
	defer sn.mu.Unlock()
	if t.snap && !sn.snapped { // the snapshot is not live traffic
		sn.snapped = true
		t.ready.Add(1)
		return
	}
	if retained {
		t.retained.Add(1)
		sn.lastRetained = time.Since(t.start)
		return // the retained replay is not live traffic
	}
	t.msgs.Add(1)
	t.bytes.Add(int64(len(payload)))
	if !t.snap {
		v, err := strconv.ParseInt(string(payload), 10, 64)
		if err != nil {
			t.notLive.Add(1)
			return
		}
		t.row(sn, v)
		return
	}
	forLeaves(gjson.ParseBytes(payload), func(v gjson.Result) { t.row(sn, v.Int()) })
}

// row counts the row of value v arriving at sn (sn.mu held): change
// v − liveBase, or no change at all.
func (t *liveTally) row(sn *liveSeen, v int64) {
	v -= liveBase
	switch {
	case v < 0 || v >= int64(len(sn.seen)):
		t.notLive.Add(1)
	case sn.seen[v]:
		t.dups.Add(1)
	default:
		sn.seen[v] = true
		sn.lags = append(sn.lags, time.Since(t.start)-time.Duration(t.published[v].Load()))
		t.rows.Add(1)
	}
}

// liveBase is added to a live change's number to make its payload, so
// that no loaded row's value (0 or 1) reads as a change: a broker that
// acknowledges a retained publish before it has applied it (Mote's loop)
// may send the last loaded rows to a subscriber that came meanwhile as
// live messages.
const liveBase = 1_000_000

// lost is the rows subs subscribers should have had and did not:
// changes × subscribers − rows delivered.
func (t *liveTally) lost(subs int) int64 {
	return int64(len(t.published))*int64(subs) - t.rows.Load()
}
