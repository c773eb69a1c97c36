package broker

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// connectWillPacket is a CONNECT for protocol version v whose flags carry
// the given Will Flag and Will QoS (with a will topic and payload when the
// flag is set).
func connectWillPacket(v byte, id string, willFlag bool, willQos byte) []byte {
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			Keepalive:        30,
			ClientIdentifier: id,
			WillFlag:         willFlag,
			WillQos:          willQos,
		},
	}
	if willFlag {
		pk.Connect.WillTopic = "will/" + id
		pk.Connect.WillPayload = []byte("gone")
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// TestConnectWillQos: a CONNECT whose Will QoS is 3 is a Malformed Packet
// (MQTT 5 §3.1.2.6, [MQTT-3.1.2-12]); a Will QoS other than 0 without the
// Will Flag breaks [MQTT-3.1.2-11], a Protocol Error. An MQTT 5 client
// gets CONNACK 0x81 or 0x82 and the connection closes (§3.1.4: the
// server may send a CONNACK ≥ 0x80 before closing). MQTT 3.1.1 has no
// return code for either ([MQTT-3.1.2-14], [MQTT-3.1.2-11]): the
// connection is closed without a CONNACK [MQTT-3.1.4-1]. A valid will
// QoS is still accepted. No will is published for a refused CONNECT.
func TestConnectWillQos(t *testing.T) {
	b := start(t, Options{})
	watcher := dial3(t, b, "watcher", true)
	watcher.sub(t, "will/#", 0)
	cases := []struct {
		name     string
		v        byte
		willFlag bool
		willQos  byte
		want     int // CONNACK reason code; -1 for no CONNACK, the connection closed
	}{
		{"v5 will qos 3", 5, true, 3, 0x81},
		{"v5 no will, qos 3", 5, false, 3, 0x81},
		{"v5 no will, qos 1", 5, false, 1, 0x82},
		{"v5 will qos 2", 5, true, 2, 0x00},
		{"v3 will qos 3", 4, true, 3, -1},
		{"v3 no will, qos 3", 4, false, 3, -1},
		{"v3 no will, qos 2", 4, false, 2, -1},
		{"v3 will qos 1", 4, true, 1, 0x00},
		// [MQTT-3.1.2-2] a protocol level 3.1.1 does not serve: 0x01 (mochi sent 0x82).
		{"protocol level 3", 3, false, 0, 0x01},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", b.TCPAddr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(testTimeout))
			c.Write(connectWillPacket(tc.v, "willqos", tc.willFlag, tc.willQos))
			r := bufio.NewReader(c)
			h, body, err := readPacketBody(r)
			if tc.want < 0 {
				if err == nil {
					t.Fatalf("got %#x % x, want the connection closed without a CONNACK", h, body)
				}
				return
			}
			if err != nil || h != 0x20 || len(body) < 2 {
				t.Fatalf("no CONNACK: %#x % x %v", h, body, err)
			}
			if int(body[1]) != tc.want {
				t.Fatalf("CONNACK reason %#x, want %#x", body[1], tc.want)
			}
			if tc.want == 0 {
				c.Write([]byte{0xe0, 0x00}) // a clean DISCONNECT: no will
				waitConnGone(t, b, "willqos")
				return
			}
			if rest, err := io.ReadAll(r); err != nil || len(rest) > 0 {
				t.Errorf("after CONNACK %#x: % x %v, want the connection closed", tc.want, rest, err)
			}
		})
	}
	alive(t, b)
	watcher.pub(t, "will/end", 0, false, "end")
	if got := watcher.wait(t, 1); got[0].topic != "will/end" {
		t.Errorf("got %+v before will/end, want no will", got)
	}
}

// allocatedBy is the bytes allocated (by every goroutine) while f ran.
func allocatedBy(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestShareGroupGrowth: a $share group of N members costs O(log N) bytes
// a member added or re-subscribed, not a copy of the group: members
// 10,000 to 20,000 of one group cost no more a member than the first
// 10,000, and a member re-subscribing to a group of 20,000 costs a few
// KiB. (The group's member list was copied whole on every change: O(N²)
// to build a group, about 0.5 MiB a member at 10,000.) Bytes, not time:
// the machine is shared.
func TestShareGroupGrowth(t *testing.T) {
	const half = 10_000
	const filter = "$share/g/t"
	x := &subIndex{}
	add := func(from, to int) uint64 {
		return allocatedBy(func() {
			for i := from; i < to; i++ {
				if !x.subscribe("c"+strconv.Itoa(i), packets.Subscription{Filter: filter}) {
					t.Fatalf("member %d not new", i)
				}
			}
		})
	}
	first := add(0, half)
	second := add(half, 2*half)
	const resubs = 1000
	resub := allocatedBy(func() {
		for i := range resubs {
			if x.subscribe("c"+strconv.Itoa(i*7), packets.Subscription{Filter: filter, Qos: 1}) {
				t.Fatalf("re-subscription %d new", i)
			}
		}
	})
	t.Logf("bytes a member: %d (members 1–10k), %d (10k–20k); a re-subscription at 20k: %d", first/half, second/half, resub/resubs)
	if second > 2*first {
		t.Errorf("members 10k–20k cost %d B, the first 10k %d B: growing with the group", second, first)
	}
	if per := second / half; per > 16<<10 {
		t.Errorf("%d B a member added to a group of 10k–20k, want under 16 KiB", per)
	}
	if per := resub / resubs; per > 16<<10 {
		t.Errorf("%d B a re-subscription to a group of 20k, want under 16 KiB", per)
	}
	if sc := x.match("t"); len(sc.out) != 1 {
		t.Errorf("t matches %d clients, want 1 (one member of the group)", len(sc.out))
	} else {
		sc.release()
	}
	for i := range 2 * half {
		if !x.unsubscribe(filter, "c"+strconv.Itoa(i)) {
			t.Fatalf("member %d not found", i)
		}
	}
	if !x.isEmpty() {
		t.Fatalf("the index holds %q with no subscription left", x.dump())
	}
}

// BenchmarkShareGroupBuild: N clients joining one $share group, in the
// broker's index and in mochi's (which the broker still writes).
func BenchmarkShareGroupBuild(b *testing.B) {
	for _, n := range []int{10_000, 20_000} {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = "c" + strconv.Itoa(i)
		}
		sub := packets.Subscription{Filter: "$share/g/t"}
		b.Run("index/members="+strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				x := &subIndex{}
				for _, id := range ids {
					x.subscribe(id, sub)
				}
			}
		})
		b.Run("mochi/members="+strconv.Itoa(n/1000)+"k", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				x := mqtt.NewTopicsIndex()
				for _, id := range ids {
					x.Subscribe(id, sub)
				}
			}
		})
	}
}
