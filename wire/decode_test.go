package wire

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

func mustOldDecoder(t testing.TB) *oldDecoder {
	t.Helper()
	d, err := newOldDecoder(Limits{MaxSize: 1 << 20, MaxDepth: 8})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// checkJSONDecode compares Decode(CodecJSON) with the gjson-based decoder
// it replaced: the same trees, the same errors (by path).
func checkJSONDecode(t *testing.T, d *Decoder, old *oldDecoder, in []byte) {
	t.Helper()
	got, err := d.Decode(CodecJSON, in)
	want, oldErr := old.Decode(CodecJSON, in)
	if (err == nil) != (oldErr == nil) {
		t.Fatalf("Decode(%.60q) = %v, old decoder %v", in, err, oldErr)
	}
	if err != nil {
		if !errors.Is(err, ErrPayload) {
			t.Fatalf("Decode(%.60q) = %v, not ErrPayload", in, err)
		}
		var pe, oldPE *PathError
		if errors.As(err, &pe) && errors.As(oldErr, &oldPE) && pe.Path != oldPE.Path {
			t.Fatalf("Decode(%.60q) = %v, old decoder %v", in, err, oldErr)
		}
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Decode(%.60q) = %+v, old decoder %+v", in, got, want)
	}
}

func TestDecodeJSONAsBefore(t *testing.T) {
	d, old := mustDecoder(t), mustOldDecoder(t)
	for _, s := range append([]string{
		`{"a":{"b":1,"\u0062":2}}`, `{"a":[{"x":1},{"x":2,"x":3}]}`, `{"a":[1,[{"x":-1e999}]]}`,
		`{"a~/b":{"c":1e400}}`, `{"\ud83d\u0041":1,"\ufffd":2}`, `{"a":"\ud83dx","b":"\\u"}`,
		` {"a" : { } , "b":[ ] } `, `[{"a":1,"a":1}]`, `{"k":[[[[[[[1]]]]]]]}`,
	}, jsonCorpus...) {
		checkJSONDecode(t, d, old, []byte(s))
	}
}

// FuzzDecodeJSON checks the JSON decoder against the one it replaced, and
// that whatever it accepts re-encodes to JSON and CBOR that decode again.
func FuzzDecodeJSON(f *testing.F) {
	for _, s := range append([]string{`{"a":1}`, `{"a":{"/":1,"b":[1,{"c":null}]}}`, `"x"`, `[`,
		`{"a":"\u00e9\ud83d\ude00"}`, `-0`, `1e400`, `{"a":[{"b":1,"b":2}]}`,
		strings.Repeat("[", 100000), strings.Repeat(`{"a":`, 10000)}, jsonCorpus...) {
		f.Add([]byte(s))
	}
	d, old := mustDecoder(f), mustOldDecoder(f)
	var sc Scratch // one for every input, as a Parser's pool reuses it
	f.Fuzz(func(t *testing.T, b []byte) {
		checkJSONDecode(t, d, old, b)
		n, err := d.Decode(CodecJSON, b)
		if err == nil {
			checkReencode(t, d, &n)
		}
		checkScratch(t, d, &sc, b, n, err)
	})
}

// checkScratch checks that DecodeWith on a used Scratch gives what Decode
// gave (n, err), and that Release leaves nothing of the tree in it.
func checkScratch(t *testing.T, d *Decoder, sc *Scratch, in []byte, n Node, err error) {
	t.Helper()
	got, gotErr := d.DecodeWith(CodecJSON, in, sc)
	if (err == nil) != (gotErr == nil) || (err != nil && err.Error() != gotErr.Error()) {
		t.Fatalf("DecodeWith(%.60q) = %v, Decode %v", in, gotErr, err)
	}
	if err == nil && !reflect.DeepEqual(got, n) {
		t.Fatalf("DecodeWith(%.60q) = %+v, Decode %+v", in, got, n)
	}
	sc.Release()
	for i, k := range sc.nodes[:cap(sc.nodes)] {
		if !reflect.DeepEqual(k, Node{}) {
			t.Fatalf("after Release, node %d of the scratch is %+v", i, k)
		}
	}
}

// TestDecodeWithScratch decodes the corpus twice through one Scratch: the
// trees are Decode's, whatever the scratch held before.
func TestDecodeWithScratch(t *testing.T) {
	d := mustDecoder(t)
	var sc Scratch
	wide := func(n int, last string) string { // n keys, then last (a duplicate key or not)
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, `"k%d":%d,`, i, i)
		}
		return "{" + b.String() + last + "}"
	}
	in := append([]string{`{"a":{"b":1,"c":{"d":[1],"e":{}}},"f":2}`, `{"a":1}`,
		`{"x":{"y":{"z":1,"w":2},"v":3},"u":{"t":4}}`, `{"a":{"a":{"a":1}}}`, `{"k":"\u0041"}`,
		// Objects past keyIndex's scan, whose tables the next ones reuse.
		wide(40, `"k7":0`), wide(40, `"x":0`), wide(20, `"k19":[{"a":1,"a":2}]`), wide(100, `"k99":0`),
		wide(30, `"o":`+wide(30, `"k3":0`)), wide(30, `"o":`+wide(30, `"k30":0`))}, jsonCorpus...)
	for range 2 {
		for _, s := range in {
			n, err := d.Decode(CodecJSON, []byte(s))
			checkScratch(t, d, &sc, []byte(s), n, err)
		}
	}
	if cap(sc.nodes) == 0 {
		t.Fatal("the scratch kept no nodes")
	}
}

