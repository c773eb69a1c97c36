package httpapi

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/translate"
	"github.com/mote-mqtt/mote/tree"
)

// historyTooLarge is a broker whose row h/a has a history larger than its
// maximum packet size: a $hist answer of it cannot be cut in parts (one
// leaf is larger than a part may be).
func historyTooLarge(t *testing.T) *env {
	t.Helper()
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t, broker.Options{AllowAnonymous: true, MaxPacketSize: 4096, Store: st,
		Retain: retain.Options{History: []retain.HistoryRule{{Filter: "h/#", Keep: 100}}}}, Options{})
	for i := range 50 {
		e.publish(t, admin, "h/a", fmt.Sprintf("%d%s", i, strings.Repeat("x", 100)))
	}
	e.publish(t, admin, "plain/x", "1")
	return e
}

// TestHistoryTooLargeAnswered: a history query whose answer the broker
// cannot send (one row's history is larger than the maximum packet size)
// is answered with an error and its reason — it hung until the client gave
// up, holding one of the few slots GETs share (maxTreeReads), so that a
// handful of them stopped every GET of every user.
func TestHistoryTooLargeAnswered(t *testing.T) {
	e := historyTooLarge(t)
	var wg sync.WaitGroup
	for range maxTreeReads + 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body, err := e.try(t, "GET", "/api/tree/h/%2B?history=1")
			if err != nil {
				t.Error(err)
				return
			}
			var eb errorBody
			if resp.StatusCode < 400 || json.Unmarshal(body, &eb) != nil || !strings.Contains(eb.Error, "maximum packet size") {
				t.Errorf("history too large: %d %s", resp.StatusCode, body)
			}
		}()
	}
	wg.Wait()
	if resp, body := e.do(t, "GET", "/api/tree/plain/x", nil); resp.StatusCode != 200 {
		t.Errorf("plain GET after them: %d %s", resp.StatusCode, body)
	}
}

// TestStreamHistoryTooLarge: an event stream whose first message the
// broker refuses (a history larger than the maximum packet size) says why
// in an error event and ends; it stayed open with nothing in it.
func TestStreamHistoryTooLarge(t *testing.T) {
	e := historyTooLarge(t)
	s, resp := e.openStream(t, "/api/tree/h/%2B?history=1")
	if resp.StatusCode != 200 {
		t.Fatalf("%s", resp.Status)
	}
	ev := s.next(t)
	var eb errorBody
	if ev.name != "error" || json.Unmarshal([]byte(ev.data), &eb) != nil || !strings.Contains(eb.Error, "maximum packet size") || eb.Code != "0x95" {
		t.Fatalf("first event %+v: want an error event with the reason", ev)
	}
	if ev, ok := <-s.events; ok {
		t.Fatalf("the stream went on after its error: %+v", ev)
	}
}

// try makes a request without a body and returns its response with the
// body read; unlike do, it may be called from any goroutine.
func (e *env) try(t testing.TB, method, path string, hdr ...string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(testCtx(t), method, e.url+path, nil)
	if err != nil {
		return nil, nil, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// TestTranslationRefusalAnswered: a write whose translation the broker
// refuses (the translated topic is past the topic limits; SPEC §11) is
// applied, and the answer says what was refused — over MQTT it is
// reported on $SYS/mote/errors/<client-id>, which an HTTP caller has not;
// the API answered a bare 204, the refusal only logged.
func TestTranslationRefusalAnswered(t *testing.T) {
	set, err := translate.New([]translate.Rule{{From: "a/#", To: strings.Repeat("p/", 40) + "#"}})
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t, broker.Options{AllowAnonymous: true, Translators: set}, Options{})
	deep := strings.Repeat("l/", 30) + "x" // 31 levels under a; 71 translated, over the 64 allowed
	resp, body := e.do(t, "PUT", "/api/tree/a/"+deep, strings.NewReader("1"))
	if resp.StatusCode != 204 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if h := resp.Header.Get("Mote-Refused"); !strings.Contains(h, "translate[0]") || !strings.Contains(h, "limit 64") {
		t.Errorf("Mote-Refused %q: want the translation's refusal", h)
	}
	if resp, body := e.do(t, "GET", "/api/tree/a/"+deep, nil); string(body) != "1" {
		t.Errorf("the write itself: %d %s", resp.StatusCode, body)
	}
	// One that translates is answered without it.
	resp, body = e.do(t, "PUT", "/api/tree/a/b", strings.NewReader("2"))
	if resp.StatusCode != 204 || resp.Header.Get("Mote-Refused") != "" {
		t.Errorf("%d %s %q", resp.StatusCode, body, resp.Header.Get("Mote-Refused"))
	}
}

// TestQueryStrict: every route reads its query the same way: a malformed
// one is refused (PUT, POST and DELETE went on, with what of it parsed),
// and so is a parameter given twice, whose meaning would be a guess
// (?history=0&history=1 answered a tree, not its history).
func TestQueryStrict(t *testing.T) {
	e := setup(t, broker.Options{AllowAnonymous: true}, Options{})
	e.publish(t, admin, "q/a", "1")
	for _, tc := range []struct{ method, path, body, reason string }{
		{"GET", "/api/tree/q/a?history=0&history=1", "", "history given twice"},
		{"GET", "/api/tree/q/a?history=1&limit=1&limit=5", "", "limit given twice"},
		{"GET", "/api/tree/q/a?history=1&from=1&from=2", "", "from given twice"},
		{"PUT", "/api/tree/q/a?replace=1&replace=0", "2", "replace given twice"},
		{"PUT", "/api/tree/q/a?replace=1&%zz", "2", "query"},
		{"POST", "/api/set/q/a?x;y", "2", "query"},
		{"DELETE", "/api/tree/q/a?%zz", "", "query"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			resp, body := e.do(t, tc.method, tc.path, strings.NewReader(tc.body))
			var eb errorBody
			if resp.StatusCode != 400 || json.Unmarshal(body, &eb) != nil || !strings.Contains(eb.Error, tc.reason) {
				t.Errorf("%d %s: want 400 saying %q", resp.StatusCode, body, tc.reason)
			}
		})
	}
	if _, body := e.do(t, "GET", "/api/tree/q/a", nil); string(body) != "1" {
		t.Errorf("q/a is %s after the refused writes", body)
	}
}

