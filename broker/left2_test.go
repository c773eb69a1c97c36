package broker

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// connectEmptyID is a CONNECT with an empty client id and the given
// CleanSession (3.1.1) or Clean Start (MQTT 5) flag.
func connectEmptyID(v byte, clean bool) []byte {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: clean, Keepalive: 30},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// TestConnectEmptyClientID: an MQTT 3.1.1 CONNECT with a zero-byte client
// id and CleanSession 0 gets CONNACK 0x02 Identifier rejected and is
// closed [MQTT-3.1.3-8] (mochi answered 0x80, which 3.1.1 reserves); with
// CleanSession 1 the server assigns an id [MQTT-3.1.3-6]. MQTT 5 assigns
// one whatever Clean Start says, and names it in the CONNACK's Assigned
// Client Identifier [MQTT-3.1.3-7] [MQTT-3.2.2-16].
func TestConnectEmptyClientID(t *testing.T) {
	b := start(t, Options{})
	cases := []struct {
		name  string
		v     byte
		clean bool
		want  byte // CONNACK return or reason code
	}{
		{"v3 persistent", 4, false, 0x02},
		{"v3 clean", 4, true, 0x00},
		{"v5 clean start 0", 5, false, 0x00},
		{"v5 clean start 1", 5, true, 0x00},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", b.TCPAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(testTimeout))
			c.Write(connectEmptyID(tc.v, tc.clean))
			r := bufio.NewReader(c)
			h, body, err := readPacketBody(r)
			if err != nil || h != 0x20 || len(body) < 2 {
				t.Fatalf("no CONNACK: %#x % x %v", h, body, err)
			}
			if body[1] != tc.want {
				t.Fatalf("CONNACK code %#x, want %#x", body[1], tc.want)
			}
			if tc.want != 0 {
				if rest, err := io.ReadAll(r); err != nil || len(rest) > 0 {
					t.Errorf("after CONNACK %#x: % x %v, want the connection closed", tc.want, rest, err)
				}
				return
			}
			if tc.v == 5 {
				pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack, Remaining: len(body)}, ProtocolVersion: 5}
				if err := pk.ConnackDecode(body); err != nil {
					t.Fatal(err)
				}
				if pk.Properties.AssignedClientID == "" {
					t.Fatalf("no Assigned Client Identifier in CONNACK %+v", pk.Properties)
				}
				waitFor(t, "the assigned id filed", func() bool { return b.connByID(pk.Properties.AssignedClientID) != nil })
			}
			// The connection is served: a PINGREQ is answered.
			c.Write([]byte{0xc0, 0x00})
			if h, _, err := readPacketBody(r); err != nil || h != 0xd0 {
				t.Fatalf("no PINGRESP: %#x %v", h, err)
			}
		})
	}
	alive(t, b)
}
