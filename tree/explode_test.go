package tree

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"

	"github.com/fxamacker/cbor/v2"
)

func TestLimits(t *testing.T) {
	ps, err := NewParser(Limits{MaxPayload: 64, MaxRows: 3, MaxDepth: 3})
	if err != nil {
		t.Fatal(err)
	}
	tree := wire.Publish{Op: wire.PubTree, Topic: "a"}
	for _, tt := range []struct {
		payload string
		err     error
	}{
		{`{"a":1,"b":2,"c":3}`, nil},
		{`{"a":1,"b":2,"c":3,"d":4}`, ErrLimit},
		{`{"a":{"b":{"c":1}}}`, nil},
		{`{"a":{"b":{"c":{"d":1}}}}`, wire.ErrPayload},
		{`{"a":"` + strings.Repeat("x", 64) + `"}`, wire.ErrPayload},
	} {
		_, err := ps.Op(tree, []byte(tt.payload), true, 0)
		if !errors.Is(err, tt.err) {
			t.Errorf("%s: %v, want %v", tt.payload, err, tt.err)
		}
	}
	for _, bad := range []Limits{{MaxPayload: 0, MaxRows: 1, MaxDepth: 1}, {MaxPayload: 1, MaxRows: 0, MaxDepth: 1}, {MaxPayload: 1, MaxRows: 1}} {
		if _, err := NewParser(bad); err == nil {
			t.Errorf("NewParser(%+v) accepted", bad)
		}
	}
}

func TestExplodeCBOR(t *testing.T) {
	ps, _ := NewParser(DefaultLimits())
	// {"is_on": 1, "raw": h'00ff', "f": 1.5}
	payload := []byte{0xa3, 0x61, 'f', 0xf9, 0x3e, 0x00, 0x63, 'r', 'a', 'w', 0x42, 0x00, 0xff, 0x65, 'i', 's', '_', 'o', 'n', 0x01}
	op, err := ps.Op(wire.Publish{Op: wire.PubTree, Codec: wire.CodecCBOR, Topic: "d"}, payload, true, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]wire.Value{}
	for _, r := range op.Rows {
		got[r.Topic] = r.Value
	}
	want := map[string]wire.Value{
		"d/is_on": {Kind: wire.JSON, Data: "1"},
		"d/raw":   {Kind: wire.Bytes, Data: "\x00\xff"},
		"d/f":     {Kind: wire.JSON, Data: "1.5"},
	}
	if len(got) != len(want) {
		t.Fatalf("rows %v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %+v, want %+v", k, got[k], v)
		}
	}
	// CBOR → rows → CBOR: the snapshot in CBOR gives the same items back.
	tr := New()
	tr.Apply([]Op{op})
	snap := tr.Snapshot("d/#", wire.CodecCBOR, nil)
	var gotSnap, wantSnap any
	if err := cbor.Unmarshal(snap, &gotSnap); err != nil {
		t.Fatal(err)
	}
	cbor.Unmarshal(payload, &wantSnap)
	if !reflect.DeepEqual(gotSnap, wantSnap) {
		t.Errorf("CBOR snapshot %v, want %v", gotSnap, wantSnap)
	}
}

// FuzzPublish drives a whole publish, prefix to applied rows, with any topic
// and payload: it must never panic, and an accepted publish's rows must be
// valid topic names that are not reserved.
func FuzzPublish(f *testing.F) {
	for _, ex := range []struct{ topic, payload string }{
		{"$tree/light/bedroom", `{"is_on":1,"brightness":55}`},
		{"$tree.replace/a/+/#", `{"x":{"/":1,"y":null}}`},
		{"$set/a/+", `0`},
		{"$tree/#", `{"a":{"b":[1,2]}}`},
		{"a/b", `21.5`},
	} {
		f.Add(ex.topic, []byte(ex.payload))
	}
	ps, _ := NewParser(Limits{MaxPayload: 1 << 16, MaxRows: 1000, MaxDepth: 16})
	tr := New()
	tr.Subscribe(&Sub{Owner: "o", Topic: "$sync/#", Filter: "#"})
	tr.Subscribe(&Sub{Owner: "o", Topic: "$sync.cbor/+/+", Filter: "+/+", Codec: wire.CodecCBOR})
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		p, err := wire.ParsePublish(topic)
		if err != nil || (p.Op == wire.PubPlain && wire.ValidateTopic(topic) != nil) {
			return
		}
		op, err := ps.Op(p, payload, true, 1)
		if err != nil {
			return
		}
		for _, r := range op.Rows {
			if err := wire.ValidateTopic(r.Topic); err != nil || (p.Op != wire.PubPlain && Reserved(r.Topic)) {
				t.Fatalf("row topic %q: %v", r.Topic, err)
			}
		}
		res := tr.Apply([]Op{op})
		// The store holds what was applied: each row's last value.
		last := map[string]wire.Value{}
		for _, a := range res.Applied {
			for _, r := range a.Rows {
				if r.Retain {
					last[r.Topic] = r.Value
				}
			}
		}
		for topic, v := range last {
			got, ok := tr.store.Get(topic)
			if ok != (v.Kind != wire.None) || got != v {
				t.Fatalf("row %q: the store holds %v %v, applied %v", topic, got, ok, v)
			}
		}
	})
}
