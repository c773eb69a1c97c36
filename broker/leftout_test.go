package broker

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

// TestSnapshotLeavesOut: a value that alone cannot fit any packet under
// an MQTT 5 client's Maximum Packet Size is left out of its snapshot, not
// the whole snapshot: the parts merge to the tree without it, and ONE
// 0x95 report names what was left out, counted in TooLarge. Subscribing
// again gives the same. A client whose limit is large gets the whole
// tree; an MQTT 3.1.1 client, whose snapshot is one message or none
// (SPEC §2), still gets the report only.
func TestSnapshotLeavesOut(t *testing.T) {
	b := start(t, Options{MaxPacketSize: 3000})
	w := dialTree5(t, b, "w")
	huge := strconv.Quote(strings.Repeat("H", 2000))
	rows := map[string]string{"lo/a": "1", "lo/b": `"bb"`, "lo/n/x": "[1,2,3]", "lo/n/huge": huge, "lo/huge2": huge, "lo/z": "true"}
	for k, v := range rows {
		w.pub(t, k, v)
	}
	settle(t, b)
	const filter = "$sync/lo/#"
	var whole map[string]any
	json.Unmarshal([]byte(`{"a":1,"b":"bb","n":{"x":[1,2,3],"huge":`+huge+`},"huge2":`+huge+`,"z":true}`), &whole)
	var fitting map[string]any
	json.Unmarshal([]byte(`{"a":1,"b":"bb","n":{"x":[1,2,3]},"z":true}`), &fitting)

	c := dialRoom(t, b, "small", 500)
	c.subscribe(t, ErrorTopic+"small", 0)
	for round := range 2 { // the same again on subscribing again
		refused, tooLarge := b.stats.Refused.Load(), b.stats.TooLarge.Load()
		parts, reports := c.readSnapshot(t, filter, 0)
		if got := mergeParts(t, parts); len(parts) == 0 || !jsonEqualMaps(got, fitting) {
			t.Fatalf("round %d: %d parts merge to %v, want %v", round, len(parts), got, fitting)
		}
		if reports == nil { // queued by the writer as it left the rows out: after endFilter's snapshot
			pk, _ := c.next(t)
			if pk.TopicName != ErrorTopic+"small" {
				t.Fatalf("round %d: %s %.80q, want the report", round, pk.TopicName, pk.Payload)
			}
			reports = append(reports, string(pk.Payload))
		}
		if len(reports) != 1 {
			t.Fatalf("round %d: reports %q, want 1", round, reports)
		}
		var r Report
		if err := json.Unmarshal([]byte(reports[0]), &r); err != nil {
			t.Fatal(err)
		}
		if r.Code != 0x95 || r.Op != "subscribe" || r.Topic != filter || !strings.Contains(r.Error, "/n/huge") || !strings.Contains(r.Error, "/huge2") {
			t.Errorf("round %d: report %+v", round, r)
		}
		if got := b.stats.Refused.Load() - refused; got != 1 {
			t.Errorf("round %d: %d refusals, want 1", round, got)
		}
		if got := b.stats.TooLarge.Load() - tooLarge; got != 2 {
			t.Errorf("round %d: %d counted too large, want 2 (the rows left out)", round, got)
		}
	}

	large := dialRoom(t, b, "large", 0) // the broker's 3000 bytes: each row fits a part
	large.subscribe(t, ErrorTopic+"large", 0)
	parts, reports := large.readSnapshot(t, filter, 0)
	if got := mergeParts(t, parts); len(parts) < 2 || reports != nil || !jsonEqualMaps(got, whole) {
		t.Errorf("large limit: %d parts merge to %v, reports %q; want the whole tree in parts", len(parts), got, reports)
	}

	v3 := dial3(t, b, "old", true)
	v3.sub(t, ErrorTopic+"old", 1)
	v3.sub(t, filter, 1)
	v3.sub(t, endFilter, 1)
	got := v3.wait(t, 2) // endFilter's snapshot (after filter's, were there one) and the report, in either order
	if got[0].topic == endFilter {
		got[0], got[1] = got[1], got[0]
	}
	if got[0].topic != ErrorTopic+"old" || !strings.Contains(got[0].payload, `"code":149`) || got[1].topic != endFilter {
		t.Errorf("MQTT 3.1.1: got %.300v, want no snapshot of %s, its report", got, filter)
	}
}
