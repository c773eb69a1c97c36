package broker

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/clients/client"
)

// TestWSHandler: the broker's MQTT over WebSocket, mounted on another HTTP
// server, serves clients as the WebSocket listener does: tree
// subscriptions, the origin check against that server's host, and Close
// ends its connections.
func TestWSHandler(t *testing.T) {
	b := start(t, Options{})
	mux := http.NewServeMux()
	mux.Handle("/mqtt", b.WSHandler())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	ctx := testCtx(t)
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/mqtt"

	c, err := client.Dial(ctx, url, client.Options{ClientID: "web", CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m, err := c.Mirror(ctx, "a/+", client.JSON, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	pub := mote(t, b, "pub")
	if err := pub.Publish(ctx, "a/x", []byte("1"), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctx, func(doc any) bool { return same(t, doc, `{"x":1}`) }); err != nil {
		t.Fatalf("over the handler: %v", err)
	}

	dial := func(origin string) error {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: testTimeout}
		ws, resp, err := d.Dial(url, h)
		if err == nil {
			ws.Close()
		} else if resp != nil {
			err = fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		return err
	}
	for origin, ok := range map[string]bool{
		"":                     true,
		srv.URL:                true, // the page of the same server
		"https://evil.example": false,
	} {
		if err := dial(origin); (err == nil) != ok {
			t.Errorf("Origin %q: %v, want allowed %v", origin, err, ok)
		}
	}

	// Without a password file, clients from other hosts are refused, as
	// the listeners bind to loopback.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/mqtt", nil)
	req.RemoteAddr = "192.0.2.1:4000"
	b.WSHandler().ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Errorf("anonymous from another host: HTTP %d, want 403", rec.Code)
	}

	b.Close()
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("Close left a connection of the handler open")
	}
}

// TestUsersReports: with a password file, a user reads the error reports
// of every client connected under their username (the web view shows
// them), never those of another user's clients; without one, a client
// reads its own only, whatever username it claims.
func TestUsersReports(t *testing.T) {
	u := auth.NewUsers()
	for _, name := range []string{"alice", "bob"} {
		u.Set(name, name+"-pw", 10)
	}
	for _, tc := range []struct {
		name   string
		users  *auth.Users
		drop   bool // a Reload drops the password file before the clients connect
		shared bool // alice's clients read each other's reports
	}{
		{"password file", u, false, true},
		{"no password file", nil, false, false},
		// A username is only a claim once the password file is gone:
		// anyone claiming "alice" must not read her clients' reports.
		{"password file dropped by a reload", u, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{Users: tc.users})
			if tc.drop {
				if err := b.Reload(Reload{}); err != nil {
					t.Fatal(err)
				}
			}
			ctx := testCtx(t)
			dial := func(user, id string) *client.Client {
				c, err := client.Dial(ctx, b.TCPAddr(), client.Options{ClientID: id, Username: user, Password: user + "-pw", CleanStart: true})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				return c
			}
			web, phone, bob := dial("alice", "web"), dial("alice", "phone+1"), dial("bob", "bob1")
			got := newCollector()
			if err := web.Subscribe(ctx, "$SYS/mote/errors/+", client.Plain, client.JSON, 0, got.handle); err != nil {
				t.Fatal(err)
			}
			refuse := func(c *client.Client) {
				err := c.Publish(ctx, "$tree/x", []byte("not json"), client.PublishOptions{QoS: 1})
				if err != nil && !errors.Is(err, client.ErrRefused) {
					t.Fatal(err)
				}
			}
			refuse(bob)
			refuse(phone)
			refuse(web) // the last: once it is in, the others' would be too
			want := []string{`"client":"web"`}
			if tc.shared {
				want = []string{`"client":"phone+1"`, `"client":"web"`}
			}
			got.wait(t, len(want))
			if err := b.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			got.mu.Lock()
			msgs := append([]client.Message(nil), got.msgs...)
			got.mu.Unlock()
			var clients []string
			for _, m := range msgs {
				clients = append(clients, m.Topic)
				if strings.Contains(string(m.Payload), `"client":"bob1"`) {
					t.Errorf("alice read bob's report: %s", m.Payload)
				}
			}
			if len(msgs) != len(want) {
				t.Errorf("alice read the reports on %v, want %d: %v", clients, len(want), want)
			}
			for i, w := range want {
				if i < len(msgs) && !strings.Contains(string(msgs[i].Payload), w) {
					t.Errorf("report %d: %s, want %s", i, msgs[i].Payload, w)
				}
			}
		})
	}
}
