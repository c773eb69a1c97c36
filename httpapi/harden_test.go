package httpapi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/clients/client"
)

func testUsers(t *testing.T) *auth.Users {
	t.Helper()
	users := auth.NewUsers()
	for _, u := range []string{"alice", "bob"} {
		if err := users.Set(u, u+"-pw", 1); err != nil {
			t.Fatal(err)
		}
	}
	return users
}

// TestNosniffNoStore: every answer of the server carries
// X-Content-Type-Options: nosniff (a row whose string looks like HTML is
// never run as a page), and every answer under /api Cache-Control:
// no-store (it depends on the caller's credentials and rights: a shared
// cache must not give one caller's tree to another). Successful tree
// answers used to lack nosniff.
func TestNosniffNoStore(t *testing.T) {
	e := setup(t, broker.Options{Users: testUsers(t)}, Options{
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("mote_up 1\n")) }),
	})
	e.publish(t, admin, "h/a", `"<script>alert(1)</script>"`)
	const alice = "alice:alice-pw"
	for _, tc := range []struct {
		method, path string
		hdr          []string
		status       int
		noStore      bool
	}{
		{"GET", "/api/tree/h/%23", []string{"auth", alice}, 200, true},
		{"HEAD", "/api/tree/h/%23", []string{"auth", alice}, 200, true},
		{"GET", "/api/tree/h/%23", []string{"auth", alice, "Accept", "application/cbor"}, 200, true},
		{"GET", "/api/tree/h/%23?history=1", []string{"auth", alice}, 200, true},
		{"PUT", "/api/tree/h/b", []string{"auth", alice}, 204, true},
		{"POST", "/api/set/h/b", []string{"auth", alice}, 204, true},
		{"GET", "/api/tree/h/%23", nil, 401, true},
		{"GET", "/api/nothing", []string{"auth", alice}, 404, true},
		{"PATCH", "/api/tree/h", []string{"auth", alice}, 405, true},
		{"GET", "/api/tree/a/%23/b", []string{"auth", alice}, 400, true},
		{"GET", "/healthz", nil, 200, true},
		{"GET", "/metrics", []string{"auth", alice}, 200, true},
		{"GET", "/", nil, 200, false},
		{"GET", "/nothing", nil, 404, false},
	} {
		var body *strings.Reader
		if tc.method == "PUT" || tc.method == "POST" {
			body = strings.NewReader("1")
		}
		var resp *http.Response
		if body != nil {
			resp, _ = e.do(t, tc.method, tc.path, body, tc.hdr...)
		} else {
			resp, _ = e.do(t, tc.method, tc.path, nil, tc.hdr...)
		}
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.status)
		}
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s %s: X-Content-Type-Options %q", tc.method, tc.path, got)
		}
		if got := resp.Header.Get("Cache-Control"); tc.noStore && got != "no-store" {
			t.Errorf("%s %s: Cache-Control %q, want no-store", tc.method, tc.path, got)
		}
	}
	s, resp := e.openStream(t, "/api/tree/h/%23", "auth", alice)
	if resp.StatusCode != 200 || resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("event stream: %s, %q", resp.Status, resp.Header)
	}
	s.close()

	// The other refusals, and a panic.
	small := setup(t, broker.Options{Users: testUsers(t), GuessLimit: 1}, Options{MaxBody: 4, MaxStreams: 1,
		Metrics: http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") })})
	for _, tc := range []struct {
		method, path, body string
		hdr                []string
		status             int
	}{
		{"GET", "/api/tree/h", "", []string{"auth", alice, "Accept", "image/png"}, 406},
		{"PUT", "/api/tree/h", "1", []string{"auth", alice, "Content-Type", "text/plain; charset=\"x"}, 415},
		{"PUT", "/api/tree/h", "123456789", []string{"auth", alice}, 413},
		{"GET", "/metrics", "", []string{"auth", alice}, 500},
		{"GET", "/api/tree/h", "", []string{"auth", "bob:wrong"}, 401},
		{"GET", "/api/tree/h", "", []string{"auth", alice}, 429},
	} {
		resp, body := small.do(t, tc.method, tc.path, strings.NewReader(tc.body), tc.hdr...)
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s: %d %s, want %d", tc.method, tc.path, resp.StatusCode, body, tc.status)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("%s %s (%d): %q", tc.method, tc.path, resp.StatusCode, resp.Header)
		}
	}
}

