package wire

// The implementations this package had before its own JSON validator and
// CBOR decoder, kept as differential oracles for tests, fuzz targets and
// benchmarks (before/after in one run). They are gjson- and
// fxamacker/cbor-based, and recursive.

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"
	"github.com/tidwall/gjson"
)

// oldDecoder is the Decoder as it was.
type oldDecoder struct {
	lim Limits
	dm  cbor.DecMode
}

func newOldDecoder(lim Limits) (*oldDecoder, error) {
	if lim.MaxSize <= 0 || lim.MaxDepth <= 0 {
		return nil, fmt.Errorf("wire: limits must be positive (size %d, depth %d)", lim.MaxSize, lim.MaxDepth)
	}
	rejectUndefined, err := cbor.NewSimpleValueRegistryFromDefaults(cbor.WithRejectedSimpleValue(cbor.SimpleValue(23)))
	if err != nil {
		return nil, fmt.Errorf("wire: cbor simple values: %w", err)
	}
	elems := min(max(lim.MaxSize, 16), math.MaxInt32)
	dm, err := cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:  min(max(lim.MaxDepth+1, 4), 65535),
		MaxArrayElements: elems,
		MaxMapPairs:      elems,
		TagsMd:           cbor.TagsForbidden,
		IntDec:           cbor.IntDecConvertNone,
		DefaultMapType:   reflect.TypeOf(map[string]any(nil)),
		NaN:              cbor.NaNDecodeForbidden,
		Inf:              cbor.InfDecodeForbidden,
		SimpleValues:     rejectUndefined,
	}.DecMode()
	if err != nil {
		return nil, fmt.Errorf("wire: cbor decoder: %w", err)
	}
	return &oldDecoder{lim: lim, dm: dm}, nil
}

func (d *oldDecoder) Decode(c Codec, payload []byte) (Node, error) {
	if len(payload) > d.lim.MaxSize {
		return Node{}, fmt.Errorf("%w: %d bytes, limit %d", ErrPayload, len(payload), d.lim.MaxSize)
	}
	if c == CodecCBOR {
		return d.decodeCBOR(payload)
	}
	return d.decodeJSON(payload)
}

func (d *oldDecoder) decodeJSON(payload []byte) (Node, error) {
	if !utf8.Valid(payload) {
		return Node{}, fmt.Errorf("%w: JSON is not valid UTF-8", ErrPayload)
	}
	s := string(payload)
	// Check the depth before gjson, whose validator recurses per level.
	if err := oldJSONDepth(s, d.lim.MaxDepth); err != nil {
		return Node{}, err
	}
	if !gjson.Valid(s) {
		return Node{}, fmt.Errorf("%w: not valid JSON", ErrPayload)
	}
	return oldJSONNode(gjson.Parse(s), "")
}

// oldJSONDepth fails if brackets outside strings nest deeper than max. It
// tolerates malformed input: validity is checked afterwards.
func oldJSONDepth(s string, max int) error {
	depth, inStr := 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if inStr {
			switch c {
			case '\\':
				i++
			case '"':
				inStr = false
			}
			continue
		}
		switch c {
		case '"':
			inStr = true
		case '{', '[':
			if depth++; depth > max {
				return fmt.Errorf("%w: nested deeper than %d at byte %d", ErrPayload, max, i)
			}
		case '}', ']':
			depth--
		}
	}
	return nil
}

func oldJSONNode(r gjson.Result, path string) (Node, error) {
	switch r.Type {
	case gjson.Null:
		return Node{Null: true}, nil
	case gjson.String:
		return Node{Value: Value{Kind: String, Data: r.Str}}, nil
	case gjson.Number:
		if math.IsInf(r.Num, 0) {
			return Node{}, &PathError{Path: path, Err: fmt.Errorf("%w: number %s out of range", ErrPayload, r.Raw)}
		}
		return Node{Value: Value{Kind: JSON, Data: r.Raw}}, nil
	case gjson.True, gjson.False:
		return Node{Value: Value{Kind: JSON, Data: r.Raw}}, nil
	}
	raw := strings.TrimSpace(r.Raw)
	if !r.IsObject() {
		var err error
		i := 0
		r.ForEach(func(_, v gjson.Result) bool { // an array: check what CBOR could not hold
			if v.Type == gjson.Number || v.IsArray() || v.IsObject() {
				_, err = oldJSONNode(v, path+"/"+strconv.Itoa(i))
			}
			i++
			return err == nil
		})
		return Node{Value: Value{Kind: JSON, Data: raw}}, err
	}
	n := Node{Obj: true, Value: Value{Kind: Object, Data: raw}}
	var seen map[string]struct{}
	var err error
	r.ForEach(func(k, v gjson.Result) bool {
		key := k.Str
		if oldDupKey(n.Kids, &seen, key) {
			err = &PathError{Path: Pointer(path, key), Err: fmt.Errorf("%w: duplicate key", ErrPayload)}
			return false
		}
		var kid Node
		if kid, err = oldJSONNode(v, Pointer(path, key)); err != nil {
			return false
		}
		kid.Key = key
		n.Kids = append(n.Kids, kid)
		return true
	})
	return n, err
}

