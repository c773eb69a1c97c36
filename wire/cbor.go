package wire

import (
	"encoding/base64"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

func (d *Decoder) decodeCBOR(payload []byte) (Node, error) {
	p := cborDecoder{binDecoder{b: payload, maxDepth: d.lim.MaxDepth, maxNodes: d.lim.MaxNodes}}
	n, err := p.node(0)
	if err == nil && p.i < len(p.b) {
		err = p.errorf("%d bytes after the item", len(p.b)-p.i)
	}
	if err != nil {
		return Node{}, err
	}
	return n, nil
}

// binDecoder is the state the one-pass binary decoders (CBOR,
// MessagePack) share.
type binDecoder struct {
	b        []byte
	i        int
	maxDepth int
	nodes    int
	maxNodes int
	// owed is how many bytes the open arrays and maps still need at least
	// after the item being read (one per item; CBOR: one for a break), so
	// that a declared length that cannot fit fails before anything is made
	// for it.
	owed int
	at   trail    // where i is, for errors
	keys []string // keys read so far of the open maps, innermost last
	json textBuf  // the JSON text of the array being read
	text []byte   // a scalar's text
}

// objectKey takes key, the next key of the map being written as JSON
// text whose keys start at p.keys[base]: a duplicate is refused (format
// names the codec in the error); else it is written with its comma and
// colon, and the path goes into it for the value, which the caller reads
// and then leaves.
func (p *binDecoder) objectKey(format string, index *keyIndex, base int, keyAt func(int) string, comma bool, key string) error {
	if index.dup(len(p.keys)-base, keyAt, key) {
		return p.at.with(key).errorf("%w: %s: duplicate key", ErrPayload, format)
	}
	p.keys = append(p.keys, key)
	p.owed--
	if comma {
		p.json.add(",")
	}
	p.json.room(jsonTextLen(key) + 1)
	p.json.b = append(appendJSONString(p.json.b, key), ':')
	p.at = p.at.with(key)
	return nil
}

// cborDecoder builds a Node from CBOR in one pass. Maps become objects;
// an array, at any depth, becomes JSON text written straight from the
// bytes, as do the maps inside it.
type cborDecoder struct{ binDecoder }

// errorf is a *PathError at the decoder's place, naming the byte offset.
func (p *cborDecoder) errorf(format string, args ...any) error {
	return p.at.errorf("%w: CBOR: %s at byte %d", ErrPayload, fmt.Sprintf(format, args...), p.i)
}

// head reads an item's initial byte and argument. The additional
// information 31 (indefinite length, or break) is returned with arg 0 for
// major types 2 to 5 and 7; it is malformed for the others, as are 28 to 30.
func (p *cborDecoder) head() (major, info byte, arg uint64, err error) {
	if p.i >= len(p.b) {
		return 0, 0, 0, p.errorf("unexpected end")
	}
	c := p.b[p.i]
	major, info = c>>5, c&31
	switch {
	case info < 24:
		p.i++
		return major, info, uint64(info), nil
	case info < 28:
		n := 1 << (info - 24)
		if len(p.b)-p.i-1 < n {
			return 0, 0, 0, p.errorf("unexpected end")
		}
		for _, x := range p.b[p.i+1 : p.i+1+n] {
			arg = arg<<8 | uint64(x)
		}
		p.i += 1 + n
		return major, info, arg, nil
	case info == 31 && (major >= 2 && major <= 5 || major == 7):
		p.i++
		return major, info, 0, nil
	}
	return 0, 0, 0, p.errorf("malformed initial byte 0x%02x", c)
}

// room fails unless n items of at least size bytes each fit in what is
// left besides what the open containers still need.
func (p *cborDecoder) room(n, size uint64) error {
	if left := uint64(max(len(p.b)-p.i-p.owed, 0)); n > left/size {
		return p.errorf("declared length %d does not fit in the %d bytes left", n, left)
	}
	return nil
}

// more reports whether item k of a container of n items (indef: ended by a
// break) comes next, consuming the break, and sets owed for the rest.
func (p *cborDecoder) more(k int, indef bool, n uint64, size int, owed int) (bool, error) {
	if !indef {
		if uint64(k) == n {
			return false, nil
		}
		p.owed = owed + int(n-uint64(k)-1)*size
		return true, nil
	}
	if p.i >= len(p.b) {
		return false, p.errorf("unexpected end")
	}
	if p.b[p.i] == 0xff {
		p.i++
		return false, nil
	}
	p.owed = owed + 1
	return true, nil
}

func (p *cborDecoder) node(depth int) (Node, error) {
	if p.nodes++; p.maxNodes > 0 && p.nodes > p.maxNodes {
		return Node{}, p.errorf("more than %d nodes", p.maxNodes)
	}
	major, info, arg, err := p.head()
	if err != nil {
		return Node{}, err
	}
	switch major {
	case 2, 3:
		b, err := p.str(major, info, arg)
		if err != nil {
			return Node{}, err
		}
		if major == 2 {
			return Node{Value: Value{Kind: Bytes, Data: string(b)}}, nil
		}
		return Node{Value: Value{Kind: String, Data: string(b)}}, nil
	case 4:
		if err := p.array(depth, info, arg); err != nil {
			return Node{}, err
		}
		return Node{Value: Value{Kind: JSON, Data: p.json.String()}}, nil
	case 5:
		return p.object(depth, info, arg)
	case 7:
		if info == 22 {
			return Node{Null: true}, nil
		}
	}
	p.text, err = p.scalar(p.text[:0], major, info, arg)
	if err != nil {
		return Node{}, err
	}
	return Node{Value: Value{Kind: JSON, Data: string(p.text)}}, nil
}

// object reads a map whose head was read as a Node.
func (p *cborDecoder) object(depth int, info byte, n uint64) (Node, error) {
	indef, owed, err := p.open(depth, info, n, 2)
	if err != nil {
		return Node{}, err
	}
	o := Node{Obj: true, Value: Value{Kind: Object}}
	if !indef {
		o.Kids = make([]Node, 0, n) // room() bounds n by the bytes left
	}
	var index keyIndex
	keyAt := func(i int) string { return o.Kids[i].Key }
	for k := 0; ; k++ {
		if ok, err := p.more(k, indef, n, 2, owed); !ok || err != nil {
			if err != nil {
				return Node{}, err
			}
			break
		}
		p.owed++ // the value
		key, err := p.key()
		if err != nil {
			return Node{}, err
		}
		if index.dup(len(o.Kids), keyAt, key) {
			return Node{}, p.at.with(key).errorf("%w: CBOR: duplicate key", ErrPayload)
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

// open checks a new array or map at depth whose head was read: its level
// and its declared length n of items of size bytes at least. It returns
// whether it has an indefinite length, and what is owed outside it.
func (p *cborDecoder) open(depth int, info byte, n uint64, size uint64) (bool, int, error) {
	if depth+1 > p.maxDepth {
		return false, 0, p.at.errorf("%w: deeper than %d", ErrDepth, p.maxDepth)
	}
	if info == 31 {
		if len(p.b)-p.i-p.owed < 1 { // no room for a break
			return false, 0, p.errorf("unexpected end")
		}
		return true, p.owed, nil
	}
	return false, p.owed, p.room(n, size)
}

// key reads a map key, a text string.
func (p *cborDecoder) key() (string, error) {
	start := p.i
	major, info, arg, err := p.head()
	if err != nil {
		return "", err
	}
	if major != 3 {
		p.i = start
		return "", p.errorf("map key is not a text string")
	}
	b, err := p.str(major, info, arg)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// str reads the body of a byte or text string whose head was read. A
// definite-length body is returned in place.
func (p *cborDecoder) str(major, info byte, n uint64) ([]byte, error) {
	if info != 31 {
		return p.chunk(major, n)
	}
	var s []byte
	for {
		if p.i >= len(p.b) {
			return nil, p.errorf("unexpected end")
		}
		if p.b[p.i] == 0xff {
			p.i++
			return s, nil
		}
		m, in, n, err := p.head()
		if err != nil {
			return nil, err
		}
		if m != major || in == 31 {
			p.i--
			return nil, p.errorf("chunk of an indefinite-length string is not a definite string of its type")
		}
		b, err := p.chunk(major, n)
		if err != nil {
			return nil, err
		}
		s = append(s, b...)
	}
}

// chunk reads n bytes of a string, checking text for UTF-8.
func (p *cborDecoder) chunk(major byte, n uint64) ([]byte, error) {
	if err := p.room(n, 1); err != nil {
		return nil, err
	}
	b := p.b[p.i : p.i+int(n)]
	if major == 3 && !utf8.Valid(b) {
		return nil, p.errorf("text string is not valid UTF-8")
	}
	p.i += int(n)
	return b, nil
}

// array appends the JSON text of an array whose head was read.
func (p *cborDecoder) array(depth int, info byte, n uint64) error {
	indef, owed, err := p.open(depth, info, n, 1)
	if err != nil {
		return err
	}
	p.json.add("[")
	p.at = p.at.index(0) // its last step is set for each item
	last := len(p.at) - 1
	for k := 0; ; k++ {
		if ok, err := p.more(k, indef, n, 1, owed); !ok || err != nil {
			if err != nil {
				return err
			}
			break
		}
		if k > 0 {
			p.json.add(",")
		}
		p.at[last].index = k
		if err := p.item(depth + 1); err != nil {
			return err
		}
	}
	p.json.add("]")
	p.owed, p.at = owed, p.at[:last]
	return nil
}

// jsonObject appends the JSON text of a map whose head was read.
func (p *cborDecoder) jsonObject(depth int, info byte, n uint64) error {
	indef, owed, err := p.open(depth, info, n, 2)
	if err != nil {
		return err
	}
	base := len(p.keys)
	var index keyIndex
	keyAt := func(i int) string { return p.keys[base+i] }
	p.json.add("{")
	for k := 0; ; k++ {
		if ok, err := p.more(k, indef, n, 2, owed); !ok || err != nil {
			if err != nil {
				return err
			}
			break
		}
		p.owed++ // the value
		key, err := p.key()
		if err != nil {
			return err
		}
		if err := p.objectKey("CBOR", &index, base, keyAt, k > 0, key); err != nil {
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
func (p *cborDecoder) item(depth int) error {
	if p.i < len(p.b) && p.b[p.i] < 24 { // a small unsigned integer, the commonest item
		c := p.b[p.i]
		p.i++
		p.json.room(2)
		if c >= 10 {
			p.json.b = append(p.json.b, '0'+c/10)
		}
		p.json.b = append(p.json.b, '0'+c%10)
		return nil
	}
	major, info, arg, err := p.head()
	if err != nil {
		return err
	}
	switch major {
	case 2, 3:
		b, err := p.str(major, info, arg)
		if err != nil {
			return err
		}
		if major == 3 {
			p.json.room(jsonTextLen(b))
			p.json.b = appendJSONText(p.json.b, b)
		} else {
			p.json.room(base64.StdEncoding.EncodedLen(len(b)) + 2)
			p.json.b = append(p.json.b, '"')
			p.json.b = base64.StdEncoding.AppendEncode(p.json.b, b)
			p.json.b = append(p.json.b, '"')
		}
		return nil
	case 4:
		return p.array(depth, info, arg)
	case 5:
		return p.jsonObject(depth, info, arg)
	}
	p.json.room(maxScalarLen)
	p.json.b, err = p.scalar(p.json.b, major, info, arg)
	return err
}

// scalar appends the JSON text of an integer, a float, false, true or
// null whose head was read. A float keeps a fraction or exponent ("1.0",
// "1e+21") so it stays a float when the text is turned back into CBOR.
func (p *cborDecoder) scalar(b []byte, major, info byte, arg uint64) ([]byte, error) {
	switch major {
	case 0:
		return strconv.AppendUint(b, arg, 10), nil
	case 1:
		if arg <= math.MaxInt64 {
			return strconv.AppendInt(b, -1-int64(arg), 10), nil
		}
		if arg == math.MaxUint64 {
			return append(b, "-18446744073709551616"...), nil
		}
		return strconv.AppendUint(append(b, '-'), arg+1, 10), nil
	case 6:
		return b, p.errorf("tags are not supported")
	}
	// major 7
	var f float64
	switch info {
	case 20:
		return append(b, "false"...), nil
	case 21:
		return append(b, "true"...), nil
	case 22:
		return append(b, "null"...), nil
	case 25:
		f = float16(uint16(arg))
	case 26:
		f = float64(math.Float32frombits(uint32(arg)))
	case 27:
		f = math.Float64frombits(arg)
	case 31:
		return b, p.errorf("unexpected break")
	default:
		return b, p.errorf("simple value %d is not supported", arg)
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

// float16 is the value of IEEE 754 half-precision bits.
func float16(h uint16) float64 {
	exp, frac := int(h>>10&0x1f), float64(h&0x3ff)
	var f float64
	switch exp {
	case 0:
		f = math.Ldexp(frac, -24)
	case 0x1f:
		f = math.Inf(1)
		if frac != 0 {
			f = math.NaN()
		}
	default:
		f = math.Ldexp(frac+0x400, exp-25)
	}
	if h&0x8000 != 0 {
		f = math.Copysign(f, -1)
	}
	return f
}

// maxScalarLen is the longest JSON text of a CBOR number
// ("-18446744073709551616", "-2.2250738585072014e-308").
const maxScalarLen = 32

// jsonTextLen is the length of valid UTF-8 text as a JSON string.
func jsonTextLen[T string | []byte](s T) int {
	n := len(s) + 2
	for i := range len(s) {
		c := s[i]
		switch {
		case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t':
			n++
		case c < 0x20:
			n += 5
		}
	}
	return n
}

// textBuf builds a JSON text of any length in chunks that are never
// regrown, so that what it costs is its chunks and then the string that
// String copies them into.
type textBuf struct {
	b    []byte   // the chunk being written
	full [][]byte // the chunks before it
}

// room makes room for n more bytes in b. Chunks double from 256 bytes to
// 64 KiB, or are as large as n.
func (t *textBuf) room(n int) {
	if cap(t.b)-len(t.b) >= n {
		return
	}
	if len(t.b) > 0 {
		t.full = append(t.full, t.b)
	}
	t.b = make([]byte, 0, max(n, min(2*cap(t.b), 64<<10), 256))
}

// add appends a short string.
func (t *textBuf) add(s string) {
	t.room(len(s))
	t.b = append(t.b, s...)
}

// String returns the text and empties the buffer for the next one.
func (t *textBuf) String() string {
	if len(t.full) == 0 {
		s := string(t.b)
		t.b = t.b[:0]
		return s
	}
	n := len(t.b)
	for _, c := range t.full {
		n += len(c)
	}
	var s strings.Builder
	s.Grow(n)
	for _, c := range t.full {
		s.Write(c)
	}
	s.Write(t.b)
	clear(t.full)
	t.full, t.b = t.full[:0], t.b[:0]
	return s.String()
}

// appendJSONText appends valid UTF-8 text as a JSON string, as
// appendJSONString does.
func appendJSONText(b, s []byte) []byte {
	b = append(b, '"')
	start := 0
	for i, c := range s {
		if c < 0x20 || c == '"' || c == '\\' {
			b = appendEscaped(append(b, s[start:i]...), c)
			start = i + 1
		}
	}
	return append(append(b, s[start:]...), '"')
}
