//go:build linux

package broker

import (
	"bytes"
	"net"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// sleepOpts is a broker whose idle readers sleep after 50 ms.
func sleepOpts() Options { return Options{ReaderSleep: 50 * time.Millisecond} }

// awaitAsleep waits until n connections sleep (the sleepers' own count),
// for up to 10 s.
func awaitAsleep(t *testing.T, b *Broker, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for b.sleepers.asleepNow() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections asleep, want %d", b.sleepers.asleepNow(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReaderSleeps has idle connections' readers sleep and every way of
// waking one: input (a PINGREQ, a PUBLISH at each QoS, a SUBSCRIBE), a
// delivery to it (written without waking it), the client's close (its
// will), the keep-alive deadline, a takeover of its client id, and the
// broker's Close. After each wake-up the connection is served as before
// and goes back to sleep.
func TestReaderSleeps(t *testing.T) {
	b := start(t, sleepOpts())
	if b.sleepers == nil {
		t.Skip("no epoll set here")
	}
	sub := dialRaw(t, b, "sleepy-sub", 4, true, packets.Properties{})
	sub.subscribe(1, "sl/#", 1)
	pub := dialRaw(t, b, "sleepy-pub", 5, true, packets.Properties{})
	awaitAsleep(t, b, 2)

	// A PINGREQ wakes the publisher's reader: PINGRESP.
	pub.write([]byte{0xC0, 0})
	if typ, _ := pub.read(); typ != packets.Pingresp {
		t.Fatalf("got packet %d, want PINGRESP", typ)
	}
	awaitAsleep(t, b, 2)

	// Publishes at each QoS from a sleeping publisher reach a sleeping
	// subscriber (written to it asleep); the acks come back.
	for qos := byte(0); qos <= 2; qos++ {
		topic := "sl/q" + strconv.Itoa(int(qos))
		pub.write(publishPacket(t, 5, topic, "v"+topic, qos, uint16(10+qos)))
		switch qos {
		case 1:
			if typ, _ := pub.read(); typ != packets.Puback {
				t.Fatalf("QoS 1: got packet %d, want PUBACK", typ)
			}
		case 2:
			if typ, _ := pub.read(); typ != packets.Pubrec {
				t.Fatalf("QoS 2: got packet %d, want PUBREC", typ)
			}
			pub.write([]byte{0x62, 4, 0, 12, 0, 0}) // PUBREL
			if typ, _ := pub.read(); typ != packets.Pubcomp {
				t.Fatalf("QoS 2: got packet %d, want PUBCOMP", typ)
			}
		}
		typ, body := sub.read()
		if typ != packets.Publish || !bytes.Contains(body, []byte("v"+topic)) {
			t.Fatalf("subscriber got packet %d %q, want the publish of %s", typ, body, topic)
		}
		if qos > 0 { // PUBACK from the subscriber (granted QoS 1)
			id := body[2+len(topic) : 4+len(topic)]
			sub.write([]byte{0x40, 2, id[0], id[1]})
		}
		awaitAsleep(t, b, 2)
	}

	// A will published when a sleeping client's connection drops.
	willed := dialWilled(t, b, "sleepy-willed", 0)
	awaitAsleep(t, b, 3)
	willed.Close()
	if typ, body := sub.read(); typ != packets.Publish || !bytes.Contains(body, []byte("gone")) {
		t.Fatalf("subscriber got packet %d %q, want the will", typ, body)
	}
	awaitAsleep(t, b, 2)

	// A sleeping client's keep-alive deadline (1 s × 1.5, and up to 1 s
	// of slack) ends it, with its will.
	began := time.Now()
	silent := dialWilled(t, b, "sleepy-silent", 1)
	defer silent.Close()
	if typ, body := sub.read(); typ != packets.Publish || !bytes.Contains(body, []byte("gone")) {
		t.Fatalf("subscriber got packet %d %q, want the silent client's will", typ, body)
	}
	if took := time.Since(began); took < 1500*time.Millisecond || took > 4*time.Second {
		t.Errorf("keep-alive of 1 s ended the connection after %v, want 1.5–2.5 s", took)
	}
	awaitAsleep(t, b, 2)

	// A takeover of a sleeping client's id: the old connection ends, the
	// new one is served and sleeps in its turn.
	again := dialRaw(t, b, "sleepy-pub", 5, true, packets.Properties{})
	pub.c.SetReadDeadline(time.Now().Add(testTimeout))
	if typ, _ := pub.read(); typ != packets.Disconnect {
		t.Fatalf("taken over: got packet %d, want DISCONNECT", typ)
	}
	awaitAsleep(t, b, 2)
	again.write([]byte{0xC0, 0})
	if typ, _ := again.read(); typ != packets.Pingresp {
		t.Fatalf("got packet %d, want PINGRESP", typ)
	}
	awaitAsleep(t, b, 2)

	// The broker's Close ends sleeping connections at once.
	closed := make(chan struct{})
	go func() { b.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end sleeping connections within 10 s")
	}
	if n := b.sleepers.asleepNow(); n != 0 {
		t.Errorf("%d connections asleep after Close", n)
	}
}

// TestSleepingReadersFreeGoroutines: 200 idle connections asleep hold no
// goroutine.
func TestSleepingReadersFreeGoroutines(t *testing.T) {
	b := start(t, sleepOpts())
	if b.sleepers == nil {
		t.Skip("no epoll set here")
	}
	awaitAsleep(t, b, 0)
	before := runtime.NumGoroutine()
	const n = 200
	for i := range n {
		dialRaw(t, b, "idle-"+strconv.Itoa(i), 4, true, packets.Properties{})
	}
	awaitAsleep(t, b, n)
	if after := runtime.NumGoroutine(); after-before > n/10 {
		t.Errorf("%d goroutines more with %d connections asleep, want at most %d", after-before, n, n/10)
	}
}

// dialWilled connects an MQTT 3.1.1 client with keep-alive keepalive and a
// will "gone" on sl/will.
func dialWilled(t *testing.T, b *Broker, id string, keepalive uint16) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: 4,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: keepalive, ClientIdentifier: id,
			WillFlag: true, WillTopic: "sl/will", WillPayload: []byte("gone")}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	r := &raw{t: t, c: c}
	r.write(buf.Bytes())
	if typ, _ := r.read(); typ != packets.Connack {
		t.Fatalf("%s: no CONNACK (%d)", id, typ)
	}
	return c
}

