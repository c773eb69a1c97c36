// Command refuseflood is a hostile client for a broker on 127.0.0.1 (h-refack):
// -n clients (4) send refused packets one write each, as fast as they can,
// for -d, each reading its answers (-noread: never); a probe (a publisher
// and a subscriber of probe/#, MQTT 3.1.1, QoS 0, every -every) times a
// normal client's publish to delivery, -pre alone first (baseline), then
// during the flood. Each flooder's writes and answers are counted every
// 100 ms (-vv prints them): "longest write stall" is the longest run of
// 100 ms periods in which a flooder's writes did not progress. -noprobe,
// or -n 0, runs one side only, so the probe can run in a process of its
// own while the flood is niced (run.sh). -mix: attack (the last session's
// mix: invalid tree, $sync and $SYS publishes at QoS 1, a SUBSCRIBE of an
// invalid filter), sys ($SYS/x at QoS 1), sys0 (at QoS 0), sub (the
// SUBSCRIBE), ok0 and ok1 (accepted publishes to x/y, no subscriber).
// -ws host:port: the flooders connect over WebSocket (read turns apply to
// plain TCP only).
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/mote-mqtt/mote/bench/rawmqtt"
)

func connectPkt(id string, v byte) []byte {
	b := rawmqtt.AppendString(nil, "MQTT")
	b = append(b, v, 2, 0, 60)
	if v == 5 {
		b = append(b, 0)
	}
	b = rawmqtt.AppendString(b, id)
	return rawmqtt.Packet(0x10, b)
}
func pubPkt(v byte, topic string, payload []byte, qos byte, id uint16) []byte {
	b := rawmqtt.AppendString(nil, topic)
	if qos > 0 {
		b = binary.BigEndian.AppendUint16(b, id)
	}
	if v == 5 {
		b = append(b, 0)
	}
	return rawmqtt.Packet(0x30|qos<<1, append(b, payload...))
}
func subPkt(v byte, id uint16, f string) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	if v == 5 {
		b = append(b, 0)
	}
	b = rawmqtt.AppendString(b, f)
	return rawmqtt.Packet(0x82, append(b, 0))
}

// wsConn is a WebSocket connection as a net.Conn: a binary message a
// write, reads across messages.
type wsConn struct {
	*websocket.Conn
	r io.Reader
}

func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.NextReader()
			if err != nil {
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *wsConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// dial connects to addr over TCP, or over WebSocket (ws://addr/mqtt) when
// ws is set.
func dial(addr string, ws bool) (net.Conn, error) {
	if !ws {
		return net.DialTimeout("tcp", addr, 5*time.Second)
	}
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: 5 * time.Second}
	c, _, err := d.Dial("ws://"+addr+"/mqtt", nil)
	if err != nil {
		return nil, err
	}
	return &wsConn{Conn: c}, nil
}

func connect(addr, id string, v byte) (net.Conn, *bufio.Reader) {
	return connectVia(addr, id, v, false)
}

func connectVia(addr, id string, v byte, ws bool) (net.Conn, *bufio.Reader) {
	c, err := dial(addr, ws)
	if err != nil {
		die("dial:", err)
	}
	c.Write(connectPkt(id, v))
	r := bufio.NewReaderSize(c, 1<<16)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	t, _, err := rawmqtt.Read(r)
	if err != nil || t>>4 != 2 {
		die("no CONNACK for", id, err)
	}
	c.SetReadDeadline(time.Time{})
	return c, r
}

var (
	addr    = flag.String("addr", "127.0.0.1:1883", "")
	ver     = flag.Int("v", 4, "flooders' protocol version")
	mix     = flag.String("mix", "attack", "attack|sys|sub|sys0")
	dur     = flag.Duration("d", 15*time.Second, "")
	pre     = flag.Duration("pre", 3*time.Second, "probe alone before the flood")
	nfl     = flag.Int("n", 4, "flooders")
	every   = flag.Duration("every", 10*time.Millisecond, "probe interval")
	noread  = flag.Bool("noread", false, "flooders never read their acks")
	noprobe = flag.Bool("noprobe", false, "")
	verbose = flag.Bool("vv", false, "print per-100ms progress")
	burst   = flag.Int("burst", 0, "the probe also runs a 3.1.1 client sending this many refused QoS 1 publishes every 50 ms, timed to its last PUBACK")
	wsAddr  = flag.String("ws", "", "flooders connect over WebSocket to this host:port (path /mqtt) instead of -addr")
)

// die reports a failure of the tool itself and exits.
func die(a ...any) {
	fmt.Fprintln(os.Stderr, a...)
	os.Exit(1)
}

// probe holds the probe's latencies since it was last taken.
type probe struct {
	mu   sync.Mutex
	lats []time.Duration
}

// take returns the latencies recorded and forgets them.
func (p *probe) take() []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.lats
	p.lats = nil
	return v
}

// q summarises latencies: count, p50, p99, max.
func q(v []time.Duration) string {
	if len(v) == 0 {
		return "n=0"
	}
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	at := func(f float64) float64 {
		return float64(v[min(len(v)-1, int(float64(len(v))*f))].Microseconds()) / 1000
	}
	return fmt.Sprintf("n=%d p50=%.2fms p99=%.2fms max=%.2fms", len(v), at(.5), at(.99), at(1))
}

