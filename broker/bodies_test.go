package broker

import (
	"encoding/binary"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestPublishBody: the netConn gives memory for small, unretained PUBLISH
// bodies only, exactly their length, and takeMessage gives its message
// once, to the PUBLISH decoded from it.
func TestPublishBody(t *testing.T) {
	tests := []struct {
		name   string
		n      int
		retain bool
		give   bool
	}{
		{"too short for a topic", 2, false, false},
		{"smallest", 3, false, true},
		{"48", 48, false, true},
		{"fan-in's 72", 72, false, true},
		{"176", 176, false, true},
		{"largest", maxPublishBody, false, true},
		{"one past the largest", maxPublishBody + 1, false, false},
		{"retained", 72, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &netConn{}
			body := c.PublishBody(&packets.FixedHeader{Type: packets.Publish, Remaining: tt.n, Retain: tt.retain})
			if (body != nil) != tt.give {
				t.Fatalf("body given: %v, want %v", body != nil, tt.give)
			}
			if !tt.give {
				if c.takeMessage("a") != nil {
					t.Error("a message without a body")
				}
				return
			}
			if len(body) != tt.n || cap(body) != tt.n {
				t.Errorf("len %d cap %d, want %d", len(body), cap(body), tt.n)
			}
			binary.BigEndian.PutUint16(body, 1)
			body[2] = 'a'
			topic := unsafe.String(&body[2], 1) // as mochi decodes it
			if c.takeMessage("a") != nil {
				t.Error("a message for a topic from elsewhere (a topic alias)")
			}
			c.PublishBody(&packets.FixedHeader{Type: packets.Publish, Remaining: tt.n})
			if c.takeMessage(topic) != nil {
				t.Error("a message for an earlier body")
			}
			body = c.PublishBody(&packets.FixedHeader{Type: packets.Publish, Remaining: tt.n})
			topic = unsafe.String(&body[2], 1)
			if c.takeMessage(topic) == nil {
				t.Error("no message for its body")
			}
			if c.takeMessage(topic) != nil {
				t.Error("its message given twice")
			}
		})
	}
}

// TestPlainPublishOneAllocation: a QoS 0 MQTT 3.1.1 publish with one
// subscriber costs the broker one allocation (the message with its body,
// bodies.go); it was two (mochi's body and the door's message). The raw
// clients allocate nothing; the process's mallocs over 4,000 messages are
// counted, so a background allocation or two only add a little.
func TestPlainPublishOneAllocation(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	br := start(t, Options{})
	sub := dialBench(t, br.TCPAddr(), "alloc-sub")
	sub.subscribe(t, "fan/#")
	pub := dialBench(t, br.TCPAddr(), "alloc-pub")
	packet := publish3("fan/1", strings.Repeat("x", 64))
	run := func(n int) {
		for range n {
			pub.write(t, packet)
			sub.readPublish(t)
		}
	}
	run(500) // warm: pools, buffers
	const n = 4000
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	run(n)
	runtime.ReadMemStats(&after)
	per := float64(after.Mallocs-before.Mallocs) / n
	t.Logf("%.2f allocations a message", per)
	if per > 1.5 {
		t.Errorf("%.2f allocations a message, want 1", per)
	}
}

// TestPublishBodyStale: a PUBLISH given no body (retained, too large)
// does not take the message of an earlier body whose PUBLISH mochi
// dropped before OnPublish, though an MQTT 5 topic alias set by that
// PUBLISH makes its topic point into that body.
func TestPublishBodyStale(t *testing.T) {
	tests := []struct {
		name string
		fh   packets.FixedHeader
	}{
		{"retained", packets.FixedHeader{Type: packets.Publish, Remaining: 72, Retain: true}},
		{"too large", packets.FixedHeader{Type: packets.Publish, Remaining: maxPublishBody + 1}},
		{"too short", packets.FixedHeader{Type: packets.Publish, Remaining: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &netConn{}
			body := c.PublishBody(&packets.FixedHeader{Type: packets.Publish, Remaining: 48})
			binary.BigEndian.PutUint16(body, 1)
			body[2] = 'a'
			aliased := unsafe.String(&body[2], 1) // the alias's topic, kept by mochi
			// mochi drops that PUBLISH (OnPublish not reached); the next
			// one names only the alias.
			if c.PublishBody(&tt.fh) != nil {
				t.Fatal("a body given")
			}
			if c.takeMessage(aliased) != nil {
				t.Error("the earlier body's message taken by a PUBLISH not read into it")
			}
		})
	}
}
