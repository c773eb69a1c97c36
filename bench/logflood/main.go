// Command logflood is the red team's hostile client for the broker's log:
// it tries, one way after another, to make a Mote broker on 127.0.0.1
// write a log line per packet or per connection, and reports the bytes
// and lines each way added to the broker's log file.
//
//	mote broker --data off --tcp 127.0.0.1:21883 --ws 127.0.0.1:21884 --http 127.0.0.1:21885 2>log
//	go run ./bench/logflood -log log
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mote-mqtt/mote/bench/rawmqtt"
)

// v311 has the clients speak MQTT 3.1.1 (the original dialect's
// listener speaks nothing else).
var v311 = flag.Bool("v311", false, "speak MQTT 3.1.1, not 5")

func main() {
	logPath := flag.String("log", "", "the broker's log file")
	tcp := flag.String("tcp", "127.0.0.1:21883", "the broker's MQTT listener")
	httpAddr := flag.String("http", "127.0.0.1:21885", "the broker's HTTP listener")
	wsAddr := flag.String("ws", "127.0.0.1:21884", "the broker's WebSocket listener")
	user := flag.String("user", "", "a username the broker knows (with -pass)")
	pass := flag.String("pass", "", "its password")
	dur := flag.Duration("d", 3*time.Second, "how long each way runs")
	only := flag.String("only", "", "run only the ways whose name contains this")
	pid := flag.Int("pid", 0, "the broker's process id, for its CPU time")
	rate := flag.Int("rate", 100_000, "refused PUBLISHes a second of the probe's flood")
	flag.Parse()
	if *logPath == "" {
		fmt.Fprintln(os.Stderr, "logflood: -log is required")
		os.Exit(2)
	}
	f := flooder{addr: *tcp, http: *httpAddr, ws: *wsAddr, user: *user, pass: *pass, pid: *pid, rate: *rate}
	ways := []struct {
		name string
		run  func(ctx context.Context) int
	}{
		{"refused-publish-1conn", f.refusedPublish(1)},
		{"refused-publish-8conn", f.refusedPublish(8)},
		{"refused-subscribe-1conn", f.refusedSubscribe},
		{"conns-1000x20-refusals", f.manyConns(1000, 20)},
		{"connect-bad-protocol", f.connects(badProtocol)},
		{"connect-bad-auth", f.connects(f.badAuth)},
		{"connect-long-clientid", f.connects(longClientID)},
		{"connect-keepalive-0", f.connects(keepaliveZero)},
		{"connect-bad-will", f.connects(badWill)},
		{"connect-garbage", f.connects(garbage)},
		{"malformed-after-connect", f.afterConnect(malformed)},
		{"auth-packet", f.afterConnect(authPacket)},
		{"pubrel-unknown", f.afterConnect(pubrelUnknown)},
		{"alias-unknown", f.afterConnect(aliasUnknown)},
		{"oversized-packet", f.afterConnect(oversized)},
		{"user-props-over", f.afterConnect(userPropsOver)},
		{"slow-subscriber", f.slowSubscriber},
		{"http-bad-auth", f.httpGets("/api/tree/a", "nobody", "wrong")},
		{"http-bad-path", f.httpGets("/api/nothing/%ff", "", "")},
		{"http-refused-tree", f.httpGets("/api/tree/$sync/x", "", "")},
		{"ws-bad-upgrade", f.wsBad},
		{"probe-under-8conn-flood", f.probe},
	}
	fmt.Printf("%-26s %8s %10s %8s %10s\n", "way", "attempts", "log_bytes", "lines", "bytes/s")
	for _, w := range ways {
		if *only != "" && !strings.Contains(w.name, *only) {
			continue
		}
		b0, l0 := size(*logPath)
		ctx, cancel := context.WithTimeout(context.Background(), *dur)
		start := time.Now()
		n := w.run(ctx)
		cancel()
		took := time.Since(start)
		time.Sleep(1500 * time.Millisecond) // the broker's $SYS tick writes counts
		b1, l1 := size(*logPath)
		fmt.Printf("%-26s %8d %10d %8d %10.0f\n", w.name, n, b1-b0, l1-l0, float64(b1-b0)/took.Seconds())
	}
}

// size is the log file's bytes and lines.
func size(path string) (int64, int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	return int64(len(b)), bytes.Count(b, []byte{'\n'})
}

type flooder struct {
	addr, http, ws, user, pass string
	pid                        int // the broker's, for its CPU time
	rate                       int // refused PUBLISHes a second in probe
}

