package broker

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"mote/clients/client"
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
