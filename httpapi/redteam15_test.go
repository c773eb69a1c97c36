package httpapi

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/broker/auth"
)

// TestLocalOnlyOddPeers: a broker serving loopback only refuses every
// peer that is not a loopback address, however its address is written: a
// link-local IPv6 peer with a zone, whose address net.ParseIP does not
// read, used to pass (the check let through what it could not parse), so
// after a reload dropped the password file any host on the link read and
// wrote every row under Host: localhost.
func TestLocalOnlyOddPeers(t *testing.T) {
	users := auth.NewUsers()
	users.Set("alice", "alice-pw", 10)
	e := setup(t, broker.Options{Users: users}, Options{})
	if err := e.b.Reload(broker.Reload{}); err != nil { // drops the password file
		t.Fatal(err)
	}
	for remote, want := range map[string]int{
		"127.0.0.1:5000":         http.StatusOK,
		"[::1]:5000":             http.StatusOK,
		"[::ffff:127.0.0.1]:1":   http.StatusOK,
		"[fe80::1%eth0]:5000":    http.StatusForbidden,
		"[fe80::1%25eth0]:5000":  http.StatusForbidden,
		"[2001:db8::1%x]:5000":   http.StatusForbidden,
		"192.0.2.1:5000":         http.StatusForbidden,
		"not an address":         http.StatusForbidden,
		"":                       http.StatusForbidden,
		"[::ffff:192.0.2.1]:500": http.StatusForbidden,
	} {
		req := httptest.NewRequest(http.MethodGet, "/api/tree/%23", nil)
		req.Host, req.RemoteAddr = "localhost:1885", remote
		rec := httptest.NewRecorder()
		e.s.Handler().ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("peer %q: HTTP %d, want %d: %s", remote, rec.Code, want, rec.Body)
		}
	}
}