// cborOracle is fxamacker/cbor as the old decoder used it, except that a
// null map key, which it read as "", is refused.
func cborOracle(old *oldDecoder, in []byte) (Node, error) {
	n, err := old.Decode(CodecCBOR, in)
	if err != nil {
		return n, err
	}
	dm, _ := cbor.DecOptions{MaxNestedLevels: 65535, DefaultMapType: reflect.TypeOf(map[any]any(nil))}.DecMode()
	var v any
	if err := dm.Unmarshal(in, &v); err == nil && hasNilKey(v) {
		return Node{}, errors.New("null key")
	}
	return n, nil
}

func hasNilKey(v any) bool {
	switch x := v.(type) {
	case map[any]any:
		for k, e := range x {
			if k == nil || hasNilKey(e) {
				return true
			}
		}
	case []any:
		return slices.ContainsFunc(x, hasNilKey)
	}
	return false
}

// canonical makes trees from the two CBOR decoders comparable: members
// sorted by key (the old decoder sorted them), array text with its objects'
// members sorted, no empty Kids.
func canonical(t *testing.T, n Node) Node {
	t.Helper()
	if len(n.Kids) == 0 {
		n.Kids = nil
	}
	kids := make([]Node, len(n.Kids))
	for i := range n.Kids {
		kids[i] = canonical(t, n.Kids[i])
	}
	slices.SortFunc(kids, func(a, b Node) int { return strings.Compare(a.Key, b.Key) })
	if len(kids) > 0 {
		n.Kids = kids
	}
	if n.Value.Kind == JSON && strings.HasPrefix(n.Value.Data, "[") {
		dec := json.NewDecoder(strings.NewReader(n.Value.Data))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("array text %q: %v", n.Value.Data, err)
		}
		b, _ := json.Marshal(v)
		n.Value.Data = string(b)
	}
	return n
}

func checkCBORDecode(t *testing.T, d *Decoder, old *oldDecoder, in []byte) {
	t.Helper()
	got, err := d.Decode(CodecCBOR, in)
	want, oldErr := cborOracle(old, in)
	if (err == nil) != (oldErr == nil) {
		t.Fatalf("Decode(%x) = %v, fxamacker %v", in, err, oldErr)
	}
	if err != nil {
		if !errors.Is(err, ErrPayload) {
			t.Fatalf("Decode(%x) = %v, not ErrPayload", in, err)
		}
		return
	}
	if g, w := canonical(t, got), canonical(t, want); !reflect.DeepEqual(g, w) {
		t.Fatalf("Decode(%x) = %+v, fxamacker %+v", in, g, w)
	}
}

