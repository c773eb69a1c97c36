package broker

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/retain"
)

// histBroker starts a broker with a store in a fresh directory and, when
// keep > 0, history for hist/#.
func histBroker(b *testing.B, keep int) *Broker {
	b.Helper()
	st, err := retain.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	var rules []retain.HistoryRule
	if keep > 0 {
		rules = []retain.HistoryRule{{Filter: "hist/#", Keep: keep}}
	}
	br, err := New(Options{TCP: "127.0.0.1:0", WS: "off", Store: st, Retain: retain.Options{History: rules}})
	if err != nil {
		b.Fatal(err)
	}
	if err := br.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { br.Close() })
	return br
}

// writeHistory sets rows hist/rNNNNN values times each, all rows of a
// round in one tree publish, and waits until the retainer has committed
// them.
func writeHistory(b *testing.B, br *Broker, rows, values int) {
	writeRounds(b, br, rows, values, false)
}

// writeRounds is writeHistory; with each, every round is committed before
// the next (as when the disk keeps up): no change of a row coalesces with
// the next, with history or without.
func writeRounds(b *testing.B, br *Broker, rows, values int, each bool) {
	b.Helper()
	ctx := context.Background()
	p := Principal{ClientID: "writer"}
	for v := range values {
		var sb strings.Builder
		sb.WriteString("{")
		for r := range rows {
			if r > 0 {
				sb.WriteString(",")
			}
			fmt.Fprintf(&sb, `"r%05d":%d`, r, v)
		}
		sb.WriteString("}")
		if err := br.Publish(ctx, p, Message{Topic: "$tree/hist", Payload: []byte(sb.String()), QoS: 1, Retain: true}); err != nil {
			b.Fatal(err)
		}
		br.ret.Wait()
		if each {
			done := make(chan error, 1)
			br.ret.Add(nil, done)
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		}
	}
	done := make(chan error, 1)
	br.ret.Add(nil, done)
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// BenchmarkHistoryWrite: rows per second the broker commits, 10,000 rows
// changed 20 times, without history and with history on every row (each
// change also stored with its time, in the same transaction). Side by
// side in one run: compare the rows/s of the two. "coalesced": rounds
// are handed in as fast as the broker takes them, and without history
// the retainer keeps only the newest change of a row between two commits
// (with history it writes every one); "each": every round is committed
// before the next, so both write every change.
func BenchmarkHistoryWrite(b *testing.B) {
	const rows, values = 10_000, 20
	for _, each := range []bool{false, true} {
		for _, keep := range []int{0, 1000} {
			name := map[bool]string{false: "coalesced", true: "each"}[each]
			b.Run(fmt.Sprint(name, "/history=", keep > 0), func(b *testing.B) {
				for b.Loop() {
					br := histBroker(b, keep)
					start := time.Now()
					writeRounds(b, br, rows, values, each)
					b.ReportMetric(float64(rows*values)/time.Since(start).Seconds(), "rows/s")
					br.Close()
				}
			})
		}
	}
}

// BenchmarkHistoryRead: a $hist answer of 100 rows × 1,000 values (the
// last 1,000 of each), from SUBSCRIBE to the message, through the door.
func BenchmarkHistoryRead(b *testing.B) {
	br := histBroker(b, 999)
	writeHistory(b, br, 100, 1000)
	got := make(chan Delivery, 1)
	s := br.Open(Principal{ClientID: "reader"}, func(d Delivery) { got <- d })
	defer s.Close()
	size := 0
	for b.Loop() {
		if err := s.Subscribe("$hist/hist/+", 0); err != nil {
			b.Fatal(err)
		}
		d := <-got
		size = len(d.Payload)
		s.Unsubscribe("$hist/hist/+")
	}
	b.ReportMetric(float64(size), "bytes/answer")
}

// BenchmarkHistoryHeap: the broker's heap after 1,000,000 history values
// (10,000 rows × 100), beside the same writes without history: history
// lives on disk, so the two should match but for the store's sizes of
// each row's history (retain.HistSize, R3-hist: about 100 bytes a row).
func BenchmarkHistoryHeap(b *testing.B) {
	for _, keep := range []int{0, 1000} {
		b.Run(fmt.Sprint("history=", keep > 0), func(b *testing.B) {
			for b.Loop() {
				br := histBroker(b, keep)
				writeHistory(b, br, 10_000, 100)
				runtime.GC()
				runtime.GC() // twice: bbolt's page pool (a sync.Pool) lets go of its pages only on the second
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				b.ReportMetric(float64(m.HeapInuse)/(1<<20), "heap-MiB")
				br.Close()
			}
		})
	}
}

// BenchmarkHistoryEstimate: AnswerSize of a history answer of 10,000 rows
// with 20 values each (R3-hist: the stored values' sizes read from the
// store's figures, a map entry a row, beside the walk of the rows), and
// of one of them (review h-rv6: it walked the figures of all 10,000).
func BenchmarkHistoryEstimate(b *testing.B) {
	for _, filter := range []string{"hist/#", "hist/r04242"} {
		b.Run(strings.NewReplacer("/", "_", "#", "all").Replace(filter), func(b *testing.B) {
			br := histBroker(b, 100)
			writeHistory(b, br, 10_000, 20)
			opts := &SubscribeOptions{}
			var est int64
			for b.Loop() {
				var err error
				if est, err = br.AnswerSize(context.Background(), Principal{ClientID: "reader"}, filter, opts); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(est), "bytes/estimate")
		})
	}
}