// publishPacket encodes one PUBLISH (version v) of payload on topic.
func publishPacket(t *testing.T, v byte, topic, payload string, qos byte, id uint16) []byte {
	t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, ProtocolVersion: v,
		TopicName: topic, Payload: []byte(payload), PacketID: id}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestReaderSleepsNoSooner: a client that sends more often than
// ReaderSleep never sleeps (a PINGREQ every 0.9 × ReaderSleep), and one
// that stops sending sleeps within 1.5 × ReaderSleep and a sweep. The
// sweep kicked a reader after 0.5–1 × ReaderSleep of waiting before
// (review).
func TestReaderSleepsNoSooner(t *testing.T) {
	const after = 300 * time.Millisecond
	b := start(t, Options{ReaderSleep: after})
	if b.sleepers == nil {
		t.Skip("no epoll set here")
	}
	c := dialRaw(t, b, "pinger", 4, true, packets.Properties{})
	awaitAsleep(t, b, 1) // asleep from its CONNACK on
	// The reader's last packet is the PINGREQ, read after sent: a reader
	// asleep less than ReaderSleep after sent slept too soon. A ping whose
	// check came ReaderSleep or more after it (a loaded machine's timer
	// late by a tenth) proves nothing either way, and is only counted.
	late := 0
	for i := range 8 {
		sent := time.Now()
		c.write([]byte{0xC0, 0})
		if typ, _ := c.read(); typ != packets.Pingresp {
			t.Fatalf("got packet %d, want PINGRESP", typ)
		}
		time.Sleep(after * 9 / 10)
		n := b.sleepers.asleepNow()
		if idle := time.Since(sent); idle >= after {
			late++
		} else if n != 0 {
			t.Fatalf("ping %d: asleep at most %v after its last packet, ReaderSleep %v", i, idle, after)
		}
	}
	if late > 0 {
		t.Logf("%d of 8 pings checked ReaderSleep or more after they were sent (a loaded machine): not counted", late)
	}
	awaitAsleep(t, b, 1)
}

// TestSleeperSizeClass: a connection asleep keeps its sleeper, in the
// 48-byte class (56 bytes, the 64 class, with its place in the heap an
// int apart from its descriptor; bench/README.md, "Idle connections").
func TestSleeperSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(sleeper{}); n > 48 {
		t.Errorf("sleeper is %d bytes, want at most 48", n)
	}
}

// TestFDTable: the sleepers by descriptor, as the map they were: set, get,
// del and each in any order of descriptors, a descriptor filed again, and
// the count.
func TestFDTable(t *testing.T) {
	type op struct {
		kind byte  // 's' set, 'd' del
		fd   int32 // its descriptor
	}
	tests := []struct {
		name string
		ops  []op
		want []int32 // the descriptors filed at the end, in order
	}{
		{"none", nil, nil},
		{"one", []op{{'s', 7}}, []int32{7}},
		{"out of order", []op{{'s', 9}, {'s', 3}, {'s', 100}, {'s', 0}}, []int32{0, 3, 9, 100}},
		{"deleted", []op{{'s', 4}, {'s', 5}, {'d', 4}, {'d', 6}, {'d', -1}, {'d', 1000}}, []int32{5}},
		{"filed again", []op{{'s', 4}, {'s', 4}, {'d', 4}, {'s', 4}}, []int32{4}},
		{"all deleted", []op{{'s', 1}, {'s', 2}, {'d', 2}, {'d', 1}, {'d', 1}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tb fdTable
			ref := map[int32]*sleeper{}
			for _, o := range tt.ops {
				switch o.kind {
				case 's':
					sl := &sleeper{fd: o.fd}
					tb.set(sl)
					ref[o.fd] = sl
				case 'd':
					tb.del(o.fd)
					delete(ref, o.fd)
				}
			}
			if tb.n != len(ref) {
				t.Errorf("n = %d, want %d", tb.n, len(ref))
			}
			for _, fd := range []int32{-1, 0, 1, 2, 3, 4, 5, 6, 7, 9, 100, 101, 1000} {
				if got := tb.get(fd); got != ref[fd] {
					t.Errorf("get(%d) = %p, want %p", fd, got, ref[fd])
				}
			}
			var got []int32
			tb.each(func(sl *sleeper) bool { got = append(got, sl.fd); return true })
			if !slices.Equal(got, tt.want) {
				t.Errorf("each: %v, want %v", got, tt.want)
			}
			// each stops when f says so, and f may delete the one it is given.
			n := 0
			tb.each(func(sl *sleeper) bool { tb.del(sl.fd); n++; return false })
			if want := min(1, len(tt.want)); n != want || tb.n != len(ref)-want {
				t.Errorf("each, stopped at once: %d calls, %d left; want %d, %d", n, tb.n, want, len(ref)-want)
			}
		})
	}
}
