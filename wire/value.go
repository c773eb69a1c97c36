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
// means a deleted row, and so is a number beyond float64's range (1e400). An
// empty payload is the empty string.
//
// JSON whose objects and arrays nest deeper than DefaultLimits().MaxDepth is
// typed as a string: a tree could not hold it. Its bytes are delivered to
// plain subscribers unchanged all the same. The work is one pass over the
// payload (two if it is not JSON), and nothing is allocated but the Value's
// copy of the payload.
func TypePlain(payload []byte) Value { return typePlain(payload, DefaultLimits().MaxDepth) }

// TypePlain is the package's TypePlain with the Decoder's depth limit.
func (d *Decoder) TypePlain(payload []byte) Value { return typePlain(payload, d.lim.MaxDepth) }

func typePlain(payload []byte, maxDepth int) Value {
	s := string(payload)
	return Value{Kind: plainKind(s, maxDepth), Data: s}
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
		return Object
	case 'n':
		return String
	case '[', '"', 't', 'f':
	default:
		if floatOverflows(s[i:numberEnd(s, i)]) {
			return String
		}
	}
	return JSON
}