func main() {
	flag.Parse()
	v := byte(*ver)
	p := &probe{}
	stopProbe := make(chan struct{})
	if !*noprobe {
		sc, sr := connect(*addr, "probe-sub", 4)
		sc.Write(subPkt(4, 1, "probe/#"))
		if t, _, err := rawmqtt.Read(sr); err != nil || t>>4 != 9 {
			die("probe: no SUBACK", err)
		}
		pc, _ := connect(*addr, "probe-pub", 4)
		go func() {
			for {
				t, body, err := rawmqtt.Read(sr)
				if err != nil {
					return
				}
				if t>>4 != 3 {
					continue
				}
				tl := int(binary.BigEndian.Uint16(body))
				ns, err := strconv.ParseInt(string(body[2+tl:]), 10, 64)
				if err != nil {
					continue
				}
				d := time.Since(time.Unix(0, ns))
				p.mu.Lock()
				p.lats = append(p.lats, d)
				p.mu.Unlock()
			}
		}()
		go func() {
			tk := time.NewTicker(*every)
			defer tk.Stop()
			for {
				select {
				case <-stopProbe:
					return
				case <-tk.C:
					pc.Write(pubPkt(4, "probe/x", []byte(strconv.FormatInt(time.Now().UnixNano(), 10)), 0, 0))
				}
			}
		}()
	}
	bp := &probe{}
	if !*noprobe && *burst > 0 {
		bc, br := connect(*addr, "probe-burst", 4)
		go func() {
			var all []byte
			for i := range *burst {
				all = append(all, pubPkt(4, "$SYS/x", []byte("x"), 1, uint16(i+1))...)
			}
			tk := time.NewTicker(50 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-stopProbe:
					return
				case <-tk.C:
				}
				began := time.Now()
				if _, err := bc.Write(all); err != nil {
					return
				}
				for range *burst {
					if _, _, err := rawmqtt.Read(br); err != nil {
						return
					}
				}
				bp.mu.Lock()
				bp.lats = append(bp.lats, time.Since(began))
				bp.mu.Unlock()
			}
		}()
	}
	time.Sleep(*pre)
	base := p.take()
	fmt.Printf("baseline: %s\n", q(base))
	if *burst > 0 {
		fmt.Printf("burst baseline: %s\n", q(bp.take()))
	}

	var bad [][]byte
	switch *mix {
	case "attack":
		bad = [][]byte{
			pubPkt(v, "$tree/rf/a", []byte("not json {"), 1, 7),
			pubPkt(v, "$sync/rf/#", []byte("x"), 1, 8),
			pubPkt(v, "$SYS/broker/x", []byte("x"), 1, 9),
			subPkt(v, 10, "$sync/rf/+bad#"),
			pubPkt(v, "$tree/rf/#", []byte(`[1,2,3]`), 1, 11),
		}
	case "sys":
		bad = [][]byte{pubPkt(v, "$SYS/x", []byte("x"), 1, 9)}
	case "sys0":
		bad = [][]byte{pubPkt(v, "$SYS/x", []byte("x"), 0, 0)}
	case "ok0":
		bad = [][]byte{pubPkt(v, "x/y", []byte("x"), 0, 0)}
	case "ok1":
		bad = [][]byte{pubPkt(v, "x/y", []byte("x"), 1, 9)}
	case "sub":
		bad = [][]byte{subPkt(v, 10, "$sync/rf/+bad#")}
	}
	// batch packets per write like a tool writing as fast as it can
	stop := time.Now().Add(*dur)
	sent := make([]atomic.Int64, *nfl)
	acks := make([]atomic.Int64, *nfl)
	var wg sync.WaitGroup
	for w := 0; w < *nfl; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			to := *addr
			if *wsAddr != "" {
				to = *wsAddr
			}
			c, r := connectVia(to, fmt.Sprintf("rf%d", w), v, *wsAddr != "")
			defer c.Close()
			if !*noread {
				go func() {
					for {
						if _, _, e := rawmqtt.Read(r); e != nil {
							return
						}
						acks[w].Add(1)
					}
				}()
			}
			c.SetWriteDeadline(stop)
			for k := 0; time.Now().Before(stop); k++ {
				if _, e := c.Write(bad[(k+w)%len(bad)]); e != nil {
					return
				}
				sent[w].Add(1)
			}
		}(w)
	}
	// progress per 100 ms
	last := make([]int64, *nfl)
	lastA := make([]int64, *nfl)
	zeroRun := make([]int, *nfl)
	maxZero := make([]int, *nfl)
	t0 := time.Now()
	tk := time.NewTicker(100 * time.Millisecond)
	for time.Now().Before(stop) {
		<-tk.C
		line := fmt.Sprintf("t=%5.1fs", time.Since(t0).Seconds())
		for w := range *nfl {
			s := sent[w].Load()
			d := s - last[w]
			last[w] = s
			if d == 0 {
				zeroRun[w]++
				maxZero[w] = max(maxZero[w], zeroRun[w])
			} else {
				zeroRun[w] = 0
			}
			a := acks[w].Load()
			line += fmt.Sprintf(" %7d/%-7d", d, a-lastA[w])
			lastA[w] = a
		}
		if *verbose {
			fmt.Println(line)
		}
	}
	tk.Stop()
	wg.Wait()
	during := p.take()
	var tot, ta int64
	for w := range *nfl {
		tot += sent[w].Load()
		ta += acks[w].Load()
	}
	fmt.Printf("flood: sent=%d acks=%d (%.0f/s) longest write stall per client (100ms units): %v\n", tot, ta, float64(tot)/dur.Seconds(), maxZero)
	fmt.Printf("during: %s\n", q(during))
	if *burst > 0 {
		fmt.Printf("burst during: %s\n", q(bp.take()))
	}
	close(stopProbe)
	os.Exit(0)
}
