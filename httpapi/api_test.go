package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/retain"
)

func TestGetTree(t *testing.T) {
	e := setup(t, broker.Options{}, Options{})
	e.publish(t, admin, "$tree/light", `{"bedroom":{"is_on":1,"level":55},"kitchen":{"is_on":0}}`)
	e.publish(t, admin, "plain/x", "ON")
	c := e.dial(t, "", "")
	snap := snapshot(t, c, "light/+/is_on")
	for _, tc := range []struct {
		name, path, accept, ctype string
		want                      any
	}{
		{"json", "/api/tree/light/+/is_on", "", "application/json", map[string]any{"bedroom": 1.0, "kitchen": 0.0}},
		{"json asked", "/api/tree/light/+/is_on", "application/json", "application/json", map[string]any{"bedroom": 1.0, "kitchen": 0.0}},
		{"cbor", "/api/tree/light/+/is_on", "application/cbor", "application/cbor", map[string]any{"bedroom": 1.0, "kitchen": 0.0}},
		{"cbor preferred", "/api/tree/light/+/is_on", "application/json;q=0.5, application/cbor", "application/cbor", map[string]any{"bedroom": 1.0, "kitchen": 0.0}},
		{"msgpack", "/api/tree/light/+/is_on", "application/msgpack", "application/msgpack", map[string]any{"bedroom": 1.0, "kitchen": 0.0}},
		{"msgpack preferred", "/api/tree/light/%23", "application/json;q=0.5, application/msgpack", "application/msgpack",
			map[string]any{"bedroom": map[string]any{"is_on": 1.0, "level": 55.0}, "kitchen": map[string]any{"is_on": 0.0}}},
		{"browser", "/api/tree/light/+/is_on", "text/html,application/xhtml+xml,*/*;q=0.8", "application/json", map[string]any{"bedroom": 1.0, "kitchen": 0.0}},
		{"plus escaped", "/api/tree/light/%2B/is_on", "", "application/json", map[string]any{"bedroom": 1.0, "kitchen": 0.0}},
		{"hash", "/api/tree/light/kitchen/%23", "", "application/json", map[string]any{"is_on": 0.0}},
		{"bare value", "/api/tree/plain/x", "", "application/json", "ON"},
		{"nothing", "/api/tree/none/%23", "", "application/json", map[string]any{}},
		{"escaped level", "/api/tree/caf%C3%A9", "", "application/json", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.do(t, "GET", tc.path, nil, "Accept", tc.accept)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != tc.ctype {
				t.Errorf("Content-Type %q, want %q", ct, tc.ctype)
			}
			var got any
			switch tc.ctype {
			case "application/msgpack":
				v, err := client.Decode(client.MsgPack, body)
				if err != nil {
					t.Fatal(err)
				}
				got = norm(t, v)
			case "application/cbor":
				var v any
				if err := cbor.Unmarshal(body, &v); err != nil {
					t.Fatal(err)
				}
				got = norm(t, cborStrings(v))
			default:
				got = jsonOf(t, body)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			if rev, err := strconv.ParseUint(resp.Header.Get("Mote-Rev"), 10, 64); err != nil || rev < snap.Rev {
				t.Errorf("Mote-Rev %q, the MQTT snapshot's mote-rev %d before it", resp.Header.Get("Mote-Rev"), snap.Rev)
			}
		})
	}
	sameRev(t, e, c, "light/+/is_on")
	// HEAD: the headers of GET, never a stream.
	resp, body := e.do(t, "HEAD", "/api/tree/light/+/is_on", nil, "Accept", "text/event-stream, application/json;q=0.1")
	if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("Mote-Rev") == "" || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("HEAD: %s %v %q", resp.Status, resp.Header, body)
	}
	// A write moves Mote-Rev on, as it moves a snapshot's mote-rev.
	e.publish(t, admin, "light/bedroom/is_on", "0")
	if rev := sameRev(t, e, c, "light/+/is_on"); rev <= snap.Rev {
		t.Errorf("after a write: Mote-Rev %d, was %d", rev, snap.Rev)
	}
}

