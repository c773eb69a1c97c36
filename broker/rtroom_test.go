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

// TestSnapshotFitsWithKnownAlias: SPEC §2 splits only a snapshot larger
// than the client's Maximum Packet Size. Once a client that allows Topic
// Aliases knows the alias of a subscription's topic (its first snapshot
// set it), a second snapshot on that topic (it subscribes again, as a
// client that saw a gap does) is sent with the alias and no topic name:
// a client whose limit is that packet's size gets it whole, not in parts.
func TestSnapshotFitsWithKnownAlias(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	for _, k := range []string{"a", "b", "c", "d"} {
		w.pub(t, "ka/"+strings.Repeat("l", 40)+"/"+k, `"`+strings.Repeat(k, 30)+`"`)
	}
	settle(t, b)
	filter := "$sync/ka/" + strings.Repeat("l", 40) + "/+"

	ref := dialRoomWith(t, b, "ref", 0, 10)
	parts, _ := ref.readSnapshot(t, filter, 7)
	if len(parts) != 1 {
		t.Fatalf("ref: %d parts", len(parts))
	}
	ref.subscribe(t, filter, 7) // again: the topic's alias is known
	pk, size := ref.next(t)
	if propOf(pk, "mote-seq") != "0" || propOf(pk, "mote-part") != "" || pk.Properties.TopicAlias == 0 {
		t.Fatalf("ref: %s seq %q part %q alias %d, want the whole snapshot again by its alias", pk.TopicName, propOf(pk, "mote-seq"), propOf(pk, "mote-part"), pk.Properties.TopicAlias)
	}
	t.Logf("second snapshot, topic by alias: %d bytes", size)

	c := dialRoomWith(t, b, "c", size, 10)
	first, _ := c.readSnapshot(t, filter, 7) // the topic and its alias: over the limit, in parts
	if len(first) < 2 {
		t.Fatalf("first snapshot at limit %d: %d parts, want parts (it carries the %d-byte topic)", size, len(first), len(filter))
	}
	if again, _ := c.readSnapshot(t, filter, 7); len(again) != 1 {
		t.Errorf("second snapshot at limit %d (its size by alias): %d parts, want 1", size, len(again))
	}
}
