package wire

import (
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

func TestTypePlain(t *testing.T) {
	for _, tt := range []struct {
		in   string
		kind Kind
	}{
		{"ON", String}, {"", String}, {"21.5", JSON}, {"true", JSON}, {`"x"`, JSON}, {"[1]", JSON},
		{`{"state":"ON"}`, Object}, {" {} ", Object}, {"null", String}, {"\xff", Bytes}, {"1 2", String},
		// SPEC §1: text no tree can hold as a value is a string.
		{`{"a":1,"a":2}`, String}, {`[{"x":{"k":1,"k":2}}]`, String}, {`{"x":1e400}`, String}, {`[1,-1e999]`, String},
		{`{"a":{"k":1},"b":{"k":2}}`, Object}, {`{"\u0061":1,"a":2}`, String}, {`[1.5e300]`, JSON},
	} {
		if v := TypePlain([]byte(tt.in)); v.Kind != tt.kind || v.Data != tt.in {
			t.Errorf("TypePlain(%q) = %v %q, want %v", tt.in, v.Kind, v.Data, tt.kind)
		}
	}
}

func mustDecoder(t testing.TB) *Decoder {
	t.Helper()
	d, err := NewDecoder(Limits{MaxSize: 1 << 20, MaxDepth: 8})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// encodeNode re-encodes a decoded node.
func encodeNode(c Codec, n *Node) []byte {
	e := NewEncoder(c, nil)
	e.node(n)
	return e.Bytes()
}

func TestJSONRoundTrip(t *testing.T) {
	d := mustDecoder(t)
	for _, in := range []string{
		`{"is_on":1,"brightness":55}`,
		`{"a":{"/":1,"b":[1,"x",{"y":null}]},"s":"he said \"hi\"\n","u":"é€😀","n":-0.5e-3,"t":true,"f":false,"z":null}`,
		`{}`, `"bare"`, `12345678901234567890`, `{"":{"":1}}`,
	} {
		n, err := d.Decode(CodecJSON, []byte(in))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		out := encodeNode(CodecJSON, &n)
		var a, b any
		json.Unmarshal([]byte(in), &a)
		if err := json.Unmarshal(out, &b); err != nil || !reflect.DeepEqual(a, b) {
			t.Errorf("round trip %s → %s (%v)", in, out, err)
		}
		// JSON → CBOR or MessagePack → JSON keeps every value.
		for _, codec := range []Codec{CodecCBOR, CodecMsgPack} {
			cn, err := d.Decode(codec, encodeNode(codec, &n))
			if err != nil {
				t.Fatalf("%s via %s: %v", in, codec, err)
			}
			var c any
			if err := json.Unmarshal(encodeNode(CodecJSON, &cn), &c); err != nil || !reflect.DeepEqual(a, c) {
				t.Errorf("JSON→%s→JSON %s → %v", codec, in, c)
			}
		}
	}
}

func TestCBORRoundTrip(t *testing.T) {
	d := mustDecoder(t)
	em, _ := cbor.CoreDetEncOptions().EncMode()
	dm, _ := cbor.DecOptions{DefaultMapType: reflect.TypeOf(map[string]any(nil))}.DecMode()
	for _, in := range []any{
		map[string]any{"is_on": uint64(1), "brightness": 55.5, "name": "lamp", "raw": []byte{0, 0xff}, "neg": int64(-7)},
		map[string]any{"a": map[string]any{"/": true, "b": []any{uint64(1), "x", 2.5, nil}}},
		map[string]any{"f": 1.0, "big": uint64(18446744073709551615), "small": int64(-9223372036854775808)},
		"bare", []byte("bytes"),
	} {
		raw, _ := em.Marshal(in)
		n, err := d.Decode(CodecCBOR, raw)
		if err != nil {
			t.Fatalf("%v: %v", in, err)
		}
		var got any
		if err := dm.Unmarshal(encodeNode(CodecCBOR, &n), &got); err != nil {
			t.Fatal(err)
		}
		var want any
		dm.Unmarshal(raw, &want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("CBOR round trip %#v → %#v", want, got)
		}
	}
}

// A byte string inside an array leaf is stored as JSON text, so it becomes
// a base64 string (the documented caveat).
func TestCBORBytesInArray(t *testing.T) {
	d := mustDecoder(t)
	n, err := d.Decode(CodecCBOR, []byte{0x82, 0x41, 0x01, 0x01}) // [h'01', 1]
	if err != nil {
		t.Fatal(err)
	}
	if v := n.AsValue(); v.Kind != JSON || v.Data != `["AQ==",1]` {
		t.Errorf("got %v %s", v.Kind, v.Data)
	}
}

func TestDecodeErrors(t *testing.T) {
	d := mustDecoder(t)
	em, _ := cbor.CoreDetEncOptions().EncMode()
	mk := func(v any) string { b, _ := em.Marshal(v); return string(b) }
	for _, tt := range []struct {
		c    Codec
		in   string
		want string
	}{
		{CodecJSON, `{"a":`, "not valid JSON"},
		{CodecJSON, `{"a":1}x`, "not valid JSON"},
		{CodecJSON, "{\"a\":\"\xff\"}", "UTF-8"},
		{CodecJSON, `[[[[[[[[[1]]]]]]]]]`, "deeper than 8"},
		{CodecJSON, strings.Repeat("[", 100000), "deeper than 8"},
		{CodecJSON, `{"a":{"b":1,"b":2}}`, "at /a/b: "},
		{CodecJSON, `{"a":[1],"b":1e400}`, "at /b: "},
		{CodecJSON, `{"a":[1,[{"x":-1e999}]]}`, "at /a/1/0/x: "},
		{CodecJSON, strings.Repeat(" ", 1<<20+1), "limit"},
		{CodecCBOR, "\xa1\x01\x02", "CBOR"},           // integer key
		{CodecCBOR, "\xa2\x61a\x01\x61a\x02", "CBOR"}, // duplicate key
		{CodecCBOR, "\xc1\x01", "CBOR"},               // tag
		{CodecCBOR, "\xf9\x7e\x00", "CBOR"},           // NaN
		{CodecCBOR, "\xf7", "CBOR"},                   // undefined
		{CodecCBOR, "\x61\xff", "CBOR"},               // invalid UTF-8 text
		{CodecCBOR, "\x01\x02", "CBOR"},               // trailing data
		{CodecCBOR, "\xbf", "CBOR"},                   // truncated
		{CodecCBOR, mk(map[string]any{"a": map[string]any{"b": []any{[]any{[]any{[]any{[]any{[]any{[]any{1}}}}}}}}}), "deeper"},
	} {
		_, err := d.Decode(tt.c, []byte(tt.in))
		if err == nil || !errors.Is(err, ErrPayload) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Decode(%s, %q) = %v, want ErrPayload containing %q", tt.c, tt.in, err, tt.want)
		}
	}
}

func TestEncoderLargeMapAndRewind(t *testing.T) {
	dm, _ := cbor.DecOptions{DefaultMapType: reflect.TypeOf(map[string]any(nil))}.DecMode()
	for _, n := range []int{0, 1, 23, 24, 255, 256, 70000} {
		e := NewEncoder(CodecCBOR, nil)
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
		if err := dm.Unmarshal(e.Bytes(), &v); err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if got := len(v["inner"].(map[string]any)); got != n {
			t.Errorf("n=%d: decoded %d members", n, got)
		}
	}
}

func TestJSONStringEscaping(t *testing.T) {
	for _, s := range []string{"plain", "q\"b\\", "\x00\x1f\n\t", "é😀", "bad\xffutf8", "\u2028"} {
		b := appendJSONString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q → %s: %v", s, b, err)
		}
		if want := strings.ToValidUTF8(s, "\ufffd"); got != want {
			t.Errorf("%q → %s → %q", s, b, got)
		}
	}
}

func checkReencode(t *testing.T, d *Decoder, n *Node) {
	t.Helper()
	j := encodeNode(CodecJSON, n)
	if !json.Valid(j) {
		t.Fatalf("re-encoded JSON invalid: %q", j)
	}
	if _, err := d.Decode(CodecJSON, j); err != nil {
		t.Fatalf("re-encoded JSON %q rejected: %v", j, err)
	}
	c := encodeNode(CodecCBOR, n)
	if _, err := d.Decode(CodecCBOR, c); err != nil {
		t.Fatalf("re-encoded CBOR %x rejected: %v", c, err)
	}
	m := encodeNode(CodecMsgPack, n)
	if _, err := d.Decode(CodecMsgPack, m); err != nil {
		t.Fatalf("re-encoded MessagePack %x rejected: %v", m, err)
	}
	v := n.AsValue()
	if n.Obj && !json.Valid([]byte(v.Data)) {
		t.Fatalf("object value not JSON: %q", v.Data)
	}
}
