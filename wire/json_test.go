package wire

import (
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// jsonCorpus is valid and invalid JSON text that tests and fuzz seeds share.
var jsonCorpus = []string{
	``, ` `, `0`, `-0`, `1`, `-1`, `01`, `-01`, `1.`, `.1`, `1.5`, `-1.5e10`, `1E+2`, `1e-2`, `1e`, `1e+`,
	`-`, `+1`, `0x1`, `1.0e400`, `-1e400`, `1e-400`, `123456789012345678901234567890`,
	`18446744073709551615`, `18446744073709551616`, `-9223372036854775808`, `-9223372036854775809`,
	`-18446744073709551616`, `-18446744073709551617`, `NaN`, `Infinity`, `nan`,
	`true`, `false`, `null`, `tru`, `nul`, `truex`, `True`, `null null`,
	`""`, `"x"`, `"\""`, `"\\"`, `"\/"`, `"\b\f\n\r\t"`, `"\u00e9"`, `"\u00E9"`, `"\ud83d\ude00"`,
	`"\ud83d"`, `"\ude00"`, `"\ud83d\u0041"`, `"\ud83dx"`, `"\ud83d\\u0041"`, `"\u12"`, `"\u12g4"`, `"\x"`,
	`"\'"`, "\"\x01\"", "\"\x7f\"", "\"\xff\"", "\"\xed\xa0\x80\"", "\"é😀\"", `"unterminated`, `"\`,
	`[]`, `[ ]`, `[1]`, `[1,]`, `[,1]`, `[1 2]`, `[1,2`, `[`, `]`, `[[]]`, `[[[1,[2]],3]]`,
	`{}`, `{ }`, `{"a":1}`, `{"a":1,}`, `{"a"}`, `{"a":}`, `{a:1}`, `{'a':1}`, `{"a" 1}`, `{"a":1 "b":2}`,
	`{"a":{"b":[1,{"c":null}]},"d":"e"}`, `{"a":1}}`, `{"a":1]`, `[1}`, `{"":""}`, `{"a":1,"a":2}`,
	" \t\r\n{\"a\" : [ 1 , 2 ] }\n ", "\f1", "\u00a01", "\ufeff1", "1\x00", `[1]x`, `{}{}`,
	`[-]`, `[1e1.5]`, `[00]`, `[-0.0e-0]`, `{"a":[1,{"b":[true,false,null]}]}`,
}

func TestCheckJSON(t *testing.T) {
	for _, tt := range []struct {
		in    string
		depth int
		err   error // nil, ErrDepth or ErrPayload
		at    string
	}{
		{`{"a":[1,{"b":2}]}`, 3, nil, ""},
		{`{"a":[1,{"b":2}]}`, 2, ErrDepth, "at byte 8"},
		{`[[],[[]]]`, 2, ErrDepth, "at byte 5"},
		{`1`, 0, nil, ""},
		{`[]`, 0, ErrDepth, "at byte 0"},
		{strings.Repeat("[", 1e6), 32, ErrDepth, "at byte 32"},
		{strings.Repeat("[", 10) + "x", 32, ErrPayload, "at byte 10"},
		{`[1,2`, 32, ErrPayload, "unexpected end at byte 4"},
		{`{"a":1}x`, 32, ErrPayload, "data after the value at byte 7"},
		{"[\"\xff\"]", 32, ErrPayload, "UTF-8 at byte 2"},
		{"\"a\x01\"", 32, ErrPayload, "control character in string at byte 2"},
		{`{"a" 1}`, 32, ErrPayload, "want ':' at byte 5"},
		{`[1 2]`, 32, ErrPayload, "want ',' or ']' at byte 3"},
		{`"\u12x4"`, 32, ErrPayload, `invalid \u escape at byte 5`},
		{`01`, 32, ErrPayload, "at byte 1"},
		{``, 32, ErrPayload, "unexpected end at byte 0"},
	} {
		err := CheckJSON(tt.in, tt.depth)
		short := tt.in[:min(len(tt.in), 30)]
		switch {
		case tt.err == nil && err != nil:
			t.Errorf("CheckJSON(%q, %d) = %v", short, tt.depth, err)
		case tt.err == nil:
		case !errors.Is(err, tt.err) || !strings.Contains(err.Error(), tt.at):
			t.Errorf("CheckJSON(%q, %d) = %v, want %v %s", short, tt.depth, err, tt.err, tt.at)
		case tt.err == ErrPayload && errors.Is(err, ErrDepth):
			t.Errorf("CheckJSON(%q, %d) = %v, not a depth error", short, tt.depth, err)
		}
	}
	for _, s := range jsonCorpus {
		checkJSONOracle(t, s)
	}
}

// checkJSONOracle compares CheckJSON with encoding/json.Valid (whose own
// depth limit is 10000) plus UTF-8 validity, and checks the depth bound.
func checkJSONOracle(t *testing.T, s string) {
	t.Helper()
	err := CheckJSON(s, 10000)
	want := json.Valid([]byte(s)) && utf8.ValidString(s)
	if (err == nil) != want {
		t.Fatalf("CheckJSON(%q) = %v, encoding/json says valid=%v", s, err, want)
	}
	if err != nil {
		if !errors.Is(err, ErrPayload) {
			t.Fatalf("CheckJSON(%q) = %v, not ErrPayload", s, err)
		}
		return
	}
	depth := bracketDepth(s)
	for _, d := range []int{0, 1, max(depth-1, 0), depth, depth + 1} {
		err := CheckJSON(s, d)
		if ok := d >= depth; (err == nil) != ok || (!ok && !errors.Is(err, ErrDepth)) {
			t.Fatalf("CheckJSON(%q, %d) = %v; depth is %d", s, d, err, depth)
		}
	}
}

// bracketDepth is the nesting depth of valid JSON.
func bracketDepth(s string) int {
	depth, most := 0, 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			i, _ = stringEnd(s, i)
			i--
		case '[', '{':
			depth++
			most = max(most, depth)
		case ']', '}':
			depth--
		}
	}
	return most
}

// FuzzCheckJSON checks CheckJSON against encoding/json.Valid, the depth
// bound, TypePlain against the gjson-based typing it replaced (and the
// tree decoder's checks of a leaf, for objects and arrays), and
// floatOverflows against strconv.ParseFloat.
func FuzzCheckJSON(f *testing.F) {
	for _, s := range jsonCorpus {
		f.Add(s)
	}
	f.Add(strings.Repeat("[", 5000) + strings.Repeat("]", 5000))
	f.Add(strings.Repeat(`{"a":`, 100) + "1" + strings.Repeat("}", 100))
	f.Add(strings.Repeat("[", 20000))
	f.Add(maxFloatHalfway)
	f.Fuzz(func(t *testing.T, s string) {
		checkJSONOracle(t, s)
		if CheckJSON(s, 32) == nil {
			want := oldPlainKind(s)
			// An object or array that a tree publish's leaf could not be
			// (a duplicate key, a number beyond float64) is a string.
			if i := skipSpace(s, 0); s[i] == '{' || s[i] == '[' {
				if p := (jsonDecoder{s: s, i: i}); p.skim() != nil {
					want = String
				}
			}
			if got := plainKind(s, 32); got != want {
				t.Fatalf("plainKind(%q) = %v, gjson typing and the tree decoder gave %v", s, got, want)
			}
		}
		if i := skipSpace(s, 0); CheckJSON(s, 0) == nil && i < len(s) && (s[i] == '-' || isDigit(s[i])) {
			num := s[i:numberEnd(s, i)]
			f, _ := strconv.ParseFloat(num, 64)
			if got := floatOverflows(num); got != math.IsInf(f, 0) {
				t.Fatalf("floatOverflows(%q) = %v, ParseFloat gives %v", num, got, f)
			}
		}
	})
}

func TestFloatOverflows(t *testing.T) {
	half := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 1024), new(big.Int).Lsh(big.NewInt(1), 970))
	if half.String() != maxFloatHalfway {
		t.Fatal("maxFloatHalfway is not 2^1024 - 2^970")
	}
	below := new(big.Int).Sub(half, big.NewInt(1)).String()
	h := maxFloatHalfway
	for _, num := range []string{
		h, "-" + h, below, h + ".0", below + ".999999999", h[:1] + "." + h[1:] + "e308", h[:1] + "." + h[1:] + "e+0308",
		"0." + h + "e309", "0.000" + h + "e312", "0.000" + below + "9999e312", h[:200] + "." + h[200:],
		"1e308", "2e308", "1.8e308", "1.7e308", "1e309", "1e-400", "0e99999999999999999999", "1e99999999999999999999",
		"1e-99999999999999999999", "0.0", "-0", "123", "1" + strings.Repeat("0", 308), "1" + strings.Repeat("0", 309),
		"0." + strings.Repeat("0", 1000) + "1e1310", "0." + strings.Repeat("0", 1000) + "1e1309", below + strings.Repeat("9", 1000),
	} {
		f, _ := strconv.ParseFloat(num, 64)
		if got := floatOverflows(num); got != math.IsInf(f, 0) {
			t.Errorf("floatOverflows(%.40q) = %v, ParseFloat gives %v", num, got, f)
		}
	}
}

func TestTypePlainDepth(t *testing.T) {
	deep := strings.Repeat("[", 33) + strings.Repeat("]", 33)
	atLimit := strings.Repeat("[", 32) + strings.Repeat("]", 32)
	huge := strings.Repeat("[", 7_000_000) + strings.Repeat("]", 7_000_000)
	d, err := NewDecoder(Limits{MaxSize: 1 << 20, MaxDepth: 40})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		in          string
		kind, dkind Kind // TypePlain, and the depth-40 Decoder's
	}{
		{atLimit, JSON, JSON},
		{deep, String, JSON},
		{huge, String, String},
		{"\xff" + deep, Bytes, Bytes},
		{"1e400", String, String},
		{"-1e400", String, String},
		{"1e-400", JSON, JSON},
		{" null ", String, String},
		{"[null]", JSON, JSON},
		{" {\"a\":null} ", Object, Object},
	} {
		v := TypePlain([]byte(tt.in))
		if v.Kind != tt.kind || v.Data != tt.in {
			t.Errorf("TypePlain(%.20q) = %v, want %v", tt.in, v.Kind, tt.kind)
		}
		if v := d.TypePlain([]byte(tt.in)); v.Kind != tt.dkind || v.Data != tt.in {
			t.Errorf("Decoder.TypePlain(%.20q) = %v, want %v", tt.in, v.Kind, tt.dkind)
		}
	}
}

// TestTypePlainAllocs checks that typing allocates only the Value's copy of
// the payload, whatever the payload.
func TestTypePlainAllocs(t *testing.T) {
	for name, in := range typePlainInputs(1 << 16) {
		payload := []byte(in)
		if n := testing.AllocsPerRun(10, func() { TypePlain(payload) }); n > 1 {
			t.Errorf("%s: %v allocations", name, n)
		}
	}
}

// typePlainInputs are payloads of about n bytes, the worst cases allowed.
func typePlainInputs(n int) map[string]string {
	nest := strings.Repeat("[", 31) + "1" + strings.Repeat("]", 31)
	return map[string]string{
		"nested-at-limit": "[" + strings.Repeat(nest+",", n/len(nest)) + "1]",
		"brackets-deeper": strings.Repeat("[", n),
		"long-string":     `"` + strings.Repeat("é", n/2) + `"`,
		"escapes":         `"` + strings.Repeat(`\u00e9\n`, n/8) + `"`,
		"numbers":         "[" + strings.Repeat("-12.5e-3,", n/9) + "1]",
		"objects":         "[" + strings.Repeat(`{"a":true},`, n/11) + "1]",
		"huge-number":     "1" + strings.Repeat("0", n),
		"text":            strings.Repeat("ON ", n/3),
		"bytes":           strings.Repeat("\xff", n),
	}
}

// TestAppendCBORJSON checks the linear converter against the gjson-based
// one it replaced, byte for byte.
func TestAppendCBORJSON(t *testing.T) {
	corpus := append([]string{
		strings.Repeat("[", 3000) + strings.Repeat("]", 3000),
		"[" + strings.Repeat("1,", 70000) + "1]",
		`{"` + strings.Repeat("k", 70000) + `":"` + strings.Repeat(`\"`, 40000) + `"}`,
	}, jsonCorpus...)
	for _, s := range corpus {
		checkConvert(t, s)
	}
	if got := appendCBORJSON(nil, "not json"); string(got) != "\xf6" {
		t.Errorf("invalid text gives %x, want null", got)
	}
}

func checkConvert(t *testing.T, s string) {
	t.Helper()
	if CheckJSON(s, 1<<20) != nil {
		return
	}
	got := appendCBORJSON(nil, s)
	if want := oldAppendCBORJSON(nil, gjsonParse(s)); string(got) != string(want) {
		t.Fatalf("appendCBORJSON(%.40q) = %.40x, old %.40x", s, got, want)
	}
}

// FuzzJSONToCBOR checks the converter against the old one on valid JSON,
// and that it never fails or writes malformed CBOR on anything else.
func FuzzJSONToCBOR(f *testing.F) {
	for _, s := range jsonCorpus {
		f.Add(s)
	}
	f.Add(strings.Repeat("[", 3000) + strings.Repeat("]", 3000))
	f.Add(`{"a":[1,-1,1.5,-0,"\u00e9\ud83d\ude00",{"b":null}],"c":18446744073709551616}`)
	f.Fuzz(func(t *testing.T, s string) {
		checkConvert(t, s)
		if err := cborWellFormed(appendCBORJSON(nil, s)); err != nil {
			t.Fatalf("appendCBORJSON(%q): %v", s, err)
		}
	})
}