func connect5(id, user, pass string, keepalive uint16) []byte {
	flags := byte(0x02)
	if user != "" {
		flags |= 0x80 | 0x40
	}
	version := byte(5)
	if *v311 {
		version = 4
	}
	body := append(rawmqtt.AppendString(nil, "MQTT"), version, flags)
	body = binary.BigEndian.AppendUint16(body, keepalive)
	if !*v311 {
		body = append(body, 0)
	}
	body = append(body, rawmqtt.AppendString(nil, id)...)
	if user != "" {
		body = append(append(body, rawmqtt.AppendString(nil, user)...), rawmqtt.AppendString(nil, pass)...)
	}
	return rawmqtt.Packet(0x10, body)
}

func (f flooder) dial() (net.Conn, error) {
	return net.DialTimeout("tcp", f.addr, 2*time.Second)
}

// session dials and connects as id, reading the CONNACK.
func (f flooder) session(id string) (net.Conn, error) {
	c, err := f.dial()
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(connect5(id, f.user, f.pass, 60)); err != nil {
		c.Close()
		return nil, err
	}
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(c, hdr); err != nil || hdr[0] != 0x20 {
		c.Close()
		return nil, fmt.Errorf("no CONNACK (%x): %v", hdr, err)
	}
	rest := make([]byte, hdr[1])
	io.ReadFull(c, rest)
	if rest[1] != 0 {
		c.Close()
		return nil, fmt.Errorf("CONNACK %#x", rest[1])
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func publish(topic string, id uint16, props []byte) []byte {
	body := rawmqtt.AppendString(nil, topic)
	body = binary.BigEndian.AppendUint16(body, id)
	if !*v311 {
		body = append(append(body, rawmqtt.AppendVarint(nil, len(props))...), props...)
	}
	body = append(body, 'x')
	return rawmqtt.Packet(0x32, body)
}

// drain reads and discards what c gets until it closes.
func drain(c net.Conn) { io.Copy(io.Discard, c) }

// refusedPublish loops QoS 1 PUBLISHes to a $sync topic, which the broker
// refuses, on conns connections.
func (f flooder) refusedPublish(conns int) func(context.Context) int {
	return func(ctx context.Context) int {
		var mu sync.Mutex
		total := 0
		var wg sync.WaitGroup
		for i := range conns {
			wg.Go(func() {
				c, err := f.session(fmt.Sprintf("rp-%d-%d", i, time.Now().UnixNano()))
				if err != nil {
					fmt.Fprintln(os.Stderr, "refused-publish:", err)
					return
				}
				defer c.Close()
				go drain(c)
				w := bufio.NewWriter(c)
				n := 0
				for ctx.Err() == nil {
					for range 100 {
						n++
						w.Write(publish("$sync/x", uint16(n%60000+1), nil))
					}
					if w.Flush() != nil {
						break
					}
				}
				mu.Lock()
				total += n
				mu.Unlock()
			})
		}
		wg.Wait()
		return total
	}
}

func (f flooder) refusedSubscribe(ctx context.Context) int {
	c, err := f.session(fmt.Sprintf("rs-%d", time.Now().UnixNano()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "refused-subscribe:", err)
		return 0
	}
	defer c.Close()
	go drain(c)
	w := bufio.NewWriter(c)
	n := 0
	for ctx.Err() == nil {
		for range 100 {
			n++
			body := binary.BigEndian.AppendUint16(nil, uint16(n%60000+1))
			body = append(body, 0)
			body = append(append(body, rawmqtt.AppendString(nil, "$tree/a/#/b")...), 1)
			w.Write(rawmqtt.Packet(0x82, body))
		}
		if w.Flush() != nil {
			break
		}
	}
	return n
}

// manyConns opens n connections, each sending each refused PUBLISHes,
// 50 at once.
func (f flooder) manyConns(n, each int) func(context.Context) int {
	return func(ctx context.Context) int {
		sem := make(chan struct{}, 50)
		var wg sync.WaitGroup
		for i := range n {
			if ctx.Err() != nil {
				break
			}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				c, err := f.session(fmt.Sprintf("mc-%d-%d", i, time.Now().UnixNano()))
				if err != nil {
					return
				}
				defer c.Close()
				var buf []byte
				for j := range each {
					buf = append(buf, publish("$sync/x", uint16(j+1), nil)...)
				}
				c.Write(buf)
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				got := 0
				r := bufio.NewReader(c)
				for got < each { // the PUBACKs: the refusals are done
					b, err := r.ReadByte()
					if err != nil {
						return
					}
					if b == 0x40 {
						got++
					}
				}
			})
		}
		wg.Wait()
		return n * each
	}
}

