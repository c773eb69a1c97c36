package broker

import (
	"errors"
	"fmt"
	"io"
	"strings"
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

// TestPacketSizeLimitExact: Options.MaxPacketSize (the CONNACK's Maximum
// Packet Size) is the whole packet, fixed header and its length bytes
// included (MQTT 5 §3.1.2.11.4): a PUBLISH of exactly that many bytes (a
// small body, given memory by PublishBody) is delivered, one byte more is
// refused (MQTT 5 DISCONNECT 0x95; 3.1.1 closed), also with a two-byte
// length.
func TestPacketSizeLimitExact(t *testing.T) {
	tests := []struct {
		max, total int
		ok         bool
	}{
		{100, 100, true}, {100, 101, false}, {100, 102, false},
		{200, 200, true}, {200, 201, false}, // a two-byte length
	}
	for _, tt := range tests {
		for _, v := range []byte{4, 5} {
			t.Run(fmt.Sprintf("v%d/max%d/%d", v, tt.max, tt.total), func(t *testing.T) {
				br := start(t, Options{MaxPacketSize: uint32(tt.max)})
				live := dial3(t, br, "rtfanin-live", true)
				live.sub(t, "t/#", 0)
				pub := dialBenchV(t, br.TCPAddr(), "rtfanin-pub", v)
				pub.c.SetDeadline(time.Now().Add(testTimeout)) //nolint:errcheck // a hang fails the read
				p := publish5q1("t/a", 1, nil, "", false)
				head := len(p) - int(p[1]) // fixed header
				body := p[head:]
				if v == 4 {
					body = body[:len(body)-1] // no properties in 3.1.1
				}
				length := tt.total - 1 - 1
				if length > 127 {
					length--
				}
				payload := strings.Repeat("x", length-len(body))
				body = append(append([]byte(nil), body...), payload...)
				p = append(append([]byte{0x32}, varint(len(body))...), body...)
				if len(p) != tt.total {
					t.Fatalf("built %d bytes, want %d", len(p), tt.total)
				}
				pub.write(t, p)
				h, err := pub.r.ReadByte()
				switch {
				case tt.ok && (err != nil || h != 0x40):
					t.Fatalf("got %#x, %v; want a PUBACK", h, err)
				case tt.ok:
					if got := live.wait(t, 1); len(got[0].payload) != len(payload) {
						t.Errorf("delivered %d bytes, want %d", len(got[0].payload), len(payload))
					}
				case v == 5 && (err != nil || h != 0xe0):
					t.Errorf("got %#x, %v; want DISCONNECT 0x95", h, err)
				case v == 5:
					if _, err := pub.r.ReadByte(); err != nil {
						t.Fatal(err)
					}
					if rc, err := pub.r.ReadByte(); err != nil || rc != 0x95 {
						t.Errorf("DISCONNECT %#x, %v; want 0x95", rc, err)
					}
				case !errors.Is(err, io.EOF):
					t.Errorf("got %#x, %v; want the connection closed", h, err)
				}
			})
		}
	}
}