// sameRev checks that GET's Mote-Rev is the mote-rev of an MQTT snapshot
// taken at the same revision: it takes one before and one after the GET
// until no write ($SYS counters change every second) came between them.
func sameRev(t *testing.T, e *env, c *client.Client, filter string) uint64 {
	t.Helper()
	for range 20 {
		before := snapshot(t, c, filter)
		resp, _ := e.do(t, "GET", "/api/tree/"+filter, nil)
		after := snapshot(t, c, filter)
		rev, err := strconv.ParseUint(resp.Header.Get("Mote-Rev"), 10, 64)
		if err != nil || rev < before.Rev || rev > after.Rev {
			t.Fatalf("Mote-Rev %q not between the MQTT snapshots' %d and %d", resp.Header.Get("Mote-Rev"), before.Rev, after.Rev)
		}
		if before.Rev == after.Rev {
			return rev
		}
	}
	t.Fatal("every GET raced a write")
	return 0
}

// cborStrings turns CBOR's map[any]any into map[string]any.
func cborStrings(v any) any {
	switch x := v.(type) {
	case map[any]any:
		m := map[string]any{}
		for k, v := range x {
			m[k.(string)] = cborStrings(v)
		}
		return m
	case []any:
		for i := range x {
			x[i] = cborStrings(x[i])
		}
	}
	return v
}

