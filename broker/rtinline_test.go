package broker

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
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

// TestInlineSelfSubscribedNeverReads: a client subscribed (tree and
// plain) to the rows it publishes, which never reads, publishes far more
// than its queue and socket hold. Its publishes run inline on its own read
// goroutine, delivering to its own full queue and socket: that must never
// wait on the client (it would wait on itself), only meet the slow-client
// policy. With SlowDrop its last publish is still acknowledged; with
// SlowDisconnect the connection ends. Either way others are served.
func TestInlineSelfSubscribedNeverReads(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy SlowPolicy
	}{{"drop", SlowDrop}, {"disconnect", SlowDisconnect}} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{QueueBytes: 64 << 10, SlowClient: tc.policy})
			r := dialRaw(t, b, "self", 4, true, packets.Properties{})
			r.subscribe(1, "$sync/self/#", 0)
			r.subscribe(2, "self/#", 1)
			payload := []byte(`{"v":"` + strings.Repeat("x", 8000) + `"}`)
			closed := false
			for i := 0; i < 3000 && !closed; i++ {
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
					TopicName: "$tree/self/" + strconv.Itoa(i%50), Payload: payload}
				if i == 2999 {
					pk.FixedHeader.Qos, pk.PacketID = 1, 7
				}
				var buf bytes.Buffer
				if err := pk.PublishEncode(&buf); err != nil {
					t.Fatal(err)
				}
				r.c.SetWriteDeadline(time.Now().Add(testTimeout))
				if _, err := r.c.Write(buf.Bytes()); err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						t.Fatalf("publish %d: the broker stopped reading the publisher: %v", i, err)
					}
					closed = true
				}
			}
			switch tc.policy {
			case SlowDrop:
				if closed {
					t.Fatal("connection closed under SlowDrop")
				}
				if !readUntil(r, packets.Puback) {
					buf := make([]byte, 1<<20)
					buf = buf[:runtime.Stack(buf, true)]
					t.Fatalf("no PUBACK for the last publish\n%s", buf)
				}
			case SlowDisconnect:
				if readUntil(r, packets.Puback) {
					t.Log("acknowledged before the disconnect took effect")
				}
				deadline := time.Now().Add(testTimeout)
				for b.connByID("self") != nil {
					if time.Now().After(deadline) {
						buf := make([]byte, 1<<20)
						buf = buf[:runtime.Stack(buf, true)]
						t.Fatalf("self still connected (closed %v, dropped %d, inline %d)\n%s", closed, b.stats.Dropped.Load(), b.stats.Inline.Load(), buf)
					}
					time.Sleep(time.Millisecond)
				}
			}
			t.Logf("inline %d, dropped %d", b.stats.Inline.Load(), b.stats.Dropped.Load())
			alive(t, b)
		})
	}
}

// readUntil reads r's packets until one of type typ (true) or the
// connection ends or testTimeout passes (false).
func readUntil(r *raw, typ byte) bool {
	r.c.SetReadDeadline(time.Now().Add(testTimeout))
	br := bufio.NewReader(r.c)
	for {
		h, err := readPacket(br)
		if err != nil {
			r.t.Logf("read: %v", err)
			return false
		}
		if h>>4 == typ {
			return true
		}
	}
}
