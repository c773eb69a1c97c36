package wire

import "testing"

// TestCodecOriginal: the original dialect's output (SPEC §7) — every leaf
// a string of the payload bytes, a bare value at the root the payload
// itself, null at the root nothing.
func TestCodecOriginal(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(e *Encoder)
		want  string
	}{
		{"root string", func(e *Encoder) { e.Value(Value{Kind: String, Data: "ON"}) }, `ON`},
		{"root number", func(e *Encoder) { e.Value(Value{Kind: JSON, Data: "21.5"}) }, `21.5`},
		{"root null", func(e *Encoder) { e.Null() }, ``},
		{"root none", func(e *Encoder) { e.Value(Value{}) }, ``},
		{"leaves", func(e *Encoder) {
			e.BeginObject()
			e.Key("s")
			e.Value(Value{Kind: String, Data: `say "hi"`})
			e.Key("n")
			e.Value(Value{Kind: JSON, Data: "1"})
			e.Key("o")
			e.Value(Value{Kind: Object, Data: `{"a":1}`})
			e.Key("b")
			e.Value(Value{Kind: Bytes, Data: "\xff\x00"})
			e.Key("gone")
			e.Null()
			e.Key("none")
			e.Value(Value{})
			e.Key("sub")
			e.BeginObject()
			e.Key("")
			e.Value(Value{Kind: JSON, Data: "true"})
			e.EndObject()
			e.EndObject()
		}, `{"s":"say \"hi\"","n":"1","o":"{\"a\":1}","b":"` + "\ufffd" + `\u0000","gone":null,"none":null,"sub":{"":"true"}}`},
	} {
		e := NewEncoder(CodecOriginal, nil)
		tc.write(e)
		if got := string(e.Bytes()); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
	if _, err := ParseCodec("original"); err == nil {
		t.Error(`ParseCodec("original") accepted: no client may choose the dialect's codec`)
	}
	if _, err := ParseSubscribe("$sync.original/a"); err == nil {
		t.Error(`$sync.original/a accepted`)
	}
}
