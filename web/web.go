package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"html"
	"net/http"
	"strconv"
	"strings"

	js "github.com/mote-mqtt/mote/clients/js"
)

// static holds the page's own files.
//
//go:embed static/index.html static/app.js static/style.css
var static embed.FS

// Config configures the web view.
type Config struct {
	// MQTT serves MQTT over WebSocket (the broker's WSHandler); the page
	// connects to it at /mqtt on its own origin. Nil: /mqtt is 404 and
	// the page shows that it cannot connect.
	MQTT http.Handler
	// Login says, for each request of the page, whether it asks for a
	// username and password (those of MQTT) before it connects: pass the
	// broker's HasUsers, so that the page follows a reload that adds or
	// drops the password file. When it reports false (or is nil) the page
	// connects without credentials, and still asks for them if the broker
	// refuses it.
	Login func() bool
	// Filter is the filter the page shows first; default "#". The page
	// keeps the one typed in its address (#filter=…).
	Filter string
}

// file is one answer: its bytes, gzipped too, and their validators.
type file struct {
	ctype      string
	body, gz   []byte
	etag, gtag string
}

// handler serves the page's files and /mqtt.
type handler struct {
	files map[string]*file
	login func() bool // nil: never
	// loginPage is the page that asks for a login first (files[""] and
	// files["index.html"] are the one that does not).
	loginPage *file
	mqtt      http.Handler
}

// The page's Content Security Policy: everything from the page's own
// origin, nothing inline. connect-src also names the WebSocket URLs of
// the request's host: older browsers do not count ws: as 'self'.
const csp = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; connect-src 'self'"

// cspFor is the policy for a page requested with host (the Host header:
// named in the policy only when it is a plain host[:port]).
func cspFor(host string) string {
	if host == "" || strings.TrimLeft(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]") != "" {
		return csp
	}
	return csp + " ws://" + host + " wss://" + host
}

// Handler serves the web view: the page at /, its scripts and style, and
// Config.MQTT at /mqtt. Any other path is 404, any method but GET and HEAD
// 405 (with a JSON body giving the reason).
func Handler(cfg Config) http.Handler {
	if cfg.Filter == "" {
		cfg.Filter = "#"
	}
	h := &handler{files: map[string]*file{}, mqtt: cfg.MQTT, login: cfg.Login}
	page := func(login bool) *file {
		conf, _ := json.Marshal(map[string]any{"mqtt": "mqtt", "login": login, "filter": cfg.Filter}) // cannot fail: strings and a bool
		b, _ := static.ReadFile("static/index.html")                                                  // embedded by name: the build fails without it
		b = bytes.Replace(b, []byte(`<meta name="mote-config" content="{}">`),
			[]byte(`<meta name="mote-config" content="`+html.EscapeString(string(conf))+`">`), 1)
		return newFile("text/html; charset=utf-8", b)
	}
	h.files["index.html"], h.loginPage = page(false), page(true)
	for name, ctype := range map[string]string{
		"app.js":    "text/javascript; charset=utf-8",
		"style.css": "text/css; charset=utf-8",
	} {
		b, _ := static.ReadFile("static/" + name) // embedded by name: the build fails without it
		h.files[name] = newFile(ctype, b)
	}
	h.files["mote.js"] = newFile("text/javascript; charset=utf-8", []byte(js.MoteJS))
	h.files["mqtt.esm.js"] = newFile("text/javascript; charset=utf-8", []byte(js.MQTTJS))
	h.files["codecs.js"] = newFile("text/javascript; charset=utf-8", []byte(js.CodecsJS))
	h.files["cbor-x.esm.js"] = newFile("text/javascript; charset=utf-8", []byte(js.CBORXJS))
	h.files["msgpack.esm.js"] = newFile("text/javascript; charset=utf-8", []byte(js.MsgPackJS))
	h.files[""] = h.files["index.html"]
	return h
}

func newFile(ctype string, body []byte) *file {
	f := &file{ctype: ctype, body: body}
	sum := sha256.Sum256(body)
	tag := base64.RawURLEncoding.EncodeToString(sum[:12])
	f.etag, f.gtag = `"`+tag+`"`, `"`+tag+`-gz"`
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression) // a valid level: no error
	zw.Write(body)                                           //nolint:errcheck // a bytes.Buffer does not fail
	zw.Close()                                               //nolint:errcheck // as above
	f.gz = buf.Bytes()
	return f
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/")
	if name == "mqtt" {
		if h.mqtt == nil {
			fail(w, http.StatusNotFound, "web: this server has no MQTT over WebSocket")
			return
		}
		h.mqtt.ServeHTTP(w, r)
		return
	}
	f, ok := h.files[name]
	if ok && (name == "" || name == "index.html") && h.login != nil && h.login() {
		f = h.loginPage // its own ETag: a cached page of the other kind is not reused
	}
	if !ok {
		fail(w, http.StatusNotFound, "web: no such file: "+r.URL.Path)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		fail(w, http.StatusMethodNotAllowed, "web: "+r.Method+" not allowed: the web view is read with GET")
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", f.ctype)
	hd.Set("Cache-Control", "no-cache") // revalidated every time: a new broker's page is seen at once
	hd.Set("Vary", "Accept-Encoding")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	if name == "" || name == "index.html" {
		hd.Set("Content-Security-Policy", cspFor(r.Host))
		hd.Set("X-Frame-Options", "DENY")
	}
	body, tag := f.body, f.etag
	if acceptsGzip(r) {
		body, tag = f.gz, f.gtag
		hd.Set("Content-Encoding", "gzip")
	}
	hd.Set("ETag", tag)
	if match := r.Header.Get("If-None-Match"); match != "" && (match == "*" || strings.Contains(match, tag)) {
		hd.Del("Content-Encoding")
		w.WriteHeader(http.StatusNotModified)
		return
	}
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodHead {
		return
	}
	w.Write(body) //nolint:errcheck // the client went away
}

// acceptsGzip reports whether the request's Accept-Encoding allows gzip
// (and does not refuse it with q=0).
func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			q := strings.ReplaceAll(params, " ", "")
			return q != "q=0" && q != "q=0.0" && q != "q=0.00" && q != "q=0.000"
		}
	}
	return false
}

// fail answers with status and a JSON body giving the reason.
func fail(w http.ResponseWriter, status int, reason string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": reason}) //nolint:errcheck // the client went away
}
