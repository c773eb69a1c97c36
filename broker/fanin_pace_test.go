package broker

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestFanInPacedSubscriber: many publishers pipelining to one subscriber
// that reads steadily, but slower than they publish (issue 15): every
// message arrives, the publishers slowed to the subscriber's pace
// (back-pressure), none dropped. The queue is small, so it is full from
// the start and publishers wait in line for room the whole run. It used to
// lose most of them: the publishers queued behind one another passed
// their publish_wait while the subscriber drained steadily (all of them
// woken at every take, in no order), and the subscriber, written less
// than 64 KiB a second of small messages, ran out of credit and was
// treated as stalled.
//
// The subscriber's pace is load, not synchronisation: it sleeps between
// reads so that it is slower than the publishers; what the test checks
// (nothing dropped, everything delivered) holds at any pace above the
// stall threshold (64 messages a second), and the publishers' goroutines
// returning is the barrier (each Publish returns once its message is
// queued or dropped).
func TestFanInPacedSubscriber(t *testing.T) {
	cases := []struct {
		name       string
		pubs, each int
		qos        byte
		mqtt       bool // an MQTT client over TCP (else a Session: no kernel buffers between it and its queue)
	}{
		{"1000 publishers × 3 at QoS 0 to a session", 1000, 3, 0, false},
		{"100 publishers × 20 at QoS 0 to a session", 100, 20, 0, false},
		{"100 publishers × 20 at QoS 1 to a session", 100, 20, 1, false},
		{"100 publishers × 20 at QoS 1 to an MQTT client", 100, 20, 1, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{QueueBytes: 16 << 10})
			var got atomic.Int64
			var sub *raw
			if tc.mqtt {
				sub = dialRaw(t, b, "sink", 4, true, packets.Properties{})
				sub.subscribe(1, "fan/#", tc.qos)
			} else {
				s := b.Open(Principal{ClientID: "sink"}, func(Delivery) {
					if got.Add(1)%5 == 0 {
						time.Sleep(10 * time.Millisecond) // about 500 a second at most
					}
				})
				defer s.Close()
				if err := s.Subscribe("fan/#", tc.qos); err != nil {
					t.Fatal(err)
				}
			}
			ctx := testCtx(t)
			payload := []byte(strings.Repeat("x", 64))
			var wg sync.WaitGroup
			for p := range tc.pubs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					who := Principal{ClientID: fmt.Sprint("p", p)}
					for range tc.each {
						if err := b.Publish(ctx, who, Message{Topic: fmt.Sprint("fan/", p), Payload: payload, QoS: tc.qos}); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			total := int64(tc.pubs * tc.each)
			start := time.Now()
			var n int64
			if tc.mqtt {
				n = readPaced(t, sub, total, tc.qos)
			} else {
				n = waitCount(&got, total)
			}
			took := time.Since(start)
			waitGroup(t, "publishers", &wg)
			m := b.meter
			t.Logf("%d of %d delivered; read for %v; dropped %d (no_wait %d, stalled %d, deadline %d)", n, total, took,
				b.stats.Dropped.Load(), m.queueFull[fullNoWait].Load(), m.queueFull[fullStalled].Load(), m.queueFull[fullLate].Load())
			if d := b.stats.Dropped.Load(); d != 0 || n != total {
				t.Errorf("delivered %d of %d, dropped %d: a subscriber that reads steadily must get everything", n, total, d)
			}
		})
	}
}

// readPaced reads PUBLISH packets off sub until want came or none comes
// for testTimeout, acknowledging QoS 1 ones, at about 500 a second at
// most (a pause of 10 ms every 5): a subscriber that reads steadily, and
// slower than the publishers. It returns how many came.
func readPaced(t *testing.T, sub *raw, want int64, qos byte) int64 {
	t.Helper()
	r := bufio.NewReader(sub.c)
	var got int64
	for got < want {
		sub.c.SetReadDeadline(time.Now().Add(testTimeout))
		h, err := r.ReadByte()
		if err != nil {
			break
		}
		n, mult := 0, 1
		for {
			c, err := r.ReadByte()
			if err != nil {
				t.Fatal(err)
			}
			n += int(c&0x7f) * mult
			mult *= 128
			if c&0x80 == 0 {
				break
			}
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			t.Fatal(err)
		}
		if h>>4 != packets.Publish {
			continue
		}
		if (h>>1)&3 != qos {
			t.Fatalf("a publish at QoS %d, want %d", (h>>1)&3, qos)
		}
		if qos > 0 {
			at := 2 + int(binary.BigEndian.Uint16(body))
			sub.write([]byte{0x40, 2, body[at], body[at+1]})
		}
		if got++; got%5 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return got
}
