package broker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestLoopClusterCost checks that a cluster node measures what a row
// costs its loop as a lone broker does, within a factor of five (found by
// a red team): its rows are applied by applyEntry, run as a call, whose
// time runBatch left out while counting its rows, so a row seemed to cost
// ~0 and the limit jumped toward maxLoopRows.
func TestLoopClusterCost(t *testing.T) {
	var plainCost float64
	for _, clustered := range []bool{false, true} {
		t.Run(fmt.Sprint("cluster=", clustered), func(t *testing.T) {
			var b *Broker
			if clustered {
				tn := startNodes(t, 1, 5*time.Second)
				b = tn.b[0]
			} else {
				b = start(t, Options{})
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var wg sync.WaitGroup
			for k := range 8 {
				wg.Go(func() {
					for i := range 300 {
						if err := b.Publish(ctx, Principal{ClientID: fmt.Sprint("p", k)}, Message{Topic: fmt.Sprintf("c/%d/%d", k, i), Payload: []byte("1"), Retain: true}); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.reqs.mu.Lock()
			cost, limit := b.reqs.cost, b.reqs.limit
			b.reqs.mu.Unlock()
			t.Logf("cost/row %.0f ns, limit %d rows", cost, limit)
			if !clustered {
				plainCost = cost
			} else if cost*5 < plainCost {
				t.Errorf("clustered row cost %.0f ns, limit %d rows; unclustered %.0f ns: the rows applyEntry applies are counted in ran's n, their time in others", cost, limit, plainCost)
			}
		})
	}
}
