package httpapi

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

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
