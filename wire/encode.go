package wire

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// Encoder writes one tree into a buffer, in JSON or CBOR. Calls mirror the
// tree: BeginObject, then Key and a value (Value, Null or a nested object)
// per member, then EndObject. A member can be taken back with Mark and
// Rewind, so a walker can open a key and drop it if nothing lands under it.
//
// CBOR maps are written with definite lengths: the head is patched when the
// object ends, so the output is in preferred serialization except for floats
// (float32 when exact, else float64).
//
// The zero Encoder writes JSON; Reset picks the codec and buffer.
type Encoder struct {
	codec Codec
	buf   []byte
	stack []frame // open objects, innermost last
}

type frame struct {
	start int // CBOR: offset of the map head; JSON: unused
	n     int // members written so far
}

// Mark is a point in the output that Rewind returns to.
type Mark struct {
	size, n, depth int
}

// NewEncoder returns an Encoder for codec c that appends to buf.
func NewEncoder(c Codec, buf []byte) *Encoder {
	e := &Encoder{}
	e.Reset(c, buf)
	return e
}

// Reset starts a new tree in codec c, appending to buf.
func (e *Encoder) Reset(c Codec, buf []byte) {
	e.codec, e.buf, e.stack = c, buf, e.stack[:0]
}

// Bytes returns the encoded tree.
func (e *Encoder) Bytes() []byte { return e.buf }

// Len is the number of bytes written so far.
func (e *Encoder) Len() int { return len(e.buf) }

// BeginObject opens an object (a CBOR map).
func (e *Encoder) BeginObject() {
	e.stack = append(e.stack, frame{start: len(e.buf)})
	if e.codec == CodecCBOR {
		e.buf = append(e.buf, 0xa0) // patched by EndObject
	} else {
		e.buf = append(e.buf, '{')
	}
}

// EndObject closes the innermost open object.
func (e *Encoder) EndObject() {
	f := e.stack[len(e.stack)-1]
	e.stack = e.stack[:len(e.stack)-1]
	if e.codec != CodecCBOR {
		e.buf = append(e.buf, '}')
		return
	}
	if f.n < 24 {
		e.buf[f.start] = 0xa0 | byte(f.n)
		return
	}
	head := appendHead(nil, 5, uint64(f.n))
	extra := len(head) - 1
	e.buf = append(e.buf, head[1:]...) // grow by extra bytes
	copy(e.buf[f.start+1+extra:], e.buf[f.start+1:len(e.buf)-extra])
	copy(e.buf[f.start:], head)
}

// Key starts a member of the innermost open object.
func (e *Encoder) Key(k string) {
	f := &e.stack[len(e.stack)-1]
	f.n++
	if e.codec == CodecCBOR {
		e.buf = appendHead(e.buf, 3, uint64(len(k)))
		e.buf = append(e.buf, k...)
		return
	}
	if f.n > 1 {
		e.buf = append(e.buf, ',')
	}
	e.buf = appendJSONString(e.buf, k)
	e.buf = append(e.buf, ':')
}

// Descend opens objects so that the next Key lands inside path: it closes
// the objects of open (the keys of the objects open below the current
// root, outermost first) that path does not share, opens the keys of path
// it lacks, and returns the new stack. Writing paths in sorted order this
// way turns a list of (path, value) pairs into one nested tree.
func (e *Encoder) Descend(open, path []string) []string {
	common := 0
	for common < len(open) && common < len(path) && open[common] == path[common] {
		common++
	}
	for ; len(open) > common; open = open[:len(open)-1] {
		e.EndObject()
	}
	for _, k := range path[len(open):] {
		e.Key(k)
		e.BeginObject()
		open = append(open, k)
	}
	return open
}

// Mark records the current point, to be given to Rewind.
func (e *Encoder) Mark() Mark {
	m := Mark{size: len(e.buf), depth: len(e.stack)}
	if m.depth > 0 {
		m.n = e.stack[m.depth-1].n
	}
	return m
}

// Rewind drops everything written since m, which must have been taken at
// the same object depth.
func (e *Encoder) Rewind(m Mark) {
	e.buf = e.buf[:m.size]
	e.stack = e.stack[:m.depth]
	if m.depth > 0 {
		e.stack[m.depth-1].n = m.n
	}
}

// Null writes null (a deleted row).
func (e *Encoder) Null() {
	if e.codec == CodecCBOR {
		e.buf = append(e.buf, 0xf6)
	} else {
		e.buf = append(e.buf, "null"...)
	}
}

