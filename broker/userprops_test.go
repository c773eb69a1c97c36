package broker

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// quotaProps is the properties of an MQTT 5 refusal: Reason String
// "quota exceeded", as hex.
var quotaProps = fmt.Sprintf("11 1f 00 0e % x", "quota exceeded")

// TestRefuseUserProperties: MQTT 5 User Properties past
// max_user_properties (1,024) or max_user_property_bytes (64 KiB) in one
// packet are refused with 0x97 Quota exceeded by the packet's own
// acknowledgement, and nothing else of the connection is lost (the next
// publish is acked and delivered, the refused one is not); SUBACK and
// UNSUBACK do not echo a request's User Properties. Before, each was
// kept (a PUBLISH of 63 MiB of empty ones held 1.8 GB for 22 s) and a
// SUBACK echoed them all.
func TestRefuseUserProperties(t *testing.T) {
	b, logs := startLogged(t, Options{})
	many := hxProps(bytes.Repeat(hxUser("", ""), 2000))                              // 10 KB, 2,000 of them
	big := hxProps(hxUser(strings.Repeat("k", 40_000), strings.Repeat("v", 30_000))) // one of 70 KB
	fine := hxProps(hxUser("k", "v"), hxUser("a", "b"))
	watch := dial3(t, b, "watch", true)
	watch.sub(t, "up/#", 1)
	for _, c := range []struct {
		name string
		send [][]byte
		want []string
	}{
		{"publish QoS 1, many", [][]byte{hxPublish("up/a", 1, 1, many, "no"), hxPublish("up/a", 1, 2, hxProps(), "yes1")},
			[]string{"40:00 01 97 " + quotaProps, "40:00 02"}},
		{"publish QoS 1, big", [][]byte{hxPublish("up/a", 1, 1, big, "no"), hxPublish("up/a", 1, 2, fine, "yes2")},
			[]string{"40:00 01 97 " + quotaProps, "40:00 02"}},
		{"publish QoS 2, many", [][]byte{hxPublish("up/a", 2, 1, many, "no")},
			[]string{"50:00 01 97 " + quotaProps}},
		{"publish QoS 0, many", [][]byte{hxPublish("up/a", 0, 0, many, "no"), hxPublish("up/a", 1, 2, hxProps(), "yes3")},
			[]string{"40:00 02"}},
		{"subscribe, many", [][]byte{hxSubscribe(1, many, "up/#", 1)},
			[]string{"90:00 01 " + quotaProps + " 97"}},
		{"subscribe, big", [][]byte{hxSubscribe(1, big, "up/#", 1)},
			[]string{"90:00 01 " + quotaProps + " 97"}},
		{"subscribe, two: not echoed", [][]byte{hxSubscribe(1, fine, "up/#", 1)},
			[]string{"90:00 01 00 01"}},
		{"unsubscribe, two: not echoed", [][]byte{hxUnsubscribe(fine, "up/#")},
			[]string{"b0:00 01 00 11"}},
		{"unsubscribe, many", [][]byte{hxUnsubscribe(many, "up/#")},
			[]string{"e0:97*", "closed"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := hxExchange(t, b.TCPAddr(), 5, "up", c.send...); !hxMatch(got, c.want) {
				t.Errorf("got %.200q, want %q", got, c.want)
			}
		})
	}
	t.Run("connect, many", func(t *testing.T) {
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: 5,
			Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: "upc"},
			Properties:      packets.Properties{User: make([]packets.UserProperty, 2000)},
		}
		var buf bytes.Buffer
		if err := pk.ConnectEncode(&buf); err != nil {
			t.Fatal(err)
		}
		nc := hxDial(t, b.TCPAddr())
		nc.Write(buf.Bytes()) //nolint:errcheck // the read shows it
		h, body, err := readPacketBody(bufio.NewReader(nc))
		if err != nil || h != 0x20 || len(body) < 2 || body[1] != 0x97 {
			t.Errorf("CONNACK %#x % x %v, want reason 0x97", h, body, err)
		}
	})
	got := watch.wait(t, 3)
	watch.quiet(t, 3)
	for i, m := range got {
		if want := fmt.Sprint("yes", i+1); m.payload != want {
			t.Errorf("delivered %d: %q, want %q", i, m.payload, want)
		}
	}
	if n := strings.Count(logs.String(), "too many user properties"); n != 8 {
		t.Errorf("%d log lines of refusals, want 8 (publish 4, subscribe 2, unsubscribe, connect):\n%.2000s", n, logs.String())
	}
	alive(t, b)
}
