package wire

import (
	"encoding/base64"
	"encoding/binary"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Encoder writes one tree into a buffer, in JSON, CBOR or MessagePack. Calls mirror the
// tree: BeginObject, then Key and a value (Value, Null or a nested object)
// per member, then EndObject. A member can be taken back with Mark and
// Rewind, so a walker can open a key and drop it if nothing lands under it.
//
// CBOR and MessagePack maps are written with definite lengths: the head is
// patched when the object ends, so the output is in preferred serialization
// (MessagePack: the shortest format of each length and integer) except for
// floats (float32 when exact, else float64).
//
// The zero Encoder writes JSON; Reset picks the codec and buffer.
type Encoder struct {
	codec Codec
	buf   []byte
	stack []frame // open objects, innermost last
}

type frame struct {
	start int // CBOR, MessagePack: offset of the map head; JSON: unused
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
	switch e.codec {
	case CodecCBOR:
		e.buf = append(e.buf, 0xa0) // patched by EndObject
	case CodecMsgPack:
		e.buf = append(e.buf, 0x80) // patched by EndObject
	default:
		e.buf = append(e.buf, '{')
	}
}

// EndObject closes the innermost open object.
func (e *Encoder) EndObject() {
	f := e.stack[len(e.stack)-1]
	e.stack = e.stack[:len(e.stack)-1]
	var head []byte
	switch {
	case e.codec == CodecCBOR && f.n < 24:
		e.buf[f.start] = 0xa0 | byte(f.n)
		return
	case e.codec == CodecCBOR:
		head = appendHead(nil, 5, uint64(f.n))
	case e.codec == CodecMsgPack && f.n < 16:
		e.buf[f.start] = 0x80 | byte(f.n)
		return
	case e.codec == CodecMsgPack:
		head = appendMsgPackHead(nil, mpMap, uint64(f.n))
	default:
		e.buf = append(e.buf, '}')
		return
	}
	extra := len(head) - 1
	e.buf = append(e.buf, head[1:]...) // grow by extra bytes
	copy(e.buf[f.start+1+extra:], e.buf[f.start+1:len(e.buf)-extra])
	copy(e.buf[f.start:], head)
}

// Key starts a member of the innermost open object.
func (e *Encoder) Key(k string) {
	f := &e.stack[len(e.stack)-1]
	f.n++
	switch e.codec {
	case CodecCBOR:
		e.buf = appendHead(e.buf, 3, uint64(len(k)))
		e.buf = append(e.buf, k...)
		return
	case CodecMsgPack:
		e.buf = appendMsgPackHead(e.buf, mpStr, uint64(len(k)))
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

// Null writes null (a deleted row). CodecOriginal writes nothing at the
// root: the original answered a filter without wildcards with an empty
// payload.
func (e *Encoder) Null() {
	if e.codec == CodecOriginal && len(e.stack) == 0 {
		return
	}
	switch e.codec {
	case CodecCBOR:
		e.buf = append(e.buf, 0xf6)
	case CodecMsgPack:
		e.buf = append(e.buf, 0xc0)
	default:
		e.buf = append(e.buf, "null"...)
	}
}

// Value writes a row value in the encoder's codec, keeping its type.
func (e *Encoder) Value(v Value) {
	if v.Kind == Raw {
		e.buf = append(e.buf, v.Data...)
		return
	}
	switch e.codec {
	case CodecCBOR:
		e.buf = appendCBORValue(e.buf, v)
		return
	case CodecMsgPack:
		e.buf = appendMsgPackValue(e.buf, v)
		return
	case CodecOriginal:
		// Every leaf is a string of the payload bytes (invalid UTF-8
		// becomes U+FFFD: the original failed on it); a bare value at the
		// root is the payload itself.
		switch {
		case v.Kind == None:
			e.Null()
		case len(e.stack) == 0:
			e.buf = append(e.buf, v.Data...)
		default:
			e.buf = appendJSONString(e.buf, v.Data)
		}
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

// AppendArrayHead appends the start of an array of n items in codec c:
// CBOR's or MessagePack's head, or JSON's "[" (the caller writes the commas
// and the "]").
func AppendArrayHead(b []byte, c Codec, n int) []byte {
	switch c {
	case CodecCBOR:
		return appendHead(b, 4, uint64(n))
	case CodecMsgPack:
		return appendMsgPackHead(b, mpArray, uint64(n))
	}
	return append(b, '[')
}

// AppendInt appends an integer in codec c.
func AppendInt(b []byte, c Codec, n int64) []byte {
	switch {
	case c == CodecMsgPack:
		return appendMsgPackInt(b, n)
	case c != CodecCBOR:
		return strconv.AppendInt(b, n, 10)
	case n >= 0:
		return appendHead(b, 0, uint64(n))
	}
	return appendHead(b, 1, uint64(-1-n))
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
		return appendCBORJSON(b, v.Data)
	}
	return append(b, 0xf6)
}

// appendCBORJSON converts JSON text into CBOR (see appendJSONIn).
func appendCBORJSON(b []byte, text string) []byte { return appendJSONIn(b, CodecCBOR, text) }

// appendJSONIn converts JSON text into CBOR or MessagePack (c): integers
// within 64 bits (CBOR down to -2^64, MessagePack down to -2^63) become
// integers, other numbers floats (float32 when exact, else float64; ±Inf
// beyond float64's range), and strings are unescaped as gjson unescapes
// them (see appendUnescaped).
//
// It takes two passes over the text, whatever its nesting: the first
// checks it and counts the members of each object and array in the order
// they open, and the second writes each token with the count its head
// needs. Memory beyond the output is 4 bytes per object and array (none
// up to 16 of them) and 4 per level of nesting beyond 32. Text that is not
// JSON (which no Value made by this package holds) becomes null.
func appendJSONIn(b []byte, c Codec, text string) []byte {
	mp := c == CodecMsgPack
	null, tru, fals := byte(0xf6), byte(0xf5), byte(0xf4)
	if mp {
		null, tru, fals = 0xc0, 0xc3, 0xc2
	}
	if len(text) > math.MaxInt32 {
		return append(b, null) // no MQTT payload is that long
	}
	var small [16]uint32
	counts := small[:0]
	if n := strings.Count(text, "{") + strings.Count(text, "["); n > len(small) {
		counts = make([]uint32, 0, min(n, len(text)/2)) // an object or array takes two bytes
	}
	counts, bad := scanJSON(text, math.MaxInt, counts, true)
	if bad.what != "" {
		return append(b, null)
	}
	k := 0 // the next count
	for i := 0; i < len(text); {
		switch c := text[i]; c {
		case ' ', '\t', '\n', '\r', ',', ':', ']', '}':
			i++
		case '{', '[':
			switch {
			case mp && c == '{':
				b = appendMsgPackHead(b, mpMap, uint64(counts[k]))
			case mp:
				b = appendMsgPackHead(b, mpArray, uint64(counts[k]))
			case c == '{':
				b = appendHead(b, 5, uint64(counts[k]))
			default:
				b = appendHead(b, 4, uint64(counts[k]))
			}
			k++
			i++
		case '"':
			end, esc := stringEnd(text, i)
			body := text[i+1 : end-1]
			switch {
			case mp && esc:
				b = appendMsgPackUnescaped(b, body)
			case mp:
				b = append(appendMsgPackHead(b, mpStr, uint64(len(body))), body...)
			case esc:
				b = appendCBORUnescaped(b, body)
			default:
				b = append(appendHead(b, 3, uint64(len(body))), body...)
			}
			i = end
		case 't':
			b = append(b, tru)
			i += len("true")
		case 'f':
			b = append(b, fals)
			i += len("false")
		case 'n':
			b = append(b, null)
			i += len("null")
		default:
			end := numberEnd(text, i)
			if mp {
				b = appendMsgPackNumber(b, text[i:end])
			} else {
				b = appendCBORNumber(b, text[i:end])
			}
			i = end
		}
	}
	return b
}

// appendCBORUnescaped appends the body of a JSON string with escapes as a
// CBOR text string: unescaped after room for the longest head, which is
// then written and the text moved up to it.
func appendCBORUnescaped(b []byte, body string) []byte {
	const room = 9
	at := len(b)
	b = appendUnescaped(append(b, make([]byte, room)...), body)
	var head [room]byte
	h := appendHead(head[:0], 3, uint64(len(b)-at-room))
	copy(b[at:], h)
	n := copy(b[at+len(h):], b[at+room:])
	return b[:at+len(h)+n]
}

// appendCBORNumber converts a valid JSON number. It does not allocate.
func appendCBORNumber(b []byte, text string) []byte {
	neg := text[0] == '-'
	digits := strings.TrimPrefix(text, "-")
	if !strings.ContainsAny(digits, ".eE") {
		if u, ok := parseUint64(digits); ok {
			switch {
			case !neg:
				return appendHead(b, 0, u)
			case u == 0: // "-0"
				return appendHead(b, 0, 0)
			}
			return appendHead(b, 1, u-1) // -1-n
		}
		if neg && digits == "18446744073709551616" { // -2^64
			return appendHead(b, 1, math.MaxUint64)
		}
	}
	var f float64
	if floatOverflows(text) { // ParseFloat would allocate its error
		f = math.Inf(1)
		if neg {
			f = math.Inf(-1)
		}
	} else {
		f, _ = strconv.ParseFloat(text, 64)
	}
	if f32 := float32(f); float64(f32) == f {
		return binary.BigEndian.AppendUint32(append(b, 0xfa), math.Float32bits(f32))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xfb), math.Float64bits(f))
}

// parseUint64 reads decimal digits that fit in 64 bits.
func parseUint64(s string) (uint64, bool) {
	if len(s) == 0 || len(s) > 20 {
		return 0, false
	}
	var u uint64
	for i := 0; i < len(s); i++ {
		d := uint64(s[i] - '0')
		if d > 9 || u > (math.MaxUint64-d)/10 {
			return 0, false
		}
		u = u*10 + d
	}
	return u, true
}

// appendJSONString appends s as a JSON string; invalid UTF-8 is replaced by
// U+FFFD so the output is always valid JSON.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = appendEscaped(append(b, s[start:i]...), c)
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

// appendEscaped appends the JSON escape of a control character, quote or
// backslash.
func appendEscaped(b []byte, c byte) []byte {
	const hex = "0123456789abcdef"
	switch c {
	case '"', '\\':
		return append(b, '\\', c)
	case '\n':
		return append(b, '\\', 'n')
	case '\r':
		return append(b, '\\', 'r')
	case '\t':
		return append(b, '\\', 't')
	}
	return append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
}
