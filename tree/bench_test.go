package tree

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"

	"github.com/fxamacker/cbor/v2"
	"github.com/vmihailenco/msgpack/v5"
)

// devices stores n rows dev/dNNNNNNN/state.
func devices(b *testing.B, n int) *Tree {
	b.Helper()
	tr := New()
	for i := range n {
		tr.store.Set(fmt.Sprintf("dev/d%07d/state", i), wire.Value{Kind: wire.JSON, Data: "21.5"}, 0)
	}
	return tr
}

// BenchmarkSnapshot: the snapshot of dev/+/state over n rows.
func BenchmarkSnapshot(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		tr := devices(b, n)
		for _, c := range wire.Codecs {
			b.Run(fmt.Sprintf("rows=%d/%s", n, c), func(b *testing.B) {
				b.ReportAllocs()
				var size int
				for b.Loop() {
					size = len(tr.Snapshot("dev/+/state", c, nil))
				}
				b.SetBytes(int64(size))
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/row")
			})
		}
	}
}

// BenchmarkStoreMemory reports the heap a stored row costs beyond its topic
// and payload bytes (and the total per row), for 1M rows dev/dNNNNNNN/state.
func BenchmarkStoreMemory(b *testing.B) {
	const n = 1_000_000
	topics := make([]string, n)
	var raw int
	for i := range topics {
		topics[i] = fmt.Sprintf("dev/d%07d/state", i)
		raw += len(topics[i]) + len("21.5")
	}
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		var s Store
		for _, t := range topics {
			s.Set(t, wire.Value{Kind: wire.JSON, Data: "21.5"}, 0)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		used := float64(after.HeapAlloc - before.HeapAlloc)
		b.ReportMetric(used/n, "B/row")
		b.ReportMetric((used-float64(raw))/n, "overhead-B/row")
		runtime.KeepAlive(&s)
	}
}

// BenchmarkApply: a batch of 1,000 changed rows against tree subscriptions
// of mixed filters. subs=10k and subs=100k touch the same subscriptions
// (the extra 90k watch other branches), so equal times show that the cost
// follows the subscriptions touched, not all subscriptions.
func BenchmarkApply(b *testing.B) {
	const devs = 10_000
	for _, total := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("subs=%d", total), func(b *testing.B) {
			tr := New()
			r := rand.New(rand.NewPCG(1, 1))
			for i := range total {
				var f string
				d := r.IntN(devs)
				switch {
				case i >= 10_000:
					f = fmt.Sprintf("other/o%d/+", i) // never touched
				case i%100 == 0:
					f = "dev/+/state"
				case i%100 == 1:
					f = "dev/#"
				case i%3 == 0:
					f = fmt.Sprintf("dev/d%07d/state", d)
				case i%3 == 1:
					f = fmt.Sprintf("dev/d%07d/+", d)
				default:
					f = fmt.Sprintf("dev/d%07d/#", d)
				}
				tr.Subscribe(&Sub{Owner: fmt.Sprint("c", i), Topic: "$tree/" + f, Filter: f, Codec: wire.Codec(i % 2)})
			}
			r = rand.New(rand.NewPCG(2, 2)) // the same batch for every size
			ops := make([]Op, 100)
			for i := range ops {
				for range 10 {
					t := fmt.Sprintf("dev/d%07d/state", r.IntN(devs))
					ops[i].Rows = append(ops[i].Rows, Row{Topic: t, Value: wire.Value{Kind: wire.JSON, Data: fmt.Sprint(r.IntN(100))}, Retain: true})
				}
			}
			b.ReportAllocs()
			var deltas int
			for b.Loop() {
				deltas = len(tr.Apply(ops).Deltas)
			}
			b.ReportMetric(float64(deltas), "deltas")
		})
	}
}

// deviceTree is a 50-row device tree: 10 sensors with 5 values each.
func deviceTree() string {
	var sb strings.Builder
	sb.WriteString("{")
	for s := range 10 {
		if s > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `"sensor%d":{"value":%d.5,"unit":"°C","ok":true,"name":"sensor number %d","raw":[1,2,3]}`, s, s, s)
	}
	sb.WriteString("}")
	return sb.String()
}

