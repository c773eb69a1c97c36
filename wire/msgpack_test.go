package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// msgpackCorpus is well-formed and malformed MessagePack, in hex, that
// tests and fuzz seeds share.
var msgpackCorpus = []string{
	"82a56973206f6e01aa6272696768746e65737337", "81a16101", "80", "90", "c0", "c2", "c3", "00", "7f", "ff", "e0",
	"cc80", "ccff", "cd0100", "ce00010000", "cf0000000100000000", "cfffffffffffffffff",
	"d080", "d1ff7f", "d2ff000000", "d38000000000000000", "d3ffffffffffffffff",
	"ca3fc00000", "ca7f800000", "ca7fc00000", "caff800000", "cb3ff0000000000000", "cb7ff8000000000000", "cb7ff0000000000000",
	"cb4415af1d78b58c40", "cb0000000000000001", "c1", "c4", "c400", "c40101", "c50001ff", "c600000001ff",
	"a0", "a161", "a1ff", "a2c3a9", "a3eda080", "d90161", "da000161", "db0000000161", "d9ff",
	"c70101ff", "d4ff00", "d6ffffffffff", "d7ff0000000000000000", "c8000100ff", "c9000000000100",
	"81c001", "8101c0", "81c40161c0", "81c2c0", "81a16190", "82a16101a16102", "82a16101a16201", "83a16101a16201a16101",
	"91a2a16101a16102", "81a16191a1a162c0", "81a16191c1", "91d4ff00", "9201", "920102", "93c4010101c0",
	"dc0001", "dd00000001", "dd0000000100", "ddffffffff000000", "dfffffffff", "dfffffffffa16100",
	"dbffffffff00", "c6ffffffff00", "81a161ddffffffff00",
	"9191919191919191919101", "919191919191919101", "81a16181a16281a16381a16481a16581a16681a16781a16801",
	"81a16181a16281a16381a16481a16581a16681a16781a16881a16901", "81a161919191919191919101",
	"92a16101" + "", "0000", "81a16101c0", "",
	"81d9186161616161616161616161616161616161616161616161616101",
	"9230cf0102030405060708", "92cb", "82a16101",
}

// mpWellFormed reports whether b is one MessagePack item and nothing more
// whose every declared length fits in what is left: independently of the
// decoder, and iteratively, so that the library is only given input whose
// lengths are in proportion to its size.
func mpWellFormed(b []byte) bool {
	need := 1 // items still to read
	i := 0
	arg := func(n int) (uint64, bool) {
		if len(b)-i < n {
			return 0, false
		}
		var v uint64
		for _, x := range b[i : i+n] {
			v = v<<8 | uint64(x)
		}
		i += n
		return v, true
	}
	for ; need > 0; need-- {
		if i >= len(b) {
			return false
		}
		c := b[i]
		i++
		var skip uint64
		var ok = true
		switch {
		case c < 0x80 || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c < 0x90:
			need += 2 * int(c&0xf)
		case c < 0xa0:
			need += int(c & 0xf)
		case c < 0xc0:
			skip = uint64(c & 0x1f)
		case c == 0xc1:
			return false
		case c == 0xc4 || c == 0xd9:
			skip, ok = arg(1)
		case c == 0xc5 || c == 0xda:
			skip, ok = arg(2)
		case c == 0xc6 || c == 0xdb:
			skip, ok = arg(4)
		case c >= 0xc7 && c <= 0xc9:
			skip, ok = arg(1 << (c - 0xc7))
			skip++ // the type
		case c == 0xca, c == 0xce, c == 0xd2:
			skip = 4
		case c == 0xcb, c == 0xcf, c == 0xd3:
			skip = 8
		case c == 0xcc, c == 0xd0:
			skip = 1
		case c == 0xcd, c == 0xd1:
			skip = 2
		case c >= 0xd4 && c <= 0xd8:
			skip = 1 + 1<<(c-0xd4)
		case c == 0xdc || c == 0xde:
			var n uint64
			n, ok = arg(2)
			need += int(n)
			if c == 0xde { // pairs count twice
				need += int(n)
			}
		case c == 0xdd || c == 0xdf:
			var n uint64
			n, ok = arg(4)
			if ok && n > uint64(len(b)) {
				return false
			}
			need += int(n)
			if c == 0xdf {
				need += int(n)
			}
		}
		if !ok || skip > uint64(len(b)-i) || need-1 > len(b)-i {
			return false
		}
		i += int(skip)
	}
	return i == len(b)
}

