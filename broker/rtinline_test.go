package broker

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// The red team's attacks on the inline publish (runInline), each a
// regression test.

// TestInlinePanicEndsProcess: a panic in the loop's work ends the process
// whether the loop goroutine ran it or a publisher's read goroutine did
// (runInline). On the read goroutine the connection's recovery (serve)
// caught it before: that connection closed and the broker went on with a
// half-applied batch (here: the row applied in memory, never given to the
// retainer) — and which of the two happened depended on whether the loop
// was idle. The child process breaks the loop's state (its props map
// nil, so keepProps panics), publishes, and waits for its connection to
// close; the parent wants it to die of the panic.
func TestInlinePanicEndsProcess(t *testing.T) {
	if os.Getenv("MOTE_INLINE_PANIC_CHILD") == "1" {
		inlinePanicChild(t)
		return
	}
	cmd := exec.CommandContext(testCtx(t), os.Args[0], "-test.run=^TestInlinePanicEndsProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "MOTE_INLINE_PANIC_CHILD=1")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("the child process did not die of the panic (%v):\n%s", err, out)
	}
	if !strings.Contains(string(out), "assignment to entry in nil map") || !strings.Contains(string(out), "keepProps") {
		t.Fatalf("the child process ended (%v), but not of the loop's panic:\n%s", err, out)
	}
}

// inlinePanicChild is the child process of TestInlinePanicEndsProcess.
func inlinePanicChild(t *testing.T) {
	b := start(t, Options{})
	if !b.onLoop(testCtx(t).Done(), func() { b.props = nil }) { // a bug in the loop's state
		t.Fatal("loop gone")
	}
	r := dialRaw(t, b, "panicker", 5, true, packets.Properties{})
	settle(t, b) // what the connection queued to the loop is done: the loop is idle
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true}, ProtocolVersion: 5,
		TopicName: "boom", Payload: []byte("1"), Properties: packets.Properties{ContentType: "text/plain"}}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		t.Fatal(err)
	}
	r.write(buf.Bytes())
	r.c.SetReadDeadline(time.Now().Add(testTimeout))
	_, err := io.Copy(io.Discard, r.c) // until the broker closes the connection
	t.Logf("the broker survived its loop's panic: connection closed (%v), %d panics recovered, %d inline",
		err, b.stats.Panics.Load(), b.stats.Inline.Load())
}