// oldDupKey reports whether key is already among kids, scanning small objects
// and indexing large ones in *seen.
func oldDupKey(kids []Node, seen *map[string]struct{}, key string) bool {
	const scan = 16
	if len(kids) < scan {
		for i := range kids {
			if kids[i].Key == key {
				return true
			}
		}
		return false
	}
	if *seen == nil {
		*seen = make(map[string]struct{}, 2*len(kids))
		for i := range kids {
			(*seen)[kids[i].Key] = struct{}{}
		}
	}
	if _, ok := (*seen)[key]; ok {
		return true
	}
	(*seen)[key] = struct{}{}
	return false
}

func (d *oldDecoder) decodeCBOR(payload []byte) (Node, error) {
	var v any
	if err := d.dm.Unmarshal(payload, &v); err != nil {
		return Node{}, fmt.Errorf("%w: CBOR: %w", ErrPayload, err)
	}
	return oldCBORNode(v, "", 0, d.lim.MaxDepth)
}

func oldCBORNode(v any, path string, depth, maxDepth int) (Node, error) {
	switch x := v.(type) {
	case nil:
		return Node{Null: true}, nil
	case map[string]any:
		if depth+1 > maxDepth {
			return Node{}, &PathError{Path: path, Err: fmt.Errorf("%w: nested deeper than %d", ErrPayload, maxDepth)}
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		n := Node{Obj: true, Kids: make([]Node, 0, len(keys))}
		for _, k := range keys {
			kid, err := oldCBORNode(x[k], Pointer(path, k), depth+1, maxDepth)
			if err != nil {
				return Node{}, err
			}
			kid.Key = k
			n.Kids = append(n.Kids, kid)
		}
		n.Value.Kind = Object
		return n, nil
	case []any:
		var e Encoder
		e.Reset(CodecJSON, nil)
		if err := oldAnyValue(&e, x, path, depth, maxDepth); err != nil {
			return Node{}, err
		}
		return Node{Value: Value{Kind: JSON, Data: string(e.Bytes())}}, nil
	case string:
		return Node{Value: Value{Kind: String, Data: x}}, nil
	case []byte:
		return Node{Value: Value{Kind: Bytes, Data: string(x)}}, nil
	}
	text, err := oldScalarJSON(v)
	if err != nil {
		return Node{}, &PathError{Path: path, Err: err}
	}
	return Node{Value: Value{Kind: JSON, Data: text}}, nil
}

// oldScalarJSON is the JSON text of a decoded CBOR bool or number. A float
// keeps a fraction or exponent ("1.0", "1e+21") so it stays a float when
// the text is turned back into CBOR.
func oldScalarJSON(v any) (string, error) {
	switch x := v.(type) {
	case bool:
		return strconv.FormatBool(x), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case big.Int:
		return x.String(), nil
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return "", fmt.Errorf("%w: %v has no JSON form", ErrPayload, x)
		}
		s := strconv.FormatFloat(x, 'g', -1, 64)
		if !strings.ContainsAny(s, ".eE") {
			s += ".0"
		}
		return s, nil
	}
	return "", fmt.Errorf("%w: unsupported CBOR item %T", ErrPayload, v)
}