// mpOracleJSON decodes b with vmihailenco/msgpack and writes it as the
// JSON that Decode's tree re-encodes to: floats with a fraction or an
// exponent, binary as base64, keys sorted.
func mpOracleJSON(b []byte) (string, error) {
	d := msgpack.NewDecoder(bytes.NewReader(b))
	v, err := d.DecodeInterface()
	if err != nil {
		return "", err
	}
	if d.Buffered().(*bytes.Reader).Len() > 0 {
		return "", errors.New("bytes after the item")
	}
	out, err := json.Marshal(mpConvert(v))
	return string(out), err
}

func mpConvert(v any) any {
	num := func(s string) any { return json.Number(s) }
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = mpConvert(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = mpConvert(e)
		}
		return x
	case int8, int16, int32, int64:
		return num(strconv.FormatInt(reflect.ValueOf(x).Int(), 10))
	case uint8, uint16, uint32, uint64:
		return num(strconv.FormatUint(reflect.ValueOf(x).Uint(), 10))
	case float32:
		return num(floatText(float64(x)))
	case float64:
		return num(floatText(x))
	}
	return v // string, []byte (base64), bool, nil
}

func floatText(f float64) string {
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if !strings.ContainsAny(s, ".e") {
		s += ".0"
	}
	return s
}

// treeJSON is a decoded tree as sorted JSON.
func treeJSON(t *testing.T, n *Node) string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(encodeNode(CodecJSON, n)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("re-encoded JSON: %v", err)
	}
	out, _ := json.Marshal(v)
	return string(out)
}

// mpRefusals are the errors of Decode for MessagePack that the library
// accepts: what a tree cannot hold, and the depth limit.
var mpRefusals = []string{"duplicate key", "UTF-8", "has no JSON form", "extension type", "not a string", "deeper than"}

// checkMsgPackDecode compares Decode(CodecMsgPack) with vmihailenco/msgpack:
// what both accept decodes to the same tree; what the library (or the
// well-formedness check) refuses, Decode refuses; and Decode refuses what
// the library accepts only for a reason of mpRefusals.
func checkMsgPackDecode(t *testing.T, d *Decoder, in []byte) {
	t.Helper()
	got, err := d.Decode(CodecMsgPack, in)
	if err != nil && !errors.Is(err, ErrPayload) {
		t.Fatalf("Decode(%x) = %v, not ErrPayload", in, err)
	}
	if !mpWellFormed(in) {
		if err == nil {
			t.Fatalf("Decode(%x) accepted what is not well-formed", in)
		}
		return
	}
	want, libErr := mpOracleJSON(in)
	switch {
	case err == nil && libErr != nil:
		t.Fatalf("Decode(%x) accepted, msgpack: %v", in, libErr)
	case err != nil && libErr == nil:
		for _, r := range mpRefusals {
			if strings.Contains(err.Error(), r) {
				return
			}
		}
		t.Fatalf("Decode(%x) = %v, msgpack accepts %s", in, err, want)
	case err == nil:
		if g := treeJSON(t, &got); g != want {
			t.Fatalf("Decode(%x) = %s, msgpack %s", in, g, want)
		}
	}
}

func TestDecodeMsgPackAsLibrary(t *testing.T) {
	d := mustDecoder(t)
	for _, h := range msgpackCorpus {
		in, err := hex.DecodeString(h)
		if err != nil {
			t.Fatal(h, err)
		}
		checkMsgPackDecode(t, d, in)
	}
}

func TestMsgPackRoundTrip(t *testing.T) {
	d := mustDecoder(t)
	for _, in := range []any{
		map[string]any{"is_on": 1, "brightness": 55.5, "name": "lamp", "raw": []byte{0, 0xff}, "neg": -7},
		map[string]any{"a": map[string]any{"/": true, "b": []any{1, "x", 2.5, nil, []byte{1}}}},
		map[string]any{"f": float32(1.5), "big": uint64(math.MaxUint64), "small": int64(math.MinInt64), "z": 0.1},
		map[string]any{"long": strings.Repeat("é", 40000), "many": make([]any, 70000)},
		"bare", []byte("bytes"), int8(-3), nil,
	} {
		raw, err := msgpack.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		n, err := d.Decode(CodecMsgPack, raw)
		if err != nil {
			t.Fatalf("%.80v: %v", in, err)
		}
		want, err := mpOracleJSON(raw)
		if err != nil {
			t.Fatal(err)
		}
		// MessagePack → tree → MessagePack, and through the other codecs.
		for _, c := range Codecs {
			again, err := d.Decode(c, encodeNode(c, &n))
			if err != nil {
				t.Fatalf("%.80v via %s: %v", in, c, err)
			}
			back, err := mpOracleJSON(encodeNode(CodecMsgPack, &again))
			if err != nil {
				t.Fatal(err)
			}
			if c != CodecJSON && back != want { // JSON turns binary into base64 strings
				t.Errorf("%.80v via %s: %.200s, want %.200s", in, c, back, want)
			}
		}
	}
}

