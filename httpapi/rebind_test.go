package httpapi

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/broker/auth"
)

// TestAnonymousHostName: with anonymous access, a request that proves no
// user is served only under an IP address, a loopback name or a host of
// allowed_origins, when it comes from a browser (Fetch Metadata): a
// DNS-rebound page's same-origin GET (its own name as Host, no Origin
// header) used to read what anonymous clients may. A request with a
// password file's credentials passes under any name, and so does a
// program's (no Sec-Fetch-* header).
func TestAnonymousHostName(t *testing.T) {
	users := auth.NewUsers()
	users.Set("alice", "alice-pw", 10)
	for _, tc := range []struct {
		name    string
		opts    broker.Options
		host    string
		user    string
		program bool // sends no Fetch Metadata
		want    int
		metrics int // /metrics, where the API answers 200
	}{
		{"anonymous, rebound name", broker.Options{AllowAnonymous: true}, "rebind.evil.example:1885", "", false, http.StatusForbidden, http.StatusForbidden},
		{"anonymous, name without port", broker.Options{AllowAnonymous: true}, "rebind.evil.example", "", false, http.StatusForbidden, http.StatusForbidden},
		{"anonymous, localhost", broker.Options{AllowAnonymous: true}, "localhost:1885", "", false, http.StatusOK, http.StatusNotFound},
		{"anonymous, LAN address", broker.Options{AllowAnonymous: true}, "192.168.1.5:1885", "", false, http.StatusOK, http.StatusNotFound},
		{"anonymous, IPv6 address", broker.Options{AllowAnonymous: true}, "[2001:db8::5]:1885", "", false, http.StatusOK, http.StatusNotFound},
		{"anonymous, listed name", broker.Options{AllowAnonymous: true, AllowedOrigins: []string{"https://broker.lan"}}, "broker.lan:1885", "", false, http.StatusOK, http.StatusNotFound},
		{"anonymous, listed name, other case", broker.Options{AllowAnonymous: true, AllowedOrigins: []string{"http://Broker.LAN:1885"}}, "broker.lan", "", false, http.StatusOK, http.StatusNotFound},
		{"anonymous, other name listed", broker.Options{AllowAnonymous: true, AllowedOrigins: []string{"http://broker.lan:1885"}}, "rebind.evil.example:1885", "", false, http.StatusForbidden, http.StatusForbidden},
		{"anonymous, any origin", broker.Options{AllowAnonymous: true, AllowedOrigins: []string{"*"}}, "rebind.evil.example:1885", "", false, http.StatusOK, http.StatusNotFound},
		{"users and anonymous, no credentials", broker.Options{Users: users, AllowAnonymous: true}, "rebind.evil.example:1885", "", false, http.StatusForbidden, http.StatusForbidden},
		{"users and anonymous, credentials", broker.Options{Users: users, AllowAnonymous: true}, "broker.example:1885", "alice", false, http.StatusOK, http.StatusNotFound},
		{"users, credentials", broker.Options{Users: users}, "broker.example:1885", "alice", false, http.StatusOK, http.StatusNotFound},
		{"users, no credentials", broker.Options{Users: users}, "broker.example:1885", "", false, http.StatusUnauthorized, http.StatusUnauthorized},
		{"anonymous, a program under a name", broker.Options{AllowAnonymous: true}, "broker.example:1885", "", true, http.StatusOK, http.StatusNotFound},
		{"users and anonymous, a program without credentials", broker.Options{Users: users, AllowAnonymous: true}, "broker.example:1885", "", true, http.StatusOK, http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, tc.opts, Options{})
			for _, path := range []string{"/api/tree/%23", "/metrics"} {
				req := httptest.NewRequest(http.MethodGet, path, nil)
				req.Host, req.RemoteAddr = tc.host, "192.168.1.20:5000"
				if !tc.program {
					req.Header.Set("Sec-Fetch-Site", "same-origin")
					req.Header.Set("Sec-Fetch-Mode", "cors")
				}
				if tc.user != "" {
					req.SetBasicAuth(tc.user, tc.user+"-pw")
				}
				rec := httptest.NewRecorder()
				e.s.Handler().ServeHTTP(rec, req)
				want := tc.want
				if path == "/metrics" {
					want = tc.metrics
				}
				if rec.Code != want {
					t.Errorf("%s: HTTP %d, want %d: %s", path, rec.Code, want, rec.Body)
				}
			}
		})
	}
}
