package wire

import (
	"fmt"
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

// benchBytes is the large inputs' size: benchSize, or 256 KiB with -short
// (scripts/test.sh runs every benchmark once with -short, so that none
// rots: at 16 MiB this package's took a minute of CI).
func benchBytes() int {
	if testing.Short() {
		return 256 << 10
	}
	return benchSize
}

// sizeName names n bytes in an input's name: "16MiB", "256KiB".
func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func BenchmarkTypePlain(b *testing.B) {
	inputs := typePlainInputs(benchBytes())
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
	n, size := benchBytes(), sizeName(benchBytes())
	deepest := "deep-" + size
	inputs := map[string]string{
		"row":             `{"state":"ON","brightness":55,"color":{"x":0.3127,"y":0.329},"name":"lamp \u00e9"}`,
		"deep-60KB":       strings.Repeat("[", 30000) + strings.Repeat("]", 30000),
		deepest:           strings.Repeat("[", n/2) + strings.Repeat("]", n/2),
		"numbers-" + size: "[" + strings.Repeat("-12.5e-3,123456,", n/16) + "1]",
		"objects-" + size: "[" + strings.Repeat(`{"a":true,"b":"x"},`, n/19) + "1]",
		"escapes-" + size: `"` + strings.Repeat(`\u00e9\n\ud83d\ude00`, n/20) + `"`,
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
		if name == deepest {
			continue // recursion of 8M levels (at 16 MiB): fatal error: stack overflow
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
	lim := Limits{MaxSize: 2 * benchBytes(), MaxDepth: 32}
	d, err := NewDecoder(lim)
	if err != nil {
		b.Fatal(err)
	}
	old, err := newOldDecoder(lim)
	if err != nil {
		b.Fatal(err)
	}
	for _, in := range memoryInputs(benchBytes()) {
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