// BenchmarkExplode: decode and spread a 50-row device tree into rows.
func BenchmarkExplode(b *testing.B) {
	js := []byte(deviceTree())
	var v any
	cbor.Unmarshal(mustCBOR(b, js), &v)
	cb := mustCBOR(b, js)
	ps, _ := NewParser(DefaultLimits())
	for _, c := range []struct {
		codec   wire.Codec
		payload []byte
	}{{wire.CodecJSON, js}, {wire.CodecCBOR, cb}, {wire.CodecMsgPack, inCodecB(b, wire.CodecMsgPack, js)}} {
		b.Run(c.codec.String(), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(c.payload)))
			p := wire.Publish{Op: wire.PubTree, Codec: c.codec, Topic: "dev/d1"}
			for b.Loop() {
				op, err := ps.Op(p, c.payload, true, 0)
				if err != nil || len(op.Rows) != 50 {
					b.Fatal(len(op.Rows), err)
				}
			}
		})
	}
}

// BenchmarkEncode: encode the same 50-row tree in each codec.
func BenchmarkEncode(b *testing.B) {
	ps, _ := NewParser(DefaultLimits())
	op, _ := ps.Op(wire.Publish{Op: wire.PubTree, Topic: "dev/d1"}, []byte(deviceTree()), true, 0)
	tr := New()
	tr.Apply([]Op{op})
	for _, c := range wire.Codecs {
		b.Run(c.String(), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(tr.Snapshot("dev/d1/#", c, nil))))
			for b.Loop() {
				tr.Snapshot("dev/d1/#", c, nil)
			}
		})
	}
}

func mustCBOR(b *testing.B, js []byte) []byte {
	d, _ := wire.NewDecoder(wire.DefaultLimits())
	n, err := d.Decode(wire.CodecJSON, js)
	if err != nil {
		b.Fatal(err)
	}
	e := wire.NewEncoder(wire.CodecCBOR, nil)
	tr := New()
	rows, _ := Explode("x", &n, true, 1000)
	tr.Apply([]Op{{Rows: rows}})
	_ = e
	return tr.Snapshot("x/#", wire.CodecCBOR, nil)
}

func inCodecB(b *testing.B, c wire.Codec, js []byte) []byte {
	out, ok := inCodec(c, js)
	if !ok {
		b.Fatalf("not a tree: %.80s", js)
	}
	return out
}

// codecRows fills a tree with n rows dev/dNNNNNN/<field> of mixed values,
// as a house of sensors has them: numbers, strings, booleans and small
// objects, 5 fields a device.
func codecRows(b *testing.B, n int) *Tree {
	tr := New()
	values := []string{"21.5", `"ON"`, "true", "1234", `{"x":0.3127,"y":0.329}`}
	fields := []string{"temperature", "state", "online", "count", "color"}
	for i := range n {
		f := i % len(fields)
		tr.store.Set(fmt.Sprintf("dev/d%06d/%s", i/len(fields), fields[f]), wire.TypePlain([]byte(values[f])), 0)
	}
	return tr
}

// BenchmarkCodecs: a 100,000-row snapshot (dev/#: 20,000 devices of 5
// fields) encoded and decoded in each codec, side by side. bytes/op is the
// size of the snapshot; decode is wire's Decoder (what a tree publish of
// that snapshot costs the broker), and, for a reference, the libraries a
// Go client decodes with into Go values (encoding/json, fxamacker/cbor,
// vmihailenco/msgpack).
func BenchmarkCodecs(b *testing.B) {
	const n = 100_000
	tr := codecRows(b, n)
	d, _ := wire.NewDecoder(wire.Limits{MaxSize: 64 << 20, MaxDepth: 32})
	for _, c := range wire.Codecs {
		snap := tr.Snapshot("dev/#", c, nil)
		b.Run("encode/"+c.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tr.Snapshot("dev/#", c, nil)
			}
			b.ReportMetric(float64(len(snap)), "bytes/op")
		})
		b.Run("decode/"+c.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := d.Decode(c, snap); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(snap)), "bytes/op")
		})
		b.Run("lib-decode/"+c.String(), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var v any
				var err error
				switch c {
				case wire.CodecCBOR:
					err = cbor.Unmarshal(snap, &v)
				case wire.CodecMsgPack:
					err = msgpack.Unmarshal(snap, &v)
				default:
					err = json.Unmarshal(snap, &v)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(snap)), "bytes/op")
		})
	}
}

