package broker

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// TestRefusedPublishReset: a client that sends a run of refused QoS 1 or 2
// PUBLISHes and resets its connection at once has the broker's acks of
// the refusals fail. Each failed ack wrote mochi's Error line "publish
// packet error", outside refusal_log, and mochi went on with the
// refused publish as if it were taken (its ack held, OnPublished): 28
// lines a connection, a line for each refused publish still in the read
// buffer (red team h-rtwarn). The first failed ack ends the connection.
func TestRefusedPublishReset(t *testing.T) {
	cases := []struct {
		name string
		qos  byte
	}{
		{"QoS 1", 1},
		{"QoS 2", 2},
	}
	const conns, each = 20, 200
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// An interval longer than the test: the bound does not depend on
			// how fast the machine is.
			b, logs := startLogged(t, Options{RefusalLog: LogLimit{Interval: time.Hour}})
			start := len(logLines(t, logs.String()))
			for i := range conns {
				id := fmt.Sprintf("rst%d", i)
				nc := hxDial(t, b.TCPAddr())
				if _, err := nc.Write(connectPacket(5, id)); err != nil {
					t.Fatal(err)
				}
				r := bufio.NewReader(nc)
				if h, _, err := readPacketBody(r); err != nil || h>>4 != 2 {
					t.Fatalf("%s: no CONNACK: %#x %v", id, h, err)
				}
				var flood []byte
				for j := range each {
					flood = append(flood, hxPublish("$sync/rst", c.qos, uint16(j+1), hxProps(), "x")...)
				}
				if _, err := nc.Write(flood); err != nil {
					t.Fatal(err)
				}
				nc.(*net.TCPConn).SetLinger(0)
				nc.Close() // RST: the acks the broker writes after it fail
				waitConnGone(t, b, id)
			}
			lines := logLines(t, logs.String())[start:]
			errs := 0
			for _, l := range lines {
				if msg, _ := l["message"].(string); strings.Contains(msg, "publish packet error") {
					errs++
				}
			}
			t.Logf("%d connections of %d refused publishes then RST: %d log lines, %d of them \"publish packet error\"", conns, each, len(lines), errs)
			// refusal_log: 100 lines broker-wide, the first of each kind,
			// and the lines counting the rest.
			if errs > 0 || len(lines) > 100+int(refusalReasons)+conns+1 {
				t.Errorf("%d log lines (%d \"publish packet error\"), want at most %d and none of mochi's", len(lines), errs, 100+int(refusalReasons)+conns+1)
			}
		})
	}
}
