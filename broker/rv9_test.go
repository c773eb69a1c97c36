package broker

import (
	"testing"
	"time"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// TestRunBatchClearsAll (review h-rv9, RV9-3): a batch whose publishes
// are applied in parts (a request of another kind between them, or a
// translated publish) keeps none of them in the loop's scratch once done:
// runBatch cleared only the last part's, so the ops and pubMetas of the
// parts before it (rows, payloads, messages) stayed pinned past the end
// of the slices until a batch as long came.
func TestRunBatchClearsAll(t *testing.T) {
	b := start(t, Options{})
	pub := func(topic string) request {
		return request{kind: reqPublish, op: tree.Op{Rows: []tree.Row{{Topic: topic, Value: wire.Value{Kind: wire.JSON, Data: "1"}, Retain: true}}},
			pub: &pubMeta{p: systemPrincipal, topic: topic}}
	}
	call := request{kind: reqCall, call: func() {}}
	items := []request{pub("rv9/a"), pub("rv9/b"), pub("rv9/c"), call, pub("rv9/d")}
	b.loopMu.Lock()
	b.runBatch(items, time.Now())
	ops, meta := b.loopOps[:cap(b.loopOps)], b.loopMeta[:cap(b.loopMeta)]
	b.loopMu.Unlock()
	for i := range ops {
		if ops[i].Rows != nil {
			t.Errorf("loopOps[%d] still holds %q", i, ops[i].Rows[0].Topic)
		}
	}
	for i := range meta {
		if meta[i] != nil {
			t.Errorf("loopMeta[%d] still holds %q", i, meta[i].topic)
		}
	}
}