// TestOriginOtherPort: a page on another port of the broker's host is
// another origin (another web application, which must not drive the API
// with the user's credentials): refused, as a WebSocket from it is. The
// API's own origin passes; "null" never.
func TestOriginOtherPort(t *testing.T) {
	e := setup(t, broker.Options{}, Options{})
	own := e.url // http://127.0.0.1:port
	for origin, want := range map[string]int{
		"":                      204,
		own:                     204,
		own + "/":               204,
		"http://127.0.0.1:8080": 403,
		"http://127.0.0.1":      403,
		"null":                  403,
		"https://evil.example":  403,
	} {
		var hdr []string
		if origin != "" {
			hdr = []string{"Origin", origin}
		}
		resp, body := e.do(t, "PUT", "/api/tree/o/x", strings.NewReader("1"), hdr...)
		if resp.StatusCode != want {
			t.Errorf("Origin %q: %d %s, want %d", origin, resp.StatusCode, body, want)
		}
	}
	listed := setup(t, broker.Options{AllowedOrigins: []string{"http://127.0.0.1:8080"}}, Options{})
	if resp, body := listed.do(t, "PUT", "/api/tree/o/x", strings.NewReader("1"), "Origin", "http://127.0.0.1:8080"); resp.StatusCode != 204 {
		t.Errorf("a listed origin: %d %s", resp.StatusCode, body)
	}
}

// TestGuessThrottle: wrong Basic credentials count against the caller's
// host, in the broker's one table shared with MQTT CONNECTs: past the
// limit every login from that host, right or wrong, is answered 429 with
// Retry-After, unchecked, until the window ends; requests without
// credentials (a browser's first) are not guesses. They used to be
// unthrottled and uncounted.
func TestGuessThrottle(t *testing.T) {
	e := setup(t, broker.Options{Users: testUsers(t), GuessLimit: 3}, Options{})
	for range 5 {
		if resp, _ := e.do(t, "GET", "/api/tree/x", nil); resp.StatusCode != 401 {
			t.Fatalf("no credentials: %s", resp.Status)
		}
	}
	if resp, _ := e.do(t, "GET", "/api/tree/x", nil, "auth", "alice:alice-pw"); resp.StatusCode != 200 {
		t.Fatalf("after requests without credentials: %s", resp.Status)
	}
	// Two guesses over MQTT, one over HTTP: the host is blocked.
	for range 2 {
		if c, err := client.Dial(testCtx(t), e.b.TCPAddr(), client.Options{Username: "alice", Password: "wrong"}); err == nil {
			c.Close()
			t.Fatal("a wrong password connected")
		}
	}
	if resp, _ := e.do(t, "GET", "/api/tree/x", nil, "auth", "bob:guess"); resp.StatusCode != 401 {
		t.Fatalf("third guess: %s", resp.Status)
	}
	for _, cred := range []string{"alice:alice-pw", "bob:guess"} {
		resp, body := e.do(t, "GET", "/api/tree/x", nil, "auth", cred)
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("%s from a blocked host: %d %s", cred, resp.StatusCode, body)
		}
		if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 || n > 60 {
			t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
		}
		var eb errorBody
		if json.Unmarshal(body, &eb) != nil || !strings.Contains(eb.Error, "too many failed logins") {
			t.Errorf("body %s", body)
		}
	}
	// Naming another client in a header changes nothing: the host is the
	// TCP peer.
	for _, h := range []string{"X-Forwarded-For", "X-Real-IP", "Forwarded"} {
		v := "192.0.2.99"
		if h == "Forwarded" {
			v = "for=192.0.2.99"
		}
		if resp, _ := e.do(t, "GET", "/api/tree/x", nil, "auth", "alice:alice-pw", h, v); resp.StatusCode != http.StatusTooManyRequests {
			t.Errorf("%s from a blocked host: %s", h, resp.Status)
		}
	}
	// /metrics takes the same credentials, so it is refused too.
	if resp, _ := e.do(t, "GET", "/metrics", nil, "auth", "alice:alice-pw"); resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("/metrics from a blocked host: %s", resp.Status)
	}
	// Another host is not blocked.
	req := httptest.NewRequest(http.MethodGet, "/api/tree/x", nil)
	req.RemoteAddr, req.Host = "192.0.2.1:4000", "broker.example"
	req.SetBasicAuth("alice", "alice-pw")
	rec := httptest.NewRecorder()
	e.s.Handler().ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Errorf("another host: %d %s", rec.Code, rec.Body)
	}
}

