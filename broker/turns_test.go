package broker

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/wire"
)

// TestReadTurn: a connection that refused turnRefusals or more packets
// of its last read handles the next only in a read turn, waiting for one
// at most turnWait, and gives it back at its next read; a connection
// refused less never waits, whoever holds the turns.
func TestReadTurn(t *testing.T) {
	cases := []struct {
		name     string
		refused  uint32 // refusals of the read before
		taken    bool   // every turn is someone else's
		giveBack bool   // ... and is given back while it waits
		holds    bool   // it reads in a turn
	}{
		{"few refusals, turns taken", turnRefusals - 1, true, false, false},
		{"flooding, a turn free", turnRefusals, false, false, true},
		{"flooding, turns taken", turnRefusals, true, false, false},
		{"flooding, a turn given back", 5 * turnRefusals, true, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			turns := make(chan struct{}, 1)
			if tc.taken {
				turns <- struct{}{}
			}
			var n atomic.Uint32
			var rt readTurn
			rt.take(turns, &n) // the first read: nothing refused before it
			if rt.holding {
				t.Fatal("a turn taken for a first read")
			}
			n.Store(tc.refused)
			done := make(chan struct{})
			go func() {
				defer close(done)
				rt.take(turns, &n)
			}()
			if tc.giveBack {
				<-turns
			}
			select {
			case <-done:
			case <-time.After(testTimeout):
				t.Fatal("take did not return")
			}
			if rt.holding != tc.holds {
				t.Fatalf("holding %v, want %v", rt.holding, tc.holds)
			}
			rt.next(turns)
			if rt.holding {
				t.Fatal("still holding after next")
			}
			want := 0
			if tc.taken && !tc.giveBack {
				want = 1 // the other's, still
			}
			if len(turns) != want {
				t.Fatalf("%d turns held after next, want %d", len(turns), want)
			}
		})
	}
}

// TestReleaseWakesOnlyForWork: undoing the hold a SUBSCRIBE put on its
// writer wakes the writer only if something was queued meanwhile (or the
// queue closed): a SUBSCRIBE refused whole queued nothing, and woke (or
// started) a writer goroutine for nothing, once a packet of a client
// flooding them.
func TestReleaseWakesOnlyForWork(t *testing.T) {
	cases := []struct {
		name   string
		queue  bool // a message is queued while held
		nested bool // a second hold is still on
		wake   bool
	}{
		{"nothing queued", false, false, false},
		{"queued while held", true, false, true},
		{"still held", true, true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			q := newOutQueue(1<<20, time.Second)
			q.hold()
			if tc.nested {
				q.hold()
			}
			if tc.queue {
				q.push(&plainItem{msg: &message{topic: "a", payload: []byte("x")}}, pubWait{})
				select {
				case <-q.wake: // the push's own wake-up
				default:
				}
			}
			q.release()
			if woke := len(q.wake) == 1; woke != tc.wake {
				t.Fatalf("woke %v, want %v", woke, tc.wake)
			}
		})
	}
}

// TestRefuseWithoutSubscriberCheap: a refusal makes its report for the
// client's error topic only when someone subscribes to it; without one,
// a refusal allocates a few words, not the report's JSON (json.Marshal was
// 14% of the broker's CPU under a flood of refused packets).
func TestRefuseWithoutSubscriberCheap(t *testing.T) {
	b := start(t, Options{})
	p := Principal{ClientID: "flooder", logs: &logSlot{}}
	err := wire.ErrReservedf("%q is the broker's", "$SYS/x")
	if !errors.Is(err, wire.ErrReserved) {
		t.Fatal("not a reserved-topic error")
	}
	b.refuse(p, "publish", "$SYS/x", err) // the log line of its kind, once
	// The fewest of three: the running broker's other goroutines' (its
	// $SYS tick) count too, and only add.
	allocs := float64(-1)
	for range 3 {
		if a := testing.AllocsPerRun(200, func() { b.refuse(p, "publish", "$SYS/x", err) }); allocs < 0 || a < allocs {
			allocs = a
		}
	}
	t.Logf("%.1f allocations a refusal", allocs)
	if allocs > 3 {
		t.Fatalf("%.1f allocations a refusal without a subscriber, want at most 3", allocs)
	}
}
