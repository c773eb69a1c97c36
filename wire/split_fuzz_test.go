package wire

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// hasDupKeys reports whether an object of n repeats a key: merging parts
// of it would keep both members' contents where a decoder keeps the last.
func hasDupKeys(n *Node) bool {
	seen := map[string]bool{}
	for i := range n.Kids {
		k := &n.Kids[i]
		if n.Obj && seen[k.Key] {
			return true
		}
		seen[k.Key] = true
		if hasDupKeys(k) {
			return true
		}
	}
	return false
}

// checkSplit splits tree (codec c) at max: on success every part is at
// most max bytes, there is at least one, each decodes, and they merge
// back (deeply, key by key) to the tree.
func checkSplit(t *testing.T, c Codec, root *Node, max int) ([][]byte, error) {
	t.Helper()
	tree := encodeNode(c, root)
	parts, err := Split(c, tree, max)
	if err != nil {
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("%s max %d: %v", c, max, err)
		}
		return nil, err
	}
	if len(parts) == 0 {
		t.Fatalf("%s max %d: no parts and no error for %q", c, max, tree)
	}
	d, _ := NewDecoder(Limits{MaxSize: 1 << 24, MaxDepth: 1 << 10})
	var merged any
	for _, p := range parts {
		if len(p) > max {
			t.Fatalf("%s max %d: a part of %d bytes", c, max, len(p))
		}
		pn, err := d.Decode(c, p)
		if err != nil {
			t.Fatalf("%s max %d: part %q: %v", c, max, p, err)
		}
		var m any
		if err := json.Unmarshal(encodeNode(CodecJSON, &pn), &m); err != nil {
			t.Fatal(err)
		}
		if mm, ok := m.(map[string]any); ok && merged != nil {
			if prev, ok := merged.(map[string]any); ok {
				deepMerge(prev, mm)
				continue
			}
		}
		merged = m
	}
	var want any
	json.Unmarshal(encodeNode(CodecJSON, root), &want)
	if !reflect.DeepEqual(merged, want) {
		t.Fatalf("%s max %d: %d parts merge to %v, want %v", c, max, len(parts), merged, want)
	}
	return parts, nil
}

// FuzzSplit: Split with any tree and limit returns parts within the
// limit that merge back to the tree, or ErrTooLarge.
func FuzzSplit(f *testing.F) {
	for _, s := range []string{
		`{"a":1,"c":{"x":[1,2,3]},"b":"bb"}`,
		`{}`, `{"a":{}}`, `{"":{"":{"":1}}}`,
		`{"a":{"/":1,"b":{"c":"ddd"}},"é€😀":{"k":true}}`,
		`{"\u0001\u0002\u0003\u0004\u0005\u0006\u0007\u0008":{"a":1,"b":2,"c":3}}`,
	} {
		for _, max := range []int{0, 1, 5, 12, 20, 40, 100} {
			f.Add(s, max)
		}
	}
	f.Fuzz(func(t *testing.T, in string, max int) {
		if max < 0 || max > 1<<12 {
			return
		}
		d, _ := NewDecoder(Limits{MaxSize: 1 << 16, MaxDepth: 64})
		root, err := d.Decode(CodecJSON, []byte(in))
		if err != nil || !root.Obj || hasDupKeys(&root) {
			return
		}
		for _, c := range []Codec{CodecJSON, CodecCBOR, CodecMsgPack} {
			checkSplit(t, c, &root, max)
		}
	})
}

// TestSplitEmptyTree: an empty tree larger than the limit (an empty
// snapshot to a client whose limit leaves less room than "{}") cannot be
// split: ErrTooLarge, not zero parts (the client would get nothing).
func TestSplitEmptyTree(t *testing.T) {
	for _, c := range []Codec{CodecJSON, CodecCBOR, CodecMsgPack} {
		root := Node{Obj: true}
		tree := encodeNode(c, &root)
		parts, err := Split(c, tree, len(tree)-1)
		if !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: %q at max %d: %d parts %q, err %v; want ErrTooLarge", c, tree, len(tree)-1, len(parts), parts, err)
		}
	}
}

// TestSplitEscapedKeys: keys whose JSON escapes take more than 2 bytes
// a byte (a control character is 6: \u0001; MQTT allows them in topic
// levels) still split into parts that fit wherever a split exists: the
// tree splits at limits 325 and 345, so it must at 330..340 too (it was
// refused there: "part of 343 bytes over the limit 330", the splitter's
// bound had counted those keys at 2 bytes a byte).
func TestSplitEscapedKeys(t *testing.T) {
	x := strings.Repeat(`\u0001`, 10)
	v := `"` + strings.Repeat("v", 98) + `"`
	js := `{"` + x + `1":{"a":` + v + `,"b":` + v + `,"c":` + v + `},"` + x + `2":{"a":` + v + `,"b":` + v + `,"c":` + v + `}}`
	d := mustDecoder(t)
	root, err := d.Decode(CodecJSON, []byte(js))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []Codec{CodecJSON, CodecCBOR, CodecMsgPack} {
		for max := 175; max <= 400; max++ {
			if _, err := checkSplit(t, c, &root, max); err != nil {
				t.Errorf("%s max %d: %v (each member fits a part of its own from 175)", c, max, err)
			}
		}
	}
}
