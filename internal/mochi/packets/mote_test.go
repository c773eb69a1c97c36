package packets

// mote: tests of the changes Mote made to mochi's decoders.

import (
	"bytes"
	"errors"
	"testing"
)

// TestMoteSubscribeDecodeOptions: every SUBSCRIBE body whose last filter
// lacks its options (MQTT 5) or QoS (3.1.1) byte is refused as malformed;
// MQTT 5 panicked.
func TestMoteSubscribeDecodeOptions(t *testing.T) {
	cases := []struct {
		name    string
		version byte
		body    []byte
		want    error
	}{
		{"v5 one filter, no options", 5, []byte{0x00, 0x01, 0x00, 0x00, 0x01, 'a'}, ErrMalformedQos},
		{"v5 second filter, no options", 5, []byte{0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x01, 0x00, 0x01, 'b'}, ErrMalformedQos},
		{"v4 no qos", 4, []byte{0x00, 0x01, 0x00, 0x01, 'a'}, ErrMalformedQos},
		{"v5 ok", 5, []byte{0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x2d}, nil},
		{"v4 ok", 4, []byte{0x00, 0x01, 0x00, 0x01, 'a', 0x01}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pk := Packet{ProtocolVersion: c.version, FixedHeader: FixedHeader{Type: Subscribe, Qos: 1}}
			err := pk.SubscribeDecode(c.body)
			if !errors.Is(err, c.want) {
				t.Fatalf("err %v, want %v", err, c.want)
			}
			if c.want == nil && c.version == 5 {
				if f := pk.Filters[0]; f.Filter != "a" || f.Qos != 1 || !f.NoLocal || !f.RetainAsPublished || f.RetainHandling != 2 {
					t.Errorf("options decoded as %+v", f)
				}
			}
		})
	}
}

// FuzzSubscribeDecode: no SUBSCRIBE body makes the decoder panic.
func FuzzSubscribeDecode(f *testing.F) {
	f.Add(byte(5), []byte{0x00, 0x01, 0x00, 0x00, 0x01, 'a'})
	f.Add(byte(5), []byte{0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x01})
	f.Add(byte(4), []byte{0x00, 0x01, 0x00, 0x01, 'a', 0x01})
	f.Fuzz(func(t *testing.T, v byte, body []byte) {
		pk := Packet{ProtocolVersion: 4 + v%2, FixedHeader: FixedHeader{Type: Subscribe, Qos: 1}}
		if err := pk.SubscribeDecode(body); err == nil {
			for _, sub := range pk.Filters {
				if sub.Qos > 2 {
					t.Fatalf("QoS %d accepted", sub.Qos)
				}
			}
		}
	})
}

// TestMoteDecodeLengthFourBytes: a variable byte integer is at most four
// bytes (§1.5.5); upstream took a fifth byte of 0 and read continuation
// bytes without end.
func TestMoteDecodeLengthFourBytes(t *testing.T) {
	cases := []struct {
		in      []byte
		n, bu   int
		wantErr error
	}{
		{[]byte{0x00}, 0, 1, nil},
		{[]byte{0xFF, 0xFF, 0xFF, 0x7F}, 268435455, 4, nil},
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x00}, 0, 5, ErrMalformedVariableByteInteger},
		{[]byte{0xFF, 0xFF, 0xFF, 0xFF, 0x00}, 0, 5, ErrMalformedVariableByteInteger},
		{[]byte{0xFF, 0xFF, 0xFF, 0xFF, 0x7F}, 0, 5, ErrMalformedVariableByteInteger},
		{[]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, 0, 5, ErrMalformedVariableByteInteger},
	}
	for _, c := range cases {
		n, bu, err := DecodeLength(bytes.NewReader(c.in))
		if n != c.n || !errors.Is(err, c.wantErr) || (err == nil && bu != c.bu) {
			t.Errorf("% x: got %d %d %v, want %d %d %v", c.in, n, bu, err, c.n, c.bu, c.wantErr)
		}
	}
}

// TestMoteWillPropertiesProtocolError: a Will property given twice is a
// Protocol Error (§3.1.3.2: "It is a Protocol Error to include ... more
// than once"): 0x82, as in the CONNECT's own properties; upstream said
// 0x81 for any error in the Will Properties. One past their length stays
// malformed (0x81).
func TestMoteWillPropertiesProtocolError(t *testing.T) {
	connect := func(willProps ...byte) []byte {
		b := []byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x06, 0, 30, 0, 0, 1, 'c'} // will flag, clean start; no properties; client id "c"
		b = append(append(b, byte(len(willProps))), willProps...)
		return append(b, 0, 1, 't', 0, 1, 'p') // will topic "t", payload "p"
	}
	cases := []struct {
		name string
		body []byte
		want byte
	}{
		{"will delay twice", connect(0x18, 0, 0, 0, 1, 0x18, 0, 0, 0, 2), 0x82},
		{"content type twice", connect(0x03, 0, 1, 'a', 0x03, 0, 1, 'b'), 0x82},
		{"past the length", append(connect(0x18, 0, 0)[:14], 3, 0x18, 0, 0), 0x81},
		{"ok", connect(0x18, 0, 0, 0, 1), 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pk := Packet{FixedHeader: FixedHeader{Type: Connect}}
			err := pk.ConnectDecode(c.body)
			var code Code
			if errors.As(err, &code) != (c.want != 0) || code.Code != c.want {
				t.Errorf("got %v, want code %#x", err, c.want)
			}
			if c.want != 0 && !errors.Is(err, ErrMalformedWillProperties) {
				t.Errorf("%v is not ErrMalformedWillProperties", err)
			}
		})
	}
}

// TestCheckMinimalBoundaries (mote change 45): at every boundary of the Variable
// Byte Integer's lengths the minimal encoding passes CheckMinimal and the
// same value in one byte more is refused; 5 bytes never decode.
func TestCheckMinimalBoundaries(t *testing.T) {
	for _, n := range []int64{0, 1, 127, 128, 16383, 16384, 2097151, 2097152, 268435455} {
		var b bytes.Buffer
		encodeLength(&b, n)
		minimal := b.Bytes()
		v, bu, err := DecodeLength(bytes.NewReader(minimal))
		if err != nil || int64(v) != n || bu != len(minimal) || CheckMinimal("x", v, bu) != nil {
			t.Errorf("%d as % x: %d in %d bytes, %v, CheckMinimal %v", n, minimal, v, bu, err, CheckMinimal("x", v, bu))
		}
		long := append(append([]byte{}, minimal...), 0)
		long[len(long)-2] |= 0x80
		v, bu, err = DecodeLength(bytes.NewReader(long))
		if len(long) > 4 {
			if err == nil {
				t.Errorf("%d as % x: decoded, want an error", n, long)
			}
			continue
		}
		if err != nil || int64(v) != n || CheckMinimal("x", v, bu) == nil {
			t.Errorf("%d as % x: %d in %d bytes, %v: CheckMinimal passed it", n, long, v, bu, err)
		}
	}
}
