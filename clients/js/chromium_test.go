package js

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
)

// chromium finds a Chromium binary, or skips: .ci/run installs Debian's.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium on PATH (apt-get install chromium)")
	return ""
}

// runPage serves testdata/page at / with the JavaScript files of this
// package beside it and the handlers of mux, opens /?query in headless
// Chromium and returns what the page POSTs to /result, with Chromium's
// output. It skips if Chromium cannot start here, and fails when ctx ends
// first or Chromium exits before the page reports. flags go to Chromium.
// pageServer is the unstarted server runPage serves a page from (handlers
// go on mux first), and its origin, which a broker must allow: the page
// comes from another port than the broker's WebSocket listener.
func pageServer() (srv *httptest.Server, mux *http.ServeMux, origin string) {
	mux = http.NewServeMux()
	srv = httptest.NewUnstartedServer(mux)
	return srv, mux, "http://" + srv.Listener.Addr().String()
}

func runPage(t *testing.T, ctx context.Context, srv *httptest.Server, page, query string, flags ...string) (body []byte, logs string) {
	t.Helper()
	mux := srv.Config.Handler.(*http.ServeMux)
	bin := chromium(t)
	results := make(chan []byte, 1)
	var loaded atomic.Bool // chromium asked for the page
	serve := func(path, file, ctype string) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			loaded.Store(true)
			w.Header().Set("Content-Type", ctype)
			http.ServeFile(w, r, file)
		})
	}
	serve("/{$}", "testdata/"+page, "text/html")
	for _, f := range []string{"mote.js", "codecs.js", "mqtt.esm.js", "cbor-x.esm.js", "msgpack.esm.js"} {
		serve("/"+f, f, "text/javascript")
	}
	mux.HandleFunc("/result", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		select {
		case results <- body:
		default:
		}
	})
	srv.Start()
	defer srv.Close()

	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--enable-logging=stderr", "--user-data-dir=" + t.TempDir()}, flags...)
	cmd := exec.CommandContext(ctx, bin, append(args, srv.URL+"/?"+query)...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	select {
	case body = <-results:
	case err := <-exited:
		exited <- err
		if !loaded.Load() { // the machine cannot run it: not mote.js's failure
			t.Skipf("chromium could not start here (%v):\n%s", err, out.String())
		}
		t.Fatalf("chromium exited before the page reported: %v\n%s", err, out.String())
	case <-ctx.Done():
		cmd.Process.Kill()
		exited <- <-exited // chromium's output is whole once it has exited
		t.Fatalf("the page did not report within the time limit\n%s", out.String())
	}
	cmd.Process.Kill()
	err := <-exited
	exited <- err
	return body, out.String()
}
