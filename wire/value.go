package wire

import (
	"strconv"
	"unicode/utf8"
)

// Kind is the type of a row value, used when the row is put into a tree.
type Kind uint8

const (
	// None marks the absence of a value; it is never stored.
	None Kind = iota
	// String is UTF-8 text; Data holds the text without quotes.
	String
	// Bytes is a byte string; Data holds the raw bytes.
	Bytes
	// JSON is a number, boolean, JSON string or array; Data holds its JSON text.
	JSON
	// Object is a JSON object; Data holds its JSON text.
	Object
	// Raw is a value already encoded in the codec of the tree it is put
	// in (an answer the broker builds, such as a $hist leaf); it is never
	// stored.
	Raw
)

// String names the kind for logs and errors.
func (k Kind) String() string {
	switch k {
	case None:
		return "none"
	case String:
		return "string"
	case Bytes:
		return "bytes"
	case JSON:
		return "json"
	case Object:
		return "object"
	case Raw:
		return "raw"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Value is a row's value: the payload that plain subscribers receive, byte
// for byte, plus the kind that says how it sits in a tree.
//
// Data is a string so that a stored value is immutable and can be shared
// between the row store, encoded trees and deliveries without copying.
type Value struct {
	Kind Kind
	Data string
}

// TypePlain types the payload of a plain PUBLISH (SPEC §1): valid JSON text
// becomes that JSON value, other valid UTF-8 a string, anything else bytes.
// The JSON text "null" is typed as the string "null", because null in a tree
// means a deleted row, and so is a number beyond float64's range (1e400),
// also inside an object or array, and an object with a duplicate key
// (treeHolds: what a tree publish's leaf could not be). An empty payload is
// the empty string.
//
// JSON whose objects and arrays nest deeper than DefaultLimits().MaxDepth is
// typed as a string: a tree could not hold it. Its bytes are delivered to
// plain subscribers unchanged all the same. The work is one pass over the
// payload (two if it is not JSON, or is an object or array), and nothing is
// allocated but the Value's copy of the payload.
func TypePlain(payload []byte) Value { return typePlain(payload, DefaultLimits().MaxDepth) }

// TypePlain is the package's TypePlain with the Decoder's depth limit.
func (d *Decoder) TypePlain(payload []byte) Value { return typePlain(payload, d.lim.MaxDepth) }

func typePlain(payload []byte, maxDepth int) Value {
	s := string(payload)
	return Value{Kind: plainKind(s, maxDepth), Data: s}
}

// treeHolds reports whether the object or array at s[i], JSON text that
// scanJSON accepted, is a value every codec's tree holds: no object with a
// duplicate key and no number beyond float64, the checks a tree publish's
// leaf passes (SPEC §5). Text that fails them is typed as a string, as a
// bare number beyond float64 is: a CBOR or MessagePack tree would carry a
// map with a duplicate key, which decoders refuse whole, or an infinity.
// It allocates nothing while the open objects hold at most 32 keys, none
// escaped, and nest at most 32 deep; past that it asks jsonDecoder.skim.
func treeHolds(s string, i int) bool {
	var keyBuf [32]string
	var baseBuf [32]int32 // for each open container: where its keys start in keys
	var objBuf [32]bool   // for each open container: an object?
	keys, bases, objs := keyBuf[:0], baseBuf[:0], objBuf[:0]
	slow := func() bool {
		p := jsonDecoder{s: s, i: i}
		return p.skim() == nil
	}
	for j := i; ; {
		j = skipSpace(s, j)
		switch c := s[j]; c {
		case '{', '[':
			if len(bases) == cap(bases) {
				return slow()
			}
			bases, objs = append(bases, int32(len(keys))), append(objs, c == '{')
			j++
			if c == '{' {
				if j = skipSpace(s, j); s[j] == '"' {
					goto key
				}
			}
			continue
		case '}', ']':
			keys = keys[:bases[len(bases)-1]]
			bases, objs = bases[:len(bases)-1], objs[:len(objs)-1]
			if j++; len(bases) == 0 {
				return true
			}
			continue
		case ',':
			if j = skipSpace(s, j+1); objs[len(objs)-1] {
				goto key
			}
			continue
		case '"':
			j, _ = stringEnd(s, j)
			continue
		case 't', 'f', 'n':
			j += len(literal(c))
			continue
		default:
			end := numberEnd(s, j)
			if floatOverflows(s[j:end]) {
				return false
			}
			j = end
			continue
		}
	key: // s[j] is the '"' of a key
		end, esc := stringEnd(s, j)
		if esc || len(keys) == cap(keys) {
			return slow()
		}
		k := s[j+1 : end-1]
		for _, other := range keys[bases[len(bases)-1]:] {
			if other == k {
				return false
			}
		}
		keys = append(keys, k)
		j = skipSpace(s, end) + 1 // past ':'
	}
}

func plainKind(s string, maxDepth int) Kind {
	if s == "" {
		return String
	}
	if _, bad := scanJSON(s, maxDepth, nil, false); bad.what != "" {
		if utf8.ValidString(s) {
			return String
		}
		return Bytes
	}
	switch i := skipSpace(s, 0); s[i] {
	case '{':
		if !treeHolds(s, i) {
			return String
		}
		return Object
	case 'n':
		return String
	case '[':
		if !treeHolds(s, i) {
			return String
		}
	case '"', 't', 'f':
	default:
		if floatOverflows(s[i:numberEnd(s, i)]) {
			return String
		}
	}
	return JSON
}
