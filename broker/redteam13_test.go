package broker

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/wire"
)

// TestReloadLoopbackOnly: the loopback-only checks made per request
// (LocalOnly, which the HTTP API asks before every request, and
// WSHandler's refusal of other hosts) follow the access rules of the
// moment. A Reload that drops the password file of a broker started with
// one used to leave them off: any host reached the HTTP API and its
// /mqtt WebSocket as whoever it claimed to be, and a DNS-rebound page
// read every row.
func TestReloadLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start Options
		r     Reload
		local bool
	}{
		{"started with users, reloaded without", Options{Users: users(t)}, Reload{}, true},
		{"started with users, reloaded anonymous", Options{Users: users(t)}, Reload{AllowAnonymous: true}, false},
		{"started with users, reloaded with users", Options{Users: users(t)}, Reload{Users: users(t)}, false},
		{"started local, reloaded with users", Options{}, Reload{Users: users(t)}, false},
		{"started local, reloaded local", Options{}, Reload{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, tc.start) // on 127.0.0.1: a reload to loopback only is allowed
			if err := b.Reload(tc.r); err != nil {
				t.Fatal(err)
			}
			if got := b.LocalOnly(); got != tc.local {
				t.Errorf("LocalOnly() = %v after the reload, want %v", got, tc.local)
			}
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, "/mqtt", nil)
			req.RemoteAddr = "192.0.2.1:4000"
			b.WSHandler().ServeHTTP(rec, req)
			if refused := rec.Code == http.StatusForbidden; refused != tc.local {
				t.Errorf("a WebSocket from another host: HTTP %d, want refused (403) %v", rec.Code, tc.local)
			}
		})
	}
}

// TestReloadResumeSnapshot: a resume (mote-since, an event stream's
// Last-Event-ID) from a revision before a Reload gets a full snapshot: the
// copy it would complete was made under other read rules. It used to get
// a resume delta of the rows changed since, so a reader whose ACL was
// widened never got the rows it could now read, and one whose ACL was
// narrowed kept those it could no longer read.
func TestReloadResumeSnapshot(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before string // bob's ACL when his copy was made
		after  string // after the reload
		want   string // the full snapshot he gets
	}{
		{"widened", narrowACL, wideACL, `{"a":1,"secret":{"k":2}}`},
		{"narrowed", wideACL, narrowACL, `{"a":1}`},
		{"same rules", narrowACL, narrowACL, `{"a":1}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{ACL: parseACL(t, tc.before)})
			ctx := testCtx(t)
			alice, bob := Principal{User: "alice", ClientID: "alice"}, Principal{User: "bob", ClientID: "bob"}
			for _, r := range [][2]string{{"house/a", "1"}, {"house/secret/k", "2"}} {
				if err := b.Publish(ctx, alice, Message{Topic: r[0], Payload: []byte(r[1]), QoS: 1, Retain: true}); err != nil {
					t.Fatal(err)
				}
			}
			_, rev, err := b.Tree(ctx, bob, "house/#", wire.CodecJSON)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Reload(Reload{ACL: parseACL(t, tc.after)}); err != nil {
				t.Fatal(err)
			}
			got := make(chan Delivery, 4)
			s := b.Open(bob, func(d Delivery) { got <- d })
			defer s.Close()
			if err := s.SubscribeWith("$sync/house/#", 0, SubscribeOptions{Since: &rev}); err != nil {
				t.Fatal(err)
			}
			select {
			case d := <-got:
				if _, resume := userProp(d.Properties.User, "mote-resume"); resume {
					t.Errorf("since %d, before the reload: a resume delta %s, want a full snapshot", rev, d.Payload)
				}
				if !jsonEqual(t, string(d.Payload), tc.want) {
					t.Errorf("first message %s, want %s", d.Payload, tc.want)
				}
			case <-time.After(testTimeout):
				t.Fatal("no first message")
			}
			// A resume from a revision after the reload is a resume again.
			if err := b.Publish(ctx, alice, Message{Topic: "house/b", Payload: []byte("3"), QoS: 1, Retain: true}); err != nil {
				t.Fatal(err)
			}
			since, err := b.Rev(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got2 := make(chan Delivery, 4)
			s2 := b.Open(bob, func(d Delivery) { got2 <- d })
			defer s2.Close()
			if err := s2.SubscribeWith("$sync/house/#", 0, SubscribeOptions{Since: &since}); err != nil {
				t.Fatal(err)
			}
			select {
			case d := <-got2:
				if _, resume := userProp(d.Properties.User, "mote-resume"); !resume {
					t.Errorf("since %d, after the reload: %s without mote-resume, want a resume delta", since, d.Payload)
				}
			case <-time.After(testTimeout):
				t.Fatal("no first message of the resume after the reload")
			}
		})
	}
}