// Value writes a row value in the encoder's codec, keeping its type.
func (e *Encoder) Value(v Value) {
	if e.codec == CodecCBOR {
		e.buf = appendCBORValue(e.buf, v)
		return
	}
	switch v.Kind {
	case String:
		e.buf = appendJSONString(e.buf, v.Data)
	case Bytes:
		e.buf = append(e.buf, '"')
		e.buf = base64.StdEncoding.AppendEncode(e.buf, []byte(v.Data))
		e.buf = append(e.buf, '"')
	case JSON, Object:
		e.buf = append(e.buf, v.Data...)
	default:
		e.buf = append(e.buf, "null"...)
	}
}

// node writes a decoded node: null, leaf or object.
func (e *Encoder) node(n *Node) {
	switch {
	case n.Null:
		e.Null()
	case n.Obj:
		e.BeginObject()
		for i := range n.Kids {
			e.Key(n.Kids[i].Key)
			e.node(&n.Kids[i])
		}
		e.EndObject()
	default:
		e.Value(n.Value)
	}
}

// anyValue writes a value decoded from CBOR into a Go any.
func (e *Encoder) anyValue(v any, path string, depth, maxDepth int) error {
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
		e.beginArray(len(x))
		for i, el := range x {
			if e.codec == CodecJSON && i > 0 {
				e.buf = append(e.buf, ',')
			}
			if err := e.anyValue(el, path+"/"+strconv.Itoa(i), depth+1, maxDepth); err != nil {
				return err
			}
		}
		e.endArray()
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
			if err := e.anyValue(x[k], Pointer(path, k), depth+1, maxDepth); err != nil {
				return err
			}
		}
		e.EndObject()
	default:
		text, err := scalarJSON(v)
		if err != nil {
			return &PathError{Path: path, Err: err}
		}
		e.Value(Value{Kind: JSON, Data: text})
	}
	return nil
}

func (e *Encoder) beginArray(n int) {
	if e.codec == CodecCBOR {
		e.buf = appendHead(e.buf, 4, uint64(n))
	} else {
		e.buf = append(e.buf, '[')
	}
}

func (e *Encoder) endArray() {
	if e.codec != CodecCBOR {
		e.buf = append(e.buf, ']')
	}
}

// appendHead appends a CBOR head: major type and argument, shortest form.
func appendHead(b []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(b, m|byte(n))
	case n <= math.MaxUint8:
		return append(b, m|24, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, m|25), uint16(n))
	case n <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, m|26), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(b, m|27), n)
}

func appendCBORValue(b []byte, v Value) []byte {
	switch v.Kind {
	case String:
		b = appendHead(b, 3, uint64(len(v.Data)))
		return append(b, v.Data...)
	case Bytes:
		b = appendHead(b, 2, uint64(len(v.Data)))
		return append(b, v.Data...)
	case JSON, Object:
		return appendCBORJSON(b, gjson.Parse(v.Data))
	}
	return append(b, 0xf6)
}

// appendCBORJSON converts parsed JSON into CBOR. Integers within 64 bits
// become CBOR integers; other numbers floats.
func appendCBORJSON(b []byte, r gjson.Result) []byte {
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
		return appendCBORNumber(b, r.Raw)
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
			b = appendCBORJSON(b, v)
			return true
		})
		return b
	}
	b = appendHead(b, 4, uint64(n))
	r.ForEach(func(_, v gjson.Result) bool {
		b = appendCBORJSON(b, v)
		return true
	})
	return b
}

func appendCBORNumber(b []byte, text string) []byte {
	if !strings.ContainsAny(text, ".eE") {
		if text[0] == '-' {
			if i, err := strconv.ParseInt(text, 10, 64); err == nil {
				if i >= 0 { // "-0"
					return appendHead(b, 0, uint64(i))
				}
				return appendHead(b, 1, uint64(-(i + 1)))
			}
			var z big.Int
			if _, ok := z.SetString(text, 10); ok && z.Cmp(minCBORNeg) >= 0 {
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

// minCBORNeg is -2^64, the smallest CBOR negative integer.
var minCBORNeg = new(big.Int).Neg(new(big.Int).Lsh(big.NewInt(1), 64))

// appendJSONString appends s as a JSON string; invalid UTF-8 is replaced by
// U+FFFD so the output is always valid JSON.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, "\ufffd"...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
