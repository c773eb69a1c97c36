package broker

import (
	"testing"
	"unsafe"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
)

// TestIdleSizeClasses bounds the types every MQTT connection allocates
// for its life, idle or not, at the size classes they fit now
// (runtime/sizeclasses.go; an object over 512 bytes with pointers also
// takes an 8-byte malloc header): a field added to one of them that
// moves it up a class costs every idle connection the step (bench/README.md,
// "Idle connections, cut again"). State that idle connections never use
// is made when first needed, behind a pointer.
func TestIdleSizeClasses(t *testing.T) {
	for _, c := range []struct {
		name      string
		size, max uintptr
	}{
		{"conn", unsafe.Sizeof(conn{}), 240},         // 256 with its key a string, 288 before its takeover state went behind a pointer (handOff), 320 before its flight and snapshot pace did
		{"outQueue", unsafe.Sizeof(outQueue{}), 192}, // 208 before its fullAt went with its waits (queueWaits), 288 before its waits went behind a pointer, 320 before its leftovers did (queueLeft)
		{"mqttOut", unsafe.Sizeof(mqttOut{}), 128},   // 112 before h-storm2 added its takeover state to idSpaces
		{"netConn", unsafe.Sizeof(netConn{}), 224},   // 240 before its host was found again at the handshake's end (host), 256 before SetWriteDeadline's bound went behind a pointer
		{"rawIO", unsafe.Sizeof(rawIO{}), 160},
		{"mochi Client", unsafe.Sizeof(mqtt.Client{}), 320}, // 384 before its will went behind a pointer (mochi change 83), 640 with its 8-byte malloc header before its CONNECT properties did (change 82), 704 before change 80
	} {
		if c.size > c.max {
			t.Errorf("%s is %d bytes, want at most %d (its size class)", c.name, c.size, c.max)
		}
	}
}