// cborCorpus is well-formed and malformed CBOR, in hex, that tests and
// fuzz seeds share.
var cborCorpus = []string{
	"a2656973206f6e01656272696768741837", "a1616101", "a0", "80", "f6", "f5", "f4", "00", "17", "1818", "20", "3817",
	"1bffffffffffffffff", "3b7fffffffffffffff", "3b8000000000000000", "3bffffffffffffffff", "1801", "190001",
	"f93c00", "f98000", "f90001", "f97bff", "f97c00", "f9fc00", "f97e00", "fa3fc00000", "fa7f800000", "fa7fc00000",
	"fb3ff0000000000000", "fb7ff0000000000000", "fb7ff8000000000000", "fb4415af1d78b58c40", "fb0000000000000001",
	"f0", "f7", "f820", "f818", "f8ff", "fc", "fd", "fe", "ff", "1c", "3f", "df", "c1", "c0", "c2410a", "c34101", "d9d9f7f6",
	"60", "6161", "61ff", "62c3a9", "63eda080", "40", "4101", "7f616161ff", "7f62c3ff61a9ff", "7f61c361a9ff",
	"7fff", "5fff", "5f4101ff", "5f6101ff", "7f7f6161ffff", "7f4161ff", "7f", "5f41",
	"9f01ff", "9f", "9fff", "bf616101ff", "bf6161ff", "bfff", "bf", "a1f601", "a1f701", "a14161 01", "a1f401", "a10101",
	"a1fa3f80000001", "a1a0 01", "a180 01", "a2616101616102", "a2616101616201", "a3616101616201616101",
	"81a2616101616102", "a1616181a16162f6", "a1616181f0", "81f7", "81f0", "8201", "820102", "83414101f6",
	"9a00000001", "9b000000010000000001", "9affffffff000000", "9bffffffffffffffff00", "bbffffffffffffffff00",
	"baffffffff616100", "5bffffffffffffffff00", "7affffffff00", "a16161 9affffffff00",
	"8181818181818181818101", "818181818181818101", "a16161a16162a16163a16164a16165a16166a16167a1616801",
	"a16161a16162a16163a16164a16165a16166a16167a16168a1616901", "a1616181818181818181818101",
	"82a161610181a16162a1616300", "a2617a0161610262", "a16100", "0000", "a1616101ff", "",
	"a1781861616161616161616161616161616161616161616161616101", "a17f6161ff01", "a17f6161",
	"821b0102030405060708", "821b010203040506070800", "82f9", "a2616101",
}

func TestDecodeCBORAsBefore(t *testing.T) {
	d, old := mustDecoder(t), mustOldDecoder(t)
	for _, h := range cborCorpus {
		in, err := hex.DecodeString(strings.ReplaceAll(h, " ", ""))
		if err != nil {
			t.Fatal(h, err)
		}
		checkCBORDecode(t, d, old, in)
	}
}

