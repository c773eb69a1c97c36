package wire

import (
	"math"
	"strconv"
	"unicode/utf8"

	"github.com/tidwall/gjson"
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
// means a deleted row. An empty payload is the empty string.
func TypePlain(payload []byte) Value {
	s := string(payload)
	return Value{Kind: plainKind(s), Data: s}
}

func plainKind(s string) Kind {
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
