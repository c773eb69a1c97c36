package broker

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker/auth"
)

// TestGuessThrottleConcurrent: a host's guesses made at once are counted
// as they are checked, not after: of many wrong passwords sent together
// from one host, at most GuessLimit are checked and the rest are refused
// unchecked (ErrThrottled). The throttle used to look at the count before
// the check and add to it after, so every login in flight at once was
// checked: an attacker with N connections had N guesses per window, not
// GuessLimit (this test failed with 40 of 40 checked). Many right
// passwords at once from one host (devices behind one NAT booting
// together) are all let in: none is refused for being concurrent.
func TestGuessThrottleConcurrent(t *testing.T) {
	u := auth.NewUsers()
	// A slow hash, so the logins overlap (the count must not depend on it).
	if err := u.Set("alice", "alice-pw", 5_000); err != nil {
		t.Fatal(err)
	}
	const limit, n = 3, 40
	b := start(t, Options{Users: u, GuessLimit: limit})
	login := func(host, pw string) []error {
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { errs[i] = b.Authenticate(fmt.Sprintf("%s:%d", host, 1000+i), "alice", pw, true) })
		}
		wg.Wait()
		return errs
	}
	checked, throttled := 0, 0
	for _, err := range login("192.0.2.1", "wrong") {
		switch {
		case errors.Is(err, ErrThrottled):
			throttled++
		case errors.Is(err, ErrBadCredentials):
			checked++
		default:
			t.Errorf("a wrong password: %v", err)
		}
	}
	if checked != limit || throttled != n-limit {
		t.Errorf("%d wrong passwords at once: %d checked, %d throttled; want %d checked", n, checked, throttled, limit)
	}
	for i, err := range login("192.0.2.2", "alice-pw") {
		if err != nil {
			t.Fatalf("right password %d of %d at once: %v", i+1, n, err)
		}
	}
	if got := b.guesses.len(); got != 1 {
		t.Errorf("%d hosts remembered after one host's guesses and another's logins, want 1", got)
	}
}

// TestGuessAdmit: the table's side of it. A guess takes a place while it
// is checked; with the host's places all taken, the next waits, and is
// refused if those checked fail; a right password leaves nothing behind;
// a login naming no user takes no place.
func TestGuessAdmit(t *testing.T) {
	g := newGuesses(2, time.Minute)
	t0 := time.Now()
	for i := range 2 {
		if wait := g.admit("h", true, t0); wait != 0 {
			t.Fatalf("guess %d: blocked for %s", i+1, wait)
		}
	}
	if wait := g.admit("h", false, t0); wait != 0 {
		t.Fatalf("a login naming no user waited or was blocked (%s)", wait)
	}
	third := make(chan time.Duration, 1)
	go func() { third <- g.admit("h", true, t0) }()
	g.done("h", true, t0)
	if !g.done("h", true, t0) {
		t.Error("the second failed guess did not block the host")
	}
	select {
	case wait := <-third:
		if wait <= 0 {
			t.Errorf("the third guess was let in after two failed")
		}
	case <-time.After(testTimeout):
		t.Fatal("the third guess still waits")
	}

	if g.admit("ok", true, t0) != 0 || g.done("ok", false, t0) || g.len() != 1 {
		t.Errorf("a right password: %d hosts remembered, want 1 (h)", g.len())
	}
}

// TestGuessTableFullOfBlocked: with the table full of blocked hosts,
// right passwords from new hosts do not make it forget one (a login being
// checked takes an entry; only hosts whose window is over make room for
// it), and a wrong one from a new host still keeps the table bounded.
func TestGuessTableFullOfBlocked(t *testing.T) {
	g := newGuesses(1, time.Minute)
	t0 := time.Unix(1000, 0)
	blocked := func(i int) string { return fmt.Sprintf("b%d", i) }
	for i := range maxGuessHosts {
		g.fail(blocked(i), t0)
	}
	// Some shards got more than their share, and forgot some: the others
	// are full.
	var kept []string
	for i := range maxGuessHosts {
		if g.blocked(blocked(i), t0) != 0 {
			kept = append(kept, blocked(i))
		}
	}
	t1 := t0.Add(time.Second)
	for i := range 1000 {
		h := fmt.Sprintf("ok%d", i)
		if g.admit(h, true, t1) != 0 {
			t.Fatalf("a new host was blocked")
		}
		g.done(h, false, t1)
	}
	for _, h := range kept {
		if g.blocked(h, t1) == 0 {
			t.Fatalf("host %s forgotten after right passwords from other hosts (%d of %d kept)", h, len(kept), maxGuessHosts)
		}
	}
	for i := range 100 {
		h := fmt.Sprintf("bad%d", i)
		g.admit(h, true, t1)
		g.done(h, true, t1)
	}
	if n := g.len(); n > maxGuessHosts {
		t.Errorf("%d hosts remembered, want at most %d", n, maxGuessHosts)
	}
}

// TestGuessIPv6LAN: an IPv6 address is blocked at GuessLimit, its /64 at
// guessNetFactor times that. Every machine of a LAN shares one /64: one
// device retrying a wrong password used to block the logins of all the
// others (the throttle counted the /64 only) — this test's second device
// was refused before the fix. A machine using a new address of its /64
// for each guess still gets no more than the /64's limit.
func TestGuessIPv6LAN(t *testing.T) {
	const limit = 3
	b := start(t, Options{Users: users(t), GuessLimit: limit})
	for range limit {
		if err := b.Authenticate("[2001:db8::1]:1000", "alice", "wrong", true); !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("a wrong password: %v", err)
		}
	}
	var te *ThrottleError
	if err := b.Authenticate("[2001:db8::1]:1001", "alice", "alice-pw", true); !errors.As(err, &te) || te.Host != "2001:db8::1" {
		t.Fatalf("the device that guessed: %v, want throttled as 2001:db8::1", err)
	}
	if err := b.Authenticate("[2001:db8::2]:1000", "bob", "bob-pw", true); err != nil {
		t.Fatalf("another device of the LAN: %v", err)
	}
	// One guess from each of many addresses of the /64.
	checked := limit
	for i := 3; i < 3+limit*guessNetFactor*2; i++ {
		err := b.Authenticate(fmt.Sprintf("[2001:db8::%x]:1000", i), "alice", "wrong", true)
		if errors.Is(err, ErrBadCredentials) {
			checked++
			continue
		}
		if !errors.As(err, &te) || te.Host != "2001:db8::/64" {
			t.Fatalf("address %d: %v, want throttled as 2001:db8::/64", i, err)
		}
	}
	if checked != limit*guessNetFactor {
		t.Errorf("%d guesses checked from one /64, want %d", checked, limit*guessNetFactor)
	}
	if err := b.Authenticate("[2001:db8::2]:1000", "bob", "bob-pw", true); !errors.As(err, &te) {
		t.Errorf("after the /64's limit: %v, want throttled", err)
	}
	if err := b.Authenticate("[2001:db8:0:1::2]:1000", "bob", "bob-pw", true); err != nil {
		t.Errorf("another /64: %v", err)
	}
}
