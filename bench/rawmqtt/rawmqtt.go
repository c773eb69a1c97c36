// Package rawmqtt writes and reads MQTT packets byte by byte, for the
// attack and load tools under bench/ (f34attack, logflood, refuseflood),
// which send what no client library would: refused, malformed and
// oversized packets, floods on raw connections. It only frames packets;
// the tools build the bodies. No state: every function is pure or reads
// only its argument.
package rawmqtt

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// MaxBody bounds the body Read accepts: the largest MQTT packet
// (268,435,455 bytes of Remaining Length).
const MaxBody = 268_435_455

// AppendString appends s as an MQTT UTF-8 string: its length in two
// bytes, then its bytes.
func AppendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// AppendVarint appends n as an MQTT Variable Byte Integer (7 bits a byte,
// least significant first).
func AppendVarint(b []byte, n int) []byte {
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

// Packet frames body as one packet whose first byte is first (type and
// flags): the byte, the body's length, the body.
func Packet(first byte, body []byte) []byte {
	return append(AppendVarint([]byte{first}, len(body)), body...)
}

// Read reads one packet from r: its first byte and its body. A Remaining
// Length in more than four bytes, or over MaxBody, fails.
func Read(r *bufio.Reader) (first byte, body []byte, err error) {
	first, err = r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mul := 0, 1
	for i := 0; ; i++ {
		if i == 4 {
			return 0, nil, fmt.Errorf("rawmqtt: remaining length over four bytes")
		}
		d, err := r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(d&0x7f) * mul
		mul *= 128
		if d&0x80 == 0 {
			break
		}
	}
	if n > MaxBody {
		return 0, nil, fmt.Errorf("rawmqtt: remaining length %d over %d", n, MaxBody)
	}
	body = make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return first, body, nil
}
