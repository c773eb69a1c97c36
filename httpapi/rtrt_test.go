package httpapi

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/broker"
)

// Red team h-rt (docs/redteam-rt.md).

// TestRTGetReservedFilter: a GET of a filter whose first level no row
// has ($share, or one of Mote's verbs) is refused 400 with 0x8F, as the
// SUBSCRIBE of $sync/F and the event stream of the same URL are
// (parseFilter); it was answered 200 with an empty tree (null, {}), as if
// the filter were good and matched nothing. $SYS and a client's own
// $-topics are still answered.
func TestRTGetReservedFilter(t *testing.T) {
	e := setup(t, broker.Options{}, Options{})
	e.publish(t, admin, "$own/x", "1")
	for _, tc := range []struct {
		path   string
		status int
		want   string // in the body
	}{
		{"/api/tree/$share/g/a", 400, `"code":"0x8F"`},
		{"/api/tree/$SHARE/g/%23", 400, `"code":"0x8F"`},
		{"/api/tree/$sync/a", 400, `"code":"0x8F"`},
		{"/api/tree/$tree.cbor/%23", 400, `"code":"0x8F"`},
		{"/api/tree/$set/a", 400, `"code":"0x8F"`},
		{"/api/tree/$hist/a", 400, `"code":"0x8F"`},
		{"/api/tree/$share/g/a?history=1", 400, `"code":"0x8F"`},
		{"/api/tree/$sync/a?history=1", 400, `"code":"0x8F"`},
		{"/api/tree/$own/%23", 200, `{"x":1}`},
		{"/api/tree/$SYS/broker/version", 200, `mote`},
	} {
		resp, b := e.do(t, "GET", tc.path, nil)
		if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.want) {
			t.Errorf("GET %s: %d %s, want %d with %q", tc.path, resp.StatusCode, b, tc.status, tc.want)
			continue
		}
		if tc.status == 400 {
			var eb errorBody
			if err := json.Unmarshal(b, &eb); err != nil || eb.Code != "0x8F" {
				t.Errorf("GET %s: body %s, want code 0x8F", tc.path, b)
			}
		}
	}
}
