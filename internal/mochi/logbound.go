package mqtt

import (
	"log/slog"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// LogStringMax is the most bytes of a client-controlled string (a topic,
// client id, username) that a log line holds (mote change 68).
const LogStringMax = 128

// LogString is s cut to LogStringMax bytes at a rune boundary, marked
// with "…" when cut, for a log line (mote change 68): a client may send
// strings of 64 KiB, and topics of up to a packet's size.
func LogString(s string) string {
	if len(s) <= LogStringMax {
		return s
	}
	n := LogStringMax
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}

// LogPacket is what a log line says of pk (mote change 68): its type,
// topic cut by LogString, packet id, remaining length, payload size and
// how many filters and user properties it had; never its payload or
// properties. Upstream logged the whole packet, payload included: about
// four log bytes a payload byte (a 134 MB line for a 32 MiB PUBLISH).
func LogPacket(pk *packets.Packet) slog.Attr {
	return slog.Group("pk",
		"type", packets.PacketNames[pk.FixedHeader.Type],
		"topic", LogString(pk.TopicName),
		"id", int(pk.PacketID),
		"remaining", pk.FixedHeader.Remaining,
		"payload", len(pk.Payload),
		"filters", len(pk.Filters),
		"user_properties", len(pk.Properties.User),
	)
}
