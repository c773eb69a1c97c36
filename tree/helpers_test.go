package tree

import (
	"encoding/json"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/mote-mqtt/mote/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// toJSON re-encodes a tree payload in codec c as JSON for comparison,
// byte strings as base64 like the JSON codec.
func toJSON(t testing.TB, c wire.Codec, b []byte) []byte {
	t.Helper()
	switch c {
	case wire.CodecCBOR:
		return cborToJSON(t, b)
	case wire.CodecMsgPack:
		var v any
		if err := msgpack.Unmarshal(b, &v); err != nil {
			t.Fatalf("invalid MessagePack %x: %v", b, err)
		}
		out, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("MessagePack %x has no JSON form: %v", b, err)
		}
		return out
	}
	return b
}

// inCodec re-encodes a JSON tree payload in codec c; ok is false if the
// JSON is not a tree payload.
func inCodec(c wire.Codec, js []byte) (out []byte, ok bool) {
	d, _ := wire.NewDecoder(wire.DefaultLimits())
	n, err := d.Decode(wire.CodecJSON, js)
	if err != nil {
		return nil, false
	}
	e := wire.NewEncoder(c, nil)
	var walk func(n *wire.Node)
	walk = func(n *wire.Node) {
		switch {
		case n.Null:
			e.Null()
		case n.Obj:
			e.BeginObject()
			for i := range n.Kids {
				e.Key(n.Kids[i].Key)
				walk(&n.Kids[i])
			}
			e.EndObject()
		default:
			e.Value(n.Value)
		}
	}
	walk(&n)
	return e.Bytes(), true
}

// cborToJSON re-encodes a CBOR tree as JSON for comparison, byte strings as
// base64 like the JSON codec.
func cborToJSON(t testing.TB, b []byte) []byte {
	t.Helper()
	dm, _ := cbor.DecOptions{DefaultMapType: mapType}.DecMode()
	var v any
	if err := dm.Unmarshal(b, &v); err != nil {
		t.Fatalf("invalid CBOR %x: %v", b, err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("CBOR %x has no JSON form: %v", b, err)
	}
	return out
}

var mapType = reflectMapType()

func stringValue(s string) wire.Value { return wire.Value{Kind: wire.String, Data: s} }
