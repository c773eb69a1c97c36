package broker

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"

	"github.com/mote-mqtt/mote/retain"
)

// BenchmarkBootStorm is `mote bench boot-storm` in process, the broker
// persisting to bbolt as `mote broker` does: devices each publish a
// 50-row tree (one retained QoS 1 `$tree/boot/dNNNNN` publish, "tree") or
// 50 plain retained QoS 1 publishes ("plain"), over 50 raw MQTT 3.1.1
// connections with up to 500 publishes in flight each. The clock stops
// once every publish is acknowledged, applied (Broker.Sync) and committed
// to the store. It reports the process's CPU per row (the clients' share
// included: raw packets, a small part) and per device; and apart, the CPU
// per row of the check that follows (a wildcard subscriber's retained
// replay of every row, outside the clock). With -cpuprofile it is the
// storm's profile (and the check's).
func BenchmarkBootStorm(b *testing.B) {
	const devices, rows, conns = 2_000, 50, 50
	for _, v := range []struct {
		name          string
		tree, memOnly bool
	}{
		{"tree", true, false},
		{"plain", false, false},
		// Without a store (Options.Store nil: nothing persisted), as
		// Mosquitto runs in `mote bench` (persistence false): what the
		// retainer's bbolt commits cost in the storm.
		{"tree-memory", true, true},
		{"plain-memory", false, true},
	} {
		tree := v.tree
		b.Run(v.name, func(b *testing.B) {
			var cpu, check, commits float64
			for b.Loop() {
				b.StopTimer()
				var opts Options
				if !v.memOnly {
					st, err := retain.Open(b.TempDir())
					if err != nil {
						b.Fatal(err)
					}
					opts.Store = st
				}
				br := start(b, opts)
				b.StartTimer()
				cpu0 := processCPU()
				bootStorm(b, br, devices, rows, conns, tree)
				cpu1 := processCPU()
				cpu += (cpu1 - cpu0).Seconds()
				b.StopTimer()
				if n := br.tree.Store().Len(); n < devices*rows {
					b.Fatalf("%d rows stored, want %d", n, devices*rows)
				}
				// The check of `mote bench`: one subscriber's retained replay
				// of every row, apart.
				if err := replayReader(testCtx(b), br.TCPAddr(), "check", "boot/+/+", devices*rows, nil); err != nil {
					b.Fatal(err)
				}
				check += (processCPU() - cpu1).Seconds()
				if br.ret != nil {
					commits += float64(br.ret.Commits.Load())
				}
				br.Close()
				b.StartTimer()
			}
			b.ReportMetric(cpu/float64(b.N*devices*rows)*1e9, "cpu-ns/row")
			b.ReportMetric(cpu/float64(b.N*devices)*1e6, "cpu-µs/device")
			b.ReportMetric(check/float64(b.N*devices*rows)*1e9, "check-cpu-ns/row")
			b.ReportMetric(commits/float64(b.N), "commits/op")
		})
	}
}

// bootStorm runs one storm and waits until every row is applied and
// committed.
func bootStorm(b *testing.B, br *Broker, devices, rows, conns int, tree bool) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*testTimeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for w := range conns {
		wg.Go(func() {
			if err := stormPublisher(ctx, br.TCPAddr(), w, conns, devices, rows, tree); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	if err := br.Sync(ctx); err != nil {
		b.Fatal(err)
	}
	if br.ret == nil { // nothing persisted
		return
	}
	done := make(chan error, 1)
	br.ret.Add(nil, done) // answered by the commit that follows what is pending
	select {
	case err := <-done:
		if err != nil {
			b.Fatal(err)
		}
	case <-ctx.Done():
		b.Fatal("the retainer did not commit in time")
	}
}

// stormPublisher connects (MQTT 3.1.1) and publishes the devices w, w+conns,
// … retained at QoS 1, keeping up to 500 publishes unacknowledged.
func stormPublisher(ctx context.Context, addr string, w, conns, devices, rows int, tree bool) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl) //nolint:errcheck // a failing deadline fails the reads
	}
	id := "boot-" + strconv.Itoa(w)
	connect := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 60, 0, byte(len(id))}, id...)
	if _, err := c.Write(append([]byte{0x10, byte(len(connect))}, connect...)); err != nil {
		return err
	}
	r := bufio.NewReaderSize(c, 4096)
	acks := 0
	read := func() error { // one packet: the CONNACK or a PUBACK
		h, err := r.ReadByte()
		if err != nil {
			return fmt.Errorf("%s: after %d acks: %w", id, acks, err)
		}
		n, err := binary.ReadUvarint(r)
		if err != nil {
			return err
		}
		if _, err := r.Discard(int(n)); err != nil {
			return err
		}
		if h>>4 == 4 {
			acks++
		}
		return nil
	}
	if err := read(); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(c, 64<<10)
	sent := 0
	var pkt []byte
	publish := func(topic, payload string) error {
		sent++
		body := len(topic) + 2 + 2 + len(payload)
		pkt = append(pkt[:0], 0x33) // PUBLISH, QoS 1, retain
		pkt = binary.AppendUvarint(pkt, uint64(body))
		pkt = append(pkt, byte(len(topic)>>8), byte(len(topic)))
		pkt = append(pkt, topic...)
		pid := (sent-1)%65535 + 1 // never id 0
		pkt = append(pkt, byte(pid>>8), byte(pid))
		pkt = append(pkt, payload...)
		if _, err := bw.Write(pkt); err != nil {
			return err
		}
		for sent-acks >= 500 {
			if err := bw.Flush(); err != nil {
				return err
			}
			if err := read(); err != nil {
				return err
			}
		}
		return nil
	}
	for dev := w; dev < devices; dev += conns {
		if tree {
			if err := publish(fmt.Sprintf("$tree/boot/d%05d", dev), deviceTree(dev, rows)); err != nil {
				return err
			}
			continue
		}
		for i := range rows {
			if err := publish(fmt.Sprintf("boot/d%05d/r%02d", dev, i), strconv.Itoa(dev+i)); err != nil {
				return err
			}
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	for acks < sent {
		if err := read(); err != nil {
			return err
		}
	}
	_, err = c.Write([]byte{0xe0, 0}) // DISCONNECT
	return err
}

// deviceTree is one device's rows as a JSON tree, as `mote bench` sends it.
func deviceTree(dev, rows int) string {
	b := []byte{'{'}
	for i := range rows {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `"r%02d":%d`, i, dev+i)
	}
	return string(append(b, '}'))
}
