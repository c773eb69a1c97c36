package broker

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestHostileWaitChurn attacks publishers' waits on a stalled subscriber
// end to end, over TCP: a persistent MQTT 5 subscriber to hw/# at QoS 2
// that never reads nor acknowledges, a 2 KiB queue and a 400 ms publish
// wait; eight raw publishers (3.1.1 and 5) pipeline QoS 0, 1 and 2
// publishes of 300 bytes without waiting for acks, two of them closing
// abruptly mid-way; meanwhile the subscriber's connection is closed and
// its client id taken over by a new connection (which does not read
// either), which then closes too. Every publisher still connected gets
// an answer to every QoS 1/2 publish and its PINGRESP (nothing hangs),
// no connection panics, and once every client is gone the broker holds
// no connection, no writer and no goroutine of theirs, and serves.
func TestHostileWaitChurn(t *testing.T) {
	b := start(t, Options{QueueBytes: 2048, PublishWait: 400 * time.Millisecond})
	base := runtime.NumGoroutine()
	props := packets.Properties{ReceiveMaximum: 1, SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}
	sub := dialRaw(t, b, "hw-sub", 5, false, props)
	sub.subscribe(1, "hw/#", 2)
	c := b.connOf(t, "hw-sub")

	const pubs, per = 8, 60
	payload := string(make([]byte, 300))
	var wg sync.WaitGroup
	started := make(chan struct{}, pubs)
	for p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := byte(4 + p%2)
			nc, err := net.Dial("tcp", b.TCPAddr())
			if err != nil {
				t.Error(err)
				return
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(testTimeout))
			r := bufio.NewReader(nc)
			nc.Write(connectPacket(v, fmt.Sprintf("hw-pub%d", p))) //nolint:errcheck // the reads say
			if h, _, err := readPacketBody(r); err != nil || h>>4 != packets.Connack {
				t.Errorf("pub%d: no CONNACK: %#x %v", p, h, err)
				return
			}
			started <- struct{}{}
			abrupt := p < 2
			want := 0
			var out []byte
			for i := range per {
				qos := byte(i % 3)
				topic := fmt.Sprintf("hw/%d/%d", p, i)
				var pk []byte
				if v == 5 {
					pk = hxPublish(topic, qos, uint16(i+1), hxProps(), payload)
				} else {
					parts := [][]byte{hxStr(topic)}
					if qos > 0 {
						parts = append(parts, hxID(uint16(i+1)))
					}
					pk = hxPacket(0x30|qos<<1, append(parts, []byte(payload))...)
				}
				out = append(out, pk...)
				if qos > 0 {
					want++
				}
				if abrupt && i == per/2 {
					nc.Write(out) //nolint:errcheck // closed at once
					return
				}
			}
			out = append(out, 0xC0, 0)
			if _, err := nc.Write(out); err != nil {
				t.Errorf("pub%d: %v", p, err)
				return
			}
			acks, pong := 0, false
			for acks < want || !pong {
				h, body, err := readPacketBody(r)
				if err != nil {
					t.Errorf("pub%d: %d of %d acks, PINGRESP %v: %v", p, acks, want, pong, err)
					return
				}
				switch h >> 4 {
				case packets.Puback, packets.Pubcomp:
					acks++
				case packets.Pubrec:
					if v == 5 && len(body) > 2 && body[2] >= 0x80 {
						acks++ // refused: the flow ends here
						continue
					}
					nc.Write(hxPacket(0x62, body[:2])) //nolint:errcheck // the reads say
				case packets.Pingresp:
					pong = true
				}
			}
		}()
	}
	for range pubs {
		<-started
	}
	// Publishers wait in line (or have been refused), then the
	// subscriber goes abruptly and its client id is taken over.
	deadline := time.Now().Add(testTimeout)
	for queueWaiting(c.q) < 3 && b.meter.queueFull[fullStalled].Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	waiting := queueWaiting(c.q)
	sub.c.Close()
	now := dialRaw(t, b, "hw-sub", 5, false, props)
	waitGroup(t, "publishers", &wg)
	now.c.Close()

	if n := b.stats.Panics.Load(); n != 0 {
		t.Errorf("%d panics", n)
	}
	waitFor(t, "every connection gone", func() bool { return rawCount(b) == 0 })
	waitFor(t, "every writer stopped", func() bool { return b.stats.Writers.Load() == 0 })
	waitFor(t, "goroutines back", func() bool { return runtime.NumGoroutine() <= base })
	t.Logf("%d publishers waited in line at the takeover; dropped by reason %v, queue full by why %v, slow %d", waiting, loads(b.meter.dropped[:]), loads(b.meter.queueFull[:]), b.meter.slowDrops.Load())
	alive(t, b)
}

// loads reads counters one by one, atomically: formatting their array
// with %v reads them plainly, a race with a connection still ending.
func loads(cs []atomic.Int64) []int64 {
	out := make([]int64, len(cs))
	for i := range cs {
		out[i] = cs[i].Load()
	}
	return out
}