// BenchmarkStormCore is the boot storm's work in the tree package alone,
// without sockets: 2,000 devices each publish their 50-row tree
// ($tree/boot/dNNNNN, as BenchmarkBootStorm in package broker), decoded
// and exploded by a Parser and applied one publish a batch to a fresh
// Tree. Less noisy than the whole broker's storm: it guides the cuts of
// h-storm3 (issue 15), BenchmarkBootStorm measures them.
func BenchmarkStormCore(b *testing.B) {
	const devices, rows = 2_000, 50
	payloads := make([][]byte, devices)
	pubs := make([]wire.Publish, devices)
	for d := range devices {
		payloads[d] = stormTree(d, rows)
		pubs[d] = wire.Publish{Op: wire.PubTree, Codec: wire.CodecJSON, Topic: fmt.Sprintf("boot/d%05d", d)}
	}
	ps, err := NewParser(DefaultLimits())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		tr := New()
		for d := range devices {
			op, err := ps.Op(pubs[d], payloads[d], true, 1)
			if err != nil {
				b.Fatal(err)
			}
			if res := tr.Apply([]Op{op}); res.Applied[0].Err != nil || len(res.Applied[0].Rows) != rows {
				b.Fatalf("device %d: %v", d, res.Applied[0].Err)
			}
		}
		if tr.Store().Len() != devices*rows {
			b.Fatalf("%d rows, want %d", tr.Store().Len(), devices*rows)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*devices*rows), "ns/row")
}

// stormTree is the payload of device dev in BenchmarkBootStorm (package
// broker): {"r00":dev,"r01":dev+1,…}, rows members.
func stormTree(dev, rows int) []byte {
	p := []byte{'{'}
	for i := range rows {
		if i > 0 {
			p = append(p, ',')
		}
		p = fmt.Appendf(p, `"r%02d":%d`, i, dev+i)
	}
	return append(p, '}')
}

// BenchmarkApplyNoLocal: one group of 1,000 subscribers, with No Local
// (Sub.Local, each its own client) or without, and a batch of rows other
// clients published (one, or one a row): every subscriber shares one
// encoding either way.
func BenchmarkApplyNoLocal(b *testing.B) {
	const subs = 1000
	for _, rows := range []int{10, 1000} {
		for _, c := range []struct{ local, many bool }{{false, false}, {true, false}, {true, true}} {
			local, many := c.local, c.many
			b.Run(fmt.Sprintf("rows=%d/local=%v/publishers=%v", rows, local, map[bool]string{false: "1", true: "rows"}[many]), func(b *testing.B) {
				tr := New()
				for i := range subs {
					s := &Sub{Owner: fmt.Sprint("c", i), Topic: "$sync/dev/+", Filter: "dev/+"}
					if local {
						s.Local = fmt.Sprint("client", i)
					}
					if _, err := tr.Subscribe(s); err != nil {
						b.Fatal(err)
					}
				}
				var ops []Op // one publisher's rows; with many, one each
				for i := range rows {
					if i == 0 || many {
						ops = append(ops, Op{Origin: fmt.Sprint("writer", i)})
					}
					op := &ops[len(ops)-1]
					op.Rows = append(op.Rows, Row{Topic: fmt.Sprintf("dev/d%05d", i), Value: wire.Value{Kind: wire.JSON, Data: fmt.Sprint(i)}, Retain: true})
				}
				b.ReportAllocs()
				for b.Loop() {
					res := tr.Apply(ops)
					tr.Release(&res)
				}
			})
		}
	}
}
