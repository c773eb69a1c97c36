package broker

import (
	"context"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync/atomic"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
)

// sysInterval is how often the $SYS rows are refreshed.
const sysInterval = time.Second

// sysTicker publishes the broker's counters as retained rows under $SYS
// (mochi's $SYS/broker/… and Mote's $SYS/mote/…), through the door as the
// broker itself, so they reach plain and tree subscribers like any row
// ($sync/$SYS/# gives them as one tree). They are not persisted. It stops
// with Close.
func (b *Broker) sysTicker(last map[string]string) {
	defer b.tickers.Done()
	t := time.NewTicker(sysInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-b.stop:
			return
		}
		if b.publishSys(last, waitNone) != nil {
			return // shutting down
		}
		b.offline.prune(func(cl *mqtt.Client) bool { cur, ok := b.server.Clients.Get(cl.ID); return ok && cur == cl })
		b.arriving.sweep(b)
		b.logs.tick() // the counts of log lines left out, of intervals that ended
		b.keptIn.prune(&b.server.Info.Inflight, b.server.Clients.Get)
		b.parked.Range(func(k, _ any) bool {
			if k.(*conn).unpark() {
				b.parked.Delete(k)
			}
			return true
		})
	}
}

// publishSys publishes the $SYS rows that changed since last.
func (b *Broker) publishSys(last map[string]string, wait waitMode) error {
	for topic, v := range b.sysValues() {
		if last[topic] == v {
			continue
		}
		last[topic] = v
		m := Message{Topic: topic, Payload: []byte(v), Retain: true}
		if err := b.publish(context.Background(), systemPrincipal, m, wait); err != nil {
			return err
		}
	}
	return nil
}

// heapInuse is the bytes of the heap's spans in use, runtime.MemStats'
// HeapInuse, read through runtime/metrics (live and unswept objects plus
// the unused rest of their spans). runtime.ReadMemStats stops the world
// for it: once a second every goroutine waited for it, and under CPU
// contention the pause took as long as the kernel kept a thread off its
// core (issue 15: 0.1–0.9 ms a second in traces of `mote bench latency`
// at load 7, once 32 ms, holding up every message in flight;
// bench/README.md). metrics.Read stops nothing.
func heapInuse() int64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	metrics.Read(s)
	var n int64
	for _, v := range s {
		if v.Value.Kind() == metrics.KindUint64 {
			n += int64(v.Value.Uint64())
		}
	}
	return n
}

// sysValues are the $SYS rows now.
func (b *Broker) sysValues() map[string]string {
	i := b.server.Info
	now := time.Now().Unix()
	n := func(v int64) string { return strconv.FormatInt(v, 10) }
	ld := atomic.LoadInt64
	lost := int64(0)
	if b.ret != nil {
		lost = b.ret.Lost.Load()
	}
	return map[string]string{
		"$SYS/mote/lost":                  n(lost),
		"$SYS/broker/version":             "mote (mochi-mqtt " + mqtt.Version + ")",
		"$SYS/broker/uptime":              n(now - ld(&i.Started)),
		"$SYS/broker/started":             n(ld(&i.Started)),
		"$SYS/broker/load/bytes/received": n(ld(&i.BytesReceived)),
		"$SYS/broker/load/bytes/sent":     n(ld(&i.BytesSent)),
		"$SYS/broker/clients/connected":   n(ld(&i.ClientsConnected)),
		"$SYS/broker/clients/total":       n(int64(b.server.Clients.Len())),
		"$SYS/broker/clients/maximum":     n(ld(&i.ClientsMaximum)),
		"$SYS/broker/packets/received":    n(ld(&i.PacketsReceived)),
		"$SYS/broker/packets/sent":        n(ld(&i.PacketsSent)),
		"$SYS/broker/messages/received":   n(ld(&i.MessagesReceived)),
		"$SYS/broker/messages/sent":       n(ld(&i.MessagesSent)),
		"$SYS/broker/messages/inflight":   n(ld(&i.Inflight)),
		"$SYS/broker/retained":            n(ld(&i.Retained)),
		"$SYS/broker/subscriptions":       n(ld(&i.Subscriptions)),
		"$SYS/broker/system/memory":       n(heapInuse()),
		"$SYS/broker/system/threads":      n(int64(runtime.NumGoroutine())),
		"$SYS/mote/dropped":               n(b.stats.Dropped.Load()),
		"$SYS/mote/toolarge":              n(b.stats.TooLarge.Load()),
		"$SYS/mote/refused":               n(b.stats.Refused.Load()),
		"$SYS/mote/panics":                n(b.stats.Panics.Load()),
		"$SYS/mote/throttled":             n(b.stats.Throttled.Load()),
		"$SYS/mote/batches":               n(b.stats.Batches.Load()),
		"$SYS/mote/publishes":             n(b.stats.OpsApplied.Load()),
		"$SYS/mote/tree/messages":         n(b.stats.DeltasQueued.Load()),
		"$SYS/mote/tree/folded":           n(b.stats.Folded.Load()),
		"$SYS/mote/tree/subscriptions":    n(b.treeSubs.Load()),
		"$SYS/mote/rows":                  n(ld(&i.Retained)),
		"$SYS/mote/sessions/away":         n(int64(b.away.len())),
		"$SYS/mote/sessions/ended":        n(b.stats.SessionsEnded.Load()),
	}
}
