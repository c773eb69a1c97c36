package httpapi

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/broker/auth"
)

// chromeUA is what Chromium sends as User-Agent; a page cannot change it.
const chromeUA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36"

// TestRebindPlainHTTP: browsers send Fetch Metadata (Sec-Fetch-*) only to
// potentially trustworthy URLs (https, localhost): Chromium's requests
// from a DNS-rebound page over plain http://evil.example:1885 carry no
// Sec-Fetch-* header and, when they only read, no Origin either (seen
// with Chromium 156 and --host-resolver-rules), only a browser's
// User-Agent. Such a request that proves no user must be refused under
// a name that is not the broker's, as one with Fetch Metadata is; a
// program's (curl, Prometheus, Go, none) still passes under any name.
func TestRebindPlainHTTP(t *testing.T) {
	users := auth.NewUsers()
	users.Set("alice", "alice-pw", 10)
	anon := broker.Options{AllowAnonymous: true}
	for _, tc := range []struct {
		name string
		opts broker.Options
		host string
		ua   string
		user string
		want int
	}{
		{"chromium over http, rebound name", anon, "rebind.evil.example:1885", chromeUA, "", http.StatusForbidden},
		{"firefox over http, rebound name", anon, "rebind.evil.example:1885", "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0", "", http.StatusForbidden},
		{"chromium, rebound name, users and anonymous", broker.Options{Users: users, AllowAnonymous: true}, "rebind.evil.example:1885", chromeUA, "", http.StatusForbidden},
		{"chromium, rebound name, trailing dot", anon, "rebind.evil.example.:1885", chromeUA, "", http.StatusForbidden},
		{"chromium, localhost", anon, "localhost:1885", chromeUA, "", http.StatusOK},
		{"chromium, 127.0.0.1", anon, "127.0.0.1:1885", chromeUA, "", http.StatusOK},
		{"chromium, LAN address", anon, "192.168.1.5:1885", chromeUA, "", http.StatusOK},
		{"chromium, listed name", broker.Options{AllowAnonymous: true, AllowedOrigins: []string{"http://broker.lan:1885"}}, "broker.lan:1885", chromeUA, "", http.StatusOK},
		{"chromium, a user's credentials", broker.Options{Users: users, AllowAnonymous: true}, "broker.example:1885", chromeUA, "alice", http.StatusOK},
		{"chromium, a username without a password file", anon, "rebind.evil.example:1885", chromeUA, "mallory", http.StatusForbidden},
		// Host forms: browsers send an IPv4 address in dotted decimal
		// (they rewrite 2130706433 and 0x7f.1), names in lower case and
		// punycode, no IPv6 zone; what else comes is refused, harmlessly.
		{"chromium, decimal IPv4", anon, "2130706433:1885", chromeUA, "", http.StatusForbidden},
		{"chromium, hex IPv4", anon, "0x7f.1:1885", chromeUA, "", http.StatusForbidden},
		{"chromium, IPv6 zone", anon, "[fe80::1%25eth0]:1885", chromeUA, "", http.StatusForbidden},
		{"chromium, localhost as a subdomain", anon, "localhost.evil.example:1885", chromeUA, "", http.StatusForbidden},
		{"chromium, LOCALHOST", anon, "LOCALHOST:1885", chromeUA, "", http.StatusOK},
		{"chromium, localhost with a trailing dot", anon, "localhost.:1885", chromeUA, "", http.StatusOK},
		{"chromium, IPv4-mapped IPv6", anon, "[::ffff:127.0.0.1]:1885", chromeUA, "", http.StatusOK},
		{"chromium, listed name with a trailing dot", broker.Options{AllowAnonymous: true, AllowedOrigins: []string{"http://broker.lan:1885"}}, "broker.lan.:1885", chromeUA, "", http.StatusOK},
		{"curl by name", anon, "broker.example:1885", "curl/8.5.0", "", http.StatusOK},
		{"prometheus by name", anon, "broker.example:1885", "Prometheus/3.0.0", "", http.StatusOK},
		{"go by name", anon, "broker.example:1885", "Go-http-client/1.1", "", http.StatusOK},
		{"no user agent by name", anon, "broker.example:1885", "", "", http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, tc.opts, Options{})
			req := httptest.NewRequest(http.MethodGet, "/api/tree/%23", nil)
			req.Host, req.RemoteAddr = tc.host, "192.168.1.20:5000"
			if tc.ua != "" {
				req.Header.Set("User-Agent", tc.ua)
			}
			req.Header.Set("Accept", "*/*")
			if tc.user != "" {
				req.SetBasicAuth(tc.user, tc.user+"-pw")
			}
			rec := httptest.NewRecorder()
			e.s.Handler().ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Errorf("HTTP %d, want %d: %s", rec.Code, tc.want, rec.Body)
			}
			if rec.Code == http.StatusForbidden && !strings.Contains(rec.Body.String(), "Mozilla/ User-Agent") {
				t.Errorf("the refusal does not say what made the request a browser's: %s", rec.Body)
			}
		})
	}
}
