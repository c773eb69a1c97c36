package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// deepMerge merges b into a, as a client merges snapshot parts.
func deepMerge(a, b map[string]any) {
	for k, v := range b {
		if bm, ok := v.(map[string]any); ok {
			if am, ok := a[k].(map[string]any); ok {
				deepMerge(am, bm)
				continue
			}
		}
		a[k] = v
	}
}

func TestSplit(t *testing.T) {
	var sb strings.Builder
	sb.WriteString(`{"small":1,"big":{`)
	for i := range 200 {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `"dev%03d":{"state":"%s","n":%d}`, i, strings.Repeat("x", 20), i)
	}
	sb.WriteString(`},"tail":[1,2,3]}`)
	js := sb.String()
	d := mustDecoder(t)
	n, _ := d.Decode(CodecJSON, []byte(js))
	for _, c := range []Codec{CodecJSON, CodecCBOR} {
		tree := encodeNode(c, &n)
		for _, max := range []int{len(tree), 4000, 500, 120} {
			parts, err := Split(c, tree, max)
			if err != nil {
				t.Fatalf("%s max %d: %v", c, max, err)
			}
			if max >= len(tree) && len(parts) != 1 {
				t.Errorf("%s: a tree that fits was split", c)
			}
			merged := map[string]any{}
			for _, p := range parts {
				if len(p) > max {
					t.Fatalf("%s max %d: part of %d bytes", c, max, len(p))
				}
				pn, err := d.Decode(c, p)
				if err != nil {
					t.Fatalf("%s: part invalid: %v", c, err)
				}
				var m map[string]any
				json.Unmarshal(encodeNode(CodecJSON, &pn), &m)
				deepMerge(merged, m)
			}
			var want map[string]any
			json.Unmarshal([]byte(js), &want)
			if !reflect.DeepEqual(merged, want) {
				t.Errorf("%s max %d: merged %d parts differ from the tree", c, max, len(parts))
			}
		}
	}
	_, err := Split(CodecJSON, []byte(`{"a":"`+strings.Repeat("y", 300)+`"}`), 100)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "/a") {
		t.Errorf("unsplittable value: %v", err)
	}
}

// TestSplitAlone: a member over the splitter's loose bound (keys count
// 2×len+16 a level) that fits a part of its own, measured, is a part of
// its own; one byte less, it cannot be split.
func TestSplitAlone(t *testing.T) {
	for _, tc := range []struct {
		tree, alone string // alone: the largest member as a part of its own
	}{
		{`{"a":1,"c":{"x":[1,2,3]},"b":"bb"}`, `{"c":{"x":[1,2,3]}}`},
		{`{"a":1,"big":"` + strings.Repeat("B", 120) + `","b":2}`, `{"big":"` + strings.Repeat("B", 120) + `"}`},
	} {
		max := len(tc.alone)
		parts, err := Split(CodecJSON, []byte(tc.tree), max)
		if err != nil {
			t.Fatalf("%s max %d: %v", tc.tree, max, err)
		}
		merged := map[string]any{}
		for _, p := range parts {
			if len(p) > max {
				t.Fatalf("max %d: part %s", max, p)
			}
			var m map[string]any
			if err := json.Unmarshal(p, &m); err != nil {
				t.Fatalf("part %s: %v", p, err)
			}
			deepMerge(merged, m)
		}
		var want map[string]any
		json.Unmarshal([]byte(tc.tree), &want)
		if !reflect.DeepEqual(merged, want) {
			t.Errorf("max %d: parts %q merge to %v", max, parts, merged)
		}
		if _, err := Split(CodecJSON, []byte(tc.tree), max-1); !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s max %d: %v, want ErrTooLarge", tc.tree, max-1, err)
		}
	}
}

// TestSplitSkip (JSON, CBOR, MessagePack): SplitSkip leaves out a value that alone cannot fit a
// part, naming it by its JSON Pointer; the parts merge to the tree
// without it. A tree of nothing but such values is one empty part.
// SplitDrop (a resume delta) writes null in its place, unless the null
// with its path fits no part either.
func TestSplitSkip(t *testing.T) {
	big := `"` + strings.Repeat("B", 300) + `"`
	long := strings.Repeat("k", 60) // a key whose null, with the key's bound, fits no part
	for _, tc := range []struct {
		tree, want, drop string
		left             []string
	}{
		{`{"a":1,"big":` + big + `,"d":{"x":` + big + `,"y":2},"z":"zz"}`, `{"a":1,"d":{"y":2},"z":"zz"}`,
			`{"a":1,"big":null,"d":{"x":null,"y":2},"z":"zz"}`, []string{"/big", "/d/x"}},
		{`{"a~b":` + big + `}`, `{}`, `{"a~b":null}`, []string{"/a~0b"}},
		{`{"` + long + `":` + big + `,"a":1}`, `{"a":1}`, `{"a":1}`, []string{"/" + long}},
		{`{"a":1,"b":2}`, `{"a":1,"b":2}`, `{"a":1,"b":2}`, nil},
	} {
		for _, c := range []Codec{CodecJSON, CodecCBOR, CodecMsgPack} {
			for _, sp := range []struct {
				name  string
				split func(Codec, []byte, int) ([][]byte, []string, error)
				want  string
			}{{"SplitSkip", SplitSkip, tc.want}, {"SplitDrop", SplitDrop, tc.drop}} {
				d := mustDecoder(t)
				n, err := d.Decode(CodecJSON, []byte(tc.tree))
				if err != nil {
					t.Fatal(err)
				}
				const max = 100
				parts, left, err := sp.split(c, encodeNode(c, &n), max)
				if err != nil {
					t.Fatalf("%s %s %s: %v", sp.name, c, tc.tree, err)
				}
				if !reflect.DeepEqual(left, tc.left) {
					t.Errorf("%s %s %s: left out %q, want %q", sp.name, c, tc.tree, left, tc.left)
				}
				merged := map[string]any{}
				for _, p := range parts {
					if len(p) > max {
						t.Fatalf("%s %s: part of %d bytes", sp.name, c, len(p))
					}
					pn, err := d.Decode(c, p)
					if err != nil {
						t.Fatalf("%s %s: part invalid: %v", sp.name, c, err)
					}
					var m map[string]any
					json.Unmarshal(encodeNode(CodecJSON, &pn), &m)
					deepMerge(merged, m)
				}
				var want map[string]any
				json.Unmarshal([]byte(sp.want), &want)
				if len(parts) == 0 || !reflect.DeepEqual(merged, want) {
					t.Errorf("%s %s %s: %d parts merge to %v, want %s", sp.name, c, tc.tree, len(parts), merged, sp.want)
				}
			}
		}
	}
	if _, err := Split(CodecJSON, []byte(`{"a":`+big+`}`), 100); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Split: %v, want ErrTooLarge (it leaves nothing out)", err)
	}
}