// TestMsgPackShortest checks the heads the encoder writes against the
// library's, which uses the shortest formats too.
func TestMsgPackShortest(t *testing.T) {
	for _, n := range []int{0, 15, 16, 31, 32, 255, 256, 65535, 65536} {
		s := strings.Repeat("x", n)
		want, _ := msgpack.Marshal(s)
		if got := appendMsgPackValue(nil, Value{Kind: String, Data: s}); !bytes.Equal(got, want) {
			t.Errorf("string of %d: %x…, want %x…", n, got[:min(6, len(got))], want[:min(6, len(want))])
		}
		want, _ = msgpack.Marshal([]byte(s))
		if got := appendMsgPackValue(nil, Value{Kind: Bytes, Data: s}); !bytes.Equal(got, want) {
			t.Errorf("binary of %d: %x…, want %x…", n, got[:min(6, len(got))], want[:min(6, len(want))])
		}
	}
	for _, tt := range []struct {
		json string
		hex  string
	}{
		{"0", "00"}, {"127", "7f"}, {"128", "cc80"}, {"256", "cd0100"}, {"65536", "ce00010000"},
		{"4294967296", "cf0000000100000000"}, {"18446744073709551615", "cfffffffffffffffff"},
		{"-1", "ff"}, {"-32", "e0"}, {"-33", "d0df"}, {"-129", "d1ff7f"}, {"-32769", "d2ffff7fff"},
		{"-2147483649", "d3ffffffff7fffffff"}, {"-9223372036854775808", "d38000000000000000"},
		{"-9223372036854775809", "cadf000000"}, {"-0", "00"}, {"1.5", "ca3fc00000"},
		{"0.1", "cb3fb999999999999a"}, {"1e400", "ca7f800000"}, {`"a\nb"`, "a3610a62"},
		{`[true,false,null]`, "93c3c2c0"}, {`{"a":[]}`, "81a16190"},
	} {
		if got := hex.EncodeToString(appendJSONIn(nil, CodecMsgPack, tt.json)); got != tt.hex {
			t.Errorf("%s: %s, want %s", tt.json, got, tt.hex)
		}
	}
	for _, n := range []int64{0, 1, -1, 127, 128, -32, -33, math.MinInt64, math.MaxInt64, 1 << 40, -(1 << 40)} {
		want, _ := msgpack.Marshal(n) // the library writes int64 in 9 bytes
		if got := AppendInt(nil, CodecMsgPack, n); !mpSame(got, want) || len(got) > len(appendJSONIn(nil, CodecMsgPack, strconv.FormatInt(n, 10))) {
			t.Errorf("AppendInt(%d) = %x, want %x", n, got, want)
		}
	}
}

// mpSame reports whether two encodings decode to the same value.
func mpSame(a, b []byte) bool {
	x, err1 := mpOracleJSON(a)
	y, err2 := mpOracleJSON(b)
	return err1 == nil && err2 == nil && x == y
}

