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
