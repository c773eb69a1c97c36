package packets

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"strings"
	"testing"
)

// userPropsPublish is the body of an MQTT 5 QoS 1 PUBLISH to "a/b" whose
// properties are n User Properties of key k and value v.
func userPropsPublish(n int, k, v string) []byte {
	one := []byte{PropUser}
	one = binary.BigEndian.AppendUint16(one, uint16(len(k)))
	one = append(one, k...)
	one = binary.BigEndian.AppendUint16(one, uint16(len(v)))
	one = append(one, v...)
	props := bytes.Repeat(one, n)
	var b bytes.Buffer
	writeString(&b, "a/b")
	b.Write([]byte{0, 1})
	encodeLength(&b, int64(len(props)))
	b.Write(props)
	b.WriteString("payload")
	return b.Bytes()
}

// allocatedBy is the bytes f allocates on the heap: the least of three
// runs, since TotalAlloc also counts what other goroutines allocate
// meanwhile (the test runner's, the race detector's: a CI run once saw
// 5,896 bytes for a decode of 10 properties), which only adds.
func allocatedBy(f func()) uint64 {
	least := ^uint64(0)
	for range 3 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		least = min(least, after.TotalAlloc-before.TotalAlloc)
	}
	return least
}

// TestDecodeUserPropertiesBounded: past Mods' bounds a packet's User
// Properties are not kept (change 68), so decoding a PUBLISH of 200,000
// empty ones (1 MB) allocates next to nothing, not 200,000 × 32 bytes and
// the slice's growth (12.8 MB); the rest of the packet decodes, for the
// server to refuse it with 0x97. Without bounds, all are kept as upstream.
func TestDecodeUserPropertiesBounded(t *testing.T) {
	bounded := Mods{MaxUserProperties: 1024, MaxUserPropertyBytes: 64 << 10}
	for _, c := range []struct {
		name     string
		n        int
		k, v     string
		mods     Mods
		kept     int
		over     bool
		maxAlloc uint64
	}{
		{"200k empty, bounded", 200_000, "", "", bounded, 0, true, 64 << 10},
		{"200k empty, bytes bound only", 200_000, "", "", Mods{MaxUserPropertyBytes: 64 << 10}, 0, true, 64 << 10},
		{"2 of 40 KB, bounded", 2, strings.Repeat("k", 40_000), "v", bounded, 0, true, 64 << 10},
		{"1024 empty, bounded", 1024, "", "", bounded, 1024, false, 48 << 10},
		{"10 small, bounded", 10, "key", "value", bounded, 10, false, 4 << 10},
		{"200k empty, no bound", 200_000, "", "", Mods{}, 200_000, false, 8 << 20},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := userPropsPublish(c.n, c.k, c.v)
			var pk Packet
			alloc := allocatedBy(func() {
				pk = Packet{ProtocolVersion: 5, Mods: c.mods, FixedHeader: FixedHeader{Type: Publish, Qos: 1, Remaining: len(body)}}
				if err := pk.PublishDecode(body); err != nil {
					t.Fatalf("decode: %v", err)
				}
			})
			if len(pk.Properties.User) != c.kept || pk.Properties.UserOverLimit != c.over {
				t.Errorf("kept %d, over %v; want %d, %v", len(pk.Properties.User), pk.Properties.UserOverLimit, c.kept, c.over)
			}
			if pk.TopicName != "a/b" || pk.PacketID != 1 || string(pk.Payload) != "payload" {
				t.Errorf("packet %q id %d payload %q", pk.TopicName, pk.PacketID, pk.Payload)
			}
			if alloc > c.maxAlloc {
				t.Errorf("decoding %d bytes allocated %d bytes, want at most %d", len(body), alloc, c.maxAlloc)
			}
		})
	}
}

// FuzzUserPropertiesBounded: bounds change only which User Properties
// are kept, never whether properties decode: the same bytes decode with
// and without bounds to the same error, and under the bounds to the same
// User Properties; over them to none (change 68).
func FuzzUserPropertiesBounded(f *testing.F) {
	f.Add([]byte{PropUser, 0, 1, 'k', 0, 1, 'v', PropUser, 0, 0, 0, 0, PropUser, 0, 0, 0, 0})
	f.Add([]byte{PropContentType, 0, 1, 'a', PropUser, 0, 0, 0, 0, PropSubscriptionIdentifier, 0x81, 0x01})
	f.Add([]byte{PropUser, 0, 2, 'k'})
	f.Fuzz(func(t *testing.T, props []byte) {
		var free, bounded Properties
		_, ferr := free.decodeBody(Publish, len(props), 1, props, Mods{})
		_, berr := bounded.decodeBody(Publish, len(props), 1, props, Mods{MaxUserProperties: 2, MaxUserPropertyBytes: 20})
		if (ferr == nil) != (berr == nil) {
			t.Fatalf("unbounded: %v, bounded: %v", ferr, berr)
		}
		if ferr != nil || free.UserOverLimit {
			return
		}
		switch {
		case bounded.UserOverLimit && bounded.User != nil:
			t.Fatalf("over the bounds, %d kept", len(bounded.User))
		case !bounded.UserOverLimit && len(bounded.User) != len(free.User):
			t.Fatalf("kept %d of %d", len(bounded.User), len(free.User))
		case !bounded.UserOverLimit && len(free.User) > 2:
			t.Fatalf("%d kept, past the bound of 2", len(free.User))
		}
	})
}
