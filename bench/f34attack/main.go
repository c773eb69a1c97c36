// Command f34attack is the h-final34 red team's set of attacks on a running broker
// (127.0.0.1 only): churn, refusal floods split at every byte, QoS 2 reconnect storms,
// resumed $sync sessions with HTTP floods. Each attack is bounded in time.
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mote-mqtt/mote/bench/rawmqtt"
)

var addr = flag.String("addr", "127.0.0.1:29341", "broker TCP address")
var httpAddr = flag.String("http", "127.0.0.1:29343", "broker HTTP address")

// connect builds a CONNECT; expiry < 0 means clean.
func connect(v byte, id string, clean bool, expiry int) []byte {
	flags := byte(0)
	if clean {
		flags |= 2
	}
	b := append(rawmqtt.AppendString(nil, "MQTT"), v, flags, 0, 60)
	if v == 5 {
		if expiry > 0 {
			p := []byte{0x11, 0, 0, 0, 0}
			binary.BigEndian.PutUint32(p[1:], uint32(expiry))
			b = append(b, rawmqtt.AppendVarint(nil, len(p))...)
			b = append(b, p...)
		} else {
			b = append(b, 0)
		}
	}
	b = append(b, rawmqtt.AppendString(nil, id)...)
	return rawmqtt.Packet(0x10, b)
}

func publish(v byte, topic string, payload []byte, qos byte, id uint16, dup bool) []byte {
	h := byte(0x30) | qos<<1
	if dup {
		h |= 8
	}
	b := rawmqtt.AppendString(nil, topic)
	if qos > 0 {
		b = append(b, byte(id>>8), byte(id))
	}
	if v == 5 {
		b = append(b, 0)
	}
	return rawmqtt.Packet(h, append(b, payload...))
}

func subscribe(v byte, id uint16, filter string, qos byte) []byte {
	b := []byte{byte(id >> 8), byte(id)}
	if v == 5 {
		b = append(b, 0)
	}
	b = append(b, rawmqtt.AppendString(nil, filter)...)
	b = append(b, qos)
	return rawmqtt.Packet(0x82, b)
}

func ack(h byte, id uint16) []byte { return []byte{h, 2, byte(id >> 8), byte(id)} }

type pkt struct {
	h    byte
	body []byte
}

func readPacket(r *bufio.Reader) (pkt, error) {
	h, body, err := rawmqtt.Read(r)
	return pkt{h, body}, err
}

func (p pkt) id() uint16 { return binary.BigEndian.Uint16(p.body) }

// pubInfo returns topic, packet id, payload of a PUBLISH (v5: properties skipped).
func (p pkt) pubInfo(v byte) (string, uint16, []byte) {
	tl := int(binary.BigEndian.Uint16(p.body))
	topic := string(p.body[2 : 2+tl])
	rest := p.body[2+tl:]
	var id uint16
	if (p.h>>1)&3 > 0 {
		id = binary.BigEndian.Uint16(rest)
		rest = rest[2:]
	}
	if v == 5 {
		n, mul, i := 0, 1, 0
		for ; ; i++ {
			n += int(rest[i]&0x7f) * mul
			mul *= 128
			if rest[i]&0x80 == 0 {
				break
			}
		}
		rest = rest[i+1+n:]
	}
	return topic, id, rest
}

