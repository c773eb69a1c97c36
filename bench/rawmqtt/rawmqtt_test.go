package rawmqtt

import (
	"bufio"
	"bytes"
	"testing"
)

func TestVarint(t *testing.T) {
	for _, c := range []struct {
		n    int
		want []byte
	}{
		{0, []byte{0}},
		{127, []byte{0x7f}},
		{128, []byte{0x80, 0x01}},
		{16_383, []byte{0xff, 0x7f}},
		{2_097_152, []byte{0x80, 0x80, 0x80, 0x01}},
		{MaxBody, []byte{0xff, 0xff, 0xff, 0x7f}},
	} {
		if got := AppendVarint(nil, c.n); !bytes.Equal(got, c.want) {
			t.Errorf("AppendVarint(%d) = % x, want % x", c.n, got, c.want)
		}
	}
}

func TestReadRoundTrip(t *testing.T) {
	for _, body := range [][]byte{nil, AppendString(nil, "a/b"), bytes.Repeat([]byte{7}, 200)} {
		first, got, err := Read(bufio.NewReader(bytes.NewReader(Packet(0x30, body))))
		if err != nil || first != 0x30 || !bytes.Equal(got, body) {
			t.Errorf("Read(Packet(0x30, %d bytes)) = %#x, %d bytes, %v", len(body), first, len(got), err)
		}
	}
}

func TestReadRefusesLongLength(t *testing.T) {
	for _, in := range [][]byte{
		{0x30, 0x80, 0x80, 0x80, 0x80, 0x01}, // five length bytes
	} {
		if _, _, err := Read(bufio.NewReader(bytes.NewReader(in))); err == nil {
			t.Errorf("Read(% x): no error", in)
		}
	}
}