func TestErrors(t *testing.T) {
	users := auth.NewUsers()
	users.Set("alice", "alice-pw", 1)
	users.Set("admin", "admin-pw", 1)
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic readwrite pub/#\ntopic read ro/#\nuser admin\ntopic readwrite #\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t, broker.Options{Users: users, ACL: acl}, Options{MaxBody: 1024})
	const alice, adm = "alice:alice-pw", "admin:admin-pw"
	e.publish(t, admin, "ro/x", "1") // rows for $set and DELETE to be refused
	for _, tc := range []struct {
		name, method, path, body string
		hdr                      []string
		status                   int
		code                     string // MQTT reason code in the body
		reason                   string // part of the reason
	}{
		{"no credentials", "GET", "/api/tree/pub/%23", "", nil, 401, "", "credentials required"},
		{"wrong password", "GET", "/api/tree/pub/%23", "", []string{"auth", "alice:nope"}, 401, "", "wrong username"},
		{"unknown user", "GET", "/api/tree/pub/%23", "", []string{"auth", "mallory:x"}, 401, "", "wrong username"},
		{"not basic", "GET", "/api/tree/pub/%23", "", []string{"Authorization", "Bearer x"}, 401, "", "not HTTP Basic"},
		{"bad tree", "PUT", "/api/tree/pub/a", `{"x":`, []string{"auth", alice}, 400, "0x99", ""},
		{"empty tree", "PUT", "/api/tree/pub/a", ``, []string{"auth", alice}, 400, "0x99", ""},
		{"tree does not fit", "PUT", "/api/tree/pub/+", `5`, []string{"auth", alice}, 400, "0x99", ""},
		{"bad filter", "GET", "/api/tree/a/%23/b", "", []string{"auth", alice}, 400, "0x8F", ""},
		{"bad topic", "PUT", "/api/tree/a/%23/b", `{}`, []string{"auth", alice}, 400, "0x90", ""},
		{"escaped slash", "GET", "/api/tree/a%2Fb/c", "", []string{"auth", alice}, 400, "", "a level cannot contain '/'"},
		{"no filter", "GET", "/api/tree/", "", []string{"auth", alice}, 400, "", "no topic"},
		{"reserved", "PUT", "/api/tree/$SYS/x", `1`, []string{"auth", adm}, 400, "0x90", ""},
		{"write denied", "PUT", "/api/tree/ro/x", `1`, []string{"auth", alice}, 403, "0x87", ""},
		{"one row denied", "PUT", "/api/tree/%23", `{"pub":{"a":1},"ro":{"b":2}}`, []string{"auth", alice}, 403, "0x87", ""},
		{"set denied", "POST", "/api/set/ro/%23", `1`, []string{"auth", alice}, 403, "0x87", ""},
		{"delete denied", "DELETE", "/api/tree/ro", ``, []string{"auth", alice}, 403, "0x87", ""},
		{"method", "POST", "/api/tree/pub/a", `1`, []string{"auth", alice}, 405, "", "want GET, HEAD, PUT, DELETE"},
		{"method set", "GET", "/api/set/pub/a", ``, []string{"auth", alice}, 405, "", "want POST"},
		{"nothing acceptable", "GET", "/api/tree/pub/%23", "", []string{"auth", alice, "Accept", "image/png"}, 406, "", "want application/json, application/cbor, application/msgpack"},
		{"bad msgpack body", "PUT", "/api/tree/pub/a", "\xdf\xff\xff\xff\xff", []string{"auth", alice, "Content-Type", "application/msgpack"}, 400, "0x99", "MessagePack: declared length"},
		{"msgpack ext body", "PUT", "/api/tree/pub/a", "\xd6\xff\x00\x00\x00\x00", []string{"auth", alice, "Content-Type", "application/msgpack"}, 400, "0x99", "extension type"},
		{"bad content type", "PUT", "/api/tree/pub/a", `1`, []string{"auth", alice, "Content-Type", "application/;;"}, 415, "", "Content-Type"},
		{"too large", "PUT", "/api/tree/pub/a", `"` + strings.Repeat("x", 2000) + `"`, []string{"auth", alice}, 413, "", "larger than 1024"},
		{"no route", "GET", "/api/trees/x", "", []string{"auth", alice}, 404, "", "no such API route"},
		{"bad replace", "PUT", "/api/tree/pub/a?replace=yes", `1`, []string{"auth", alice}, 400, "", "replace"},
		{"bad history", "GET", "/api/tree/pub/a?history=2", ``, []string{"auth", alice}, 400, "", "history"},
		{"from without history", "GET", "/api/tree/pub/a?from=1", ``, []string{"auth", alice}, 400, "", "history=1"},
		{"bad from", "GET", "/api/tree/pub/a?history=1&from=x", ``, []string{"auth", alice}, 400, "", "from"},
		{"negative to", "GET", "/api/tree/pub/a?history=1&to=-1", ``, []string{"auth", alice}, 400, "", "to"},
		{"from after to", "GET", "/api/tree/pub/a?history=1&from=5&to=4", ``, []string{"auth", alice}, 400, "", "after"},
		{"zero limit", "GET", "/api/tree/pub/a?history=1&limit=0", ``, []string{"auth", alice}, 400, "", "limit"},
		{"huge limit", "GET", "/api/tree/pub/a?history=1&limit=100000000", ``, []string{"auth", alice}, 400, "0x8F", "mote-limit"},
		{"foreign origin", "PUT", "/api/tree/pub/a", `1`, []string{"auth", alice, "Origin", "https://evil.example"}, 403, "", "origin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body *strings.Reader
			if tc.body != "" || tc.method == "PUT" || tc.method == "POST" {
				body = strings.NewReader(tc.body)
			}
			var resp *http.Response
			var b []byte
			if body == nil {
				resp, b = e.do(t, tc.method, tc.path, nil, tc.hdr...)
			} else {
				resp, b = e.do(t, tc.method, tc.path, body, tc.hdr...)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			var eb errorBody
			if err := json.Unmarshal(b, &eb); err != nil || eb.Error == "" {
				t.Fatalf("body %s: %v", b, err)
			}
			if eb.Code != tc.code || !strings.Contains(eb.Error, tc.reason) {
				t.Errorf("body %s: want code %q and a reason with %q", b, tc.code, tc.reason)
			}
			switch tc.status {
			case 401:
				if h := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(h, `Basic realm="mote"`) {
					t.Errorf("WWW-Authenticate %q", h)
				}
			case 405:
				if resp.Header.Get("Allow") == "" {
					t.Error("no Allow header")
				}
			}
		})
	}
}