// oldAnyValue writes (JSON only) a value decoded from CBOR into a Go any.
func oldAnyValue(e *Encoder, v any, path string, depth, maxDepth int) error {
	switch x := v.(type) {
	case nil:
		e.Null()
	case string:
		e.Value(Value{Kind: String, Data: x})
	case []byte:
		e.Value(Value{Kind: Bytes, Data: string(x)})
	case []any:
		if depth+1 > maxDepth {
			return &PathError{Path: path, Err: fmt.Errorf("%w: nested deeper than %d", ErrPayload, maxDepth)}
		}
		e.buf = append(e.buf, '[')
		for i, el := range x {
			if e.codec == CodecJSON && i > 0 {
				e.buf = append(e.buf, ',')
			}
			if err := oldAnyValue(e, el, path+"/"+strconv.Itoa(i), depth+1, maxDepth); err != nil {
				return err
			}
		}
		e.buf = append(e.buf, ']')
	case map[string]any:
		if depth+1 > maxDepth {
			return &PathError{Path: path, Err: fmt.Errorf("%w: nested deeper than %d", ErrPayload, maxDepth)}
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		e.BeginObject()
		for _, k := range keys {
			e.Key(k)
			if err := oldAnyValue(e, x[k], Pointer(path, k), depth+1, maxDepth); err != nil {
				return err
			}
		}
		e.EndObject()
	default:
		text, err := oldScalarJSON(v)
		if err != nil {
			return &PathError{Path: path, Err: err}
		}
		e.Value(Value{Kind: JSON, Data: text})
	}
	return nil
}

// oldAppendCBORJSON converts parsed JSON into CBOR. Integers within 64 bits
// become CBOR integers; other numbers floats.
func oldAppendCBORJSON(b []byte, r gjson.Result) []byte {
	switch r.Type {
	case gjson.Null:
		return append(b, 0xf6)
	case gjson.False:
		return append(b, 0xf4)
	case gjson.True:
		return append(b, 0xf5)
	case gjson.String:
		b = appendHead(b, 3, uint64(len(r.Str)))
		return append(b, r.Str...)
	case gjson.Number:
		return oldAppendCBORNumber(b, r.Raw)
	}
	if !r.IsObject() && !r.IsArray() {
		return append(b, 0xf6)
	}
	n := 0
	r.ForEach(func(_, _ gjson.Result) bool { n++; return true })
	if r.IsObject() {
		b = appendHead(b, 5, uint64(n))
		r.ForEach(func(k, v gjson.Result) bool {
			b = appendHead(b, 3, uint64(len(k.Str)))
			b = append(b, k.Str...)
			b = oldAppendCBORJSON(b, v)
			return true
		})
		return b
	}
	b = appendHead(b, 4, uint64(n))
	r.ForEach(func(_, v gjson.Result) bool {
		b = oldAppendCBORJSON(b, v)
		return true
	})
	return b
}

func oldAppendCBORNumber(b []byte, text string) []byte {
	if !strings.ContainsAny(text, ".eE") {
		if text[0] == '-' {
			if i, err := strconv.ParseInt(text, 10, 64); err == nil {
				if i >= 0 { // "-0"
					return appendHead(b, 0, uint64(i))
				}
				return appendHead(b, 1, uint64(-(i + 1)))
			}
			var z big.Int
			if _, ok := z.SetString(text, 10); ok && z.Cmp(oldMinCBORNeg) >= 0 {
				z.Neg(&z).Sub(&z, big.NewInt(1)) // -1-n
				return appendHead(b, 1, z.Uint64())
			}
		} else if u, err := strconv.ParseUint(text, 10, 64); err == nil {
			return appendHead(b, 0, u)
		}
	}
	f, _ := strconv.ParseFloat(text, 64) // out of range: ±Inf, still a number
	if f32 := float32(f); float64(f32) == f {
		return binary.BigEndian.AppendUint32(append(b, 0xfa), math.Float32bits(f32))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xfb), math.Float64bits(f))
}

// oldMinCBORNeg is -2^64, the smallest CBOR negative integer.
var oldMinCBORNeg = new(big.Int).Neg(new(big.Int).Lsh(big.NewInt(1), 64))

func oldPlainKind(s string) Kind {
	if !utf8.ValidString(s) {
		return Bytes
	}
	if s == "" || !gjson.Valid(s) {
		return String
	}
	switch r := gjson.Parse(s); r.Type {
	case gjson.Null:
		return String
	case gjson.Number:
		if math.IsInf(r.Num, 0) { // no float64 holds it: keep the text
			return String
		}
	case gjson.JSON:
		if r.IsObject() {
			return Object
		}
	}
	return JSON
}

func gjsonParse(s string) gjson.Result { return gjson.Parse(s) }

// oldTypePlain is TypePlain as it was (not inlined, as TypePlain is not,
// so that benchmarks of both copy the payload alike).
//
//go:noinline
func oldTypePlain(payload []byte) Value {
	s := string(payload)
	return Value{Kind: oldPlainKind(s), Data: s}
}