func dial(v byte, id string, clean bool, expiry int) (net.Conn, *bufio.Reader, error) {
	c, err := net.DialTimeout("tcp", *addr, 3*time.Second)
	if err != nil {
		return nil, nil, fmt.Errorf("dial: %w", err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(connect(v, id, clean, expiry)); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("connect write: %w", err)
	}
	r := bufio.NewReader(c)
	p, err := readPacket(r)
	if err != nil || p.h != 0x20 {
		c.Close()
		return nil, nil, fmt.Errorf("connack: %v %x", err, p.h)
	}
	return c, r, nil
}

// probe publishes QoS 1 timestamps on its own topic and measures publish→deliver.
type probe struct {
	mu   sync.Mutex
	lat  []time.Duration
	sent atomic.Int64
	got  atomic.Int64
	stop chan struct{}
	done sync.WaitGroup
}

func startProbe() *probe {
	pr := &probe{stop: make(chan struct{})}
	sc, sr, err := dial(5, "probe-sub", true, 0)
	if err != nil {
		panic(err)
	}
	sc.SetDeadline(time.Time{})
	sc.Write(subscribe(5, 1, "probe/t", 1))
	readPacket(sr)
	pc, pr2, err := dial(5, "probe-pub", true, 0)
	if err != nil {
		panic(err)
	}
	pc.SetDeadline(time.Time{})
	pr.done.Add(3)
	go func() {
		defer pr.done.Done()
		for {
			p, err := readPacket(sr)
			if err != nil {
				return
			}
			if p.h>>4 == 3 {
				_, id, pl := p.pubInfo(5)
				ns, _ := strconv.ParseInt(string(pl), 10, 64)
				pr.mu.Lock()
				pr.lat = append(pr.lat, time.Since(time.Unix(0, ns)))
				pr.mu.Unlock()
				pr.got.Add(1)
				sc.Write(ack(0x40, id))
			}
		}
	}()
	go func() {
		defer pr.done.Done()
		for {
			if _, err := readPacket(pr2); err != nil {
				return
			}
		}
	}()
	go func() {
		defer pr.done.Done()
		defer sc.Close()
		defer pc.Close()
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		var id uint16
		for {
			select {
			case <-pr.stop:
				time.Sleep(500 * time.Millisecond)
				return
			case <-t.C:
				id = id%60000 + 1
				pc.Write(publish(5, "probe/t", []byte(strconv.FormatInt(time.Now().UnixNano(), 10)), 1, id, false))
				pr.sent.Add(1)
			}
		}
	}()
	return pr
}

func (pr *probe) finish() string {
	close(pr.stop)
	pr.done.Wait()
	pr.mu.Lock()
	defer pr.mu.Unlock()
	l := pr.lat
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	if len(l) == 0 {
		return "probe: nothing delivered"
	}
	q := func(f float64) time.Duration { return l[int(f*float64(len(l)-1))] }
	return fmt.Sprintf("probe: sent %d got %d p50 %v p99 %v max %v", pr.sent.Load(), pr.got.Load(), q(.5), q(.99), l[len(l)-1])
}

func metrics() map[string]string {
	m := map[string]string{}
	resp, err := http.Get("http://" + *httpAddr + "/metrics")
	if err != nil {
		m["error"] = err.Error()
		return m
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && strings.HasPrefix(f[0], "mote_") {
			m[f[0]] = f[1]
		}
	}
	return m
}

func state() string {
	m := metrics()
	return fmt.Sprintf("conns %s inflight %s panics %s snapbytes %s snapwaiting %s",
		m["mote_connections"], m["mote_inflight_messages"], m["mote_panics_recovered_total"], m["mote_snapshot_bytes"], m["mote_snapshots_waiting"])
}

func main() {
	attack := flag.String("attack", "churn", "churn|split|qos2|sync")
	n := flag.Int("n", 3000, "connections (churn)")
	flag.Parse()
	fmt.Println("before:", state())
	pr := startProbe()
	var err error
	switch *attack {
	case "churn":
		err = churn(*n)
	case "split":
		err = split()
	case "qos2":
		err = qos2()
	case "sync":
		err = syncFlood()
	}
	fmt.Println(pr.finish())
	if err != nil {
		fmt.Println("FAIL:", err)
	}
	time.Sleep(2 * time.Second)
	fmt.Println("after:", state())
	if err != nil {
		os.Exit(1)
	}
}

// churn: connect/takeover/close churn with re-SUBSCRIBEs, refusals and big publishes
// in the first write of each connection; every PUBACKed big publish must arrive.
func churn(total int) error {
	sc, sr, err := dial(5, "churn-sub", true, 0)
	if err != nil {
		return err
	}
	sc.SetDeadline(time.Now().Add(150 * time.Second))
	sc.Write(subscribe(5, 1, "big/#", 1))
	readPacket(sr)
	var mu sync.Mutex
	delivered := map[string]int{}
	subDone := make(chan struct{})
	go func() {
		defer close(subDone)
		for {
			p, err := readPacket(sr)
			if err != nil {
				return
			}
			if p.h>>4 == 3 {
				t, id, _ := p.pubInfo(5)
				mu.Lock()
				delivered[t]++
				mu.Unlock()
				sc.Write(ack(0x40, id))
			}
		}
	}()
	// a publisher to a/x, so each churning connection's first deliveries race its end
	apc, apr, err := dial(5, "churn-apub", true, 0)
	if err != nil {
		return err
	}
	apc.SetDeadline(time.Time{})
	apDone := make(chan struct{})
	go func() {
		for {
			if _, err := readPacket(apr); err != nil {
				close(apDone)
				return
			}
		}
	}()
	apStop := make(chan struct{})
	go func() {
		defer apc.Close()
		var id uint16
		for {
			select {
			case <-apStop:
				return
			default:
			}
			id = id%60000 + 1
			apc.Write(publish(5, "a/x", make([]byte, 2000), byte(id%2), id, false))
			time.Sleep(500 * time.Microsecond)
		}
	}()
	defer func() { close(apStop); <-apDone }()
	big := make([]byte, 60000)
	var acked sync.Map
	var next, ackedN, fails atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(90 * time.Second)
	for w := 0; w < 24; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(int64(w)))
			for time.Now().Before(deadline) {
				i := int(next.Add(1))
				if i > total {
					return
				}
				v := byte(5)
				if i%4 == 0 {
					v = 4
				}
				id := fmt.Sprintf("churn-%d", i%150)
				c, err := net.DialTimeout("tcp", *addr, 3*time.Second)
				if err != nil {
					fails.Add(1)
					continue
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				var b []byte
				b = append(b, connect(v, id, i%3 == 0, 60)...)
				b = append(b, subscribe(v, 1, "a/#", 1)...)
				b = append(b, subscribe(v, 2, "a/#", 2)...)
				b = append(b, subscribe(v, 3, "big/"+id, 0)...)
				if v == 5 {
					b = append(b, publish(v, "$SYS/x", []byte("r"), 1, 4, false)...)
				}
				topic := fmt.Sprintf("big/%d", i)
				b = append(b, publish(v, topic, big[:1000+rnd.Intn(59000)], 1, 5, false)...)
				b = append(b, subscribe(v, 6, "a/#", 0)...)
				if i%7 == 0 {
					b = append(b, publish(v, "over/x", make([]byte, 70000), 0, 0, false)...)
				}
				if i%5 == 0 { // split the first write
					k := rnd.Intn(len(b))
					c.Write(b[:k])
					c.Write(b[k:])
				} else {
					c.Write(b)
				}
				r := bufio.NewReader(c)
				stopAt := time.Now().Add(time.Duration(rnd.Intn(4000)) * time.Microsecond)
				c.SetReadDeadline(stopAt)
				for {
					p, err := readPacket(r)
					if err != nil {
						break
					}
					if p.h>>4 == 4 && p.id() == 5 && (len(p.body) == 2 || p.body[2] == 0) {
						acked.Store(topic, true)
						ackedN.Add(1)
					}
				}
				c.Close()
			}
		}(w)
	}
	wg.Wait()
	fmt.Printf("churn: %d connections, %d big publishes acked, %d dial failures\n", total, ackedN.Load(), fails.Load())
	// wait for the deliveries of the acked publishes (bounded)
	var missing []string
	for end := time.Now().Add(20 * time.Second); ; {
		missing = missing[:0]
		mu.Lock()
		acked.Range(func(k, _ any) bool {
			if delivered[k.(string)] == 0 {
				missing = append(missing, k.(string))
			}
			return true
		})
		dups := 0
		for _, n := range delivered {
			if n > 1 {
				dups++
			}
		}
		mu.Unlock()
		if len(missing) == 0 || time.Now().After(end) {
			fmt.Printf("churn: missing %d, topics delivered more than once (QoS 1, allowed) %d\n", len(missing), dups)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	sc.Close()
	<-subDone
	if len(missing) > 0 {
		return fmt.Errorf("%d acked publishes never delivered, e.g. %v", len(missing), missing[:min(5, len(missing))])
	}
	return nil
}

// split: refused and valid packets in one stream, written a byte at a time or in random
// chunks, then an oversize PUBLISH: every answer in order, then DISCONNECT 0x95 (v5) and close;
// every valid publish delivered, in order.
func split() error {
	for round := 0; round < 8; round++ {
		v := byte(5)
		if round%2 == 1 {
			v = 4
		}
		chunk := round / 2 // 0: byte by byte, else random up to 3/17/61 bytes
		sid := fmt.Sprintf("split-sub-%d", round)
		sc, sr, err := dial(5, sid, true, 0)
		if err != nil {
			return err
		}
		sc.Write(subscribe(5, 1, fmt.Sprintf("v%d/#", round), 1))
		readPacket(sr)
		var want []string
		var stream []byte
		type ans struct {
			h    byte
			id   uint16
			code byte
		}
		var expect []ans
		const N = 300
		for k := 0; k < N; k++ {
			id := uint16(k + 1)
			switch {
			case k%50 == 49:
				stream = append(stream, 0xC0, 0)
				expect = append(expect, ans{0xD0, 0, 0})
			case k%3 == 0 || v == 4:
				t := fmt.Sprintf("v%d/%d", round, k)
				want = append(want, t)
				stream = append(stream, publish(v, t, []byte("x"), 1, id, false)...)
				expect = append(expect, ans{0x40, id, 0})
			default:
				stream = append(stream, publish(v, fmt.Sprintf("$SYS/%d", k), []byte("x"), 1, id, false)...)
				expect = append(expect, ans{0x40, id, 0x87})
			}
		}
		stream = append(stream, publish(v, "v/over", make([]byte, 70000), 1, 9999, false)...)
		c, r, err := dial(v, fmt.Sprintf("split-%d", round), true, 0)
		if err != nil {
			return err
		}
		start := time.Now()
		writeErr := make(chan error, 1)
		go func() {
			rnd := rand.New(rand.NewSource(int64(round)))
			for i := 0; i < len(stream); {
				n := 1
				if chunk > 0 {
					n = 1 + rnd.Intn([]int{0, 3, 17, 61}[chunk])
				}
				if i+n > len(stream) {
					n = len(stream) - i
				}
				if _, err := c.Write(stream[i : i+n]); err != nil {
					writeErr <- err
					return
				}
				i += n
			}
			writeErr <- nil
		}()
		var bad []string
		got := 0
		for _, e := range expect {
			p, err := readPacket(r)
			if err != nil {
				bad = append(bad, fmt.Sprintf("answer %d: %v", got, err))
				break
			}
			got++
			if p.h != e.h || (e.h == 0x40 && p.id() != e.id) {
				bad = append(bad, fmt.Sprintf("answer %d: %x id %d, want %x id %d", got, p.h, p.id(), e.h, e.id))
				break
			}
			code := byte(0)
			if e.h == 0x40 && len(p.body) > 2 {
				code = p.body[2]
			}
			if (code >= 0x80) != (e.code >= 0x80) {
				bad = append(bad, fmt.Sprintf("answer %d id %d: code %x want %x", got, e.id, code, e.code))
				break
			}
		}
		tail := ""
		if p, err := readPacket(r); err == nil {
			tail = fmt.Sprintf("%x %x", p.h, p.body)
			if _, err := readPacket(r); err != io.EOF {
				tail += fmt.Sprintf(" then %v", err)
			} else {
				tail += " then EOF"
			}
		} else {
			tail = err.Error()
		}
		c.Close()
		<-writeErr
		// deliveries
		var gotTopics []string
		sc.SetReadDeadline(time.Now().Add(5 * time.Second))
		for len(gotTopics) < len(want) {
			p, err := readPacket(sr)
			if err != nil {
				break
			}
			if p.h>>4 == 3 {
				t, id, _ := p.pubInfo(5)
				gotTopics = append(gotTopics, t)
				sc.Write(ack(0x40, id))
			}
		}
		sc.Close()
		inOrder := len(gotTopics) == len(want)
		for i := range gotTopics {
			if i < len(want) && gotTopics[i] != want[i] {
				inOrder = false
			}
		}
		fmt.Printf("split round %d v%d chunk %d: %d/%d answers, tail %q, delivered %d/%d in order %v, %v\n",
			round, v, chunk, got, len(expect), tail, len(gotTopics), len(want), inOrder, time.Since(start).Round(time.Millisecond))
		if len(bad) > 0 || !inOrder {
			return fmt.Errorf("round %d: %v", round, bad)
		}
	}
	return nil
}

// qos2: three sockets reconnect as one persistent QoS 2 publisher, taking each other over,
// while a slow subscriber reads; each completed message must arrive exactly once.
func qos2() error {
	sc, sr, err := dial(5, "q2-sub", true, 0)
	if err != nil {
		return err
	}
	sc.SetDeadline(time.Now().Add(150 * time.Second))
	sc.Write(subscribe(5, 1, "q2/#", 2))
	readPacket(sr)
	var mu sync.Mutex
	deliv := map[string]int{}
	dupFlag := 0
	subDone := make(chan struct{})
	go func() {
		defer close(subDone)
		for {
			p, err := readPacket(sr)
			if err != nil {
				return
			}
			switch p.h >> 4 {
			case 3:
				_, id, pl := p.pubInfo(5)
				mu.Lock()
				deliv[string(pl)]++
				if p.h&8 != 0 {
					dupFlag++
				}
				slow := len(deliv) < 3000
				mu.Unlock()
				if slow {
					time.Sleep(2 * time.Millisecond)
				}
				sc.Write(ack(0x50, id))
			case 6:
				sc.Write(ack(0x70, p.id()))
			}
		}
	}()
	type out struct {
		seq    int
		pubrec bool
	}
	var seqN atomic.Int64
	var cmu sync.Mutex
	completed := map[string]bool{}
	refused := 0
	var conns, takeovers atomic.Int64
	runConn := func(own map[uint16]*out, fresh int, rnd *rand.Rand, linger time.Duration) {
		c, r, err := dial(5, "q2-pub", false, 300)
		if err != nil {
			return
		}
		conns.Add(1)
		var b []byte
		resent := 0
		for id, o := range own {
			if resent++; resent > 150 {
				break
			}
			if o.pubrec {
				b = append(b, 0x62, 2, byte(id>>8), byte(id))
			} else {
				b = append(b, publish(5, "q2/t", []byte(strconv.Itoa(o.seq)), 2, id, true)...)
			}
		}
		for k := 0; k < fresh && len(own) < 150; k++ {
			s := int(seqN.Add(1))
			id := uint16(s%60000 + 1)
			own[id] = &out{seq: s}
			b = append(b, publish(5, "q2/t", []byte(strconv.Itoa(s)), 2, id, false)...)
		}
		c.Write(b)
		c.SetReadDeadline(time.Now().Add(linger))
		for {
			p, err := readPacket(r)
			if err != nil {
				if err != io.EOF && !strings.Contains(err.Error(), "timeout") {
					takeovers.Add(1)
				}
				break
			}
			switch p.h >> 4 {
			case 5:
				o := own[p.id()]
				if o == nil {
					continue
				}
				if len(p.body) > 2 && p.body[2] >= 0x80 {
					cmu.Lock()
					refused++
					cmu.Unlock()
					delete(own, p.id())
					continue
				}
				o.pubrec = true
				c.Write([]byte{0x62, 2, p.body[0], p.body[1]})
			case 7:
				if o := own[p.id()]; o != nil {
					cmu.Lock()
					completed[strconv.Itoa(o.seq)] = true
					cmu.Unlock()
					delete(own, p.id())
				}
			case 14:
				takeovers.Add(1)
			}
		}
		c.Close()
	}
	var wg sync.WaitGroup
	owns := make([]map[uint16]*out, 3)
	deadline := time.Now().Add(45 * time.Second)
	for g := 0; g < 3; g++ {
		owns[g] = map[uint16]*out{}
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(int64(g)))
			for time.Now().Before(deadline) && seqN.Load() < 20000 {
				runConn(owns[g], 1+rnd.Intn(8), rnd, time.Duration(rnd.Intn(15))*time.Millisecond)
			}
		}(g)
	}
	wg.Wait()
	// finish every socket's outstanding flows, one at a time
	for round := 0; round < 100; round++ {
		left := 0
		for g := 0; g < 3; g++ {
			if len(owns[g]) > 0 {
				runConn(owns[g], 0, nil, 300*time.Millisecond)
			}
			left += len(owns[g])
		}
		if left == 0 {
			break
		}
	}
	left := len(owns[0]) + len(owns[1]) + len(owns[2])
	var missing, dups []string
	lastN, lastChange := -1, time.Now()
	for end := time.Now().Add(60 * time.Second); ; {
		missing, dups = missing[:0], dups[:0]
		mu.Lock()
		cmu.Lock()
		for s := range completed {
			if deliv[s] == 0 {
				missing = append(missing, s)
			}
		}
		for s, n := range deliv {
			if n > 1 {
				dups = append(dups, s)
			}
		}
		cmu.Unlock()
		mu.Unlock()
		if len(missing) != lastN {
			lastN, lastChange = len(missing), time.Now()
		}
		if len(missing) == 0 || time.Now().After(end) || time.Since(lastChange) > 5*time.Second {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	mu.Lock()
	fmt.Printf("qos2: %d connections, %d ended by takeover/error, %d seqs, %d completed, %d refused, %d outstanding left, %d delivered distinct, %d dup-flag deliveries, missing %d, duplicates %d %v\n",
		conns.Load(), takeovers.Load(), seqN.Load(), len(completed), refused, left, len(deliv), dupFlag, len(missing), len(dups), dups[:min(5, len(dups))])
	mu.Unlock()
	sc.Close()
	<-subDone
	fmt.Println("qos2 after subscriber gone:", state())
	if c, _, err := dial(5, "q2-pub", true, 0); err == nil { // end the publisher's session
		c.Write([]byte{0xE0, 0})
		c.Close()
	}
	if len(missing) > 0 || len(dups) > 0 || left > 0 {
		return fmt.Errorf("qos2: missing %d duplicates %d left %d", len(missing), len(dups), left)
	}
	return nil
}

// syncFlood: rows over the snapshot budget, resumed $sync sessions that never read,
// takeovers of waiting sessions, HTTP GET floods; budget back to 0 after.
func syncFlood() error {
	c, r, err := dial(5, "sync-seed", true, 0)
	if err != nil {
		return err
	}
	val := []byte(`"` + strings.Repeat("v", 400) + `"`)
	for i := 0; i < 3000; i++ {
		c.Write(publish(5, fmt.Sprintf("s/%d/%d", i/100, i), val, 0, 0, false)[0:0])
		p := publish(5, fmt.Sprintf("s/%d/%d", i/100, i), val, 0, 0, false)
		p[0] |= 1 // retain
		c.Write(p)
	}
	c.Write([]byte{0xC0, 0})
	for {
		p, err := readPacket(r)
		if err != nil || p.h == 0xD0 {
			break
		}
	}
	c.Close()
	time.Sleep(time.Second)
	const N = 12
	for i := 0; i < N; i++ { // sessions subscribed to $sync, left
		c, r, err := dial(5, fmt.Sprintf("sync-%d", i), true, 600)
		if err != nil {
			return err
		}
		c.Write(subscribe(5, 1, "$sync/s/#", 0))
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		readPacket(r)
		c.Close()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var gets, getFail atomic.Int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := &http.Client{Timeout: 10 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := cl.Get("http://" + *httpAddr + "/api/tree/s/%23")
				if err != nil {
					getFail.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					getFail.Add(1)
				}
				gets.Add(1)
			}
		}()
	}
	var resumes, subOK, subRefused atomic.Int64
	deadline := time.Now().Add(60 * time.Second)
	for g := 0; g < N; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(int64(g)))
			for time.Now().Before(deadline) {
				// resume without reading (held 0.2-1.5 s), or with reading, or a takeover from another socket
				c, err := net.DialTimeout("tcp", *addr, 3*time.Second)
				if err != nil {
					continue
				}
				c.Write(connect(5, fmt.Sprintf("sync-%d", rnd.Intn(N)), false, 600))
				resumes.Add(1)
				if rnd.Intn(3) == 0 {
					c.SetDeadline(time.Now().Add(3 * time.Second))
					r := bufio.NewReader(c)
					for {
						if _, err := readPacket(r); err != nil {
							break
						}
					}
				} else {
					time.Sleep(time.Duration(200+rnd.Intn(1300)) * time.Millisecond)
				}
				c.Close()
			}
		}(g)
	}
	// an honest client subscribing to a small $sync filter now and then
	honest := func() {
		for time.Now().Before(deadline) {
			c, r, err := dial(5, "sync-honest", true, 0)
			if err != nil {
				continue
			}
			c.Write(subscribe(5, 1, "$sync/s/1/#", 0))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			p, err := readPacket(r)
			if err == nil && p.h == 0x90 && len(p.body) > 3 && p.body[len(p.body)-1] < 0x80 {
				subOK.Add(1)
			} else {
				subRefused.Add(1)
			}
			c.Close()
			time.Sleep(200 * time.Millisecond)
		}
	}
	honest()
	close(stop)
	wg.Wait()
	fmt.Printf("sync: %d resumes, %d GETs (%d failed), honest $sync SUBSCRIBE granted %d refused %d\n", resumes.Load(), gets.Load(), getFail.Load(), subOK.Load(), subRefused.Load())
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		m := metrics()
		if m["mote_snapshot_bytes"] == "0" && m["mote_snapshots_waiting"] == "0" {
			return nil
		}
	}
	return fmt.Errorf("sync: budget not back: %s", state())
}
