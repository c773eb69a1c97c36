package broker

import (
	"errors"
	"io"
	"testing"
	"time"
)

// TestPublishTopicNameAnswers: a PUBLISH topic name with a wildcard,
// empty without an alias, with NUL or invalid UTF-8 is refused when the
// packet is decoded, before processPublish's IsValidFilter (mochi change
// 57 checks only wildcards there, for topics not starting with '$'): an
// MQTT 5 client gets DISCONNECT 0x82 (wildcard, empty) or 0x81 (malformed
// string), a 3.1.1 client is closed; nothing is dropped in silence. A
// "$share/…" topic is the broker's (OnPacketRead takes it aside): it is
// refused in the PUBACK (reason >= 0x80 for MQTT 5, a plain PUBACK and a
// report for 3.1.1).
func TestPublishTopicNameAnswers(t *testing.T) {
	tests := []struct {
		topic string
		code  byte // the MQTT 5 DISCONNECT's reason; 0: a PUBACK refuses it
	}{
		{"t/+", 0x82}, {"#", 0x82}, {"a/b#", 0x82}, {"+x", 0x82}, {"$x/+", 0x82}, {"$share/g/#", 0},
		{"", 0x82},
		{"t/\x00a", 0x81}, {"t/\xff", 0x81}, {"t/\xc0\x80", 0x81}, {"\xed\xa0\x80", 0x81},
	}
	br := start(t, Options{})
	for _, tt := range tests {
		for _, v := range []byte{4, 5} {
			pub := dialBenchV(t, br.TCPAddr(), "rtfanin-topic", v)
			pub.c.SetDeadline(time.Now().Add(testTimeout)) //nolint:errcheck // a hang fails the read
			var p []byte
			if v == 5 {
				p = publish5q1(tt.topic, 7, nil, "x", false)
			} else {
				body := append([]byte{0, byte(len(tt.topic))}, tt.topic...)
				body = append(body, 0, 7, 'x')
				p = append([]byte{0x32, byte(len(body))}, body...)
			}
			pub.write(t, p)
			var got [5]byte
			need := 3 // a DISCONNECT's type, length and reason
			if tt.code == 0 {
				need = 4 + int(v/5) // a PUBACK's type, length, id (and reason)
			}
			n, err := io.ReadFull(pub.r, got[:need])
			switch {
			case tt.code == 0 && (err != nil || got[0] != 0x40 || v == 5 && got[4] < 0x80):
				t.Errorf("%d %q: read %x, %v; want a PUBACK refusing it", v, tt.topic, got[:n], err)
			case tt.code == 0:
			case v == 4 && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF):
				t.Errorf("3.1.1 %q: read %x, %v; want the connection closed", tt.topic, got[:n], err)
			case v == 5 && (err != nil || got[0] != 0xe0 || got[2] != tt.code):
				t.Errorf("5 %q: read %x, %v; want DISCONNECT %#x", tt.topic, got[:n], err, tt.code)
			}
			pub.c.Close()
		}
	}
}
