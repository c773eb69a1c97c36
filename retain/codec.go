package retain

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mote-mqtt/mote/wire"
)

// ErrMalformed is an encoded change (ReadChange) that cannot be read.
var ErrMalformed = errors.New("retain: malformed change")

// AppendChange appends c to dst in the encoding a replicated row log
// carries (the cluster's, docs/cluster.md): the topic's length (uvarint),
// the topic, the row value's length (uvarint), then the row value exactly
// as the store writes it (flags byte, revision, time, payload; see the
// package doc's Format), except that a deletion is written too, with
// type 0 and no payload, and bit 6 of the flags byte is QoSOnly. It
// refuses, wrapping ErrUnstorable, a change whose kind or QoS has no flags
// byte. Sizes are the caller's to bound.
func AppendChange(dst []byte, c Change) ([]byte, error) {
	if c.Value.Kind == wire.None {
		c.Value.Data = "" // a deletion has no payload
	}
	dst = binary.AppendUvarint(dst, uint64(len(c.Topic)))
	dst = append(dst, c.Topic...)
	dst = binary.AppendUvarint(dst, uint64(rowHead+len(c.Value.Data)))
	return appendRow(dst, c, true)
}

// ReadChange decodes the change at the front of src (written by
// AppendChange) and returns the bytes after it. Topic and payload are
// copies; Seq is zero. A truncated or malformed change is an error
// wrapping ErrMalformed.
func ReadChange(src []byte) (Change, []byte, error) {
	n, k := binary.Uvarint(src)
	if k <= 0 || n > uint64(len(src)-k) {
		return Change{}, nil, fmt.Errorf("%w: topic length", ErrMalformed)
	}
	topic := string(src[k : k+int(n)])
	src = src[k+int(n):]
	n, k = binary.Uvarint(src)
	if k <= 0 || n > uint64(len(src)-k) {
		return Change{}, nil, fmt.Errorf("%w: row of %.100q: value length", ErrMalformed, topic)
	}
	c, err := readRow(topic, src[k:k+int(n)], true)
	if err != nil {
		return Change{}, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return c, src[k+int(n):], nil
}