func TestDecodeCBOR(t *testing.T) {
	d := mustDecoder(t)
	for _, tt := range []struct {
		in   string // hex
		want string // the tree as JSON, or the error's text
	}{
		{"a2617a01616102", `{"z":1,"a":2}`}, // payload order
		{"bf617a01616102ff", `{"z":1,"a":2}`},
		{"a161619f01bf6162f6ffff", `{"a":[1,{"b":null}]}`},
		{"7f61616162ff", `"ab"`},
		{"5f41014102ff", `"AQI="`},
		{"3bffffffffffffffff", `-18446744073709551616`},
		{"f93e00", `1.5`},
		{"fa47c35000", `100000.0`},
		{"fb7e37e43c8800759c", `1e+300`},
		{"a2616101616102", "at /a: wire: invalid tree payload: CBOR: duplicate key"},
		{"a1616181a2616201616202", "at /a/0/b: wire: invalid tree payload: CBOR: duplicate key"},
		{"a1f601", "at (root): wire: invalid tree payload: CBOR: map key is not a text string at byte 1"},
		{"a1616181f97c00", "at /a/0: wire: invalid tree payload: CBOR: +Inf has no JSON form at byte 7"},
		{"c2410a", "tags are not supported"},
		{"81f7", "at /0: wire: invalid tree payload: CBOR: simple value 23 is not supported at byte 2"},
		{"0000", "1 bytes after the item at byte 1"},
		{"9affffffff000000", "declared length 4294967295 does not fit in the 3 bytes left"},
		{"a1616183a0", "at /a: wire: invalid tree payload: CBOR: declared length 3 does not fit in the 1 bytes left at byte 4"},
		{"a16161829fa0", "at /a/0: wire: invalid tree payload: CBOR: unexpected end at byte 5"},
		{"a1616181818181818181818101", "at /a/0/0/0/0/0/0/0: wire: invalid tree payload: nested too deep: deeper than 8"},
	} {
		in, _ := hex.DecodeString(tt.in)
		n, err := d.Decode(CodecCBOR, in)
		got := ""
		if err != nil {
			got = err.Error()
			if !errors.Is(err, ErrPayload) {
				t.Errorf("%s: %v is not ErrPayload", tt.in, err)
			}
		} else {
			got = string(encodeNode(CodecJSON, &n))
		}
		if !strings.Contains(got, tt.want) {
			t.Errorf("Decode(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// TestDecodeCBORDeclaredLengths checks that a length declared far beyond
// the payload fails before anything is allocated for it.
func TestDecodeCBORDeclaredLengths(t *testing.T) {
	d := mustDecoder(t)
	for _, h := range []string{
		"9affffffff000000", "9bffffffffffffffff000000", "bbffffffffffffffff000000", "5bffffffffffffffff00",
		"7bffffffffffffffff00", "a161619affffffff00", "9a0000100000" + strings.Repeat("9a00001000", 8),
		"ba0007a120" + strings.Repeat("6161ba0007a120", 7), // maps that each claim what is left
	} {
		in, _ := hex.DecodeString(h)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc
		_, err := d.Decode(CodecCBOR, in)
		runtime.ReadMemStats(&ms)
		if err == nil || ms.TotalAlloc-before > 16<<10 {
			t.Errorf("%s: %v after %d bytes allocated", h, err, ms.TotalAlloc-before)
		}
	}
}

// FuzzDecodeCBOR checks the CBOR decoder against fxamacker/cbor (accept or
// refuse alike, the same trees), and that whatever it accepts re-encodes.
func FuzzDecodeCBOR(f *testing.F) {
	for _, h := range cborCorpus {
		in, _ := hex.DecodeString(strings.ReplaceAll(h, " ", ""))
		f.Add(in)
	}
	em, _ := cbor.CoreDetEncOptions().EncMode()
	for _, v := range []any{map[string]any{"a": 1}, map[string]any{"a": map[string]any{"/": 1.5, "b": []any{[]byte{1}, nil}}}, "x", -3} {
		b, _ := em.Marshal(v)
		f.Add(b)
	}
	f.Add(append(bytes.Repeat([]byte{0x81}, 100000), 0))               // deep
	f.Add(bytes.Repeat([]byte{0x9f}, 100000))                          // deep, indefinite, unterminated
	f.Add(bytes.Repeat([]byte{0xa1, 0x61, 'a'}, 30000))                // deep maps, truncated
	f.Add(append([]byte{0x9b, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, 1)) // 2^64-2^32 items, 1 byte
	d, old := mustDecoder(f), mustOldDecoder(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		checkCBORDecode(t, d, old, b)
		if n, err := d.Decode(CodecCBOR, b); err == nil {
			checkReencode(t, d, &n)
		}
	})
}

func TestNodeLimit(t *testing.T) {
	d, err := NewDecoder(Limits{MaxSize: 1 << 20, MaxDepth: 8, MaxNodes: 3})
	if err != nil {
		t.Fatal(err)
	}
	em, _ := cbor.CoreDetEncOptions().EncMode()
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{`{"a":1,"b":2}`, true},
		{`{"a":{"b":2}}`, true},
		{`{"a":[1,2,3,{"x":1,"y":2}]}`, true},
		{`{"a":1,"b":2,"c":3}`, false},
		{`{"a":{"b":{"c":1}}}`, false},
	} {
		var v any
		json.Unmarshal([]byte(tt.in), &v)
		c, _ := em.Marshal(v)
		for codec, in := range map[Codec][]byte{CodecJSON: []byte(tt.in), CodecCBOR: c} {
			_, err := d.Decode(codec, in)
			if (err == nil) != tt.ok || (err != nil && (!errors.Is(err, ErrPayload) || !strings.Contains(err.Error(), "more than 3 nodes"))) {
				t.Errorf("%v %s: %v", codec, tt.in, err)
			}
		}
	}
	if _, err := NewDecoder(Limits{MaxSize: 1, MaxDepth: 1, MaxNodes: -1}); err == nil {
		t.Error("negative MaxNodes accepted")
	}
}

// memoryInputs are payloads of about n bytes in both codecs: the shapes
// whose decoding costs most memory per byte.
func memoryInputs(n int) []struct {
	name string
	c    Codec
	in   []byte
} {
	var out []struct {
		name string
		c    Codec
		in   []byte
	}
	add := func(name string, c Codec, in []byte) {
		out = append(out, struct {
			name string
			c    Codec
			in   []byte
		}{name, c, in})
	}
	// An array of zeros.
	add("cbor-zeros", CodecCBOR, append(appendHead(nil, 4, uint64(n-5)), make([]byte, n-5)...))
	add("json-zeros", CodecJSON, []byte("["+strings.Repeat("0,", n/2-1)+"0]"))
	// A map of small nested maps: {"k0":{"a":{"b":0}},...}.
	var keys []string
	for size := 0; size < n; {
		k := "k" + strconv.Itoa(len(keys))
		keys = append(keys, k)
		size += len(k) + 8
	}
	c := appendHead(nil, 5, uint64(len(keys)))
	var j bytes.Buffer
	j.WriteByte('{')
	for i, k := range keys {
		c = append(appendHead(c, 3, uint64(len(k))), k...)
		c = append(c, 0xa1, 0x61, 'a', 0xa1, 0x61, 'b', 0x00)
		if i > 0 {
			j.WriteByte(',')
		}
		j.WriteString(`"` + k + `":{"a":{"b":0}}`)
	}
	j.WriteByte('}')
	add("cbor-nested-maps", CodecCBOR, c)
	add("json-nested-maps", CodecJSON, bytes.Clone(j.Bytes()))
	// The same members, flat: {"k0":0,...}.
	c = appendHead(nil, 5, uint64(len(keys)))
	j.Reset()
	j.WriteByte('{')
	for i, k := range keys {
		c = append(append(appendHead(c, 3, uint64(len(k))), k...), 0)
		if i > 0 {
			j.WriteByte(',')
		}
		j.WriteString(`"` + k + `":0`)
	}
	j.WriteByte('}')
	add("cbor-flat-map", CodecCBOR, c)
	add("json-flat-map", CodecJSON, j.Bytes())
	// The most Nodes per byte: chains of one-member maps, 3 bytes a Node,
	// {"k0":{"a":{"a":...0}}}, 30 deep.
	c = appendHead(nil, 5, uint64(n/100))
	for i := range n / 100 {
		k := strconv.Itoa(i)
		c = append(appendHead(c, 3, uint64(len(k))), k...)
		for range 30 {
			c = append(c, 0xa1, 0x61, 'a')
		}
		c = append(c, 0)
	}
	add("cbor-chains", CodecCBOR, c)
	// The longest JSON text per CBOR byte: an array of false.
	add("cbor-falses", CodecCBOR, append(appendHead(nil, 4, uint64(n-5)), bytes.Repeat([]byte{0xf4}, n-5)...))
	return out
}

// decodeCost decodes in with the garbage collector off and returns the
// bytes allocated (so an upper bound of the peak heap it needed) and the
// bytes the result keeps alive.
func decodeCost(decode func() (Node, error)) (allocated, retained uint64, err error) {
	runtime.GC()
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	total, live := ms.TotalAlloc, ms.HeapAlloc
	n, err := decode()
	runtime.ReadMemStats(&ms)
	allocated = ms.TotalAlloc - total
	runtime.GC()
	runtime.ReadMemStats(&ms)
	retained = ms.HeapAlloc - min(live, ms.HeapAlloc)
	runtime.KeepAlive(n)
	return allocated, retained, err
}

// TestDecodeMemory bounds what decoding costs (no timing): everything
// allocated during a decode is at most 16 bytes per payload byte plus 96
// per Node (a Node is 72 bytes, and CBOR can spend 3 bytes on one).
func TestDecodeMemory(t *testing.T) {
	d, err := NewDecoder(Limits{MaxSize: 16 << 20, MaxDepth: 32})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range memoryInputs(1 << 20) {
		var n Node
		allocated, retained, err := decodeCost(func() (Node, error) {
			var err error
			n, err = d.Decode(in.c, in.in)
			return n, err
		})
		if err != nil {
			t.Fatalf("%s: %v", in.name, err)
		}
		size, nodes := uint64(len(in.in)), countNodes(&n)
		t.Logf("%-17s %7d bytes %6d nodes: allocated %4.1f B/B, retained %4.1f B/B", in.name, size, nodes,
			float64(allocated)/float64(size), float64(retained)/float64(size))
		if allocated > 16*size+96*nodes {
			t.Errorf("%s: %d bytes allocated for %d bytes, %d nodes", in.name, allocated, size, nodes)
		}
	}
}

func countNodes(n *Node) uint64 {
	c := uint64(1)
	for i := range n.Kids {
		c += countNodes(&n.Kids[i])
	}
	return c
}

// cborWellFormed checks CBOR with fxamacker/cbor, at any depth.
func cborWellFormed(b []byte) error {
	dm, err := cbor.DecOptions{MaxNestedLevels: 65535, MaxArrayElements: 1 << 30, MaxMapPairs: 1 << 30}.DecMode()
	if err != nil {
		return err
	}
	return dm.Wellformed(b)
}
