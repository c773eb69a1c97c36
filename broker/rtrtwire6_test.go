package broker

import (
	"bufio"
	"fmt"
	"net"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/retain"
)

// roomSync subscribes c to $sync filter (mote-since since, if not "") and
// merges what it receives into copy until the first message is whole
// (every part); it returns the mote-rev the copy then holds.
func roomSync(t *testing.T, c *roomClient, filter, since string, copy map[string]any) uint64 {
	t.Helper()
	sp := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 5, PacketID: 3,
		Filters: packets.Subscriptions{{Filter: filter, Qos: 1}}}
	if since != "" {
		sp.Properties.User = []packets.UserProperty{{Key: "mote-since", Val: since}}
	}
	if _, err := c.nc.Write(ownerPacket(t, sp)); err != nil {
		t.Fatal(err)
	}
	var rev uint64
	for complete := false; !complete; {
		pk, _ := c.next(t)
		if pk.TopicName != filter {
			t.Fatalf("%s: %s %.80q", c.id, pk.TopicName, pk.Payload)
		}
		if propOf(pk, "mote-resume") != "1" && propOf(pk, "mote-part") <= "1/" {
			clear(copy) // a full snapshot replaces the copy
		}
		merge1(t, copy, pk.Payload)
		rev = roomRev(t, pk)
		part := propOf(pk, "mote-part")
		i, n, _ := strings.Cut(part, "/")
		complete = part == "" || i == n
	}
	return rev
}

func roomRev(t *testing.T, pk packets.Packet) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(propOf(pk, "mote-rev"), 10, 64)
	if err != nil {
		t.Fatalf("%s %.80q: mote-rev %q", pk.TopicName, pk.Payload, propOf(pk, "mote-rev"))
	}
	return n
}

// withStore is opts with a row store on disk in a temporary directory,
// when store.
func withStore(t *testing.T, opts Options, store bool) Options {
	t.Helper()
	if store {
		st, err := retain.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		opts.Store = st
	}
	return opts
}

// TestRtResumeAfterLeftOut: SPEC §8, mote-rev is "the revision that the
// receiver's copy reflects". A row left out of a snapshot or resume delta
// in parts (over an MQTT 5 client's Maximum Packet Size; a resume delta
// sends it as null) is not in the copy, yet the parts, and the deltas
// after them, carried the store's revision: a client that resumed from
// it later, with room enough, was told nothing of the row (it changed
// before that revision) and kept a copy without it for good. The
// mote-rev of such parts and of the subscription's later messages now
// stays below the row's change, so a resume from it brings the row: the
// copy ends equal to a fresh snapshot.
func TestRtResumeAfterLeftOut(t *testing.T) {
	for _, store := range []bool{false, true} {
		b := start(t, withStore(t, Options{MaxPacketSize: 100000}, store))
		w := dialTree5(t, b, "w")
		for _, resume := range []bool{false, true} {
			name := "snapshot"
			if resume {
				name = "resume"
			}
			name += map[bool]string{false: " memory", true: " store"}[store]
			t.Run(name, func(t *testing.T) {
				p := strings.ReplaceAll(name, " ", "-")
				filter := "$sync/" + p + "/+"
				w.pub(t, p+"/a", "1")
				w.pub(t, p+"/huge", "1")
				w.pub(t, p+"/b", `"b"`)
				settle(t, b)
				small := dialRoom(t, b, "small-"+p, 500)
				copy := map[string]any{}
				since := ""
				if resume {
					since = strconv.FormatUint(roomSync(t, small, filter, "", copy), 10)
					small.nc.Close()
					small = dialRoom(t, b, "small2-"+p, 500)
				}
				w.pub(t, p+"/huge", strconv.Quote(strings.Repeat("H", 2000)))
				w.pub(t, p+"/c", "3")
				settle(t, b)
				rev := roomSync(t, small, filter, since, copy)
				w.pub(t, p+"/a", "2") // an ordinary delta after the parts
				pk, _ := small.next(t)
				merge1(t, copy, pk.Payload)
				rev = roomRev(t, pk)
				small.nc.Close()

				large := dialRoom(t, b, "large-"+p, 100000)
				roomSync(t, large, filter, strconv.FormatUint(rev, 10), copy)
				if want := treeNow(t, b, p+"/+"); !reflect.DeepEqual(copy, want) {
					t.Errorf("copy after resuming from mote-rev %d: %v, want %v", rev, keysOf(copy), keysOf(want))
				}
			})
		}
	}
}

