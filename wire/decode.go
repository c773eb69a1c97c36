package wire

import (
	"errors"
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

// ErrPayload is a tree payload that cannot be decoded or breaks a limit.
var ErrPayload = errors.New("wire: invalid tree payload")

// PathError is a decoding or shape error at one place in a tree. Path is an
// RFC 6901 JSON pointer ("" is the root, "/a/b" the key b inside a).
type PathError struct {
	Path string
	Err  error
}

// Error says where and what.
func (e *PathError) Error() string {
	p := e.Path
	if p == "" {
		p = "(root)"
	}
	return "at " + p + ": " + e.Err.Error()
}

// Unwrap gives the cause.
func (e *PathError) Unwrap() error { return e.Err }

// Pointer appends one key to an RFC 6901 JSON pointer ("~" and "/" escaped).
func Pointer(path, key string) string {
	if strings.ContainsAny(key, "~/") {
		key = strings.NewReplacer("~", "~0", "/", "~1").Replace(key)
	}
	return path + "/" + key
}

// Limits bound what Decode accepts (SPEC §5).
type Limits struct {
	MaxSize  int // payload bytes
	MaxDepth int // nested objects and arrays; a scalar has depth 0
}

// DefaultLimits are SPEC §5's defaults: depth 32 and a payload of 16 MiB.
func DefaultLimits() Limits { return Limits{MaxSize: 16 << 20, MaxDepth: 32} }

// Node is one node of a decoded tree payload: null, an object with ordered
// members, or a leaf value (arrays are leaves).
type Node struct {
	Key   string // member key in the parent object; "" for the root
	Null  bool   // JSON null / CBOR null
	Obj   bool   // an object: Kids holds its members
	Kids  []Node // members of an object, in payload order (CBOR: sorted by key)
	Value Value  // the leaf value; for a JSON object, also its JSON text
}

// AsValue returns the node as one row's value: a leaf as it is, an object as
// JSON text. It returns Kind None for null.
func (n *Node) AsValue() Value {
	if n.Null {
		return Value{}
	}
	if n.Obj && n.Value.Data == "" {
		var e Encoder
		e.Reset(CodecJSON, nil)
		e.node(n)
		return Value{Kind: Object, Data: string(e.Bytes())}
	}
	return n.Value
}

// Decoder decodes tree payloads within limits. It is immutable and safe for
// concurrent use.
type Decoder struct {
	lim Limits
	dm  cbor.DecMode
}

// NewDecoder returns a Decoder enforcing lim.
func NewDecoder(lim Limits) (*Decoder, error) {
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
	return &Decoder{lim: lim, dm: dm}, nil
}

// Decode reads a tree payload in the given codec.
func (d *Decoder) Decode(c Codec, payload []byte) (Node, error) {
	if len(payload) > d.lim.MaxSize {
		return Node{}, fmt.Errorf("%w: %d bytes, limit %d", ErrPayload, len(payload), d.lim.MaxSize)
	}
	if c == CodecCBOR {
		return d.decodeCBOR(payload)
	}
	return d.decodeJSON(payload)
}

func (d *Decoder) decodeJSON(payload []byte) (Node, error) {
	if !utf8.Valid(payload) {
		return Node{}, fmt.Errorf("%w: JSON is not valid UTF-8", ErrPayload)
	}
	s := string(payload)
	// Check the depth before gjson, whose validator recurses per level.
	if err := jsonDepth(s, d.lim.MaxDepth); err != nil {
		return Node{}, err
	}
	if !gjson.Valid(s) {
		return Node{}, fmt.Errorf("%w: not valid JSON", ErrPayload)
	}
	return jsonNode(gjson.Parse(s), "")
}

// jsonDepth fails if brackets outside strings nest deeper than max. It
// tolerates malformed input: validity is checked afterwards.
func jsonDepth(s string, max int) error {
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

func jsonNode(r gjson.Result, path string) (Node, error) {
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
				_, err = jsonNode(v, path+"/"+strconv.Itoa(i))
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
		if dupKey(n.Kids, &seen, key) {
			err = &PathError{Path: Pointer(path, key), Err: fmt.Errorf("%w: duplicate key", ErrPayload)}
			return false
		}
		var kid Node
		if kid, err = jsonNode(v, Pointer(path, key)); err != nil {
			return false
		}
		kid.Key = key
		n.Kids = append(n.Kids, kid)
		return true
	})
	return n, err
}

// dupKey reports whether key is already among kids, scanning small objects
// and indexing large ones in *seen.
func dupKey(kids []Node, seen *map[string]struct{}, key string) bool {
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

func (d *Decoder) decodeCBOR(payload []byte) (Node, error) {
	var v any
	if err := d.dm.Unmarshal(payload, &v); err != nil {
		return Node{}, fmt.Errorf("%w: CBOR: %w", ErrPayload, err)
	}
	return cborNode(v, "", 0, d.lim.MaxDepth)
}

func cborNode(v any, path string, depth, maxDepth int) (Node, error) {
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
			kid, err := cborNode(x[k], Pointer(path, k), depth+1, maxDepth)
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
		if err := e.anyValue(x, path, depth, maxDepth); err != nil {
			return Node{}, err
		}
		return Node{Value: Value{Kind: JSON, Data: string(e.Bytes())}}, nil
	case string:
		return Node{Value: Value{Kind: String, Data: x}}, nil
	case []byte:
		return Node{Value: Value{Kind: Bytes, Data: string(x)}}, nil
	}
	text, err := scalarJSON(v)
	if err != nil {
		return Node{}, &PathError{Path: path, Err: err}
	}
	return Node{Value: Value{Kind: JSON, Data: text}}, nil
}

// scalarJSON is the JSON text of a decoded CBOR bool or number. A float
// keeps a fraction or exponent ("1.0", "1e+21") so it stays a float when
// the text is turned back into CBOR.
func scalarJSON(v any) (string, error) {
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
