package web_test

import (
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/web"
)

// TestLoginFollowsReload: the page asks for a login first exactly while
// the broker has a password file, as Broker.Reload leaves it (cmd/mote
// passes Broker.HasUsers). The flag used to be read once at start: a
// reload adding a password file left a page that connected without
// credentials, one dropping it a page asking for credentials nobody
// checks.
func TestLoginFollowsReload(t *testing.T) {
	b, err := broker.New(broker.Options{TCP: "127.0.0.1:0", WS: "off"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	h := web.Handler(web.Config{Login: b.HasUsers})
	conf := regexp.MustCompile(`<meta name="mote-config" content="([^"]*)">`)
	page := func(path string) (login bool, etag string) {
		t.Helper()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
		body, _ := io.ReadAll(w.Result().Body)
		m := conf.FindSubmatch(body)
		if w.Code != 200 || m == nil {
			t.Fatalf("GET %s: %d, no config", path, w.Code)
		}
		var c struct{ Login bool }
		if err := json.Unmarshal([]byte(html.UnescapeString(string(m[1]))), &c); err != nil {
			t.Fatal(err)
		}
		return c.Login, w.Result().Header.Get("ETag")
	}
	users := auth.NewUsers()
	if err := users.Set("alice", "alice-pw", 1); err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, step := range []struct {
		reload *broker.Reload
		login  bool
	}{
		{nil, false},
		{&broker.Reload{Users: users}, true},
		{&broker.Reload{Users: users, AllowAnonymous: true}, true},
		{&broker.Reload{}, false},
	} {
		if step.reload != nil {
			if err := b.Reload(*step.reload); err != nil {
				t.Fatal(err)
			}
		}
		for _, path := range []string{"/", "/index.html"} {
			login, tag := page(path)
			if login != step.login {
				t.Errorf("after %+v, %s: login %v, want %v", step.reload, path, login, step.login)
			}
			tags = append(tags, tag)
		}
	}
	if tags[0] == tags[2] {
		t.Error("both pages have one ETag: a cache would keep the other")
	}
}
