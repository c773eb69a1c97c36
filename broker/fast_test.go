package broker

import (
	"bytes"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestSendPlain0Bytes: the QoS 0 PUBLISH sendPlain0 writes without a
// packets.Packet is, byte for byte, what mochi's PublishEncode writes for
// the same message (MQTT 3.1.1 and 5, retained or not, Remaining Length
// in one to three bytes).
func TestSendPlain0Bytes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		topic   string
		payload int
		retain  bool
		v5      bool
	}{
		{"v3 short", "lat/t", 19, false, false},
		{"v5 short", "lat/t", 19, false, true},
		{"v3 retained", "a/b/c", 3, true, false},
		{"v5 retained", "a/b/c", 3, true, true},
		{"v3 empty payload", "x", 0, false, false},
		{"v5 empty payload", "x", 0, false, true},
		{"v3 two-byte length", "dev/1/state", 200, false, false},
		{"v5 two-byte length", "dev/1/state", 127 - 2 - 11 - 1, false, true},
		{"v5 at 128", "dev/1/state", 128 - 2 - 11 - 1, false, true},
		{"v3 three-byte length", strings.Repeat("t", 300), 16 << 10, true, false},
		{"v5 three-byte length", "t/é", 16 << 10, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := bytes.Repeat([]byte{'p'}, tc.payload)
			pk := packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: tc.retain},
				TopicName:   tc.topic,
				Payload:     payload,
			}
			pk.ProtocolVersion = 4
			rem := 2 + len(tc.topic) + len(payload)
			if tc.v5 {
				pk.ProtocolVersion = 5
				rem++
			}
			pk.Mods.AllowResponseInfo = true
			var want bytes.Buffer
			if err := pk.PublishEncode(&want); err != nil {
				t.Fatal(err)
			}
			got := appendPlain0([]byte("before"), rem, tc.topic, payload, tc.retain, tc.v5)
			if !bytes.HasPrefix(got, []byte("before")) || !bytes.Equal(got[6:], want.Bytes()) {
				t.Fatalf("appendPlain0:\n got %x\nwant %x", got[6:min(len(got), 40)], want.Bytes()[:min(want.Len(), 34)])
			}
			if n := 1 + varIntLen(rem) + rem; n != want.Len() {
				t.Fatalf("size %d, encoded %d", n, want.Len())
			}
		})
	}
}