// TestStreamWithBody: an event stream request that announces a body is
// refused (400). One that announced a small body it never sent hung
// forever before its headers: net/http reads what is left of a small body
// before it writes the headers, and the stream had lifted the read
// deadline — the stream's slot, its session and queue (QueueBytes) held
// as long as the client kept the connection, with nothing ever written
// to it that could fail.
func TestStreamWithBody(t *testing.T) {
	e := setup(t, broker.Options{AllowAnonymous: true}, Options{})
	for _, body := range []string{"Content-Length: 10\r\n", "Transfer-Encoding: chunked\r\n"} {
		conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(testTimeout))
		io.WriteString(conn, "GET /api/tree/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"+body+"\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		b, _ := io.ReadAll(resp.Body)
		var eb errorBody
		if resp.StatusCode != 400 || json.Unmarshal(b, &eb) != nil || !strings.Contains(eb.Error, "body") {
			t.Errorf("%q: %d %s: want 400 saying why", body, resp.StatusCode, b)
		}
	}
	if n := e.s.streams.Load(); n != 0 {
		t.Errorf("%d streams counted", n)
	}
}

// TestEscapedSlashWithRawChars: a level holding an escaped '/' (%2F) is
// refused however the rest of the path is written. With a character
// net/http does not take as escaped already (a raw '|' or raw UTF-8, which
// clients send), the API read the path re-escaped from its decoded form:
// the %2F became a separator, and PUT /api/tree/a%2Fb/x| wrote a/b/x|.
func TestEscapedSlashWithRawChars(t *testing.T) {
	e := setup(t, broker.Options{AllowAnonymous: true}, Options{})
	for _, level := range []string{"x|y", "\xc3\xbc", "x\"y"} {
		resp := rawRequest(t, e, "PUT /api/tree/a%2Fb/"+level+" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n\r\n1")
		if resp.StatusCode != 400 {
			t.Errorf("PUT a%%2Fb/%s: %s, want 400", level, resp.Status)
		}
	}
	if _, body := e.do(t, "GET", "/api/tree/a/%23", nil); string(body) != "{}" {
		t.Errorf("rows under a: %s", body)
	}
	// Raw characters alone are read as they are.
	if resp := rawRequest(t, e, "PUT /api/tree/c/x|y HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n\r\n1"); resp.StatusCode != 204 {
		t.Errorf("PUT c/x|y: %s", resp.Status)
	}
	if _, body := e.do(t, "GET", "/api/tree/c/%2B", nil); string(body) != `{"x|y":1}` {
		t.Errorf("c/+: %s", body)
	}
}

// TestStreamSnapshotTooLarge: a snapshot that cannot be cut in parts (one
// row whose JSON, control characters escaped six times over, is larger
// than the maximum packet size) ends its event stream with an error
// event, as a history does; a GET of the same tree is answered whole.
func TestStreamSnapshotTooLarge(t *testing.T) {
	e := setup(t, broker.Options{AllowAnonymous: true, MaxPacketSize: 4096}, Options{})
	e.publish(t, admin, "big/x", strings.Repeat("\x01", 3000))
	s, resp := e.openStream(t, "/api/tree/big/%2B")
	if resp.StatusCode != 200 {
		t.Fatalf("%s", resp.Status)
	}
	ev := s.next(t)
	var eb errorBody
	if ev.name != "error" || json.Unmarshal([]byte(ev.data), &eb) != nil || !strings.Contains(eb.Error, "maximum packet size") {
		t.Fatalf("first event %+v: want an error event with the reason", ev)
	}
	if resp, body := e.do(t, "GET", "/api/tree/big/%2B", nil); resp.StatusCode != 200 || len(body) < 18000 {
		t.Errorf("GET: %d, %d bytes", resp.StatusCode, len(body))
	}
}

