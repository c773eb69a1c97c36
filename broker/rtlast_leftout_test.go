package broker

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/retain"
)

// TestLastLeftOutResumeAndHist: a resume delta (SPEC §8) and a $hist
// answer (§9) go through the same SplitSkip path as a snapshot: a value
// that alone fits no packet under an MQTT 5 client's Maximum Packet Size
// is left out, the rest arrives in parts that merge to it without that
// value (merged into the copy the client holds, for a resume), ONE 0x95 report names it, and it is counted in TooLarge. In a
// resume delta the value left out is null (SplitDrop): a row the client
// holds from before R (lr/huge = 1) is dropped from its copy, not kept
// under the new mote-rev as if it were current (it was, before SplitDrop).
func TestLastLeftOutResumeAndHist(t *testing.T) {
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Store: st, MaxPacketSize: 4000, Retain: retain.Options{History: []retain.HistoryRule{{Filter: "lr/#", Keep: 3}}}})
	w := dialTree5(t, b, "w")
	w.pub(t, "lr/a", "1")
	w.pub(t, "lr/b", `"b"`)
	w.pub(t, "lr/huge", "1")
	settle(t, b)
	w.subscribe(t, "$sync/lr/#")
	snap := w.next(t) // the copy a resuming client holds
	r0 := revOf(t, snap)
	huge := strconv.Quote(strings.Repeat("H", 2000))
	w.pub(t, "lr/a", "2")
	w.pub(t, "lr/huge", huge)
	w.pub(t, "lr/c", "3")
	w.pub(t, "lr/d/e", strconv.Quote(strings.Repeat("d", 200)))
	settle(t, b)

	for _, c := range []struct {
		name, filter, since string
		want                []string // keys the parts must hold
	}{
		{"resume", "$sync/lr/#", strconv.FormatUint(r0, 10), []string{"a", "b", "c", "d"}}, // b: unchanged, in the copy
		{"hist", "$hist/lr/#", "", []string{"a", "b", "c", "d"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			id := "small" + c.name
			cl := dialRoom(t, b, id, 500)
			cl.subscribe(t, ErrorTopic+id, 0)
			tooLarge := b.stats.TooLarge.Load()
			sp := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5, PacketID: 2,
				Filters: packets.Subscriptions{{Filter: c.filter, Qos: 1}}}
			if c.since != "" {
				sp.Properties.User = []packets.UserProperty{{Key: "mote-since", Val: c.since}}
			}
			if _, err := cl.nc.Write(ownerPacket(t, sp)); err != nil {
				t.Fatal(err)
			}
			var parts [][]byte
			var reports []string
			complete := false
			for !complete || len(reports) == 0 {
				pk, _ := cl.next(t)
				switch pk.TopicName {
				case ErrorTopic + id:
					reports = append(reports, string(pk.Payload))
					continue
				case c.filter:
				default:
					t.Fatalf("%s %.80q", pk.TopicName, pk.Payload)
				}
				if c.name == "resume" && propOf(pk, "mote-resume") != "1" {
					t.Fatalf("not a resume delta: %+v %.80q", pk.Properties.User, pk.Payload)
				}
				parts = append(parts, pk.Payload)
				part := propOf(pk, "mote-part")
				i, n, _ := strings.Cut(part, "/")
				complete = part == "" || i == n
			}
			got := map[string]any{}
			if c.name == "resume" {
				merge1(t, got, snap.Payload)
			}
			for _, p := range parts {
				merge1(t, got, p)
			}
			if _, ok := got["huge"]; ok || len(got) != len(c.want) {
				t.Errorf("parts merge to %d keys %v, want %v", len(got), keysOf(got), c.want)
			}
			for _, k := range c.want {
				if _, ok := got[k]; !ok {
					t.Errorf("key %s missing: %v", k, keysOf(got))
				}
			}
			var r Report
			if len(reports) != 1 || json.Unmarshal([]byte(reports[0]), &r) != nil || r.Code != 0x95 || !strings.Contains(r.Error, "/huge") {
				t.Errorf("reports %q, want one 0x95 naming /huge", reports)
			}
			if n := b.stats.TooLarge.Load() - tooLarge; n != 1 {
				t.Errorf("TooLarge +%d, want +1", n)
			}
		})
	}
}

func keysOf(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
