package broker

import (
	"strings"
	"testing"
)

// TestLogLinesBounded: a rejected packet is logged by what identifies it
// (type, topic cut to 128 bytes, packet id, sizes), never by its payload
// or properties, and a client id, topic or filter a client sent is cut in
// a log line. mochi logged the whole packet: about four log bytes a
// payload byte (a 16 MiB PUBLISH to "la/#" made a 67 MB line).
func TestLogLinesBounded(t *testing.T) {
	b, logs := startLogged(t, Options{})
	payload := strings.Repeat("x", 1<<20)
	long := strings.Repeat("c", 60_000)
	for _, c := range []struct {
		name string
		v    byte
		id   string
		send []byte
	}{
		{"MQTT 5 publish to a wildcard, 1 MiB", 5, "la5", hxPublish("la/#", 1, 1, hxProps(), payload)},
		{"3.1.1 publish to a wildcard, 1 MiB", 4, "la4", hxPacket(0x32, hxStr("la/#"), hxID(1), []byte(payload))},
		{"MQTT 5 publish to a long wildcard topic", 5, "la5", hxPublish(long+"/#", 1, 1, hxProps(), payload)},
		{"long client id", 5, long, hxPublish("la/#", 1, 1, hxProps(), payload)},
		{"3.1.1 unsubscribe of a long bad filter", 4, "la4", hxPacket(0xA2, hxID(1), hxStr(long+"+"))},
		{"user properties over 64 KiB", 5, "la5", hxPublish("la/x", 1, 1, hxProps(hxUser(long, "v"), hxUser(long, "v")), payload)},
	} {
		t.Run(c.name, func(t *testing.T) {
			hxExchange(t, b.TCPAddr(), c.v, c.id, c.send)
		})
	}
	b.Close() // waits for the connections' goroutines: every line is written
	all := logs.String()
	if len(all) > 16<<10 || strings.Contains(all, "xxxxxxxx") {
		t.Errorf("%d log bytes, want at most 16 KiB and no payload:\n%.1000s", len(all), all)
	}
	for _, line := range strings.Split(all, "\n") {
		if len(line) > 2<<10 {
			t.Errorf("a log line of %d bytes: %.300s", len(line), line)
		}
	}
	if n := strings.Count(all, "error processing packet"); n != 5 {
		t.Errorf("%d lines of refused packets, want 5:\n%.3000s", n, all)
	}
	if !strings.Contains(all, `"pk.topic":"la/#"`) || !strings.Contains(all, "too many user properties") {
		t.Errorf("no line names the refused packets:\n%.3000s", all)
	}
}
