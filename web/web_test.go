package web_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	js "github.com/mote-mqtt/mote/clients/js"
	"github.com/mote-mqtt/mote/web"
)

// TestHandler: the page and its files, with their types, validators and
// gzip; /mqtt goes to Config.MQTT; anything else is a clear error.
func TestHandler(t *testing.T) {
	mqtt := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := web.Handler(web.Config{MQTT: mqtt, Login: func() bool { return true }, Filter: `light/"</x>#`})
	get := func(method, path string, hdr ...string) *http.Response {
		t.Helper()
		r := httptest.NewRequest(method, path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Result()
	}
	body := func(r *http.Response) string {
		t.Helper()
		rd := r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				t.Fatal(err)
			}
			rd = zr
		}
		b, err := io.ReadAll(rd)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	for _, c := range []struct {
		path, ctype, has string
	}{
		{"/", "text/html; charset=utf-8", `<script type="module" src="app.js">`},
		{"/index.html", "text/html; charset=utf-8", `<main id="view"`},
		{"/app.js", "text/javascript; charset=utf-8", `from './mote.js'`},
		{"/style.css", "text/css; charset=utf-8", `--row-h`},
		{"/mote.js", "text/javascript; charset=utf-8", js.MoteJS},
		{"/mqtt.esm.js", "text/javascript; charset=utf-8", js.MQTTJS},
		{"/codecs.js", "text/javascript; charset=utf-8", js.CodecsJS},
		{"/cbor-x.esm.js", "text/javascript; charset=utf-8", js.CBORXJS},
		{"/msgpack.esm.js", "text/javascript; charset=utf-8", js.MsgPackJS},
	} {
		for _, enc := range []string{"", "gzip, deflate, br"} {
			r := get(http.MethodGet, c.path, "Accept-Encoding", enc)
			b := body(r)
			if r.StatusCode != http.StatusOK || r.Header.Get("Content-Type") != c.ctype || !strings.Contains(b, c.has) {
				t.Errorf("GET %s (Accept-Encoding %q): %d %s, %d bytes", c.path, enc, r.StatusCode, r.Header.Get("Content-Type"), len(b))
			}
			if gz := r.Header.Get("Content-Encoding") == "gzip"; gz != (enc != "") {
				t.Errorf("GET %s (Accept-Encoding %q): gzipped %v", c.path, enc, gz)
			}
			if r.Header.Get("X-Content-Type-Options") != "nosniff" || r.Header.Get("ETag") == "" || r.Header.Get("Cache-Control") != "no-cache" {
				t.Errorf("GET %s: headers %v", c.path, r.Header)
			}
			again := get(http.MethodGet, c.path, "Accept-Encoding", enc, "If-None-Match", r.Header.Get("ETag"))
			if again.StatusCode != http.StatusNotModified || again.ContentLength > 0 {
				t.Errorf("GET %s with its ETag: %d, want 304", c.path, again.StatusCode)
			}
		}
	}
	if r := get(http.MethodGet, "/mqtt.esm.js", "Accept-Encoding", "gzip"); r.ContentLength >= int64(len(js.MQTTJS))/2 {
		t.Errorf("MQTT.js gzipped is %d bytes of %d", r.ContentLength, len(js.MQTTJS))
	}
	if r := get(http.MethodGet, "/app.js", "Accept-Encoding", "gzip;q=0"); r.Header.Get("Content-Encoding") != "" {
		t.Error("gzip sent to a client that refuses it (q=0)")
	}

	// The page's configuration, escaped into the page.
	page := body(get(http.MethodGet, "/"))
	m := regexp.MustCompile(`<meta name="mote-config" content="([^"]*)">`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no configuration in the page:\n%s", page)
	}
	var conf struct {
		MQTT   string `json:"mqtt"`
		Login  bool   `json:"login"`
		Filter string `json:"filter"`
	}
	if err := json.Unmarshal([]byte(html.UnescapeString(m[1])), &conf); err != nil || conf.MQTT != "mqtt" || !conf.Login || conf.Filter != `light/"</x>#` {
		t.Errorf("configuration %q: %+v, %v", m[1], conf, err)
	}
	if csp := get(http.MethodGet, "/").Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") ||
		!strings.Contains(csp, "frame-ancestors 'none'") || !strings.HasSuffix(csp, "connect-src 'self' ws://example.com wss://example.com") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Host = "evil; script-src *"
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if csp := w.Header().Get("Content-Security-Policy"); !strings.HasSuffix(csp, "connect-src 'self'") {
		t.Errorf("a Host header that is no host name reached the policy: %q", csp)
	}
	if r := get(http.MethodHead, "/app.js"); r.StatusCode != http.StatusOK || body(r) != "" || r.ContentLength == 0 {
		t.Errorf("HEAD /app.js: %d, length %d", r.StatusCode, r.ContentLength)
	}

	if r := get(http.MethodGet, "/mqtt"); r.StatusCode != http.StatusTeapot {
		t.Errorf("/mqtt went elsewhere: %d", r.StatusCode)
	}
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/nope.js", http.StatusNotFound},
		{http.MethodGet, "/static/app.js", http.StatusNotFound},
		{http.MethodGet, "/../web.go", http.StatusNotFound},
		{http.MethodPost, "/", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/app.js", http.StatusMethodNotAllowed},
	} {
		r := get(c.method, c.path)
		var e struct{ Error string }
		if err := json.NewDecoder(r.Body).Decode(&e); r.StatusCode != c.status || err != nil || e.Error == "" ||
			r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: %d %q (%v), want %d with a JSON reason", c.method, c.path, r.StatusCode, e.Error, err, c.status)
		}
	}
	noMQTT := web.Handler(web.Config{})
	w = httptest.NewRecorder()
	noMQTT.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/mqtt", nil))
	if w.Code != http.StatusNotFound || !bytes.Contains(w.Body.Bytes(), []byte("no MQTT over WebSocket")) {
		t.Errorf("/mqtt without a handler: %d %s", w.Code, w.Body)
	}
	w = httptest.NewRecorder()
	noMQTT.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
	if !strings.Contains(w.Body.String(), html.EscapeString(`"filter":"#"`)) || !strings.Contains(w.Body.String(), html.EscapeString(`"login":false`)) {
		t.Errorf("default configuration missing: %s", w.Body)
	}
}

// FuzzHandler: whatever the method, path and headers, the handler answers
// with one of its statuses and never panics.
func FuzzHandler(f *testing.F) {
	mqtt := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := web.Handler(web.Config{MQTT: mqtt})
	f.Add("GET", "/", "gzip", "")
	f.Add("HEAD", "/app.js", "gzip;q=0, br", `"x", *`)
	f.Add("POST", "/mqtt", "", "")
	f.Add("GET", "/style.css", "GZIP ; q=0.000", `W/"abc"`)
	f.Fuzz(func(t *testing.T, method, path, enc, match string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Method, r.URL.Path = method, path
		r.Header.Set("Accept-Encoding", enc)
		r.Header.Set("If-None-Match", match)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		switch w.Code {
		case http.StatusOK, http.StatusNotModified, http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusTeapot:
		default:
			t.Fatalf("%s %q: status %d", method, path, w.Code)
		}
	})
}
