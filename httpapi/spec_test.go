package httpapi

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/broker/auth"
)

// TestSpecAnonymousWriteRefused: SPEC §10, "401 without valid
// credentials, 403 when an ACL forbids any row". An anonymous write the
// ACL forbids is answered 401 with the Basic challenge (logging in may
// help: RFC 9110 §15.5.2), its body still giving the reason and 0x87; a
// user's write the ACL forbids is 403, without a challenge (the same
// credentials will not do better).
func TestSpecAnonymousWriteRefused(t *testing.T) {
	users := auth.NewUsers()
	users.Set("alice", "pw", 1)
	acl, err := auth.ParseACL("acl", []byte("topic read pub/#\nuser alice\ntopic read pub/#\ntopic readwrite own/#\nuser admin\ntopic readwrite #\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t, broker.Options{Users: users, ACL: acl, AllowAnonymous: true}, Options{})
	e.publish(t, admin, "pub/a", "1")
	for _, tc := range []struct {
		name, method, path, body string
		hdr                      []string
		status                   int
	}{
		{"anonymous put", "PUT", "/api/tree/pub/a", "2", nil, 401},
		{"anonymous set", "POST", "/api/set/pub/%23", "2", nil, 401},
		{"anonymous delete", "DELETE", "/api/tree/pub", "", nil, 401},
		{"user put", "PUT", "/api/tree/pub/a", "2", []string{"auth", "alice:pw"}, 403},
		{"user set", "POST", "/api/set/pub/%23", "2", []string{"auth", "alice:pw"}, 403},
		{"user delete", "DELETE", "/api/tree/pub", "", []string{"auth", "alice:pw"}, 403},
		{"user own row", "PUT", "/api/tree/own/x", "2", []string{"auth", "alice:pw"}, 204},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := e.do(t, tc.method, tc.path, strings.NewReader(tc.body), tc.hdr...)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			challenge := resp.Header.Get("WWW-Authenticate")
			if (tc.status == 401) != strings.HasPrefix(challenge, `Basic realm="mote"`) {
				t.Errorf("status %d with WWW-Authenticate %q", resp.StatusCode, challenge)
			}
			if tc.status == 204 {
				return
			}
			var eb errorBody
			if err := json.Unmarshal(b, &eb); err != nil || eb.Code != "0x87" || !strings.Contains(eb.Error, "not authorized") {
				t.Errorf("body %s: want code 0x87 and the reason", b)
			}
		})
	}
	// Nothing of the refused writes was applied.
	if _, b := e.do(t, "GET", "/api/tree/pub/%23", bytes.NewReader(nil)); string(b) != `{"a":1}` {
		t.Errorf("pub/# after the refusals: %s", b)
	}
}
