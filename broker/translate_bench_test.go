package broker

import (
	"bytes"
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/translate"
	"github.com/mote-mqtt/mote/wire"
)

// hundredRules are 100 two-way Zigbee-style translators
// (zigbee2mqtt/devN/+/state ⇄ home/devN/+/on): 200 sources in the index.
func hundredRules(b testing.TB) *translate.Set {
	rules := make([]translate.Rule, 100)
	for i := range rules {
		n := strconv.Itoa(i)
		rules[i] = translate.Rule{From: "zigbee2mqtt/dev" + n + "/+/state", To: "home/dev" + n + "/+/on", TwoWay: true,
			Values: []translate.Pair{
				{From: wire.Value{Kind: wire.String, Data: "ON"}, To: wire.Value{Kind: wire.JSON, Data: "true"}},
				{From: wire.Value{Kind: wire.String, Data: "OFF"}, To: wire.Value{Kind: wire.JSON, Data: "false"}},
			}}
	}
	s, err := translate.New(rules)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkTranslateFanIn: publishers on every core publish through the
// door to one subscriber, with no translators and with 100 loaded that
// match none of the topics (miss: the first level differs; near: the
// topics share the rules' first two levels and their +, and differ at
// the last) — the cost a publish pays for translators it does not use —
// and, for scale, with a rule matching every publish (match: each is
// translated and delivered twice). Events (delivered by the publisher)
// and retained rows (applied by the loop). ns/op is one publish until
// the subscriber has it; cpu-ns/op the CPU time the process (broker,
// publishers, subscriber) spent on it, steadier than wall time on a
// shared machine. Run with -count to alternate the variants.
func BenchmarkTranslateFanIn(b *testing.B) {
	type variant struct {
		name   string
		rules  bool
		filter string
		topic  func(i int) string
	}
	variants := []variant{
		{"rules=0", false, "sensor/#", func(i int) string { return "sensor/s" + strconv.Itoa(i%100) + "/t" }},
		{"rules=100/miss", true, "sensor/#", func(i int) string { return "sensor/s" + strconv.Itoa(i%100) + "/t" }},
		{"rules=100/near", true, "zigbee2mqtt/#", func(i int) string { return "zigbee2mqtt/dev" + strconv.Itoa(i%100) + "/lamp/level" }},
		{"rules=100/match", true, "#", func(i int) string { return "zigbee2mqtt/dev" + strconv.Itoa(i%100) + "/lamp/state" }},
	}
	for _, retain := range []bool{false, true} {
		kind := "event"
		if retain {
			kind = "retained"
		}
		for _, v := range variants {
			b.Run(kind+"/"+v.name, func(b *testing.B) {
				var opts Options
				if v.rules {
					opts.Translators = hundredRules(b)
				}
				br := start(b, opts)
				var got atomic.Int64
				ended := make(chan struct{}, 1)
				s := br.Open(Principal{ClientID: "sink"}, func(d Delivery) {
					got.Add(1)
					if bytes.Equal(d.Payload, []byte("end")) {
						ended <- struct{}{}
					}
				})
				defer s.Close()
				if err := s.Subscribe(v.filter, 0); err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				var seq atomic.Int64
				b.ReportAllocs()
				b.ResetTimer()
				cpu := processCPU()
				b.RunParallel(func(pb *testing.PB) {
					p := Principal{ClientID: "pub" + strconv.FormatInt(seq.Add(1), 10)}
					i := 0
					for pb.Next() {
						if err := br.Publish(ctx, p, Message{Topic: v.topic(i), Payload: []byte("ON"), Retain: retain}); err != nil {
							b.Error(err)
							return
						}
						i++
					}
				})
				if err := br.Publish(ctx, Principal{ClientID: "pub0"}, Message{Topic: v.topic(1), Payload: []byte("end"), Retain: retain}); err != nil {
					b.Fatal(err)
				}
				select {
				case <-ended:
				case <-time.After(time.Minute):
					b.Fatal("not delivered within a minute")
				}
				b.StopTimer()
				b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
				b.ReportMetric(float64(got.Load())/float64(b.N), "deliveries/op")
			})
		}
	}
}