func TestDecodeMsgPack(t *testing.T) {
	d := mustDecoder(t)
	for _, tt := range []struct {
		in   string // hex
		want string // the tree as JSON, or the error's text
	}{
		{"82a17a01a16102", `{"z":1,"a":2}`}, // payload order
		{"81a16192" + "01" + "81a162c0", `{"a":[1,{"b":null}]}`},
		{"c40201ff", `"Af8="`},
		{"d38000000000000000", `-9223372036854775808`},
		{"cfffffffffffffffff", `18446744073709551615`},
		{"ca3fc00000", `1.5`},
		{"ca47c35000", `100000.0`},
		{"cb7e37e43c8800759c", `1e+300`},
		{"82a16101a16102", "at /a: wire: invalid tree payload: MessagePack: duplicate key"},
		{"81a1619182a16201a16202", "at /a/0/b: wire: invalid tree payload: MessagePack: duplicate key"},
		{"8101c0", "at (root): wire: invalid tree payload: MessagePack: map key is an integer, not a string at byte 1"},
		{"81c40161c0", "map key is binary, not a string"},
		{"81c0c0", "map key is nil, not a string"},
		{"81a16191ca7f800000", "at /a/0: wire: invalid tree payload: MessagePack: +Inf has no JSON form at byte 9"},
		{"d6ff00000000", "extension type (format 0xd6) is not supported at byte 0"},
		{"81a161c70101ff", "at /a: wire: invalid tree payload: MessagePack: extension type (format 0xc7)"},
		{"c1", "format 0xc1 is never used"},
		{"a1ff", "string is not valid UTF-8"},
		{"0000", "1 bytes after the item at byte 1"},
		{"ddffffffff000000", "declared length 4294967295 does not fit in the 3 bytes left"},
		{"81a16193" + "90", "at /a: wire: invalid tree payload: MessagePack: declared length 3 does not fit in the 1 bytes left at byte 4"},
		{"81a1619191", "at /a/0: wire: invalid tree payload: MessagePack: declared length 1 does not fit in the 0 bytes left at byte 5"},
		{"81a161919191919191919101", "at /a/0/0/0/0/0/0/0: wire: invalid tree payload: nested too deep: deeper than 8"},
		{"", "unexpected end at byte 0"},
	} {
		in, _ := hex.DecodeString(tt.in)
		n, err := d.Decode(CodecMsgPack, in)
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

// TestDecodeMsgPackDeclaredLengths checks that a length declared far
// beyond the payload fails before anything is allocated for it.
func TestDecodeMsgPackDeclaredLengths(t *testing.T) {
	d := mustDecoder(t)
	for _, h := range []string{
		"ddffffffff000000", "dfffffffff000000", "dbffffffff00", "c6ffffffff00", "81a161ddffffffff00",
		"dd00100000" + strings.Repeat("dd00001000", 8),
		"df0007a120" + strings.Repeat("a161df0007a120", 7), // maps that each claim what is left
	} {
		in, _ := hex.DecodeString(h)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc
		_, err := d.Decode(CodecMsgPack, in)
		runtime.ReadMemStats(&ms)
		if err == nil || ms.TotalAlloc-before > 16<<10 {
			t.Errorf("%s: %v after %d bytes allocated", h, err, ms.TotalAlloc-before)
		}
	}
}

// FuzzDecodeMsgPack checks the MessagePack decoder against
// vmihailenco/msgpack (see checkMsgPackDecode), and that whatever it
// accepts re-encodes in every codec to what decodes again, and round-trips
// through MessagePack unchanged.
func FuzzDecodeMsgPack(f *testing.F) {
	for _, h := range msgpackCorpus {
		in, _ := hex.DecodeString(h)
		f.Add(in)
	}
	for _, v := range []any{map[string]any{"a": 1}, map[string]any{"a": map[string]any{"/": 1.5, "b": []any{[]byte{1}, nil}}}, "x", -3} {
		b, _ := msgpack.Marshal(v)
		f.Add(b)
	}
	f.Add(append(bytes.Repeat([]byte{0x91}, 100000), 0))                 // deep
	f.Add(bytes.Repeat([]byte{0x81, 0xa1, 'a'}, 30000))                  // deep maps, truncated
	f.Add(binary.BigEndian.AppendUint32([]byte{0xdd}, math.MaxUint32))   // 2^32-1 items, no byte
	f.Add(binary.BigEndian.AppendUint32([]byte{0xdf}, math.MaxUint32))   // 2^32-1 pairs
	f.Add(append(binary.BigEndian.AppendUint32([]byte{0xc6}, 1<<30), 1)) // 1 GiB of binary, 1 byte
	d := mustDecoder(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		checkMsgPackDecode(t, d, b)
		n, err := d.Decode(CodecMsgPack, b)
		if err != nil {
			return
		}
		checkReencode(t, d, &n)
		again, err := d.Decode(CodecMsgPack, encodeNode(CodecMsgPack, &n))
		if err != nil {
			t.Fatalf("re-encoded MessagePack rejected: %v", err)
		}
		if g, w := treeJSON(t, &again), treeJSON(t, &n); g != w {
			t.Fatalf("MessagePack round trip %s → %s", w, g)
		}
	})
}

func TestMsgPackEncoderLargeMapAndRewind(t *testing.T) {
	for _, n := range []int{0, 1, 15, 16, 255, 65535, 65536, 70000} {
		e := NewEncoder(CodecMsgPack, nil)
		e.BeginObject()
		e.Key("inner")
		e.BeginObject()
		for i := range n {
			e.Key(strings.Repeat("k", i%3) + string(rune('a'+i%26)) + strconv.Itoa(i))
			e.Value(Value{Kind: JSON, Data: "1"})
			m := e.Mark()
			e.Key("dropped")
			e.BeginObject()
			e.Key("x")
			e.Null()
			e.EndObject()
			e.Rewind(m)
		}
		e.EndObject()
		e.EndObject()
		var v map[string]any
		if err := msgpack.Unmarshal(e.Bytes(), &v); err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if got := len(v["inner"].(map[string]any)); got != n {
			t.Errorf("n=%d: decoded %d members", n, got)
		}
	}
}

// TestMsgPackLibraryHostile records why the codec is this package's own and
// not vmihailenco/msgpack's decoder: the library sizes a map by its
// declared length, so a 5-byte payload costs what that length says. The
// declared length here is kept small enough to run.
func TestMsgPackLibraryHostile(t *testing.T) {
	in := binary.BigEndian.AppendUint32([]byte{0xdf}, 1<<20) // a map of 2^20 pairs, no byte of them
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	var v any
	libErr := msgpack.Unmarshal(in, &v)
	runtime.ReadMemStats(&ms)
	lib := ms.TotalAlloc - before
	runtime.ReadMemStats(&ms)
	before = ms.TotalAlloc
	_, err := mustDecoder(t).Decode(CodecMsgPack, in)
	runtime.ReadMemStats(&ms)
	own := ms.TotalAlloc - before
	t.Logf("5-byte map of 2^20 declared pairs: msgpack allocated %d bytes (%v); Decode %d bytes (%v)", lib, libErr, own, err)
	if err == nil || own > 4<<10 {
		t.Errorf("Decode: %v after %d bytes", err, own)
	}
}

// TestSplitMsgPack cuts a MessagePack tree as TestSplit does the others.
func TestSplitMsgPack(t *testing.T) {
	d := mustDecoder(t)
	var sb strings.Builder
	sb.WriteString(`{"big":{`)
	for i := range 300 {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `"dev%03d":{"state":"%s","n":%d}`, i, strings.Repeat("x", 20), i)
	}
	sb.WriteString(`},"small":1}`)
	n, _ := d.Decode(CodecJSON, []byte(sb.String()))
	tree := encodeNode(CodecMsgPack, &n)
	parts, err := Split(CodecMsgPack, tree, 700)
	if err != nil {
		t.Fatal(err)
	}
	merged := map[string]any{}
	for _, p := range parts {
		if len(p) > 700 {
			t.Fatalf("part of %d bytes", len(p))
		}
		var m map[string]any
		if err := msgpack.Unmarshal(p, &m); err != nil {
			t.Fatal(err)
		}
		deepMerge(merged, m)
	}
	var whole map[string]any
	msgpack.Unmarshal(tree, &whole)
	if len(parts) < 2 || !reflect.DeepEqual(merged, whole) {
		t.Errorf("%d parts merge to a different tree", len(parts))
	}
	keys := make([]string, 0)
	for k := range merged["big"].(map[string]any) {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) != 300 {
		t.Errorf("%d devices after merging", len(keys))
	}
}

