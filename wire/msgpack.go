package wire

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// mpType is the type of a MessagePack item as its head gives it.
type mpType uint8

const (
	mpNil mpType = iota
	mpBool
	mpUint    // arg is the value
	mpInt     // arg is the value as uint64(int64)
	mpFloat32 // arg holds the bits
	mpFloat64 // arg holds the bits
	mpStr     // arg is the length in bytes
	mpBin
	mpArray // arg is the number of items
	mpMap   // arg is the number of pairs
)

// mpName names a type for errors.
var mpName = [...]string{mpNil: "nil", mpBool: "a boolean", mpUint: "an integer", mpInt: "an integer",
	mpFloat32: "a float", mpFloat64: "a float", mpStr: "a string", mpBin: "binary", mpArray: "an array", mpMap: "a map"}

// mpFormats are the formats 0xc0 to 0xdf: the type and the bytes of the
// argument after the format byte. Extension formats (0xc7-0xc9,
// 0xd4-0xd8) and 0xc1, which is never used, have size -1.
var mpFormats = [32]struct {
	t    mpType
	size int8
}{
	{mpNil, 0}, {0, -1}, {mpBool, 0}, {mpBool, 0}, // c0-c3
	{mpBin, 1}, {mpBin, 2}, {mpBin, 4}, // c4-c6
	{0, -1}, {0, -1}, {0, -1}, // c7-c9 ext
	{mpFloat32, 4}, {mpFloat64, 8}, // ca-cb
	{mpUint, 1}, {mpUint, 2}, {mpUint, 4}, {mpUint, 8}, // cc-cf
	{mpInt, 1}, {mpInt, 2}, {mpInt, 4}, {mpInt, 8}, // d0-d3
	{0, -1}, {0, -1}, {0, -1}, {0, -1}, {0, -1}, // d4-d8 fixext
	{mpStr, 1}, {mpStr, 2}, {mpStr, 4}, // d9-db
	{mpArray, 2}, {mpArray, 4}, // dc-dd
	{mpMap, 2}, {mpMap, 4}, // de-df
}

// appendMsgPackHead appends the head of a string, binary, array or map of
// n bytes or items in its shortest format. n must fit in 32 bits (no MQTT
// payload comes near).
func appendMsgPackHead(b []byte, t mpType, n uint64) []byte {
	var fix, b8, b16, b32 byte
	var fixMax uint64
	switch t {
	case mpStr:
		fix, fixMax, b8, b16, b32 = 0xa0, 31, 0xd9, 0xda, 0xdb
	case mpBin:
		fixMax, b8, b16, b32 = 0, 0xc4, 0xc5, 0xc6 // no fix format; b8 from 0
	case mpArray:
		fix, fixMax, b16, b32 = 0x90, 15, 0xdc, 0xdd
	case mpMap:
		fix, fixMax, b16, b32 = 0x80, 15, 0xde, 0xdf
	}
	switch {
	case fix != 0 && n <= fixMax:
		return append(b, fix|byte(n))
	case b8 != 0 && n <= math.MaxUint8:
		return append(b, b8, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, b16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, b32), uint32(n))
}

// appendMsgPackUint appends a non-negative integer in its shortest format.
func appendMsgPackUint(b []byte, u uint64) []byte {
	switch {
	case u < 0x80:
		return append(b, byte(u))
	case u <= math.MaxUint8:
		return append(b, 0xcc, byte(u))
	case u <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(u))
	case u <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(u))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), u)
}

// appendMsgPackInt appends an integer in its shortest format.
func appendMsgPackInt(b []byte, n int64) []byte {
	switch {
	case n >= 0:
		return appendMsgPackUint(b, uint64(n))
	case n >= -32:
		return append(b, byte(n)) // negative fixint 0xe0-0xff
	case n >= math.MinInt8:
		return append(b, 0xd0, byte(n))
	case n >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(b, 0xd1), uint16(n))
	case n >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(n))
}

// appendMsgPackFloat appends f as float32 when that is exact, else float64.
func appendMsgPackFloat(b []byte, f float64) []byte {
	if f32 := float32(f); float64(f32) == f {
		return binary.BigEndian.AppendUint32(append(b, 0xca), math.Float32bits(f32))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcb), math.Float64bits(f))
}

