package broker

import (
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// BenchmarkFanIn is `mote bench`'s fan-in QoS 0 in process: 100 raw MQTT
// 3.1.1 publishers over loopback TCP, each writing its QoS 0 PUBLISHes of
// 64 bytes to fan/<i> one packet a write, and one raw subscriber of fan/#
// reading them all. An op is one message, from the publishers' start
// until the subscriber has read every one; the clients allocate nothing,
// so allocs/op are the broker's per message. cpu-ns/op is the process's
// CPU time (broker and clients) per message, steadier than wall time on
// a shared machine.
func BenchmarkFanIn(b *testing.B) {
	const pubs = 100
	br := start(b, Options{})
	sub := dialBench(b, br.TCPAddr(), "fanin-sub")
	sub.subscribe(b, "fan/#")
	clients := make([]*benchClient, pubs)
	packet := make([][]byte, pubs)
	for i := range clients {
		clients[i] = dialBench(b, br.TCPAddr(), "fanin-"+strconv.Itoa(i))
		packet[i] = publish3("fan/"+strconv.Itoa(i), strings.Repeat("x", 64))
	}
	b.ReportAllocs()
	b.SetBytes(64)
	b.ResetTimer()
	cpu := processCPU()
	var wg sync.WaitGroup
	for i, c := range clients {
		n := b.N / pubs
		if i < b.N%pubs {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				if _, err := c.c.Write(packet[i]); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	for range b.N {
		for sub.read(b) != packets.Publish {
		}
	}
	b.StopTimer()
	wg.Wait()
	b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
}
