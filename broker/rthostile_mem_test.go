package broker

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestHostileDeclaredBodyBounded: after its CONNECT, a client declares a
// PUBLISH of 60 MiB (under the 64 MiB max_packet_size) and sends ten
// bytes of it, then nothing. Mochi made the whole body's buffer at once,
// so sixteen such connections held 960 MiB of the broker's memory for 75
// bytes each, until their keep-alive ran out. The body is read as it
// arrives now (in 64 KiB steps, doubling), so what a client holds is in
// proportion to what it sent: under 8 MiB for the sixteen.
func TestHostileDeclaredBodyBounded(t *testing.T) {
	b := start(t, Options{})
	const conns, declared = 16, 60 << 20
	before := liveHeap()
	read := atomic.LoadInt64(&b.server.Info.BytesReceived)
	var sent int64
	for i := range conns {
		r := dialRaw(t, b, "hm"+string(rune('a'+i)), 5, true, packets.Properties{})
		hdr := append(append([]byte{0x30}, varint(declared)...), hxStr("hm/x")...)
		r.write(append(hdr, 0, 'p', 'a', 'y'))
		sent += int64(1 + len(varint(declared)))
	}
	// The broker has read every fixed header (mochi counts its bytes
	// before it reads the body) once BytesReceived has grown by them
	// (and the CONNECTs).
	deadline := time.Now().Add(testTimeout)
	for atomic.LoadInt64(&b.server.Info.BytesReceived)-read < sent && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	// Each connection's read goroutine makes its body's buffer right after
	// its header: give them until the heap shows it (before: at once).
	var grew int64
	for range 100 {
		if grew = int64(liveHeap()) - int64(before); grew > 64<<20 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("heap grew %d KiB for %d connections declaring %d MiB each", grew>>10, conns, declared>>20)
	if grew > 8<<20 {
		t.Errorf("heap grew %d MiB for %d connections that sent 10 bytes of a declared %d MiB PUBLISH each", grew>>20, conns, declared>>20)
	}
	alive(t, b)
}
