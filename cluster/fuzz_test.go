package cluster

import (
	"math"
	"testing"

	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/wire"
)

// FuzzDecodeBatch: any message is a batch or refused, never a panic, and
// a batch encodes back to what decodes the same.
func FuzzDecodeBatch(f *testing.F) {
	b, _ := encodeBatch([]retain.Change{
		{Topic: "a/b", Value: wire.Value{Kind: wire.String, Data: "ON"}, QoS: 1, MS: 5},
		{Topic: "gone"},
	}, math.MaxInt64)
	f.Add(b)
	f.Add([]byte{batchVersion})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		changes, err := decodeBatch(data, 7)
		if err != nil {
			return
		}
		again, err := encodeBatch(changes, math.MaxInt64)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		back, err := decodeBatch(again, 7)
		if err != nil || len(back) != len(changes) {
			t.Fatalf("round trip: %d changes, %v; want %d", len(back), err, len(changes))
		}
		for i := range back {
			if back[i] != changes[i] || back[i].Rev != 7 {
				t.Fatalf("change %d: %+v, want %+v", i, back[i], changes[i])
			}
		}
	})
}
