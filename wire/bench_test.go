package wire

import (
	"sort"
	"strings"
	"testing"
)

// The benchmarks run the code of this package ("new") and, where it can
// take the input, the gjson/fxamacker code it replaced ("old", in
// oracle_test.go) side by side. MB/s gives the time per byte; B/op and
// allocs/op what is allocated. The decoders also report, from one decode
// with the garbage collector off, alloc-B/B (bytes allocated per input
// byte: an upper bound of the peak heap) and kept-B/B (what the decoded
// tree keeps alive).

const benchSize = 16 << 20

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func BenchmarkTypePlain(b *testing.B) {
	inputs := typePlainInputs(benchSize)
	inputs["small-json"] = `{"state":"ON","brightness":55,"color":{"x":0.3127,"y":0.329}}`
	inputs["small-text"] = "ON"
	for _, name := range sortedKeys(inputs) {
		payload := []byte(inputs[name])
		b.Run("new/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				TypePlain(payload)
			}
		})
		if name == "brackets-deeper" {
			continue // gjson.Valid: fatal error: stack overflow
		}
		b.Run("old/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				oldTypePlain(payload)
			}
		})
	}
}

func BenchmarkAppendCBORJSON(b *testing.B) {
	inputs := map[string]string{
		"row":           `{"state":"ON","brightness":55,"color":{"x":0.3127,"y":0.329},"name":"lamp \u00e9"}`,
		"deep-60KB":     strings.Repeat("[", 30000) + strings.Repeat("]", 30000),
		"deep-16MiB":    strings.Repeat("[", benchSize/2) + strings.Repeat("]", benchSize/2),
		"numbers-16MiB": "[" + strings.Repeat("-12.5e-3,123456,", benchSize/16) + "1]",
		"objects-16MiB": "[" + strings.Repeat(`{"a":true,"b":"x"},`, benchSize/19) + "1]",
		"escapes-16MiB": `"` + strings.Repeat(`\u00e9\n\ud83d\ude00`, benchSize/20) + `"`,
	}
	for _, name := range sortedKeys(inputs) {
		text := inputs[name]
		out := appendCBORJSON(nil, text)
		b.Run("new/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			b.ReportAllocs()
			for b.Loop() {
				out = appendCBORJSON(out[:0], text)
			}
		})
		if name == "deep-16MiB" {
			continue // recursion of 8M levels: fatal error: stack overflow
		}
		b.Run("old/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			b.ReportAllocs()
			for b.Loop() {
				out = oldAppendCBORJSON(out[:0], gjsonParse(text))
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	lim := Limits{MaxSize: 2 * benchSize, MaxDepth: 32}
	d, err := NewDecoder(lim)
	if err != nil {
		b.Fatal(err)
	}
	old, err := newOldDecoder(lim)
	if err != nil {
		b.Fatal(err)
	}
	for _, in := range memoryInputs(benchSize) {
		for _, impl := range []struct {
			name   string
			decode func(Codec, []byte) (Node, error)
		}{{"new", d.Decode}, {"old", old.Decode}} {
			b.Run(impl.name+"/"+in.name, func(b *testing.B) {
				allocated, retained, err := decodeCost(func() (Node, error) { return impl.decode(in.c, in.in) })
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(len(in.in)))
				b.ReportAllocs()
				for b.Loop() {
					impl.decode(in.c, in.in)
				}
				b.ReportMetric(float64(allocated)/float64(len(in.in)), "alloc-B/B")
				b.ReportMetric(float64(retained)/float64(len(in.in)), "kept-B/B")
			})
		}
	}
}