func appendMsgPackValue(b []byte, v Value) []byte {
	switch v.Kind {
	case String:
		return append(appendMsgPackHead(b, mpStr, uint64(len(v.Data))), v.Data...)
	case Bytes:
		return append(appendMsgPackHead(b, mpBin, uint64(len(v.Data))), v.Data...)
	case JSON, Object:
		return appendJSONIn(b, CodecMsgPack, v.Data)
	}
	return append(b, 0xc0)
}

// appendMsgPackNumber converts a valid JSON number: an integer from -2^63
// to 2^64-1 becomes an integer, anything else a float. It does not
// allocate.
func appendMsgPackNumber(b []byte, text string) []byte {
	neg := text[0] == '-'
	digits := strings.TrimPrefix(text, "-")
	if !strings.ContainsAny(digits, ".eE") {
		if u, ok := parseUint64(digits); ok {
			switch {
			case !neg:
				return appendMsgPackUint(b, u)
			case u <= 1<<63:
				return appendMsgPackInt(b, int64(-u)) // -2^63 wraps to itself
			}
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
	return appendMsgPackFloat(b, f)
}

// appendMsgPackUnescaped appends the body of a JSON string with escapes as
// a MessagePack string: unescaped after room for the longest head, which
// is then written and the text moved up to it.
func appendMsgPackUnescaped(b []byte, body string) []byte {
	const room = 5
	at := len(b)
	b = appendUnescaped(append(b, make([]byte, room)...), body)
	var head [room]byte
	h := appendMsgPackHead(head[:0], mpStr, uint64(len(b)-at-room))
	copy(b[at:], h)
	n := copy(b[at+len(h):], b[at+room:])
	return b[:at+len(h)+n]
}

func (d *Decoder) decodeMsgPack(payload []byte) (Node, error) {
	p := msgpackDecoder{binDecoder{b: payload, maxDepth: d.lim.MaxDepth, maxNodes: d.lim.MaxNodes}}
	n, err := p.node(0)
	if err == nil && p.i < len(p.b) {
		err = p.errorf("%d bytes after the item", len(p.b)-p.i)
	}
	if err != nil {
		return Node{}, err
	}
	return n, nil
}

// msgpackDecoder builds a Node from MessagePack in one pass, as
// cborDecoder does from CBOR: maps become objects; an array, at any depth,
// becomes JSON text written straight from the bytes, as do the maps inside
// it.
type msgpackDecoder struct{ binDecoder }

// errorf is a *PathError at the decoder's place, naming the byte offset.
func (p *msgpackDecoder) errorf(format string, args ...any) error {
	return p.at.errorf("%w: MessagePack: %s at byte %d", ErrPayload, fmt.Sprintf(format, args...), p.i)
}

// head reads an item's format and argument: the value of an integer,
// boolean or float's bits, the length of a string or binary, the items of
// an array or the pairs of a map. Extension types are refused.
func (p *msgpackDecoder) head() (mpType, uint64, error) {
	if p.i >= len(p.b) {
		return 0, 0, p.errorf("unexpected end")
	}
	c := p.b[p.i]
	switch {
	case c < 0x80:
		p.i++
		return mpUint, uint64(c), nil
	case c < 0x90:
		p.i++
		return mpMap, uint64(c & 0x0f), nil
	case c < 0xa0:
		p.i++
		return mpArray, uint64(c & 0x0f), nil
	case c < 0xc0:
		p.i++
		return mpStr, uint64(c & 0x1f), nil
	case c >= 0xe0:
		p.i++
		return mpInt, uint64(int64(int8(c))), nil
	}
	f := mpFormats[c-0xc0]
	switch {
	case c == 0xc1:
		return 0, 0, p.errorf("format 0xc1 is never used")
	case f.size < 0:
		return 0, 0, p.errorf("extension type (format 0x%02x) is not supported", c)
	case len(p.b)-p.i-1 < int(f.size):
		return 0, 0, p.errorf("unexpected end")
	}
	var arg uint64
	for _, x := range p.b[p.i+1 : p.i+1+int(f.size)] {
		arg = arg<<8 | uint64(x)
	}
	switch {
	case f.t == mpBool:
		arg = uint64(c & 1)
	case f.t == mpInt && f.size < 8: // sign-extend
		shift := 64 - 8*uint(f.size)
		arg = uint64(int64(arg<<shift) >> shift)
	}
	p.i += 1 + int(f.size)
	return f.t, arg, nil
}

// room fails unless n items of at least size bytes each fit in what is
// left besides what the open containers still need.
func (p *msgpackDecoder) room(n, size uint64) error {
	if left := uint64(max(len(p.b)-p.i-p.owed, 0)); n > left/size {
		return p.errorf("declared length %d does not fit in the %d bytes left", n, left)
	}
	return nil
}

// open checks a new array or map at depth whose head was read: its level
// and its declared length n of items of size bytes at least. It returns
// what is owed outside it.
func (p *msgpackDecoder) open(depth int, n, size uint64) (int, error) {
	if depth+1 > p.maxDepth {
		return 0, p.at.errorf("%w: deeper than %d", ErrDepth, p.maxDepth)
	}
	return p.owed, p.room(n, size)
}

func (p *msgpackDecoder) node(depth int) (Node, error) {
	if p.nodes++; p.maxNodes > 0 && p.nodes > p.maxNodes {
		return Node{}, p.errorf("more than %d nodes", p.maxNodes)
	}
	t, arg, err := p.head()
	if err != nil {
		return Node{}, err
	}
	switch t {
	case mpStr, mpBin:
		b, err := p.str(t, arg)
		if err != nil {
			return Node{}, err
		}
		if t == mpBin {
			return Node{Value: Value{Kind: Bytes, Data: string(b)}}, nil
		}
		return Node{Value: Value{Kind: String, Data: string(b)}}, nil
	case mpArray:
		if err := p.array(depth, arg); err != nil {
			return Node{}, err
		}
		return Node{Value: Value{Kind: JSON, Data: p.json.String()}}, nil
	case mpMap:
		return p.object(depth, arg)
	case mpNil:
		return Node{Null: true}, nil
	}
	p.text, err = p.scalar(p.text[:0], t, arg)
	if err != nil {
		return Node{}, err
	}
	return Node{Value: Value{Kind: JSON, Data: string(p.text)}}, nil
}

// object reads a map whose head was read as a Node.
func (p *msgpackDecoder) object(depth int, n uint64) (Node, error) {
	owed, err := p.open(depth, n, 2)
	if err != nil {
		return Node{}, err
	}
	o := Node{Obj: true, Value: Value{Kind: Object}, Kids: make([]Node, 0, n)} // room() bounds n
	var index keyIndex
	keyAt := func(i int) string { return o.Kids[i].Key }
	for k := uint64(0); k < n; k++ {
		p.owed = owed + int(n-k-1)*2
		p.owed++ // the value
		key, err := p.key()
		if err != nil {
			return Node{}, err
		}
		if index.dup(len(o.Kids), keyAt, key) {
			return Node{}, p.at.with(key).errorf("%w: MessagePack: duplicate key", ErrPayload)
		}
		p.owed--
		p.at = p.at.with(key)
		kid, err := p.node(depth + 1)
		p.at = p.at[:len(p.at)-1]
		if err != nil {
			return Node{}, err
		}
		kid.Key = key
		o.Kids = append(o.Kids, kid)
	}
	p.owed = owed
	return o, nil
}

// key reads a map key, a string.
func (p *msgpackDecoder) key() (string, error) {
	start := p.i
	t, arg, err := p.head()
	if err != nil {
		return "", err
	}
	if t != mpStr {
		p.i = start
		return "", p.errorf("map key is %s, not a string", mpName[t])
	}
	b, err := p.str(t, arg)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// str reads n bytes of a string or binary whose head was read, in place,
// checking a string for UTF-8.
func (p *msgpackDecoder) str(t mpType, n uint64) ([]byte, error) {
	if err := p.room(n, 1); err != nil {
		return nil, err
	}
	b := p.b[p.i : p.i+int(n)]
	if t == mpStr && !utf8.Valid(b) {
		return nil, p.errorf("string is not valid UTF-8")
	}
	p.i += int(n)
	return b, nil
}

// array appends the JSON text of an array whose head was read.
func (p *msgpackDecoder) array(depth int, n uint64) error {
	owed, err := p.open(depth, n, 1)
	if err != nil {
		return err
	}
	p.json.add("[")
	p.at = p.at.index(0) // its last step is set for each item
	last := len(p.at) - 1
	for k := uint64(0); k < n; k++ {
		p.owed = owed + int(n-k-1)
		if k > 0 {
			p.json.add(",")
		}
		p.at[last].index = int(k)
		if err := p.item(depth + 1); err != nil {
			return err
		}
	}
	p.json.add("]")
	p.owed, p.at = owed, p.at[:last]
	return nil
}

// jsonObject appends the JSON text of a map whose head was read.
func (p *msgpackDecoder) jsonObject(depth int, n uint64) error {
	owed, err := p.open(depth, n, 2)
	if err != nil {
		return err
	}
	base := len(p.keys)
	var index keyIndex
	keyAt := func(i int) string { return p.keys[base+i] }
	p.json.add("{")
	for k := uint64(0); k < n; k++ {
		p.owed = owed + int(n-k-1)*2 + 1 // the pairs after it, and the value
		key, err := p.key()
		if err != nil {
			return err
		}
		if err := p.objectKey("MessagePack", &index, base, keyAt, k > 0, key); err != nil {
			return err
		}
		err = p.item(depth + 1)
		p.at = p.at[:len(p.at)-1]
		if err != nil {
			return err
		}
	}
	p.json.add("}")
	p.keys, p.owed = p.keys[:base], owed
	return nil
}

// item appends the JSON text of an item inside an array.
func (p *msgpackDecoder) item(depth int) error {
	if p.i < len(p.b) && p.b[p.i] < 0x80 { // a positive fixint, the commonest item
		p.json.room(3)
		p.json.b = strconv.AppendUint(p.json.b, uint64(p.b[p.i]), 10)
		p.i++
		return nil
	}
	t, arg, err := p.head()
	if err != nil {
		return err
	}
	switch t {
	case mpStr, mpBin:
		b, err := p.str(t, arg)
		if err != nil {
			return err
		}
		if t == mpStr {
			p.json.room(jsonTextLen(b))
			p.json.b = appendJSONText(p.json.b, b)
		} else {
			p.json.room(base64.StdEncoding.EncodedLen(len(b)) + 2)
			p.json.b = append(p.json.b, '"')
			p.json.b = base64.StdEncoding.AppendEncode(p.json.b, b)
			p.json.b = append(p.json.b, '"')
		}
		return nil
	case mpArray:
		return p.array(depth, arg)
	case mpMap:
		return p.jsonObject(depth, arg)
	}
	p.json.room(maxScalarLen)
	p.json.b, err = p.scalar(p.json.b, t, arg)
	return err
}

// scalar appends the JSON text of an integer, a float, a boolean or nil
// whose head was read. A float keeps a fraction or exponent ("1.0",
// "1e+21") so it stays a float when the text is turned back into
// MessagePack or CBOR.
func (p *msgpackDecoder) scalar(b []byte, t mpType, arg uint64) ([]byte, error) {
	var f float64
	switch t {
	case mpUint:
		return strconv.AppendUint(b, arg, 10), nil
	case mpInt:
		return strconv.AppendInt(b, int64(arg), 10), nil
	case mpBool:
		if arg == 1 {
			return append(b, "true"...), nil
		}
		return append(b, "false"...), nil
	case mpNil:
		return append(b, "null"...), nil
	case mpFloat32:
		f = float64(math.Float32frombits(uint32(arg)))
	default: // mpFloat64
		f = math.Float64frombits(arg)
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return b, p.errorf("%v has no JSON form", f)
	}
	n := len(b)
	b = strconv.AppendFloat(b, f, 'g', -1, 64)
	for _, c := range b[n:] {
		if c == '.' || c == 'e' {
			return b, nil
		}
	}
	return append(b, ".0"...), nil
}
