package retain

import (
	"errors"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

func TestChangeCodec(t *testing.T) {
	cases := []Change{
		{Topic: "a/b", Value: wire.Value{Kind: wire.String, Data: "ON"}, QoS: 1, Rev: 7, MS: 1700000000000},
		{Topic: "a", Value: wire.Value{Kind: wire.JSON, Data: "21.5"}, MS: -1},
		{Topic: "x/y/z", Value: wire.Value{Kind: wire.Object, Data: `{"a":1}`}, QoS: 2, QoSOnly: true},
		{Topic: "bin", Value: wire.Value{Kind: wire.Bytes, Data: "\x00\xff"}},
		{Topic: "gone", Value: wire.Value{Kind: wire.None, Data: "ignored"}, Rev: 9, MS: 3},
		{Topic: "", Value: wire.Value{Kind: wire.String}},
	}
	var buf []byte
	for _, c := range cases {
		var err error
		if buf, err = AppendChange(buf, c); err != nil {
			t.Fatalf("append %+v: %v", c, err)
		}
	}
	rest := buf
	for _, want := range cases {
		got, r, err := ReadChange(rest)
		if err != nil {
			t.Fatalf("read %q: %v", want.Topic, err)
		}
		if want.Value.Kind == wire.None {
			want.Value.Data = ""
		}
		if got != want {
			t.Fatalf("got %+v, want %+v", got, want)
		}
		rest = r
	}
	if len(rest) != 0 {
		t.Fatalf("%d bytes left", len(rest))
	}
	for _, bad := range []Change{
		{Topic: "a", Value: wire.Value{Kind: wire.Raw, Data: "x"}},
		{Topic: "a", Value: wire.Value{Kind: wire.String}, QoS: 3},
	} {
		if _, err := AppendChange(nil, bad); !errors.Is(err, ErrUnstorable) {
			t.Errorf("append %+v: %v, want ErrUnstorable", bad, err)
		}
	}
	for _, bad := range [][]byte{
		{}, {5, 'a'}, {1, 'a'}, {1, 'a', 2, 1, 0}, {1, 'a', 17, 0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		{1, 'a', 18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 'x'}, // a deletion with a payload
		{1, 'a', 17, 0xb1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},      // bit 7
	} {
		if _, _, err := ReadChange(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("read %x: %v, want ErrMalformed", bad, err)
		}
	}
}

// FuzzReadChange: any input is read or refused, never a panic; what is
// read encodes back to the same bytes.
func FuzzReadChange(f *testing.F) {
	b, _ := AppendChange(nil, Change{Topic: "a/b", Value: wire.Value{Kind: wire.String, Data: "ON"}, QoS: 1, Rev: 7, MS: 5})
	b, _ = AppendChange(b, Change{Topic: "d", Value: wire.Value{Kind: wire.None}, QoSOnly: true})
	f.Add(b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		for len(data) > 0 {
			c, rest, err := ReadChange(data)
			if err != nil {
				return
			}
			again, err := AppendChange(nil, c)
			if err != nil {
				t.Fatalf("re-encode %+v: %v", c, err)
			}
			if c2, _, err := ReadChange(again); err != nil || c2 != c {
				t.Fatalf("round trip %+v: %+v %v", c, c2, err)
			}
			data = rest
		}
	})
}
