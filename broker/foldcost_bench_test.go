package broker

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/clients/client"
)

// BenchmarkStalledFold: subscribers of one row that stopped reading
// (MQTT 5, Receive Maximum 1, their first delta never acknowledged), and
// $tree publishes of 2,001 rows, one of which each matches: every publish
// folds one row into each subscriber's waiting delta. broker-cpu-ms/op is
// the process's CPU a publish (the subscribers only hold sockets). Before
// the fold read the delta's rows from the tree (tree.AppendChanges), it
// matched every row of the batch for each subscriber: 300 subscribers cost
// 35–63 ms a publish, now 1.7–1.9 (3 runs of 20 each, side by side).
func BenchmarkStalledFold(b *testing.B) {
	subs := 300
	if testing.Short() {
		subs = 30
	}
	br := start(b, Options{})
	for i := range subs {
		stalledV5(b, br, fmt.Sprintf("st%d", i), "$sync/big/a")
	}
	var sb strings.Builder
	sb.WriteString(`{"a":0`)
	for i := range 2000 {
		fmt.Fprintf(&sb, `,"r%d":%d`, i, i)
	}
	sb.WriteString("}")
	doc := sb.String()
	pub := mote(b, br, "pub")
	ctx := testCtx(b)
	publish := func(i int) {
		p := strings.Replace(doc, `"a":0`, fmt.Sprintf(`"a":%d`, i), 1)
		if err := pub.Publish(ctx, "$tree/big", []byte(p), client.PublishOptions{QoS: 1}); err != nil {
			b.Fatal(err)
		}
	}
	publish(1) // each subscriber's first delta: in flight, never acknowledged
	publish(2) // the second waits in the queue; the next ones fold into it
	settle(b, br)
	folded := br.stats.Folded.Load()
	b.ResetTimer()
	cpu := processCPU()
	for i := range b.N {
		publish(3 + i)
	}
	settle(b, br)
	b.ReportMetric(float64((processCPU()-cpu).Microseconds())/1000/float64(b.N), "broker-cpu-ms/op")
	if got := br.stats.Folded.Load() - folded; got < int64(b.N*subs)*9/10 {
		b.Fatalf("%d folds, want about %d: the subscribers are not stalled", got, b.N*subs)
	}
}

// stalledV5 connects an MQTT 5 client with Receive Maximum 1 that
// subscribes to filter at QoS 1 and reads nothing after its SUBACK.
func stalledV5(tb testing.TB, b *Broker, id, filter string) {
	tb.Helper()
	c, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	// CONNECT: "MQTT" 5, Clean Start, keep alive 60, Receive Maximum 1.
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 3, 0x21, 0, 1, byte(len(id) >> 8), byte(len(id))}
	body = append(body, id...)
	c.Write(append(append([]byte{0x10}, varint(len(body))...), body...))
	// SUBSCRIBE: packet id 1, no properties, filter at QoS 1.
	body = append([]byte{0, 1, 0, byte(len(filter) >> 8), byte(len(filter))}, filter...)
	body = append(body, 1)
	c.Write(append(append([]byte{0x82}, varint(len(body))...), body...))
	r := bufio.NewReader(c)
	for _, want := range []byte{0x20, 0x90} {
		if h, _, err := readPacketBody(r); err != nil || h != want {
			tb.Fatalf("%s: got packet %#x (%v), want %#x", id, h, err, want)
		}
	}
}
