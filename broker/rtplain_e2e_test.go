package broker

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawPublish is a QoS 0 PUBLISH (MQTT 3.1.1) of payload to topic.
func rawPublish(topic, payload string) []byte {
	n := 2 + len(topic) + len(payload)
	out := []byte{0x30}
	for {
		b := byte(n & 0x7f)
		n >>= 7
		if n > 0 {
			out = append(out, b|0x80)
			continue
		}
		out = append(out, b)
		break
	}
	out = append(out, byte(len(topic)>>8), byte(len(topic)))
	out = append(out, topic...)
	return append(out, payload...)
}

// TestPlainFanInStress: 8 raw publishers each publish 400 numbered QoS 0
// messages, without pause, into tiny queues (QueueBytes 8 KiB, 2 KiB messages: a stopped reader's socket fills) of three
// subscribers of the same filter: one reads steadily, one slowly, one
// stops and disconnects midway, one stops reading midway until the
// publishers are done (stalled: its messages are dropped). Each subscriber gets every publisher's
// messages in order, none twice, and all but the one that left get
// every message or count it dropped (their conn's dropped); no publisher
// is cut, and no goroutine of theirs is left behind.
func TestPlainFanInStress(t *testing.T) {
	b := start(t, Options{QueueBytes: 8 << 10, PublishWait: 200 * time.Millisecond})
	base := runtime.NumGoroutine() // the broker's own: its loop, listeners
	const pubs, per = 8, 400
	ctx := testCtx(t)

	type sub struct {
		name  string
		pause time.Duration // between reads
		quit  int           // messages after which it disconnects; 0: never
		stop  int           // messages after which it stops reading until the publishers are done; 0: never
		got   int
		c     net.Conn
		err   error
	}
	subs := []*sub{{name: "steady"}, {name: "slow", pause: 200 * time.Microsecond}, {name: "quitter", quit: 300}, {name: "stopper", stop: 100}}
	pubsDone := make(chan struct{})
	var rwg sync.WaitGroup
	for _, s := range subs {
		c, r, _ := keepAliveDial(t, b, 4, s.name, 60)
		s.c = c
		c.Write(subscribePacket(4, []string{"fan/#"}))
		if h, err := readPacket(r); err != nil || h != 0x90 {
			t.Fatalf("%s: no SUBACK: %#x %v", s.name, h, err)
		}
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			last := make([]int, pubs)
			for i := range last {
				last[i] = -1
			}
			for {
				// The end: nothing more comes for 2 s once the publishers
				// are done. Before, a pause that long (a loaded -race run)
				// is not the end: the main goroutine shortens the deadline
				// of a read under way as it closes pubsDone.
				quiet := testTimeout
				select {
				case <-pubsDone:
					quiet = 2 * time.Second
				default:
				}
				c.SetReadDeadline(time.Now().Add(quiet))
				h, body, err := readPacketBody(r)
				if err != nil {
					return
				}
				if h&0xf0 != 0x30 {
					continue
				}
				tl := int(body[0])<<8 | int(body[1])
				topic, payload := string(body[2:2+tl]), string(body[2+tl:])
				p, _ := strconv.Atoi(strings.TrimPrefix(topic, "fan/"))
				seq, _ := strconv.Atoi(strings.TrimRight(payload, "x"))
				if seq <= last[p] {
					s.err = fmt.Errorf("publisher %d's message %d after its %d", p, seq, last[p])
					return
				}
				last[p] = seq
				s.got++
				if s.quit > 0 && s.got == s.quit {
					c.Close()
					return
				}
				if s.stop > 0 && s.got == s.stop {
					<-pubsDone // stalled: publishers wait for it, then give up
				}
				if s.pause > 0 {
					time.Sleep(s.pause)
				}
			}
		}()
	}

	pad := strings.Repeat("x", 2000)
	var pwg sync.WaitGroup
	for p := range pubs {
		c, _, _ := keepAliveDial(t, b, 4, fmt.Sprint("pub", p), 60)
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			w := bufio.NewWriter(c)
			for seq := range per {
				w.Write(rawPublish(fmt.Sprint("fan/", p), strconv.Itoa(seq)+pad))
				if seq%16 == 15 {
					w.Flush()
				}
			}
			w.Flush()
			// A ping answered: the broker read every publish before it.
			c.Write([]byte{0xc0, 0x00})
			r := bufio.NewReader(c)
			c.SetReadDeadline(time.Now().Add(testTimeout))
			if h, err := readPacket(r); err != nil || h != 0xd0 {
				t.Errorf("publisher %d: no PINGRESP: %#x %v", p, h, err)
			}
			c.Close()
		}()
	}
	waitGroup(t, "publishers", &pwg)
	close(pubsDone)
	for _, s := range subs {
		s.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	}
	dropped := map[string]int64{}
	for _, s := range subs {
		if c := b.connByID(s.name); c != nil {
			dropped[s.name] = c.dropped.Load()
		}
	}
	waitGroup(t, "subscribers", &rwg)
	for _, s := range subs {
		s.c.Close()
		if s.err != nil {
			t.Errorf("%s: %v", s.name, s.err)
		}
		t.Logf("%s: got %d, dropped %d", s.name, s.got, dropped[s.name])
		if s.quit == 0 && int64(s.got)+dropped[s.name] != pubs*per {
			t.Errorf("%s: got %d + dropped %d, want %d", s.name, s.got, dropped[s.name], pubs*per)
		}
	}
	for runtime.NumGoroutine() > base {
		select {
		case <-ctx.Done():
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d at the start:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		case <-time.After(10 * time.Millisecond):
		}
		settle(t, b)
	}
}
