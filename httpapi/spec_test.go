package httpapi

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/clients/client"
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

// inbox collects the messages of an MQTT subscription.
type inbox chan client.Message

// take waits for n messages.
func (in inbox) take(t *testing.T, n int) []client.Message {
	t.Helper()
	var got []client.Message
	ctx := testCtx(t)
	for len(got) < n {
		select {
		case m := <-in:
			got = append(got, m)
		case <-ctx.Done():
			t.Fatalf("got %d messages, want %d: %+v", len(got), n, got)
		}
	}
	return got
}

// TestSpecWritesOverMQTT: SPEC §10, PUT is "a retained $tree/T publish at
// QoS 1", POST /api/set "$set/F", DELETE "as PUT of {} with ?replace=1";
// SPEC §1 and §11, a tree leaf reaches plain subscribers as its bytes
// (a CBOR or MessagePack byte string as the raw bytes, a string without
// quotes), and a plain publish keeps its bytes whatever the codec of the
// trees around it. Seen by real MQTT clients: a QoS 2 plain subscriber
// gets each row at QoS 1, a late one gets them retained.
func TestSpecWritesOverMQTT(t *testing.T) {
	e := setup(t, broker.Options{AllowAnonymous: true}, Options{})
	c := e.dial(t, "", "")
	live := make(inbox, 64)
	if err := c.Subscribe(testCtx(t), "dev/#", client.Plain, client.JSON, 2, func(m client.Message) { live <- m }); err != nil {
		t.Fatal(err)
	}
	type row struct {
		topic, payload string
		qos            byte
	}
	rows := func(ms []client.Message) map[string]row {
		out := map[string]row{}
		for _, m := range ms {
			out[m.Topic] = row{m.Topic, string(m.Payload), m.QoS}
		}
		return out
	}
	cb, _ := cbor.Marshal(map[string]any{"a": "ON", "b": []byte{0, 0xff}, "n": 21.5})
	mp, _ := client.Encode(client.MsgPack, map[string]any{"m": []byte{1, 0xfe}})
	for _, tc := range []struct {
		name, method, path, ctype string
		body                      []byte
		want                      []row
	}{
		{"put cbor", "PUT", "/api/tree/dev/%2B", "application/cbor", cb,
			[]row{{"dev/a", "ON", 1}, {"dev/b", "\x00\xff", 1}, {"dev/n", "21.5", 1}}},
		{"put msgpack", "PUT", "/api/tree/dev/%2B", "application/msgpack", mp, []row{{"dev/m", "\x01\xfe", 1}}},
		{"put json", "PUT", "/api/tree/dev/j", "", []byte(`{"x":true}`), []row{{"dev/j/x", "true", 1}}},
		{"set", "POST", "/api/set/dev/%2B", "", []byte("OFF"), []row{{"dev/a", "OFF", 1}, {"dev/b", "OFF", 1}, {"dev/n", "OFF", 1}, {"dev/m", "OFF", 1}}},
		{"delete", "DELETE", "/api/tree/dev/m", "", nil, []row{{"dev/m", "", 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := e.do(t, tc.method, tc.path, bytes.NewReader(tc.body), "Content-Type", tc.ctype)
			if resp.StatusCode != 204 {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
			got := rows(live.take(t, len(tc.want)))
			for _, w := range tc.want {
				if got[w.topic] != w {
					t.Errorf("%s: got %+v, want %+v", w.topic, got[w.topic], w)
				}
			}
		})
	}
	// A plain publish keeps its bytes, JSON text with its spaces and CBOR
	// bytes alike, while trees carry them typed.
	for _, p := range []string{`{"a" : 1}`, "\xa1\x61\x61\x01"} {
		if err := c.Publish(testCtx(t), "dev/p", []byte(p), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
		if m := live.take(t, 1)[0]; string(m.Payload) != p {
			t.Errorf("plain publish %q reached a plain subscriber as %q", p, m.Payload)
		}
	}
	if _, b := e.do(t, "GET", "/api/tree/dev/p", nil); string(b) != `"oWFhAQ=="` {
		t.Errorf("GET of the CBOR bytes published plain: %s, want the bytes as a JSON byte string", b)
	}
	// A late subscriber gets every row retained, with the bytes written.
	late := make(inbox, 64)
	c2 := e.dial(t, "", "")
	if err := c2.Subscribe(testCtx(t), "dev/#", client.Plain, client.JSON, 1, func(m client.Message) { late <- m }); err != nil {
		t.Fatal(err)
	}
	ms := late.take(t, 5)
	for _, m := range ms {
		if !m.Retained {
			t.Errorf("late subscriber: %s not retained", m.Topic)
		}
	}
	want := map[string]row{"dev/a": {"dev/a", "OFF", 1}, "dev/b": {"dev/b", "OFF", 1}, "dev/n": {"dev/n", "OFF", 1}, "dev/j/x": {"dev/j/x", "true", 1}, "dev/p": {"dev/p", "\xa1\x61\x61\x01", 1}}
	if got := rows(ms); !reflect.DeepEqual(got, want) {
		t.Errorf("late subscriber: %+v, want %+v", got, want)
	}
}

// TestSpecHostileInput: SPEC §10 and §11 against what a picky client or
// an attacker sends: paths with NUL, invalid UTF-8, '+' inside a level,
// '..' and escaped dots; CBOR and MessagePack values that have no tree
// form (NaN, infinities, tags, undefined, non-string keys); numbers at
// the edge of 64 bits, which must come back exact in every codec. Each
// bad request is 400 with the MQTT 5 reason code and applies nothing.
func TestSpecHostileInput(t *testing.T) {
	e := setup(t, broker.Options{AllowAnonymous: true}, Options{})
	for _, tc := range []struct {
		name, method, path, ctype, body string
		status                          int
		code                            string
	}{
		{"NUL in filter", "GET", "/api/tree/a%00b", "", "", 400, "0x8F"},
		{"NUL in topic", "PUT", "/api/tree/a%00b", "", "1", 400, "0x90"},
		{"invalid UTF-8 filter", "GET", "/api/tree/%FF", "", "", 400, "0x8F"},
		{"invalid UTF-8 topic", "PUT", "/api/tree/%FF", "", "1", 400, "0x90"},
		{"plus inside a level", "GET", "/api/tree/a+b", "", "", 400, "0x8F"},
		{"plus inside a set filter", "POST", "/api/set/a+b", "", "1", 400, "0x90"},
		{"hash not last", "POST", "/api/set/a/%23/b", "", "1", 400, "0x90"},
		{"dot-dot is a level", "PUT", "/api/tree/dots/../x", "", "1", 204, ""},
		{"escaped dot-dot is the same level", "GET", "/api/tree/dots/%2E%2E/x", "", "", 200, ""},
		{"CBOR NaN", "PUT", "/api/tree/c/x", "application/cbor", "\xf9\x7e\x00", 400, "0x99"},
		{"CBOR infinity", "PUT", "/api/tree/c/x", "application/cbor", "\xf9\x7c\x00", 400, "0x99"},
		{"CBOR integer key", "PUT", "/api/tree/c", "application/cbor", "\xa1\x01\x02", 400, "0x99"},
		{"CBOR bignum tag", "PUT", "/api/tree/c/x", "application/cbor", "\xc2\x49\x01\x00\x00\x00\x00\x00\x00\x00\x00", 400, "0x99"},
		{"CBOR undefined", "PUT", "/api/tree/c/x", "application/cbor", "\xf7", 400, "0x99"},
		{"MessagePack NaN", "PUT", "/api/tree/m/x", "application/msgpack", "\xcb\x7f\xf8\x00\x00\x00\x00\x00\x01", 400, "0x99"},
		{"MessagePack integer key", "PUT", "/api/tree/m", "application/msgpack", "\x81\x01\x02", 400, "0x99"},
		{"JSON number out of range", "PUT", "/api/tree/j/x", "", "1e400", 400, "0x99"},
		{"CBOR max uint64", "PUT", "/api/tree/big/cu", "application/cbor", "\x1b\xff\xff\xff\xff\xff\xff\xff\xff", 204, ""},
		{"CBOR -2^64", "PUT", "/api/tree/big/cn", "application/cbor", "\x3b\xff\xff\xff\xff\xff\xff\xff\xff", 204, ""},
		{"MessagePack max uint64", "PUT", "/api/tree/big/mu", "application/msgpack", "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 204, ""},
		{"MessagePack min int64", "PUT", "/api/tree/big/mi", "application/msgpack", "\xd3\x80\x00\x00\x00\x00\x00\x00\x00", 204, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := []string{"Content-Type", tc.ctype}
			resp, b := e.do(t, tc.method, tc.path, strings.NewReader(tc.body), hdr...)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, b)
			}
			if tc.status != 400 {
				return
			}
			var eb errorBody
			if err := json.Unmarshal(b, &eb); err != nil || eb.Code != tc.code || eb.Error == "" {
				t.Errorf("body %s: want code %s and a reason", b, tc.code)
			}
		})
	}
	if _, b := e.do(t, "GET", "/api/tree/dots/../x", nil); string(b) != "1" {
		t.Errorf("dots/../x: %q", b)
	}
	const want = `{"cu":18446744073709551615,"cn":-18446744073709551616,"mu":18446744073709551615,"mi":-9223372036854775808}`
	if _, b := e.do(t, "GET", "/api/tree/big/%2B", nil); !bytes.Equal(b, []byte(want)) {
		t.Errorf("JSON: %s, want %s", b, want)
	}
	// CBOR: major types 0 and 1 carry all 64 bits (and -2^64) exactly.
	_, b := e.do(t, "GET", "/api/tree/big/%2B", nil, "Accept", "Application/CBOR") // media types are case-insensitive
	for _, enc := range []string{"\x1b\xff\xff\xff\xff\xff\xff\xff\xff", "\x3b\xff\xff\xff\xff\xff\xff\xff\xff", "\x3b\x7f\xff\xff\xff\xff\xff\xff\xff"} {
		if !bytes.Contains(b, []byte(enc)) {
			t.Errorf("CBOR answer %x lacks %x", b, enc)
		}
	}
	_, b = e.do(t, "GET", "/api/tree/big/%2B", nil, "Accept", "application/msgpack")
	for _, enc := range []string{"\xcf\xff\xff\xff\xff\xff\xff\xff\xff", "\xd3\x80\x00\x00\x00\x00\x00\x00\x00"} {
		if !bytes.Contains(b, []byte(enc)) {
			t.Errorf("MessagePack answer %x lacks %x", b, enc)
		}
	}
	// Nothing of the refused writes was applied.
	if _, b := e.do(t, "GET", "/api/tree/%23", nil); strings.Contains(string(b), `"c"`) || strings.Contains(string(b), `"m"`) || strings.Contains(string(b), `"j"`) {
		t.Errorf("refused writes applied: %s", b)
	}
}

// TestSpecStreamResumeACL: SPEC §10, an event stream "is resumed as in
// §8" with "ACLs per row, exactly as for MQTT": a resume delta after
// Last-Event-ID carries only the changed rows the caller may read, and a
// filter of rows it may not read resumes with an empty tree.
func TestSpecStreamResumeACL(t *testing.T) {
	users := auth.NewUsers()
	users.Set("alice", "pw", 1)
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic read pub/#\nuser admin\ntopic readwrite #\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t, broker.Options{Users: users, ACL: acl}, Options{})
	e.publish(t, admin, "pub/a", "1")
	e.publish(t, admin, "secret/a", "1")
	s, _ := e.openStream(t, "/api/tree/%23", "auth", "alice:pw")
	first := s.next(t)
	if first.name != "snapshot" || first.data != `{"pub":{"a":1}}` {
		t.Fatalf("snapshot %+v", first)
	}
	s.close()
	e.publish(t, admin, "secret/a", "2")
	e.publish(t, admin, "secret/c", "3")
	e.publish(t, admin, "pub/a", "")
	for _, tc := range []struct{ path, want string }{
		{"/api/tree/%23", `{"pub":{"a":null}}`},
		{"/api/tree/secret/%23", `{}`},
	} {
		s, _ := e.openStream(t, tc.path, "auth", "alice:pw", "Last-Event-ID", first.id)
		if ev := s.next(t); ev.name != "resume" || ev.data != tc.want {
			t.Errorf("%s: %+v, want a resume with %s", tc.path, ev, tc.want)
		}
		s.close()
	}
}
