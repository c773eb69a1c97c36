// Command latgrind drives a broker with one slow QoS 0 publisher and one
// subscriber on the topic the `latency` scenario uses ("lat/t", MQTT
// 3.1.1, a 19-digit payload), for counting the broker's per-message work
// under valgrind's callgrind (see run.sh); -subs more subscribers make it
// a fan-out. -tree drives the `$tree` variant instead, as the bench's
// `latency` tree does: it publishes `$tree/lat` with `{"t":N}` and
// subscribes `$tree/lat/+`. It warms up, runs the -on
// command (e.g. `callgrind_control -i on PID`), publishes -count messages
// at -rate a second, waits until the subscriber has them all, then runs
// the -off command. It prints how many arrived and their p50 latency.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mote-mqtt/mote/bench/rawmqtt"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:1883", "broker's MQTT address")
	warm := flag.Int("warm", 200, "messages before -on")
	count := flag.Int("count", 1000, "messages counted between -on and -off")
	rate := flag.Int("rate", 100, "publishes a second")
	on := flag.String("on", "", "shell command run after the warm-up")
	off := flag.String("off", "", "shell command run after the counted messages arrived")
	idle := flag.Bool("idle", false, "publish nothing between -on and -off, only wait as long: the idle cost")
	subs := flag.Int("subs", 1, "subscribers (lat-sub, lat-sub-1, ...), each getting every message")
	tree := flag.Bool("tree", false, "publish `$tree/lat` {\"t\":N} and subscribe `$tree/lat/+`, as the bench's latency tree")
	flag.Parse()
	if *rate < 1 || *subs < 1 {
		fmt.Fprintln(os.Stderr, "latgrind: -rate and -subs must be at least 1")
		os.Exit(2)
	}
	sh := shape{pub: "lat/t", filter: "lat/t"}
	if *tree {
		sh = shape{pub: "$tree/lat", filter: "$tree/lat/+", tree: true}
	}
	if err := run(*addr, sh, *warm, *count, *rate, *subs, *on, *off, *idle); err != nil {
		fmt.Fprintln(os.Stderr, "latgrind:", err)
		os.Exit(1)
	}
}

// shape is what latgrind publishes and subscribes: the plain topic, or the
// `$tree` variant's JSON object to a row subscriber.
type shape struct {
	pub, filter string
	tree        bool
}

// payload is the message for the publish time ns.
func (s shape) payload(ns int64) []byte {
	if s.tree {
		return fmt.Appendf(nil, `{"t":%d}`, ns)
	}
	return strconv.AppendInt(nil, ns, 10)
}

// sent reads the publish time back from a delivered PUBLISH body (3.1.1,
// QoS 0: topic, then payload).
func sent(b []byte) (int64, error) {
	if len(b) < 2 {
		return 0, fmt.Errorf("short publish %x", b)
	}
	n := 2 + (int(b[0])<<8 | int(b[1]))
	if len(b) < n {
		return 0, fmt.Errorf("short publish %x", b)
	}
	return strconv.ParseInt(strings.Trim(string(b[n:]), `{}"t:`), 10, 64)
}

func connect(addr, id string) (net.Conn, *bufio.Reader, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	body := append(rawmqtt.AppendString(nil, "MQTT"), 4, 0x02, 0, 60)
	body = append(body, rawmqtt.AppendString(nil, id)...)
	if _, err := c.Write(rawmqtt.Packet(0x10, body)); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("connect %s: %w", id, err)
	}
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	first, b, err := rawmqtt.Read(r)
	if err != nil || first != 0x20 || len(b) < 2 || b[1] != 0 {
		c.Close()
		return nil, nil, fmt.Errorf("connack %s: %x %x %v", id, first, b, err)
	}
	return c, r, nil
}

func shell(cmd string) error {
	if cmd == "" {
		return nil
	}
	out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%q: %w: %s", cmd, err, out)
	}
	return nil
}

func run(addr string, sh shape, warm, count, rate, nsubs int, on, off string, idle bool) error {
	type subscriber struct {
		c net.Conn
		r *bufio.Reader
	}
	var subs []subscriber
	defer func() {
		for _, s := range subs {
			s.c.Close()
		}
	}()
	for i := range nsubs {
		id := "lat-sub"
		if i > 0 {
			id = fmt.Sprint("lat-sub-", i)
		}
		sub, sr, err := connect(addr, id)
		if err != nil {
			return err
		}
		subs = append(subs, subscriber{sub, sr})
		body := append([]byte{0, 1}, rawmqtt.AppendString(nil, sh.filter)...)
		if _, err := sub.Write(rawmqtt.Packet(0x82, append(body, 0))); err != nil {
			return err
		}
		if first, _, err := rawmqtt.Read(sr); err != nil || first != 0x90 {
			return fmt.Errorf("suback: %x %v", first, err)
		}
		sub.SetReadDeadline(time.Time{})
	}
	pub, _, err := connect(addr, "lat-pub")
	if err != nil {
		return err
	}
	defer pub.Close()

	type arrival struct {
		sent int64 // the publish's time, from its payload
		lat  time.Duration
	}
	got := make(chan arrival, (warm+count)*nsubs)
	readErr := make(chan error, nsubs)
	for _, s := range subs {
		go func() { // owned by run: ends when its connection is closed
			for {
				_, b, err := rawmqtt.Read(s.r)
				if err != nil {
					readErr <- err
					return
				}
				ns, err := sent(b)
				if err != nil {
					readErr <- err
					return
				}
				got <- arrival{ns, time.Since(time.Unix(0, ns))}
			}
		}()
	}
	phase := func(n int) ([]time.Duration, error) {
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		var last int64
		for range n {
			<-tick.C
			last = time.Now().UnixNano()
			p := rawmqtt.Packet(0x30, append(rawmqtt.AppendString(nil, sh.pub), sh.payload(last)...))
			if _, err := pub.Write(p); err != nil {
				return nil, err
			}
		}
		// Done once every subscriber has the last publish: `$tree`
		// deltas of publishes waiting together are folded into one (SPEC
		// §2), so fewer than n may arrive when the broker falls behind.
		var lat []time.Duration
		for ends := 0; ends < nsubs; {
			select {
			case a := <-got:
				lat = append(lat, a.lat)
				if a.sent == last {
					ends++
				}
			case err := <-readErr:
				return lat, err
			case <-time.After(30 * time.Second):
				return lat, errors.New("timed out waiting for messages")
			}
		}
		return lat, nil
	}
	if _, err := phase(warm); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	if err := shell(on); err != nil {
		return err
	}
	var lat []time.Duration
	if idle {
		time.Sleep(time.Duration(count) * time.Second / time.Duration(rate))
	} else if lat, err = phase(count); err != nil {
		return fmt.Errorf("counted: %w", err)
	}
	if err := shell(off); err != nil {
		return err
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		fmt.Printf("messages %d p50 %v p99 %v\n", len(lat), lat[len(lat)/2], lat[len(lat)*99/100])
		if want := count * nsubs; len(lat) != want {
			fmt.Printf("folded: %d deliveries of %d publishes to %d subscribers (per-message counts are off)\n", len(lat), count, nsubs)
		}
	} else {
		fmt.Println("idle")
	}
	return nil
}
