package broker

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkDoorPublish: publishes through the door (Broker.Publish) to
// session subscribers, the hot path every front end takes: a plain event
// fanned out to 10 plain subscribers; a retained row, applied by the loop
// and sent to a $sync subscriber as deltas; a tree publish of 10 rows, to
// a $sync subscriber. ns/op is one publish, until it is delivered: the
// clock stops once every subscriber has the last one.
func BenchmarkDoorPublish(b *testing.B) {
	cases := []struct {
		name   string
		filter string
		subs   int
		msg    func(i int) Message
	}{
		{"event/fanout=10", "ev/#", 10, func(i int) Message {
			return Message{Topic: "ev/" + strconv.Itoa(i%100), Payload: []byte(strconv.Itoa(i))}
		}},
		{"retained/sync", "$sync/row/#", 1, func(i int) Message {
			return Message{Topic: "row/" + strconv.Itoa(i%1000), Payload: []byte(strconv.Itoa(i)), Retain: true}
		}},
		{"tree/sync", "$sync/dev/#", 1, func(i int) Message {
			return Message{Topic: "$tree/dev/" + strconv.Itoa(i%100), Retain: true,
				Payload: fmt.Appendf(nil, `{"a":%d,"b":%d,"c":{"d":%d,"e":"x","f":true},"g":[1,2],"h":1,"i":2,"j":3,"k":4}`, i, i, i)}
		}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			br := start(b, Options{})
			var got atomic.Int64
			ended := make(chan struct{}, tc.subs)
			for i := range tc.subs {
				s := br.Open(Principal{ClientID: "sub" + strconv.Itoa(i)}, func(d Delivery) {
					got.Add(1)
					if bytes.Contains(d.Payload, []byte("end")) {
						ended <- struct{}{}
					}
				})
				defer s.Close()
				if err := s.Subscribe(tc.filter, 0); err != nil {
					b.Fatal(err)
				}
			}
			ctx := context.Background()
			p := Principal{ClientID: "pub"}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if err := br.Publish(ctx, p, tc.msg(i)); err != nil {
					b.Fatal(err)
				}
			}
			// The last message says "end": once every subscriber has it,
			// everything before it was delivered (or folded into it).
			last := tc.msg(0)
			last.Payload = []byte(`"end"`)
			if err := br.Publish(ctx, p, last); err != nil {
				b.Fatal(err)
			}
			deadline := time.After(time.Minute)
			for range tc.subs {
				select {
				case <-ended:
				case <-deadline:
					b.Fatal("not delivered within a minute")
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(got.Load())/float64(b.N), "deliveries/op")
		})
	}
}
