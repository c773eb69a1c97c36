package httpapi

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
)

// BenchmarkGet: GET /api/tree of 100 rows over loopback HTTP/1.1 with
// keep-alive.
func BenchmarkGet(b *testing.B) {
	e := setup(b, broker.Options{}, Options{})
	var sb strings.Builder
	sb.WriteString("{")
	for i := range 100 {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `"d%d":{"t":%d,"on":true}`, i, i)
	}
	sb.WriteString("}")
	e.publish(b, admin, "$tree/dev", sb.String())
	url := e.url + "/api/tree/dev/%2B/t"
	b.ReportAllocs()
	for b.Loop() {
		resp, err := http.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatal(resp.Status)
		}
	}
}

// BenchmarkPut: PUT of a one-row tree, answered once applied.
func BenchmarkPut(b *testing.B) {
	e := setup(b, broker.Options{}, Options{})
	url := e.url + "/api/tree/dev/d1"
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		req, _ := http.NewRequest("PUT", url, strings.NewReader(fmt.Sprintf(`{"t":%d}`, i)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 204 {
			b.Fatal(resp.Status)
		}
	}
}

// BenchmarkStreamFanout: one row change delivered to every one of n
// event streams of its filter; each op publishes a change and waits until
// every stream has read its delta (so nothing folds: one event per stream
// per op). The clients read raw HTTP/1.1 on loopback, in this process:
// ns/event is the time of an op over its n events, cpu-ns/event the
// process's CPU time (user and system, broker and clients) over them,
// which other load on the machine disturbs less.
func BenchmarkStreamFanout(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("streams=%d", n), func(b *testing.B) {
			e := setup(b, broker.Options{}, Options{})
			e.publish(b, admin, "$tree/dev", `{"d0":{"state":0}}`)
			got := make(chan struct{}, n)
			host := strings.TrimPrefix(e.url, "http://")
			for range n {
				c, err := net.Dial("tcp", host)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { c.Close() })
				fmt.Fprintf(c, "GET /api/tree/dev/%%2B/state HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", host)
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil || resp.StatusCode != 200 {
					b.Fatal(err, resp)
				}
				ready := make(chan struct{})
				go func() {
					r := bufio.NewReader(resp.Body)
					first := true
					for {
						line, err := r.ReadSlice('\n')
						if err != nil {
							return
						}
						if string(line) == "event: snapshot\n" && first {
							first = false
							close(ready)
						}
						if string(line) == "event: delta\n" {
							got <- struct{}{}
						}
					}
				}()
				<-ready
			}
			ctx := context.Background()
			b.ReportAllocs()
			cpu0 := cpuTime(b)
			i := 0
			for b.Loop() {
				i++
				m := broker.Message{Topic: "dev/d0/state", Payload: strconv.AppendInt(nil, int64(i), 10), Retain: true}
				if err := e.b.Publish(ctx, admin, m); err != nil {
					b.Fatal(err)
				}
				timeout := time.NewTimer(testTimeout)
				for range n {
					select {
					case <-got:
					case <-timeout.C:
						b.Fatal("a stream got no delta")
					}
				}
				timeout.Stop()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
			b.ReportMetric(float64((cpuTime(b)-cpu0).Nanoseconds())/float64(b.N*n), "cpu-ns/event")
		})
	}
}

// cpuTime is the process's CPU time so far, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