// TestDecodeMsgPackMemory bounds what decoding MessagePack costs, as
// TestDecodeMemory does for the others: the same shapes, re-encoded.
func TestDecodeMsgPackMemory(t *testing.T) {
	d, err := NewDecoder(Limits{MaxSize: 16 << 20, MaxDepth: 32})
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range memoryInputs(1 << 20) {
		if in.c != CodecCBOR {
			continue
		}
		src, err := d.Decode(in.c, in.in)
		if err != nil {
			t.Fatal(err)
		}
		mp := encodeNode(CodecMsgPack, &src)
		var n Node
		allocated, retained, err := decodeCost(func() (Node, error) {
			var err error
			n, err = d.Decode(CodecMsgPack, mp)
			return n, err
		})
		if err != nil {
			t.Fatalf("%s: %v", in.name, err)
		}
		size, nodes := uint64(len(mp)), countNodes(&n)
		t.Logf("msgpack-%-12s %7d bytes %6d nodes: allocated %4.1f B/B, retained %4.1f B/B", in.name[5:], size, nodes,
			float64(allocated)/float64(size), float64(retained)/float64(size))
		if allocated > 16*size+96*nodes {
			t.Errorf("%s: %d bytes allocated for %d bytes, %d nodes", in.name, allocated, size, nodes)
		}
	}
}
