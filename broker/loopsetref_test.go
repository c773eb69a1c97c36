package broker

import (
	"errors"
	"fmt"
	"testing"

	"github.com/mote-mqtt/mote/tree"
)

// TestLoopRefusedSetWeight checks that refused $sets move what a $set
// weighs in the loop's inbox (found by a red team): counted only once one
// wrote rows, a $set weighed the whole limit on a broker where every $set
// was refused, and a flood of them ran one a batch.
func TestLoopRefusedSetWeight(t *testing.T) {
	lim := tree.DefaultLimits()
	lim.MaxRows = 5
	b := start(t, Options{Limits: lim})
	ctx := testCtx(t)
	for i := range 10 {
		if err := b.Publish(ctx, Principal{ClientID: "seed"}, Message{Topic: fmt.Sprintf("s/%d/x", i), Payload: []byte("1"), Retain: true}); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		err := b.Publish(ctx, Principal{ClientID: "setter"}, Message{Topic: "$set/s/+/x", Payload: []byte("2")})
		if !errors.Is(err, tree.ErrLimit) {
			t.Fatalf("a $set over 10 rows with max_rows 5: %v, want ErrLimit", err)
		}
	}
	b.reqs.mu.Lock()
	b.reqs.foldSets() // what ran inline or in the last batch
	w := b.reqs.weight(&request{kind: reqPublish, op: tree.Op{SetFilter: "s/+/x"}})
	limit := b.reqs.limit
	b.reqs.mu.Unlock()
	if w >= limit || w > 1 {
		t.Fatalf("after 3 refused $sets a $set weighs %d (limit %d), want 1", w, limit)
	}
}