// TestRtConnectAnswers: what a CONNECT that is refused before it is read
// whole, or read but refused, gets: at most one CONNACK, in the form of
// the client's version, carrying nothing taken from the packet, then the
// connection closed. A protocol level the broker does not serve (6, 255
// after "MQTT") got "20 02 00 82": a CONNACK with an MQTT 5 code and no
// properties, valid in no version; MQTT 3.1.1 wants return code 0x01
// [MQTT-3.1.2-2], MQTT 5 allows no answer or 0x84 in a form the client
// reads, and Mosquitto answers such levels 0x01 in the 3.1.1 form: so
// does Mote now.
func TestRtConnectAnswers(t *testing.T) {
	b := start(t, Options{})
	props := hxProps()
	const malformed = "20:00 81 *" // MQTT 5, with a Reason String only
	for _, c := range []struct {
		name string
		send []byte
		want []string
	}{
		{"MQTT 5 cut after the level", hxPacket(0x10, hxStr("MQTT"), []byte{5}), []string{malformed, "closed"}},
		{"MQTT 5 cut in the properties", hxPacket(0x10, hxStr("MQTT"), []byte{5, 2, 0, 30}, []byte{5}), []string{malformed, "closed"}},
		{"MQTT 5 bad Authentication Method", hxPacket(0x10, hxStr("MQTT"), []byte{5, 2, 0, 30}, hxProps(append([]byte{0x15}, hxStr("a\xff")...)), hxStr("c")),
			[]string{"20:00 81 22 1f 00 1c 6d 61 6c 66 6f 72 6d 65 64 20 70 61 63 6b 65 74 3a 20 70 72 6f 70 65 72 74 69 65 73 21 04 00", "closed"}},
		{"MQTT 5 Authentication Method twice", hxPacket(0x10, hxStr("MQTT"), []byte{5, 2, 0, 30}, hxProps(append([]byte{0x15}, hxStr("x")...), append([]byte{0x15}, hxStr("y")...)), hxStr("c")),
			[]string{"20:00 82 *", "closed"}},
		{"MQTT 6", hxPacket(0x10, hxStr("MQTT"), []byte{6, 2, 0, 30}, props, hxStr("c")), []string{"20:00 01", "closed"}},
		{"MQTT 255", hxPacket(0x10, hxStr("MQTT"), []byte{255, 2, 0, 30}, props, hxStr("c")), []string{"20:00 01", "closed"}},
		{"MQTT 7 cut after the level", hxPacket(0x10, hxStr("MQTT"), []byte{7}), []string{"closed"}},
		{"MQTT 3", hxPacket(0x10, hxStr("MQTT"), []byte{3, 2, 0, 30}, hxStr("c")), []string{"20:00 01", "closed"}},
		{"MQIsdp 3 cut after the level", hxPacket(0x10, hxStr("MQIsdp"), []byte{3}), []string{"closed"}},
		{"MQTT 4 cut after the level", hxPacket(0x10, hxStr("MQTT"), []byte{4}), []string{"closed"}},
		{"MQTT 4 reserved flag", hxPacket(0x10, hxStr("MQTT"), []byte{4, 3, 0, 30}, hxStr("c")), []string{"closed"}},
		{"MQTT 5 fixed header flags", append([]byte{0x11}, hxPacket(0x10, hxStr("MQTT"), []byte{5, 2, 0, 30}, props, hxStr("c"))[1:]...), []string{"closed"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			nc := hxDial(t, b.TCPAddr())
			nc.Write(c.send) //nolint:errcheck // the reads say
			r := bufio.NewReader(nc)
			var got []string
			for {
				h, body, err := readPacketBody(r)
				if err != nil {
					got = append(got, "closed")
					break
				}
				got = append(got, fmt.Sprintf("%x:% x", h, body))
			}
			if !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	alive(t, b)
}

// TestRtOverlongVarintInPieces: the MQTT 5 Variable Byte Integer checks
// (mochi 45) hold when a packet comes a byte at a time, over TCP (one
// write a byte) and WebSocket (one frame a byte), the CONNECT included,
// and minimal encodings pass the same way.
func TestRtOverlongVarintInPieces(t *testing.T) {
	b := start(t, Options{})
	connect5 := connectPacket(5, "hx-p")
	for _, c := range []struct {
		name    string
		connect []byte // instead of connect5, then nothing else is sent
		send    []byte
		want    []string
	}{
		{"publish length in 2 bytes", nil, withOverlongLength(hxPublish("hx/p", 1, 1, hxProps(), "x")), []string{"e0:81*", "closed"}},
		{"publish length 128, minimal", nil, hxPublish("hx/p", 1, 1, hxProps(), strings.Repeat("x", 128-9)), []string{"40:00 01"}},
		{"subscription identifier 128 in 3 bytes", nil, hxSubscribe(1, hxProps([]byte{0x0B, 0x80, 0x81, 0x00}), "hx/s", 0), []string{"e0:81*", "closed"}},
		{"subscription identifier 16384, minimal", nil, hxSubscribe(1, hxProps([]byte{0x0B, 0x80, 0x80, 0x01}), "hx/s", 0), []string{"90:00 01 00 00"}},
		{"connect length in 2 bytes", withOverlongLength(connect5), nil, []string{"20:00 81*", "closed"}},
	} {
		for _, ws := range []bool{false, true} {
			name := c.name + map[bool]string{false: " tcp", true: " ws"}[ws]
			t.Run(name, func(t *testing.T) {
				var write func([]byte)
				var closeConn func() error
				var r *bufio.Reader
				if ws {
					d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: testTimeout}
					wc, _, err := d.Dial("ws://"+b.WSAddr()+"/mqtt", nil)
					if err != nil {
						t.Fatal(err)
					}
					closeConn = wc.Close
					wc.SetReadDeadline(time.Now().Add(testTimeout))
					write = func(p []byte) {
						for i := range p {
							wc.WriteMessage(websocket.BinaryMessage, p[i:i+1]) //nolint:errcheck // the reads say
						}
					}
					r = bufio.NewReader(&wsStream{c: wc})
				} else {
					nc := hxDial(t, b.TCPAddr())
					closeConn = nc.Close
					nc.(*net.TCPConn).SetNoDelay(true)
					write = func(p []byte) {
						for i := range p {
							nc.Write(p[i : i+1]) //nolint:errcheck // the reads say
						}
					}
					r = bufio.NewReader(nc)
				}
				var got []string
				if c.connect != nil {
					write(c.connect)
				} else {
					write(connect5)
					if h, _, err := readPacketBody(r); err != nil || h != 0x20 {
						t.Fatalf("no CONNACK: %#x %v", h, err)
					}
					write(c.send)
					write([]byte{0xC0, 0})
				}
				for {
					h, body, err := readPacketBody(r)
					if err != nil {
						got = append(got, "closed")
						break
					}
					if h == 0xD0 {
						break
					}
					got = append(got, fmt.Sprintf("%x:% x", h, body))
				}
				if !hxMatch(got, c.want) {
					t.Errorf("got %q, want %q", got, c.want)
				}
				closeConn()
				waitConnGone(t, b, "hx-p")
			})
		}
	}
}