func badProtocol(_ int) []byte {
	body := append(rawmqtt.AppendString(nil, "MQTT"), 9, 0x02, 0, 60)
	body = append(body, rawmqtt.AppendString(nil, "bp")...)
	return rawmqtt.Packet(0x10, body)
}

func (f flooder) badAuth(i int) []byte {
	return connect5(fmt.Sprintf("ba-%d", i), "nobody", "wrong", 60)
}

func longClientID(i int) []byte { return connect5(strings.Repeat("x", 70000)[:65000], "", "", 60) }

func keepaliveZero(i int) []byte { return connect5(fmt.Sprintf("k0-%d", i), "", "", 0) }

func badWill(i int) []byte {
	body := append(rawmqtt.AppendString(nil, "MQTT"), 5, 0x02|0x04, 0, 60, 0)
	body = append(body, rawmqtt.AppendString(nil, fmt.Sprintf("bw-%d", i))...)
	body = append(body, 0) // will properties
	body = append(body, rawmqtt.AppendString(nil, "$sync/will")...)
	body = append(body, rawmqtt.AppendString(nil, "x")...)
	return rawmqtt.Packet(0x10, body)
}

func garbage(_ int) []byte { return []byte{0x10, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3} }

// connects loops connections that each send one CONNECT made by mk, 16 at
// once, and reads what the broker answers.
func (f flooder) connects(mk func(i int) []byte) func(context.Context) int {
	return func(ctx context.Context) int {
		var mu sync.Mutex
		n := 0
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for ctx.Err() == nil {
					mu.Lock()
					n++
					i := n
					mu.Unlock()
					c, err := f.dial()
					if err != nil {
						time.Sleep(10 * time.Millisecond)
						continue
					}
					c.SetDeadline(time.Now().Add(2 * time.Second))
					c.Write(mk(i))
					drain(c)
					c.Close()
				}
			})
		}
		wg.Wait()
		return n
	}
}

func malformed(_ int) []byte { return []byte{0x30, 0x03, 0xff, 0xff, 0x00} }

func authPacket(_ int) []byte { return rawmqtt.Packet(0xf0, []byte{0x18, 0}) }

func pubrelUnknown(i int) []byte {
	return rawmqtt.Packet(0x62, binary.BigEndian.AppendUint16(nil, uint16(i%60000+1)))
}

func aliasUnknown(_ int) []byte { return publish("", 1, []byte{0x23, 0, 9}) }

// oversized is the fixed header of a PUBLISH over any maximum packet
// size (300 MiB), and a little of its body.
func oversized(_ int) []byte {
	return append(append([]byte{0x32}, rawmqtt.AppendVarint(nil, 300<<20)...), rawmqtt.AppendString(nil, "a/b")...)
}

func userPropsOver(_ int) []byte {
	var props []byte
	for i := range 200 {
		props = append(props, 0x26)
		props = append(append(props, rawmqtt.AppendString(nil, fmt.Sprint("k", i))...), rawmqtt.AppendString(nil, "v")...)
	}
	return publish("a/b", 1, props)
}

// afterConnect loops connections that connect and then send what mk
// makes, 16 at once, each until the broker closes it.
func (f flooder) afterConnect(mk func(i int) []byte) func(context.Context) int {
	return func(ctx context.Context) int {
		var mu sync.Mutex
		n := 0
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for ctx.Err() == nil {
					mu.Lock()
					n++
					i := n
					mu.Unlock()
					c, err := f.session(fmt.Sprintf("ac-%d-%d", i, time.Now().UnixNano()))
					if err != nil {
						time.Sleep(10 * time.Millisecond)
						continue
					}
					c.SetDeadline(time.Now().Add(2 * time.Second))
					p := mk(i)
					for range 20 {
						if _, err := c.Write(p); err != nil {
							break
						}
					}
					drain(c)
					c.Close()
				}
			})
		}
		wg.Wait()
		return n
	}
}

// slowSubscriber connects clients that subscribe to a topic and never
// read, and publishes to it until each one's queue fills.
func (f flooder) slowSubscriber(ctx context.Context) int {
	pub, err := f.session(fmt.Sprintf("slowpub-%d", time.Now().UnixNano()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "slow:", err)
		return 0
	}
	defer pub.Close()
	go drain(pub)
	n := 0
	big := bytes.Repeat([]byte{'x'}, 60000)
	for ctx.Err() == nil {
		c, err := f.session(fmt.Sprintf("slow-%d-%d", n, time.Now().UnixNano()))
		if err != nil {
			continue
		}
		body := append([]byte{0, 1, 0}, rawmqtt.AppendString(nil, "slow/t")...)
		c.Write(rawmqtt.Packet(0x82, append(body, 0)))
		n++
		for range 200 {
			body := append(rawmqtt.AppendString(nil, "slow/t"), 0)
			pub.Write(rawmqtt.Packet(0x30, append(body, big...)))
		}
		defer c.Close()
		if n >= 200 {
			break
		}
	}
	return n
}

