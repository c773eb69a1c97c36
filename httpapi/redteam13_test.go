package httpapi

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/broker/auth"
)

// TestReloadDropsPasswordFile: once a reload leaves the broker without a
// password file and without anonymous access, the API serves loopback
// peers under a loopback host name only, as a broker started that way
// does. It used to keep the rules of its start: with the listener bound
// beyond loopback any host read and wrote every row, and on loopback a
// DNS-rebound page (Host: its own name, no Origin on a same-origin GET)
// read them.
func TestReloadDropsPasswordFile(t *testing.T) {
	users := auth.NewUsers()
	users.Set("alice", "alice-pw", 10)
	e := setup(t, broker.Options{Users: users}, Options{})
	e.publish(t, admin, "house/a", "1")
	if err := e.b.Reload(broker.Reload{}); err != nil { // on 127.0.0.1: allowed
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, host, remote string
		want               int
	}{
		{"loopback", "127.0.0.1:1885", "127.0.0.1:5000", http.StatusOK},
		{"localhost", "localhost:1885", "[::1]:5000", http.StatusOK},
		{"DNS rebinding", "rebind.evil.example:1885", "127.0.0.1:5000", http.StatusForbidden},
		{"another host", "192.0.2.7:1885", "192.0.2.1:5000", http.StatusForbidden},
		{"another host naming localhost", "localhost:1885", "192.0.2.1:5000", http.StatusForbidden},
	} {
		for _, path := range []string{"/api/tree/%23", "/metrics", "/"} {
			t.Run(tc.name+" "+path, func(t *testing.T) {
				req := httptest.NewRequest(http.MethodGet, path, nil)
				req.Host, req.RemoteAddr = tc.host, tc.remote
				rec := httptest.NewRecorder()
				e.s.Handler().ServeHTTP(rec, req)
				want := tc.want
				if path == "/metrics" && want == http.StatusOK {
					want = http.StatusNotFound // no metrics in this server
				}
				if rec.Code != want {
					t.Errorf("HTTP %d, want %d: %s", rec.Code, want, rec.Body)
				}
			})
		}
	}
}
