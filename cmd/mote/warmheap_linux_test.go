package main

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// minorFaults is the process's count of page faults served without I/O.
func minorFaults(t *testing.T) int64 {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatalf("getrusage: %v", err)
	}
	return ru.Minflt
}

// warmChildEnv marks the fresh process TestWarmHeapFaultsIn measures in.
const warmChildEnv = "MOTE_WARMHEAP_CHILD"

// TestWarmHeapFaultsIn: after warmHeap, small objects filling half of
// what it touched (messages of 192 bytes, a plain publish's size class)
// fault in under a quarter of their pages; on memory the heap never
// touched each page faults once.
//
// It measures in a fresh process (the test binary run again), since a
// heap that grew once keeps its pages. A test binary's heap holds about
// its goal already, so the child first keeps 8 MiB live: the goal
// doubles, and the heap must grow into memory never touched, as a
// broker's does after its start-up. Under the race detector every fresh
// object faults its shadow memory in too, so only warmHeap's size is
// checked there.
func TestWarmHeapFaultsIn(t *testing.T) {
	if os.Getenv(warmChildEnv) == "" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestWarmHeapFaultsIn$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), warmChildEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("the fresh process: %v\n%s", err, out)
		}
		t.Logf("the fresh process:\n%s", out)
		return
	}
	live := make([]byte, 8<<20)
	for i := 0; i < len(live); i += warmPage {
		live[i] = 1
	}
	n := warmHeap()
	if n < 4<<20 {
		t.Fatalf("warmHeap touched %d bytes; want at least 4 MiB with 8 MiB live (goal 16 MiB)", n)
	}
	type message [192]byte
	kept := make([]*message, 0, n/2/len(message{}))
	pages := int64(cap(kept) * len(message{}) / warmPage)
	before := minorFaults(t)
	for range cap(kept) {
		m := new(message)
		m[0] = 1
		kept = append(kept, m)
	}
	faults := minorFaults(t) - before
	t.Logf("warmHeap touched %d bytes; %d messages in %d pages faulted %d times", n, len(kept), pages, faults)
	if !raceEnabled && faults > pages/4 {
		t.Errorf("%d messages in %d pages after warmHeap(%d) faulted %d times; want at most %d", len(kept), pages, n, faults, pages/4)
	}
	runtime.KeepAlive(live)
}
