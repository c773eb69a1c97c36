package broker

import "testing"

// granted reports whether w's bytes were counted.
func granted(w *snapWait) bool {
	select {
	case <-w.ready:
		return true
	default:
		return false
	}
}

// TestSnapBudgetWait: writers waiting for room in the snapshot budget
// (resumed sessions' snapshots) get it first come first, once it is given
// back; a SUBSCRIBE takes none before them; one that gives up lets the
// next go; and two connections whose writers wait while each holds what
// the other needs (their SUBSCRIBEs' estimates) do not wait for good.
func TestSnapBudgetWait(t *testing.T) {
	closed := make(chan struct{})
	close(closed)
	for _, tc := range []struct {
		name    string
		run     func(t *testing.T, s *Budget)
		held    int64 // at the end
		reserve int64 // the budget's, of 10
	}{
		{"fits at once", func(t *testing.T, s *Budget) {
			if w := s.queue(5, 0); w != nil {
				t.Fatal("5 of 10 bytes waits with none held")
			}
		}, 5, 0},
		{"more than the budget fits when none is held", func(t *testing.T, s *Budget) {
			if w := s.queue(50, 0); w != nil {
				t.Fatal("50 bytes wait with none held")
			}
		}, 50, 0},
		{"first come first, SUBSCRIBEs refused meanwhile", func(t *testing.T, s *Budget) {
			if !s.take(8) {
				t.Fatal("take 8 of 10 refused")
			}
			w1, w2 := s.queue(5, 0), s.queue(1, 0)
			if w1 == nil || w2 == nil {
				t.Fatal("granted past the budget, or before a writer waiting")
			}
			if s.take(1) {
				t.Fatal("a SUBSCRIBE took room before the writers waiting")
			}
			s.add(-8)
			if !granted(w1) || !granted(w2) {
				t.Fatalf("given back, granted: %v %v", granted(w1), granted(w2))
			}
			if now, all := s.waits(); now != 0 || all != 2 {
				t.Fatalf("waits: %d now, %d in all; want 0, 2", now, all)
			}
		}, 6, 0},
		{"one gives up: the next goes", func(t *testing.T, s *Budget) {
			s.take(8)
			w1, w2 := s.queue(5, 0), s.queue(1, 0)
			if s.await(closed, w1) {
				t.Fatal("granted with done closed and no room")
			}
			if !granted(w2) {
				t.Fatal("the next writer waits behind one that gave up")
			}
			s.add(-8)
		}, 1, 0},
		{"two connections each holding what the other needs", func(t *testing.T, s *Budget) {
			s.take(4) // A's SUBSCRIBE estimate
			s.take(4) // B's
			wa := s.queue(5, 4)
			if wa == nil {
				t.Fatal("A granted past the budget while B holds room")
			}
			wb := s.queue(5, 4) // all that is held is theirs: the first goes
			if !granted(wa) || wb == nil || granted(wb) {
				t.Fatalf("A granted %v, B waits %v", granted(wa), wb != nil && !granted(wb))
			}
			s.settle(-9, nil, false) // A wrote its snapshot and its SUBSCRIBE's
			if !granted(wb) {
				t.Fatal("B waits with only its own holds left")
			}
			s.settle(-9, wb, false)
		}, 0, 0},
		{"a waiter's holds shrink while it waits", func(t *testing.T, s *Budget) {
			s.take(4) // A's SUBSCRIBE estimate
			s.take(4) // another client's snapshot being written
			w := s.queue(7, 4)
			s.settle(-4, w, false) // A's SUBSCRIBE refused by the loop: no longer A's to hold
			if granted(w) {
				t.Fatal("granted past the budget beside a writer that does not wait")
			}
			s.add(-4)
			if !granted(w) {
				t.Fatal("not granted once the budget is free")
			}
		}, 7, 0},
		{"small takes in the reserve while a writer waits, not before it", func(t *testing.T, s *Budget) {
			if !s.take(8) {
				t.Fatal("take 8 of 10 (reserve 2) refused")
			}
			w := s.queue(8, 0)
			if w == nil || s.take(1) {
				t.Fatal("granted past the budget less its reserve, or before a writer waiting")
			}
			if res, ok := s.hold(1, 0, false, true); !res || !ok {
				t.Fatalf("a small take while a writer waits: in the reserve %v, granted %v", res, ok)
			}
			if _, ok := s.hold(2, 0, false, true); ok {
				t.Fatal("a small take granted past the reserve while a writer waits")
			}
			s.add(-8)
			if !granted(w) {
				t.Fatal("the writer waits behind a small take in the reserve")
			}
			s.settle(-1, nil, true)
		}, 8, 2},
		{"a connection's small take grows large: out of the reserve", func(t *testing.T, s *Budget) {
			s.hold(1, 0, false, true)
			if res, ok := s.hold(5, 1, true, false); res || !ok {
				t.Fatalf("in the reserve %v, granted %v; want out of it, granted", res, ok)
			}
		}, 5, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewBudget(10, tc.reserve)
			tc.run(t, s)
			if held := s.stats0(); held != tc.held {
				t.Errorf("held %d at the end, want %d", held, tc.held)
			}
			if s.stuck != 0 || s.inReserve != 0 {
				t.Errorf("stuck %d, in the reserve %d at the end; want 0", s.stuck, s.inReserve)
			}
		})
	}
}

// stats0 is the bytes held.
func (s *Budget) stats0() int64 {
	held, _, _ := s.stats()
	return held
}

// take is a large take of n bytes by a connection holding none.
func (s *Budget) take(n int64) bool {
	_, ok := s.hold(n, 0, false, false)
	return ok
}
