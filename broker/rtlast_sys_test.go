package broker

import (
	"strings"
	"testing"
)

// TestLastSysByTree: no tree publish, $set or mote=tree publish writes
// into the broker's $SYS level, its error reports included, in any case
// of $SYS: each is refused (0x90, or 0x99 for a $SYS key in a tree) and
// a subscriber of $SYS/… gets nothing written by the client.
func TestLastSysByTree(t *testing.T) {
	b := start(t, Options{})
	watch := dial3(t, b, "watch", true)
	watch.sub(t, "$SYS/mote/errors/#", 0)
	watch.sub(t, "$SYS/x/#", 0)
	watch.sub(t, "$sys/x/#", 0)
	mote := hxProps(hxUser("mote", "tree"))
	got := hxExchange(t, b.TCPAddr(), 5, "hx",
		hxPublish("$tree/$SYS/mote/errors/+", 1, 1, hxProps(), `{"victim":"fake"}`),
		hxPublish("$tree/+", 1, 2, hxProps(), `{"$SYS":{"x":"fake"}}`),
		hxPublish("$SYS/x/y", 1, 3, mote, `"fake"`),
		hxPublish("$tree/$sys/x/+", 1, 4, hxProps(), `{"y":"fake"}`),
		hxPublish("$set/$SYS/x/+", 1, 5, hxProps(), `"fake"`),
	)
	want := []string{"40:00 01 90*", "40:00 02 99*", "40:00 03 90*", "40:00 04 90*", "40:00 05 90*"}
	if !hxMatch(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	watch.pub(t, "probe/x", 1, false, "barrier") // acknowledged: the refused publishes were handled before
	settle(t, b)
	watch.mu.Lock()
	defer watch.mu.Unlock()
	for _, m := range watch.msgs {
		if strings.Contains(m.payload, "fake") {
			t.Errorf("a client wrote %s %q", m.topic, m.payload)
		}
	}
}
