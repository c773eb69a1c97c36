package broker

import (
	"fmt"
	"testing"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// TestSharedSnapshotReleaseRace: a writer lets go of the last reference
// to a shared snapshot while the loop checks that snapshot's rows for
// another subscription (sameRows). The snapshot must be counted in the
// budget exactly once and given back exactly once: mote_snapshot_bytes
// back at 0, no shared snapshot left. (The lookup and the reference were
// two steps apart: the reference taken on a snapshot already let go and
// given back, whose size the second release subtracted again: the count
// went negative, and the budget let as much more through.)
func TestSharedSnapshotReleaseRace(t *testing.T) {
	const rows, rounds = 20_000, 40
	b := start(t, Options{})
	for i := range rows {
		loadRow(b, fmt.Sprintf("race/r%05d", i), "1")
	}
	settle(t, b)
	mkSub := func() *treeSub { return &treeSub{ts: &tree.Sub{Filter: "race/#", Codec: wire.CodecJSON}} }
	done := make(chan struct{})
	defer close(done)
	for round := range rounds {
		var first, second *sharedSnap
		if !b.onLoop(done, func() { first = b.sharedSnapshot(mkSub()) }) {
			t.Fatal("the loop stopped")
		}
		b.snaps.add(b.shares.count(first)) // its first writer counts it (resizeSnapshot)
		released := make(chan struct{})
		if !b.onLoop(done, func() {
			// The first writer finishes while the loop walks the rows.
			go func() { b.releaseShared(first); close(released) }()
			second = b.sharedSnapshot(mkSub())
		}) {
			t.Fatal("the loop stopped")
		}
		<-released
		b.snaps.add(b.shares.count(second)) // the second writer counts it
		b.releaseShared(second)
		held, _, _ := b.snaps.stats()
		b.shares.mu.Lock()
		left := len(b.shares.byKey)
		b.shares.mu.Unlock()
		if held != 0 || left != 0 {
			t.Fatalf("round %d: %d snapshot bytes held, %d shared snapshots left once both were written; want 0 and 0", round, held, left)
		}
	}
}
