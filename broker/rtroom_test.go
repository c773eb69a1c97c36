package broker

import (
	"strings"
	"testing"
)

// TestEmptySnapshotOverLimit: an empty snapshot ("{}") whose packet is
// over the client's Maximum Packet Size (a long filter) cannot be split:
// it is refused (counted, reported where the report fits), as a
// non-empty one is; zero parts would send nothing and say nothing, and
// the client would wait for its snapshot for ever (SPEC §2: sent even
// when nothing matches).
func TestEmptySnapshotOverLimit(t *testing.T) {
	b := start(t, Options{})
	filter := "$sync/" + strings.Repeat("l", 120) + "/+" // nothing matches
	c := dialRoom(t, b, "c", 110)                           // endFilter's "{}" fits; filter's does not
	refused := b.stats.Refused.Load()
	parts, _ := c.readSnapshot(t, filter, 0)
	if parts != nil {
		t.Fatalf("parts %q over a 110-byte limit", parts)
	}
	if got := b.stats.Refused.Load() - refused; got != 1 {
		t.Errorf("%d refusals, want 1 (the empty snapshot does not fit)", got)
	}
}