// TestACL: rows an ACL hides never appear in a tree, its history or its
// event stream; the principal's client id is "http" (%c).
func TestACL(t *testing.T) {
	users := auth.NewUsers()
	users.Set("alice", "pw", 1)
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic read pub/#\ntopic readwrite own/alice/#\npattern read by/%c/#\nuser admin\ntopic readwrite #\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t, broker.Options{Users: users, ACL: acl}, Options{})
	e.publish(t, admin, "$tree/#", `{"pub":{"a":1},"secret":{"b":2},"own":{"alice":{"c":3},"bob":{"d":4}},"by":{"http":{"e":5},"other":{"f":6}}}`)
	want := map[string]any{"pub": map[string]any{"a": 1.0}, "own": map[string]any{"alice": map[string]any{"c": 3.0}}, "by": map[string]any{"http": map[string]any{"e": 5.0}}}
	resp, body := e.do(t, "GET", "/api/tree/%23", nil, "auth", "alice:pw")
	if resp.StatusCode != 200 || !reflect.DeepEqual(jsonOf(t, body), want) {
		t.Fatalf("%d %s, want %v", resp.StatusCode, body, want)
	}
	resp, body = e.do(t, "GET", "/api/tree/%23?history=1", nil, "auth", "alice:pw")
	if resp.StatusCode != 200 || strings.Contains(string(body), "secret") || strings.Contains(string(body), "bob") || !strings.Contains(string(body), `"c":[[`) {
		t.Fatalf("history: %d %s", resp.StatusCode, body)
	}
	s, resp := e.openStream(t, "/api/tree/%23", "auth", "alice:pw")
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	if ev := s.next(t); ev.name != "snapshot" || !reflect.DeepEqual(jsonOf(t, []byte(ev.data)), want) {
		t.Fatalf("snapshot %+v", ev)
	}
	e.publish(t, admin, "secret/b", "20")
	e.publish(t, admin, "own/bob/d", "40")
	e.publish(t, admin, "pub/a", "10")
	if ev := s.next(t); ev.name != "delta" || ev.data != `{"pub":{"a":10}}` {
		t.Fatalf("delta %+v: want only pub/a", ev)
	}
	// alice writes her own rows, not bob's.
	if resp, b := e.do(t, "PUT", "/api/tree/own/alice/x", strings.NewReader("1"), "auth", "alice:pw"); resp.StatusCode != 204 {
		t.Errorf("own row: %d %s", resp.StatusCode, b)
	}
	// An MQTT client of alice's calling itself "http" reads no report of
	// the API's refusals (they are answered, not reported).
	spy, err := client.Dial(testCtx(t), e.b.TCPAddr(), client.Options{Username: "alice", Password: "pw", ClientID: ClientID})
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	var reports atomic.Int32
	if err := spy.Subscribe(testCtx(t), broker.ErrorTopic+"#", client.Plain, client.JSON, 0, func(client.Message) { reports.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if resp, b := e.do(t, "PUT", "/api/tree/own/bob/x", strings.NewReader("1"), "auth", "alice:pw"); resp.StatusCode != 403 {
		t.Errorf("bob's row: %d %s", resp.StatusCode, b)
	}
	e.publish(t, admin, "pub/a", "11") // a barrier: what the refusal queued for spy comes before its snapshot below
	snapshot(t, spy, "pub/#")
	if n := reports.Load(); n != 0 {
		t.Errorf("an MQTT client with id %q read %d reports of the API's refusals", ClientID, n)
	}
}

// TestWrite: PUT, PUT ?replace=1, CBOR and MessagePack PUTs, POST set and DELETE, seen
// over MQTT.
func TestWrite(t *testing.T) {
	e := setup(t, broker.Options{AllowAnonymous: true, SyncRetain: true}, Options{})
	c := e.dial(t, "", "")
	cb, _ := cbor.Marshal(map[string]any{"c": "cbor"})
	mp, _ := client.Encode(client.MsgPack, map[string]any{"m": "msgpack", "b": nil})
	for _, tc := range []struct {
		name, method, path, ctype string
		body                      []byte
		filter                    string
		want                      any
	}{
		{"put", "PUT", "/api/tree/dev/%2B/state", "application/json", []byte(`{"a":"ON","b":"OFF"}`), "dev/+/state", map[string]any{"a": "ON", "b": "OFF"}},
		{"put more", "PUT", "/api/tree/dev/c/state", "", []byte(`"ON"`), "dev/+/state", map[string]any{"a": "ON", "b": "OFF", "c": "ON"}},
		{"replace", "PUT", "/api/tree/dev/%2B/state?replace=1", "application/json", []byte(`{"a":"OFF"}`), "dev/+/state", map[string]any{"a": "OFF"}},
		{"cbor", "PUT", "/api/tree/dev/%2B/state", "application/cbor", cb, "dev/+/state", map[string]any{"a": "OFF", "c": "cbor"}},
		{"msgpack", "PUT", "/api/tree/dev/%2B/state", "application/msgpack", mp, "dev/+/state", map[string]any{"a": "OFF", "c": "cbor", "m": "msgpack"}},
		{"set", "POST", "/api/set/dev/%2B/state", "", []byte(`"ON"`), "dev/+/state", map[string]any{"a": "ON", "c": "ON", "m": "ON"}},
		{"set empty deletes", "POST", "/api/set/dev/c/state", "", nil, "dev/+/state", map[string]any{"a": "ON", "m": "ON"}},
		{"deep", "PUT", "/api/tree/house", "", []byte(`{"hall":{"t":20},"/":"root"}`), "house/#", map[string]any{"/": "root", "hall": map[string]any{"t": 20.0}}},
		{"delete", "DELETE", "/api/tree/house", "", nil, "house/#", map[string]any{}},
		{"delete filter", "DELETE", "/api/tree/dev/%23", "", nil, "dev/#", map[string]any{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := e.do(t, tc.method, tc.path, bytes.NewReader(tc.body), "Content-Type", tc.ctype)
			if resp.StatusCode != 204 {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
			if got := snapshot(t, c, tc.filter); !reflect.DeepEqual(norm(t, got.Tree), tc.want) {
				t.Errorf("%s over MQTT: %v, want %v", tc.filter, got.Tree, tc.want)
			}
		})
	}
}

func TestHistory(t *testing.T) {
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t, broker.Options{Store: st, Retain: retain.Options{History: []retain.HistoryRule{{Filter: "h/#", Keep: 10}}}}, Options{})
	for _, v := range []string{"1", "2", "3"} {
		e.publish(t, admin, "h/a", v)
	}
	e.publish(t, admin, "h/b", "x")
	leaves := func(t *testing.T, body []byte, row string) []any {
		var doc map[string][][2]any
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		var vals []any
		for _, p := range doc[row] {
			vals = append(vals, p[1])
		}
		return vals
	}
	resp, body := e.do(t, "GET", "/api/tree/h/%2B?history=1", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Mote-Rev") == "" {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if got := leaves(t, body, "a"); !reflect.DeepEqual(got, []any{1.0, 2.0, 3.0}) {
		t.Errorf("h/a: %v (%s)", got, body)
	}
	if got := leaves(t, body, "b"); !reflect.DeepEqual(got, []any{"x"}) {
		t.Errorf("h/b: %v (%s)", got, body)
	}
	_, body = e.do(t, "GET", "/api/tree/h/%2B?history=1&limit=2", nil)
	if got := leaves(t, body, "a"); !reflect.DeepEqual(got, []any{2.0, 3.0}) {
		t.Errorf("limit=2: %v (%s)", got, body)
	}
	_, body = e.do(t, "GET", "/api/tree/h/%2B?history=1&to=1", nil)
	if string(body) != "{}" {
		t.Errorf("to=1: %s", body)
	}
	resp, body = e.do(t, "GET", "/api/tree/h/%2B?history=1", nil, "Accept", "application/cbor")
	var v any
	if err := cbor.Unmarshal(body, &v); err != nil || resp.Header.Get("Content-Type") != "application/cbor" {
		t.Errorf("cbor history: %v %s", err, resp.Header.Get("Content-Type"))
	}
	resp, body = e.do(t, "GET", "/api/tree/h/%2B?history=1", nil, "Accept", "application/msgpack")
	v, err = client.Decode(client.MsgPack, body)
	if err != nil || resp.Header.Get("Content-Type") != "application/msgpack" {
		t.Fatalf("msgpack history: %v %s", err, resp.Header.Get("Content-Type"))
	}
	if b := v.(map[string]any)["b"].([]any); len(b) != 1 || b[0].([]any)[1] != "x" || b[0].([]any)[0].(uint64) == 0 {
		t.Errorf("msgpack history of h/b: %#v", b)
	}
}

// TestHealthMetricsWeb: the routes outside /api.
func TestHealthMetricsWeb(t *testing.T) {
	e := setup(t, broker.Options{}, Options{})
	for _, tc := range []struct {
		method, path string
		status       int
		body         string
	}{
		{"GET", "/healthz", 200, "ok\n"},
		{"POST", "/healthz", 405, ""},
		{"GET", "/metrics", 404, ""},
		{"GET", "/", 200, "no web view"},
		{"GET", "/app.js", 404, ""},
	} {
		resp, body := e.do(t, tc.method, tc.path, nil)
		if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.body) {
			t.Errorf("%s %s: %d %q", tc.method, tc.path, resp.StatusCode, body)
		}
	}
	sick := errors.New("the retainer is stuck")
	e = setup(t, broker.Options{}, Options{
		Health:  func(context.Context) error { return sick },
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("mote_up 1\n")) }),
		Web:     http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("web " + r.URL.Path)) }),
	})
	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/healthz", 503, "the retainer is stuck\n"},
		{"/metrics", 200, "mote_up 1\n"},
		{"/", 200, "web /"},
		{"/x/y", 200, "web /x/y"},
	} {
		resp, body := e.do(t, "GET", tc.path, nil)
		if resp.StatusCode != tc.status || string(body) != tc.body {
			t.Errorf("%s: %d %q", tc.path, resp.StatusCode, body)
		}
	}
	// The default health check fails once the loop is gone.
	e = setup(t, broker.Options{}, Options{})
	e.b.Close()
	if resp, body := e.do(t, "GET", "/healthz", nil); resp.StatusCode != 503 || !strings.Contains(string(body), "loop") {
		t.Errorf("after Close: %d %q", resp.StatusCode, body)
	}
}

