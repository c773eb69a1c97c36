package wire

import (
	"strings"
	"testing"
)

// checkFlatJSON decodes payload by FlatJSON and by Decode: when FlatJSON
// answers, Decode must give an object of the same members with the same
// values. It reports whether FlatJSON answered.
func checkFlatJSON(t testing.TB, d *Decoder, payload []byte) bool {
	t.Helper()
	var buf [FlatMax]FlatMember
	ms, ok := d.FlatJSON(payload, buf[:0])
	root, err := d.Decode(CodecJSON, payload)
	if !ok {
		if len(ms) != 0 {
			t.Fatalf("%q: refused with %d members", payload, len(ms))
		}
		return false
	}
	if err != nil {
		t.Fatalf("%q: FlatJSON took it, Decode: %v", payload, err)
	}
	if !root.Obj || len(root.Kids) != len(ms) {
		t.Fatalf("%q: FlatJSON %d members, Decode %+v", payload, len(ms), root)
	}
	for i, m := range ms {
		k := &root.Kids[i]
		var v Value
		if m.Kind != None {
			v = Value{Kind: m.Kind, Data: string(payload[m.ValStart:m.ValEnd])}
		}
		if key := string(payload[m.KeyStart:m.KeyEnd]); k.Key != key || k.Null != (m.Kind == None) || k.Obj || k.AsValue() != v {
			t.Fatalf("%q member %d: FlatJSON %q %+v, Decode %+v", payload, i, key, v, *k)
		}
	}
	return true
}

func flatDecoders(t testing.TB) []*Decoder {
	t.Helper()
	var out []*Decoder
	for _, lim := range []Limits{DefaultLimits(), {MaxSize: 16, MaxDepth: 1}, {MaxSize: 1 << 20, MaxDepth: 1, MaxNodes: 3}} {
		d, err := NewDecoder(lim)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

func TestFlatJSON(t *testing.T) {
	long := strings.Repeat("9", flatIntegerMax-1)
	cases := []struct {
		payload string
		flat    bool // under the default limits
	}{
		{`{"t":1765000000123456789}`, true},
		{`{"t":-0,"u":0,"v":-12}`, true},
		{`{"t":` + long + `}`, true},
		{`{"t":-` + long + `}`, true},                            // as long with its sign: the general checks, which take it
		{`{"t":1` + long + `}`, true},                            // past flatInteger: the general checks, which take it
		{`{"t":1` + long + strings.Repeat("0", 20) + `}`, false}, // beyond float64
		{`{"t":1.5,"u":2e3,"v":-3E-2,"w":4.0e+1}`, true},
		{`{"t":"on","u":true,"v":false,"w":null}`, true},
		{" {\t\"t\"\r:\n1 } ", true},
		{`{"t":00}`, false},
		{`{"t":-}`, false},
		{`{"t":1.}`, false},
		{`{"t":1e}`, false},
		{`{"t":.5}`, false},
		{`{"t":+1}`, false},
		{`{"t":1,"t":1}`, false},
		{`{"t":nul}`, false},
		{`{"t":"a\\b"}`, false},
		{"{\"t\":\"a\x01\"}", false},
		{`{"t":"ü"}`, false},
		{`{"t":1} {}`, false},
		{`{}`, false},
		{``, false},
	}
	for _, c := range cases {
		for i, d := range flatDecoders(t) {
			if got := checkFlatJSON(t, d, []byte(c.payload)); i == 0 && got != c.flat {
				t.Errorf("%q: FlatJSON %v, want %v", c.payload, got, c.flat)
			}
		}
	}
	// The limits: 17 bytes, 4 nodes.
	ds := flatDecoders(t)
	for i, p := range []string{`{"t":1,"u":23456}`, `{"a":1,"b":2,"c":3}`} {
		if !checkFlatJSON(t, ds[0], []byte(p)) || checkFlatJSON(t, ds[i+1], []byte(p)) {
			t.Errorf("%q: limit %+v not kept", p, ds[i+1].lim)
		}
	}
}

// TestDigits8: digits8 ends where digits does, whatever byte ends the
// run (those next to '0' and '9' included) and wherever it falls in a word.
func TestDigits8(t *testing.T) {
	for n := 0; n <= 34; n++ {
		for _, end := range []string{"", "/", ":", ".", " ", "}", "\x00", "\xff", "e"} {
			for lead := 0; lead < 3; lead++ {
				s := strings.Repeat("x", lead) + strings.Repeat("0123456789", 4)[:n] + end + "99999999"
				if got, want := digits8(s, lead), digits(s, lead); got != want {
					t.Fatalf("%q from %d: digits8 %d, digits %d", s, lead, got, want)
				}
			}
		}
	}
}

// FuzzFlatJSON is the differential check of FlatJSON against Decode.
func FuzzFlatJSON(f *testing.F) {
	for _, s := range []string{
		`{"t":1}`, `{"t":-0.5e-3,"u":"v","w":true,"x":false,"y":null}`, `{"t":1,"t":2}`,
		`{"t":1e400}`, `{"t":123456789012345678901234567890}`, `{"t":01}`, `{"t":{}}`, `{"a":1,"b":2,"c":3}`,
		// RV8's edges: signs, zeros, exponents, huge and tiny numbers,
		// whitespace everywhere, escapes, bytes outside ASCII, NUL, the
		// keys a topic level cannot be, more members than FlatMax, nesting.
		`{"t":-0}`, `{"t":-0.0e-0}`, `{"t":1e308}`, `{"t":1e309}`, `{"t":-1e400}`, `{"t":1e-400}`,
		`{"t":0e0}`, `{"t":00.5}`, `{"t":-01}`, `{"t":1E+2}`, `{"t":1e+}`, `{"t":--1}`, `{"t":0x10}`,
		`{"t":179769313486231570000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000}`,
		" \t\r\n{ \t\r\n\"t\" \t\r\n: \t\r\n1 \t\r\n, \"u\" : \"v\" \t\r\n} \t\r\n", "{\"t\":1}\f", "\v{\"t\":1}",
		`{"t":"\u0041"}`, `{"\u0074":1}`, `{"t":"\ud800"}`, "{\"t\":\"\xff\"}", "{\"\xc3\xa9\":1}", "{\"t\":\"\x00\"}", "{\"t\x00\":1}",
		`{"a/b":1}`, `{"+":1}`, `{"#":1}`, `{"$set":1}`, `{"$":1}`, `{"":1}`, `{"/":1}`, `{" ":1}`, `{"t":1,"T":2}`,
		`{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16}`,
		`{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"k":11,"l":12,"m":13,"n":14,"o":15,"p":16,"q":17}`,
		`{"t":{"u":{"v":{"w":1}}}}`, `{"t":[[[[1]]]]}`, `{"t":true,"f":false,"n":null}`, `{"t":True}`, `{"t":nulll}`,
		`{"t":1}}`, `{{"t":1}`, `{"t":1,,"u":2}`, `{"t"::1}`, `{"t":1 "u":2}`,
	} {
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"t":"` + strings.Repeat("x", flatMaxBytes) + `"}`))   // past flatMaxBytes
	f.Add([]byte(`{"t":"` + strings.Repeat("x", flatMaxBytes-9) + `"}`)) // at it
	ds := flatDecoders(f)
	f.Fuzz(func(t *testing.T, payload []byte) {
		for _, d := range ds {
			checkFlatJSON(t, d, payload)
		}
	})
}
