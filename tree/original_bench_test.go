package tree

import (
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// BenchmarkOriginalSnapshot: what the original dialect's string leaves
// (wire.CodecOriginal, SPEC §7) cost against native JSON, on the
// 100,000-row snapshot of BenchmarkCodecs, by the + filter a dialect client
// subscribes with (dev/+/+) and by #. Compare the pairs from one run.
func BenchmarkOriginalSnapshot(b *testing.B) {
	tr := codecRows(b, 100_000)
	for _, f := range []string{"dev/+/+", "dev/#"} {
		for _, c := range []wire.Codec{wire.CodecJSON, wire.CodecOriginal} {
			snap := tr.Snapshot(f, c, nil)
			b.Run(f+"/"+c.String(), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					tr.Snapshot(f, c, nil)
				}
				b.ReportMetric(float64(len(snap)), "bytes/op")
			})
		}
	}
}
