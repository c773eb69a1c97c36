package broker

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/wire"
)

// BenchmarkDashboardLoad: a client subscribes and waits until it holds all
// of 100k retained rows dev/+/state: one $sync snapshot vs a plain wildcard
// subscription on the same broker (mochi's retained delivery).
func BenchmarkDashboardLoad(b *testing.B) {
	const rows = 100_000
	br := start(b, Options{})
	for i := range rows {
		loadRow(br, fmt.Sprintf("dev/d%06d/state", i), fmt.Sprint(i%2))
	}
	settle(b, br)
	ctx := context.Background()
	b.Run("sync", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			c, err := client.Dial(ctx, br.TCPAddr(), client.Options{ClientID: fmt.Sprint("s", i), CleanStart: true})
			if err != nil {
				b.Fatal(err)
			}
			m, err := c.Mirror(ctx, "dev/+/state", client.JSON, 0, nil)
			if err != nil {
				b.Fatal(err)
			}
			m.Get(func(doc any) {
				if n := len(doc.(map[string]any)); n != rows {
					b.Fatalf("%d rows", n)
				}
			})
			c.Close()
		}
	})
	b.Run("plain", func(b *testing.B) {
		var got atomic.Int64
		for i := 0; b.Loop(); i++ {
			got.Store(0)
			o := paho.NewClientOptions().AddBroker("tcp://" + br.TCPAddr()).SetClientID(fmt.Sprint("p", i)).SetCleanSession(true)
			c := paho.NewClient(o)
			if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				b.Fatal(tok.Error())
			}
			c.Subscribe("dev/+/state", 0, func(paho.Client, paho.Message) { got.Add(1) }).Wait()
			deadline := time.Now().Add(10 * time.Second)
			last, lastChange := int64(-1), time.Now()
			for got.Load() < rows && time.Now().Before(deadline) {
				if n := got.Load(); n != last {
					last, lastChange = n, time.Now()
				} else if time.Since(lastChange) > time.Second {
					break // nothing more is coming
				}
				time.Sleep(time.Millisecond)
			}
			b.ReportMetric(float64(got.Load()), "rows-received")
			c.Disconnect(0)
		}
	})
}

// BenchmarkBoot: start a broker on a store of 1M rows; the listeners open
// after every row is in the tree core and mochi's retained index.
func BenchmarkBoot(b *testing.B) {
	dir := b.TempDir()
	st, err := retain.Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	const n = 1_000_000
	for i := 0; i < n; i += 10_000 {
		cs := make([]retain.Change, 10_000)
		for j := range cs {
			cs[j] = retain.Change{Topic: fmt.Sprintf("dev/d%07d/state", i+j), Value: wire.Value{Kind: wire.JSON, Data: "21.5"}}
		}
		if _, err := st.Commit(retain.Batch{Changes: cs}); err != nil {
			b.Fatal(err)
		}
	}
	st.Close()
	for b.Loop() {
		st, err := retain.Open(dir)
		if err != nil {
			b.Fatal(err)
		}
		br, err := New(Options{TCP: "127.0.0.1:0", WS: "off", Store: st})
		if err != nil {
			b.Fatal(err)
		}
		if err := br.Start(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		br.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/boot")
}

// BenchmarkLatency: publish→receive latency at a fixed moderate rate (1,000
// retained publishes/s, QoS 0), plain and tree, persistence off and on,
// side by side in one run.
func BenchmarkLatency(b *testing.B) {
	for _, persist := range []bool{false, true} {
		for _, kind := range []string{"plain", "tree"} {
			b.Run(fmt.Sprintf("persist=%v/%s", persist, kind), func(b *testing.B) {
				opts := Options{}
				if persist {
					st, err := retain.Open(b.TempDir())
					if err != nil {
						b.Fatal(err)
					}
					opts.Store = st
				}
				br := start(b, opts)
				var mu sync.Mutex
				var lat []time.Duration
				got := make(chan struct{}, 1)
				sub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + br.TCPAddr()).SetClientID("lat-sub"))
				sub.Connect().Wait()
				defer sub.Disconnect(0)
				handle := func(_ paho.Client, m paho.Message) {
					s := string(m.Payload())
					if kind == "tree" {
						s = strings.Trim(s, `{}"t:`)
					}
					ns, err := strconv.ParseInt(s, 10, 64)
					if err != nil {
						return
					}
					mu.Lock()
					lat = append(lat, time.Since(time.Unix(0, ns)))
					mu.Unlock()
					select {
					case got <- struct{}{}:
					default:
					}
				}
				filter := "lat/t"
				if kind == "tree" {
					filter = "$tree/lat/+"
				}
				sub.Subscribe(filter, 0, handle).Wait()
				pub := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + br.TCPAddr()).SetClientID("lat-pub"))
				pub.Connect().Wait()
				defer pub.Disconnect(0)
				const rate, count = 1000, 2000
				for b.Loop() {
					lat = lat[:0]
					tick := time.NewTicker(time.Second / rate)
					for range count {
						<-tick.C
						now := strconv.FormatInt(time.Now().UnixNano(), 10)
						if kind == "tree" {
							pub.Publish("$tree/lat", 0, true, `{"t":`+now+`}`)
						} else {
							pub.Publish("lat/t", 0, true, now)
						}
					}
					tick.Stop()
					time.Sleep(200 * time.Millisecond)
				}
				mu.Lock()
				defer mu.Unlock()
				if len(lat) == 0 {
					b.Fatal("nothing received")
				}
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
				b.ReportMetric(float64(len(lat)), "received")
			})
		}
	}
}