// TestLocalOnly: without a password file and anonymous access, the API
// answers loopback peers under loopback names only, and binds loopback.
func TestLocalOnly(t *testing.T) {
	b, err := broker.New(broker.Options{TCP: "127.0.0.1:0", WS: "off"})
	if err != nil {
		t.Fatal(err)
	}
	s := New(b, Options{})
	l, err := s.Listen(":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if !isLoopback(l.Addr()) {
		t.Errorf("bound %s", l.Addr())
	}
	for _, tc := range []struct {
		remote, host string
		status       int
	}{
		{"127.0.0.1:5000", "localhost:1885", 404},
		{"127.0.0.1:5000", "127.0.0.1:1885", 404},
		{"[::1]:5000", "[::1]:1885", 404},
		{"192.0.2.7:5000", "localhost:1885", 403},
		{"127.0.0.1:5000", "evil.example:1885", 403},
		{"127.0.0.1:5000", "192.0.2.1", 403},
	} {
		r := httptest.NewRequest("GET", "/nothing", nil)
		r.RemoteAddr, r.Host = tc.remote, tc.host
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != tc.status {
			t.Errorf("%s as %s: %d %s", tc.remote, tc.host, w.Code, w.Body)
		}
	}
	// With anonymous access, anyone may.
	b2, err := broker.New(broker.Options{TCP: "127.0.0.1:0", WS: "off", AllowAnonymous: true})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "/nothing", nil)
	r.RemoteAddr, r.Host = "192.0.2.7:5000", "broker.lan"
	w := httptest.NewRecorder()
	New(b2, Options{}).ServeHTTP(w, r)
	if w.Code != 404 {
		t.Errorf("anonymous broker: %d", w.Code)
	}
}

