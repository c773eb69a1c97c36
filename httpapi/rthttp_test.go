package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/retain"
)

// TestLoneHistoryGet: a history GET with nothing else held is answered,
// however far its answer is above its estimate and the budget (found by a
// red team: its own estimate, still counted, made its built size not fit,
// and it got 503 every time).
func TestLoneHistoryGet(t *testing.T) {
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t, broker.Options{Store: st, Retain: retain.Options{History: []retain.HistoryRule{{Filter: "h/#", Keep: 10}}}}, Options{MaxAnswerBytes: 1 << 20})
	for i := range 10 {
		e.publish(t, admin, "h/a", fmt.Sprintf(`"%d%s"`, i, strings.Repeat("x", 200_000)))
	}
	e.publish(t, admin, "h/a", "1") // the estimate goes by this value: far below the earlier ones
	for range 3 {
		if l := e.s.answers.load(); l != 0 {
			t.Fatalf("budget holds %d before the GET", l)
		}
		resp, body := e.do(t, "GET", "/api/tree/h/%2B?history=1", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("a lone history GET with nothing else held: %s %.200s", resp.Status, body)
		}
	}
}

// TestBusyTellsNoSize: a 503 for want of answer budget does not tell the
// answer's size, estimated before the read check: a user who may read
// nothing under secret/ would learn how much is stored there (found by a
// red team).
func TestBusyTellsNoSize(t *testing.T) {
	users := auth.NewUsers()
	users.Set("alice", "pw", 1)
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic read pub/#\nuser admin\ntopic readwrite #\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t, broker.Options{Users: users, ACL: acl}, Options{MaxAnswerBytes: 1 << 20})
	e.publish(t, admin, "secret/b", `"`+strings.Repeat("s", 300_000)+`"`)
	if !e.s.answers.take(1<<20, false) { // other answers being written
		t.Fatal("take")
	}
	defer e.s.answers.give(1 << 20)
	resp, body := e.do(t, "GET", "/api/tree/secret/%23", nil, "auth", "alice:pw")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("want 503 while the budget is held, got %s %.200s", resp.Status, body)
	}
	if strings.Contains(string(body), "KiB") || strings.Contains(string(body), "about") {
		t.Errorf("the 503 tells the size of rows alice may not read: %s", body)
	}
}

// TestEstimatesBounded checks that a GET's estimate walk waits for one of
// a few slots (Server.estimates) before it queues on the message loop:
// with every slot held, a GET is not answered; once one is let go, it is
// (found by a red team: refused GETs looped by 64 clients queued their
// walks on the loop without bound).
func TestEstimatesBounded(t *testing.T) {
	e := setup(t, broker.Options{}, Options{})
	e.publish(t, admin, "a/b", "1")
	for range cap(e.s.estimates) {
		e.s.estimates <- struct{}{}
	}
	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", e.url+"/api/tree/a/%23", nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("a GET answered %s while every estimate slot was held", resp.Status)
	}
	<-e.s.estimates
	resp, body := e.do(t, "GET", "/api/tree/a/%23", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("with a slot free: %s %s", resp.Status, body)
	}
	for range cap(e.s.estimates) - 1 {
		<-e.s.estimates
	}
}
