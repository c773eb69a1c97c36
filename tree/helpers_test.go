package tree

import (
	"encoding/json"
	"github.com/mote-mqtt/mote/wire"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

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