func TestNegotiate(t *testing.T) {
	for _, tc := range []struct {
		accept string
		want   rep
		err    bool
	}{
		{"", repJSON, false},
		{"*/*", repJSON, false},
		{"application/json", repJSON, false},
		{"application/cbor", repCBOR, false},
		{"text/event-stream", repStream, false},
		{"application/*", repJSON, false},
		{"application/cbor, */*", repCBOR, false},
		{"application/json;q=0.1, application/cbor", repCBOR, false},
		{"application/json;q=0, */*", repCBOR, false},
		{"application/msgpack", repMsgPack, false},
		{"application/msgpack, */*;q=0.1", repMsgPack, false},
		{"application/json;q=0.9, application/msgpack", repMsgPack, false},
		{"application/cbor, application/msgpack", repCBOR, false},
		{"application/x-msgpack", 0, true},
		{"image/png", 0, true},
		{"application/json;q=x", 0, true},
		{"garbage;;;", 0, true},
	} {
		got, err := negotiate(tc.accept, true)
		if (err != nil) != tc.err || (err == nil && got != tc.want) {
			t.Errorf("%q: %v %v", tc.accept, got, err)
		}
	}
	if got, _ := negotiate("text/event-stream, application/json;q=0.5", false); got != repJSON {
		t.Errorf("HEAD took a stream: %v", got)
	}
}
