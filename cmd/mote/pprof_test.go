package main

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestServePprof: --pprof serves the heap profile on loopback (a host-less
// address too), and a bad address is a clear error.
func TestServePprof(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", ":0"} {
		a, stop, err := servePprof(addr, zerolog.Nop())
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		if host, _, _ := net.SplitHostPort(a.String()); host != "127.0.0.1" {
			t.Errorf("%s: listening on %s, want loopback", addr, a)
		}
		c := http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get("http://" + a.String() + "/debug/pprof/heap")
		if err != nil {
			stop()
			t.Fatal(err)
		}
		resp.Body.Close()
		stop()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: heap profile: %s", addr, resp.Status)
		}
	}
	if _, _, err := servePprof("nonsense", zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "--pprof") {
		t.Errorf("a bad address: %v", err)
	}
}
