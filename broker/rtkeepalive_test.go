package broker

import (
	"bufio"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// keepAliveDial connects with a raw CONNECT of version v and keep-alive
// ka and reads the CONNACK; the time returned is before the CONNECT was
// written.
func keepAliveDial(t *testing.T, b *Broker, v byte, id string, ka uint16) (net.Conn, *bufio.Reader, time.Time) {
	t.Helper()
	c, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sent := time.Now()
	if _, err := c.Write(connectPacketKeepalive(v, id, ka)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(testTimeout))
	r := bufio.NewReader(c)
	if h, err := readPacket(r); err != nil || h != 0x20 {
		t.Fatalf("no CONNACK: %#x %v", h, err)
	}
	return c, r, sent
}

// TestKeepAliveSilentClientCut: a client that stops sending is
// disconnected after keep-alive × 1.5 [MQTT-3.1.2-22] (the deadline is
// set about once a second: mochi change 21, at most a second later),
// never before, on MQTT 3.1.1 and 5, and with the keep-alive the server
// imposes (MaxKeepAlive, told in CONNACK's Server Keep Alive: a client's
// 0 or one above it). Only the lower bound is timed; the upper one is a
// generous test deadline (a shared, loaded machine).
func TestKeepAliveSilentClientCut(t *testing.T) {
	for _, tc := range []struct {
		name      string
		v         byte
		ka, max   uint16
		effective time.Duration // keep-alive × 1.5
	}{
		{"v4-ka1", 4, 1, 0, 1500 * time.Millisecond},
		{"v5-ka1", 5, 1, 0, 1500 * time.Millisecond},
		{"v4-ka2", 4, 2, 0, 3 * time.Second},
		{"v5-ka2", 5, 2, 0, 3 * time.Second},
		{"v5-ka60-server1", 5, 60, 1, 1500 * time.Millisecond},
		{"v5-ka0-server1", 5, 0, 1, 1500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := start(t, Options{MaxKeepAlive: tc.max})
			c, r, sent := keepAliveDial(t, b, tc.v, "silent", tc.ka)
			c.SetReadDeadline(time.Now().Add(testTimeout))
			for {
				if _, err := readPacket(r); err != nil {
					if errors.Is(err, os.ErrDeadlineExceeded) {
						t.Fatalf("not disconnected within %v", testTimeout)
					}
					break
				}
			}
			if took := time.Since(sent); took < tc.effective {
				t.Fatalf("disconnected after %v, before keep-alive × 1.5 (%v)", took, tc.effective)
			}
		})
	}
}

// TestKeepAlivePingerNotCut: a client with keep-alive 1 s that pings
// more often than that is never disconnected, however many seconds the
// read deadline is moved only about once a second (mochi change 21).
func TestKeepAlivePingerNotCut(t *testing.T) {
	for _, v := range []byte{4, 5} {
		t.Run(string('0'+v), func(t *testing.T) {
			t.Parallel()
			b := start(t, Options{})
			c, r, _ := keepAliveDial(t, b, v, "pinger", 1)
			tick := time.NewTicker(250 * time.Millisecond)
			defer tick.Stop()
			for i := range 16 { // 4 s: the deadline moved several times
				<-tick.C
				if _, err := c.Write([]byte{0xc0, 0x00}); err != nil {
					t.Fatalf("ping %d: %v", i, err)
				}
				c.SetReadDeadline(time.Now().Add(testTimeout))
				if h, err := readPacket(r); err != nil || h != 0xd0 {
					t.Fatalf("ping %d: got %#x, %v; want PINGRESP", i, h, err)
				}
			}
		})
	}
}
