package broker

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkReplayStorm is the live dashboard's reconnect storm in
// process: subs MQTT 3.1.1 clients subscribe dev/+/state at once and each
// reads all rows retained rows. It reports, per subscriber-row, the
// broker's heap at the storm's peak above what it held before
// (peak-heap-B/sub-row: what a storm costs in memory; the clients' 4 KiB
// read buffers are in it too) and what the storm allocated
// (alloc-B/sub-row: garbage the GC must chase, which is RSS too).
func BenchmarkReplayStorm(b *testing.B) {
	for _, sz := range []struct{ subs, rows int }{{100, 10_000}, {500, 2_000}} {
		b.Run(fmt.Sprintf("subs=%d/rows=%d", sz.subs, sz.rows), func(b *testing.B) {
			br := start(b, Options{})
			loadRows(b, br, sz.rows)
			var peak, allocs float64
			n := 0
			for b.Loop() {
				p, a := replayStorm(b, br.TCPAddr(), sz.subs, sz.rows)
				peak, allocs, n = max(peak, p), allocs+a, n+1
			}
			subRows := float64(sz.subs * sz.rows)
			b.ReportMetric(peak/subRows, "peak-heap-B/sub-row")
			b.ReportMetric(allocs/float64(n)/subRows, "alloc-B/sub-row")
		})
	}
}

// replayStorm runs one storm: the peak of the heap's live objects above
// where they stood before (after a GC), and the bytes allocated meanwhile.
func replayStorm(b *testing.B, addr string, subs, rows int) (peak, allocated float64) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(sample)
	base, alloc0 := sample[0].Value.Uint64(), sample[1].Value.Uint64()
	var top atomic.Uint64
	done := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			if v := s[0].Value.Uint64(); v > top.Load() {
				top.Store(v)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	var wg sync.WaitGroup
	errs := make(chan error, subs)
	// At most 128 readers in their handshake at once: the broker closes a
	// host's handshakes past 256 (a flood guard), which 500 readers
	// dialling together would meet. The replays still overlap.
	handshakes := make(chan struct{}, 128)
	for i := range subs {
		wg.Go(func() {
			handshakes <- struct{}{}
			err := replayReader(ctx, addr, fmt.Sprintf("storm-%d", i), "dev/+/state", rows, func() { <-handshakes })
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(done)
	sampler.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	metrics.Read(sample)
	return float64(top.Load()) - float64(base), float64(sample[1].Value.Uint64() - alloc0)
}

// connectSubscribe is an MQTT 3.1.1 CONNECT (clean session) of client id
// followed by a SUBSCRIBE to filter at QoS 0 (id and filter under 100
// bytes).
func connectSubscribe(id, filter string) []byte {
	connect := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, byte(len(id))}, id...)
	sub := append([]byte{0, 1, 0, byte(len(filter))}, filter...)
	sub = append(sub, 0)
	return append(append([]byte{0x10, byte(len(connect))}, connect...), append([]byte{0x82, byte(len(sub))}, sub...)...)
}

// replayReader connects (MQTT 3.1.1, clean), subscribes filter at QoS 0
// and reads until rows publishes came; connected, if not nil, is called
// once, when the handshake is over (the CONNACK, or a failure).
func replayReader(ctx context.Context, addr, id, filter string, rows int, connected func()) error {
	if done := connected; done != nil {
		var once sync.Once
		connected = func() { once.Do(done) }
		defer connected()
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl) //nolint:errcheck // a failing deadline fails the reads
	}
	if _, err := c.Write(connectSubscribe(id, filter)); err != nil {
		return err
	}
	r := bufio.NewReaderSize(c, 4096)
	for got := 0; got < rows; {
		h, err := r.ReadByte()
		if err != nil {
			return fmt.Errorf("%s: after %d rows: %w", id, got, err)
		}
		n, err := binary.ReadUvarint(r)
		if err != nil {
			return err
		}
		if _, err := r.Discard(int(n)); err != nil {
			return err
		}
		switch h >> 4 {
		case 2: // CONNACK
			if connected != nil {
				connected()
			}
		case 3:
			got++
		}
	}
	_, err = c.Write([]byte{0xe0, 0}) // DISCONNECT
	return err
}