// TestStreamAnswerBudget: the large events of event streams (a snapshot,
// a large delta) count against MaxAnswerBytes while they are written, as
// GET answers do: a stream whose large event does not fit is told so in an
// error event and ends (its EventSource reconnects, and resumes); one
// whose snapshot's estimate does not fit is refused with 503 before the
// broker makes it. Streams
// whose clients did not read held a copy each without bound (20 streams of
// a 4 MB tree: 159 MiB of heap; one caller may open MaxStreamsPerUser,
// 1,250).
func TestStreamAnswerBudget(t *testing.T) {
	e := setup(t, broker.Options{AllowAnonymous: true}, Options{MaxAnswerBytes: 1 << 20})
	var sb strings.Builder
	sb.WriteString("{")
	for i := range 2000 {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `"r%d":"%s"`, i, strings.Repeat("v", 6000)) // 12 MB: more than the socket buffers take (Linux: 4 MiB at most by default)
	}
	sb.WriteString("}")
	e.publish(t, admin, "$tree/big/+", sb.String())
	// A client that never reads: its snapshot is held while written.
	stuck, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	stuck.(*net.TCPConn).SetReadBuffer(4096)
	io.WriteString(stuck, "GET /api/tree/big/%2B HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
	eventually(t, "the stuck stream's snapshot to be held", func() bool { return e.s.answers.load() > 0 })
	// A second stream whose snapshot does not fit is refused before the
	// broker makes it (503 with the reason; it used to be a 200 and an
	// "error" event once the snapshot was made).
	_, resp := e.openStream(t, "/api/tree/big/%2B")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a second stream: %s: want 503 with Retry-After", resp.Status)
	}
	body, _ := io.ReadAll(resp.Body)
	var eb errorBody
	if json.Unmarshal(body, &eb) != nil || !strings.Contains(eb.Error, "busy") {
		t.Fatalf("a second stream: %.200s: want the reason", body)
	}
	// Once the stuck client is gone, its bytes are given back.
	stuck.Close()
	eventually(t, "the stuck stream's bytes to be given back", func() bool { return e.s.answers.load() == 0 })
	s, _ := e.openStream(t, "/api/tree/big/%2B")
	if ev := s.nextWithin(t, testTimeout); ev.name != "snapshot" || len(ev.data) < 12_000_000 {
		t.Fatalf("after: %.200s, %d bytes", ev.name, len(ev.data))
	}
}

// TestNegotiateNaN: a q that is not a number in 0..1 makes its range
// ignored, NaN as any other: "q=NaN" read as a number compared false with
// everything, so the range shadowed */* for its type and the answer was
// CBOR where "q=x" gave JSON.
func TestNegotiateNaN(t *testing.T) {
	for _, accept := range []string{"application/json;q=NaN, */*", "application/json;q=x, */*", "application/json;q=Inf, */*", "application/json;q=-0.5, */*"} {
		if got, err := negotiate(accept, true); err != nil || got != repJSON {
			t.Errorf("%q: %v %v, want JSON", accept, got, err)
		}
	}
}

// TestSetBytesBounded: a $set writes its payload into every row it
// matches; one that would write more bytes in all than a tree publish may
// carry (the payload limit) is refused whole, as a tree publish of those
// rows would be. A 1 MiB POST /api/set over 100 rows made a 100 MB delta
// for each tree subscriber and 946 MiB of allocations; at the limits (16
// MiB over 100,000 rows) 1.6 TB, from one request of any user who may
// write the rows, over MQTT as over HTTP.
func TestSetBytesBounded(t *testing.T) {
	lim := tree.DefaultLimits()
	lim.MaxPayload = 1 << 20
	e := setup(t, broker.Options{AllowAnonymous: true, Limits: lim}, Options{})
	var sb strings.Builder
	sb.WriteString("{")
	for i := range 100 {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `"r%d":0`, i)
	}
	sb.WriteString("}")
	e.publish(t, admin, "$tree/s/+", sb.String())
	resp, body := e.do(t, "POST", "/api/set/s/%2B", strings.NewReader(strings.Repeat("x", 100<<10))) // 100 rows × 100 KiB: 10 MiB
	var eb errorBody
	if resp.StatusCode != 400 || json.Unmarshal(body, &eb) != nil || eb.Code != "0x99" || !strings.Contains(eb.Error, "bytes") {
		t.Errorf("%d %s: want 400 0x99 saying how many bytes", resp.StatusCode, body)
	}
	if _, body := e.do(t, "GET", "/api/tree/s/r7", nil); string(body) != "0" {
		t.Errorf("s/r7 after the refused $set: %.100s", body)
	}
	// Within the bound: applied.
	if resp, body := e.do(t, "POST", "/api/set/s/%2B", strings.NewReader(strings.Repeat("y", 10<<10))); resp.StatusCode != 204 {
		t.Errorf("100 rows × 10 KiB: %d %s", resp.StatusCode, body)
	}
}
