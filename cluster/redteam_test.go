package cluster

import (
	"errors"
	"runtime"
	"strconv"
	"testing"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/wire"
)

// TestBatchTooLargeMemory: a batch far over the max payload (a $set
// expanded to many rows sharing one payload: cheap in memory, huge once
// encoded) is refused without encoding it whole. The memory it takes is
// in proportion to the max payload, not to the batch (red team, issue 16).
func TestBatchTooLargeMemory(t *testing.T) {
	node, err := StartNode(NodeOptions{Name: "solo", Dir: t.TempDir(), MaxPayload: 64 << 10}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Close)
	nc, err := node.Connect("test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	l, err := OpenLog(t.Context(), nc, LogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	payload := string(make([]byte, 256<<10)) // one payload, shared by every row
	changes := make([]retain.Change, 256)    // 64 MiB once encoded
	for i := range changes {
		changes[i] = retain.Change{Topic: "light/" + strconv.Itoa(i), Value: wire.Value{Kind: wire.Bytes, Data: payload}}
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = l.Append(t.Context(), changes)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("append 64 MiB: %v, want ErrTooLarge", err)
	}
	// Other goroutines (the NATS node) allocate too: the bound is loose,
	// far below the 64 MiB the whole batch would take.
	if got := after.TotalAlloc - before.TotalAlloc; got > 16<<20 {
		t.Errorf("refusing a 64 MiB batch allocated %d MiB; want it in proportion to the 64 KiB max payload", got>>20)
	}
}