// TestStreamsPerCaller: one caller cannot take every event stream: past
// MaxStreamsPerUser its next one is refused with 429 and a JSON reason,
// while other users still open theirs; closing one frees its place.
func TestStreamsPerCaller(t *testing.T) {
	e := setup(t, broker.Options{Users: testUsers(t)}, Options{MaxStreams: 8, MaxStreamsPerUser: 2})
	var open []*stream
	for range 2 {
		s, resp := e.openStream(t, "/api/tree/x", "auth", "alice:alice-pw")
		if resp.StatusCode != 200 {
			t.Fatal(resp.Status)
		}
		s.next(t)
		open = append(open, s)
	}
	s, resp := e.openStream(t, "/api/tree/x", "auth", "alice:alice-pw")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("alice's third stream: %s", resp.Status)
	}
	var eb errorBody
	if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil || !strings.Contains(eb.Error, "too many event streams of one caller") {
		t.Errorf("body: %+v %v", eb, err)
	}
	s.close()
	b, resp := e.openStream(t, "/api/tree/x", "auth", "bob:bob-pw")
	if resp.StatusCode != 200 {
		t.Fatalf("bob's stream: %s", resp.Status)
	}
	b.next(t)
	open[0].close()
	eventually(t, "alice's place", func() bool {
		e.s.callersMu.Lock()
		defer e.s.callersMu.Unlock()
		return e.s.callers["user alice"] < 2
	})
	s, resp = e.openStream(t, "/api/tree/x", "auth", "alice:alice-pw")
	if resp.StatusCode != 200 {
		t.Fatalf("after one closed: %s", resp.Status)
	}
	s.next(t)

	if got := New(e.b, Options{}).opts.MaxStreamsPerUser; got != DefaultMaxStreams/8 {
		t.Errorf("default per caller %d, want %d", got, DefaultMaxStreams/8)
	}
	if got := New(e.b, Options{MaxStreams: 3}).opts.MaxStreamsPerUser; got != 1 {
		t.Errorf("default per caller of 3 streams %d, want 1", got)
	}
}

// TestStreamKey: streams count per user when the broker proves users (a
// password file), else per remote host: an anonymous caller, or any
// username without a password file (taken as given), cannot dodge the cap
// by naming another user — nor by using another address of its IPv6 /64
// or another form of its IPv4 address: the host is counted as the guess
// throttle counts it. (Each IPv6 address used to be a host of its own, so
// one machine with a /64 had no cap.)
func TestStreamKey(t *testing.T) {
	withUsers := setup(t, broker.Options{Users: testUsers(t), AllowAnonymous: true}, Options{})
	without := setup(t, broker.Options{}, Options{})
	for _, tc := range []struct {
		e      *env
		remote string
		user   string
		want   string
	}{
		{withUsers, "[2001:db8::7]:4000", "alice", "user alice"},
		{withUsers, "[2001:db8::7]:4000", "", "host 2001:db8::/64"},
		{without, "[2001:db8::7]:4000", "alice", "host 2001:db8::/64"},
		{without, "[2001:db8::7]:4000", "", "host 2001:db8::/64"},
		{without, "[2001:db8::ffff:1:2]:4001", "", "host 2001:db8::/64"},
		{without, "[2001:db8:0:1::7]:4000", "", "host 2001:db8:0:1::/64"},
		{without, "[::ffff:192.0.2.7]:1", "", "host 192.0.2.7"},
		{without, "192.0.2.7:2", "", "host 192.0.2.7"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/api/tree/x", nil)
		r.RemoteAddr = tc.remote
		if got := tc.e.s.streamKey(r, broker.Principal{User: tc.user}); got != tc.want {
			t.Errorf("%s, user %q: %q, want %q", tc.remote, tc.user, got, tc.want)
		}
	}
}

// TestMetricsCredentials: with a password file, /metrics takes the API's
// credentials (any user; Prometheus' basic_auth) unless anonymous access
// is allowed; /healthz stays open for load balancers.
func TestMetricsCredentials(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("mote_up 1\n")) })
	for _, tc := range []struct {
		name string
		bo   broker.Options
		cred string
		want int
	}{
		{"password file, none", broker.Options{Users: testUsers(t)}, "", 401},
		{"password file, wrong", broker.Options{Users: testUsers(t)}, "bob:nope", 401},
		{"password file, a user", broker.Options{Users: testUsers(t)}, "bob:bob-pw", 200},
		{"anonymous allowed", broker.Options{Users: testUsers(t), AllowAnonymous: true}, "", 200},
		{"no password file (loopback)", broker.Options{}, "", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, tc.bo, Options{Metrics: metrics})
			var hdr []string
			if tc.cred != "" {
				hdr = []string{"auth", tc.cred}
			}
			resp, body := e.do(t, "GET", "/metrics", nil, hdr...)
			if resp.StatusCode != tc.want {
				t.Errorf("/metrics: %d %s, want %d", resp.StatusCode, body, tc.want)
			}
			if tc.want == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
				t.Errorf("WWW-Authenticate %q", resp.Header.Get("WWW-Authenticate"))
			}
			if resp, _ := e.do(t, "GET", "/healthz", nil); resp.StatusCode != 200 {
				t.Errorf("/healthz: %s", resp.Status)
			}
		})
	}
}
