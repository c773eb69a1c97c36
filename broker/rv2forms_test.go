package broker

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestRV2OriginalFormRefusedAfterOther: a dialect client holding /x/#
// ($sync) sends one SUBSCRIBE of x/# ($tree) then /x/#, the second
// refused for the snapshot budget (a subscriber that never reads holds
// it). The filters of a SUBSCRIBE are a sequence of SUBSCRIBEs
// [MQTT-3.8.4-5]: x/# replaced /x/#, and the refusal changes nothing, so
// mochi and the loop hold x/# alone, and UNSUBSCRIBE x/# ends it. Before
// dropRefusedForm, refuseFiled put the /x/# it replaced back in mochi,
// which dropOtherForms had left there (granted later): mochi held both
// forms, the loop x/# alone (a resumed session brought /x/# back).
func TestRV2OriginalFormRefusedAfterOther(t *testing.T) {
	b := startOriginal(t, Options{MaxSnapshotBytes: 4 << 20, WriteTimeout: 5 * testTimeout})
	for i := range 200 {
		loadRow(b, fmt.Sprintf("x/r%03d", i), `"`+strings.Repeat("y", 1000)+`"`)
	}
	for i := range 8000 { // an 8 MB snapshot: more than loopback's socket buffers take
		loadRow(b, fmt.Sprintf("big/r%04d", i), `"`+strings.Repeat("z", 1000)+`"`)
	}
	settle(t, b)
	c := dialOriginal(t, b)
	c.mustConnect("forms")
	if codes := c.subscribe(1, 1, "/x/#"); string(codes) != "\x01" {
		t.Fatalf("SUBACK % x", codes)
	}
	c.next() // its snapshot
	// A subscriber that never reads holds its snapshot in the budget.
	r := dialRaw(t, b, "stalled", 5, true, packets.Properties{})
	r.c.(*net.TCPConn).SetReadBuffer(4096)
	if code := r.subscribeCode(1, "$sync/big/#"); code != 0 {
		t.Fatalf("stalled: SUBACK %#x", code)
	}
	settle(t, b)
	if codes := c.subscribe(2, 1, "x/#", "/x/#"); string(codes) != "\x01\x80" {
		t.Fatalf("SUBACK % x, want 01 80 (the snapshot of /x/# over the budget)", codes)
	}
	settle(t, b)
	filed := func() []string {
		cl, _ := b.server.Clients.Get("forms")
		var out []string
		for f := range cl.State.Subscriptions.GetAll() {
			if isTreeFilter(f) {
				out = append(out, f)
			}
		}
		return out
	}
	// The loop holds the client's x/# and the stalled client's $sync/big/#.
	if got, n := filed(), b.treeSubs.Load()-1; n != 1 || len(got) != 1 || got[0] != "$tree.prop.original/x/#" {
		t.Fatalf("mochi files %v for the client, the loop holds %d; want $tree.prop.original/x/# alone in both", got, n)
	}
	c.unsubscribe(3, "x/#")
	settle(t, b)
	if got, n := filed(), b.treeSubs.Load()-1; n != 0 || len(got) != 0 {
		t.Fatalf("after UNSUBSCRIBE x/#: mochi files %v for the client, the loop holds %d; want none", got, n)
	}
}