func (f flooder) httpGets(path, user, pass string) func(context.Context) int {
	return func(ctx context.Context) int {
		var mu sync.Mutex
		n := 0
		var wg sync.WaitGroup
		cl := &http.Client{Timeout: 2 * time.Second}
		for range 8 {
			wg.Go(func() {
				for ctx.Err() == nil {
					req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+f.http+path, nil)
					if user != "" {
						req.SetBasicAuth(user, pass)
					}
					if resp, err := cl.Do(req); err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
					mu.Lock()
					n++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		return n
	}
}

func (f flooder) wsBad(ctx context.Context) int {
	n := 0
	for ctx.Err() == nil {
		for _, hdr := range []string{
			"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n",
			"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Protocol: nope\r\nOrigin: http://evil\r\n\r\n",
			"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n\x82\x85\x00\x00\x00\x00\xff\xff\xff\xff\xff",
		} {
			c, err := net.DialTimeout("tcp", f.ws, 2*time.Second)
			if err != nil {
				continue
			}
			c.SetDeadline(time.Now().Add(2 * time.Second))
			c.Write([]byte(hdr))
			drain(c)
			c.Close()
			n++
		}
	}
	return n
}

// acks counts the packets of type t that c gets until it closes.
func acks(c net.Conn, t byte, n *atomic.Int64) {
	r := bufio.NewReaderSize(c, 64<<10)
	for {
		h, err := r.ReadByte()
		if err != nil {
			return
		}
		l, m := 0, 1
		for {
			d, err := r.ReadByte()
			if err != nil {
				return
			}
			l += int(d&127) * m
			m *= 128
			if d < 128 {
				break
			}
		}
		if _, err := r.Discard(l); err != nil {
			return
		}
		if h>>4 == t {
			n.Add(1)
		}
	}
}

// probe floods refused PUBLISHes from 8 connections, -rate a second in
// all, while a ninth client times QoS 1 round trips of a publish it is
// subscribed to; it prints the refusals answered a second, the probe's
// latencies and the broker's CPU (from -pid, if given).
func (f flooder) probe(ctx context.Context) int {
	var answered atomic.Int64
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			c, err := f.session(fmt.Sprintf("pf-%d-%d", i, time.Now().UnixNano()))
			if err != nil {
				fmt.Fprintln(os.Stderr, "probe flood:", err)
				return
			}
			defer c.Close()
			go acks(c, 4, &answered)
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			n := 0
			for ctx.Err() == nil {
				var buf []byte
				for range f.rate / 800 { // 8 connections, each 10 ms
					n++
					buf = append(buf, publish("$sync/x", uint16(n%60000+1), nil)...)
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
				select {
				case <-tick.C:
				case <-ctx.Done():
				}
			}
		})
	}
	c, err := f.session(fmt.Sprintf("probe-%d", time.Now().UnixNano()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		return 0
	}
	defer c.Close()
	sub := append([]byte{0, 1, 0}, rawmqtt.AppendString(nil, "probe/t")...)
	c.Write(rawmqtt.Packet(0x82, append(sub, 0)))
	r := bufio.NewReader(c)
	var lat []time.Duration
	cpu0 := cpuOf(f.pid)
	t0 := time.Now()
	for ctx.Err() == nil {
		start := time.Now()
		c.Write(publish("probe/t", 1, nil))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		got := false
		for !got {
			h, err := r.ReadByte()
			if err != nil {
				break
			}
			l, m := 0, 1
			for {
				d, _ := r.ReadByte()
				l += int(d&127) * m
				m *= 128
				if d < 128 {
					break
				}
			}
			r.Discard(l)
			got = h>>4 == 3 // the publish came back
		}
		lat = append(lat, time.Since(start))
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(t0)
	cpu := cpuOf(f.pid) - cpu0
	wg.Wait()
	slices.Sort(lat)
	if len(lat) > 0 {
		fmt.Printf("probe: %d round trips p50 %v p99 %v max %v; refusals answered %.0f/s; broker CPU %.0f%%\n",
			len(lat), lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1],
			float64(answered.Load())/took.Seconds(), 100*cpu.Seconds()/took.Seconds())
	}
	return int(answered.Load())
}

// cpuOf is the CPU time process pid used so far (Linux; 0 without pid).
func cpuOf(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	var ut, st int64
	fmt.Sscan(fields[11], &ut)
	fmt.Sscan(fields[12], &st)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ 100
}
