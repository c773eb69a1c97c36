package web_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/web"
	"github.com/mote-mqtt/mote/wire"
)

// stepTimeout bounds every step a test takes in the browser or the broker.
const stepTimeout = 20 * time.Second

// chromium finds a Chromium binary, or skips: .ci/run installs Debian's.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium on PATH (apt-get install chromium)")
	return ""
}

// newBrowser starts a headless Chromium for one test (its tabs are its
// subtests'); it ends with the test, or at the test's deadline.
func newBrowser(t *testing.T) context.Context {
	bin := chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1200, 800))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	whole, cancelWhole := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancelWhole)
	actx, cancelAlloc := chromedp.NewExecAllocator(whole, opts...)
	t.Cleanup(cancelAlloc)
	bctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(bctx) }() // starts the browser
	select {
	case err := <-started:
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) || strings.Contains(err.Error(), "exec") {
				t.Skipf("chromium could not start here: %v", err)
			}
			t.Fatalf("start chromium: %v", err)
		}
	case <-time.After(stepTimeout):
		cancelAlloc()
		t.Fatal("chromium did not start in time")
	}
	return bctx
}

// tab is one page in the browser, with its console kept for failures.
type tab struct {
	t   *testing.T
	ctx context.Context
	mu  sync.Mutex
	log []string
}

func newTab(t *testing.T, browser context.Context) *tab {
	ctx, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	tb := &tab{t: t, ctx: ctx}
	if err := chromedp.Listen(ctx, tb.listen); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			tb.mu.Lock()
			t.Logf("page console:\n%s", strings.Join(tb.log, "\n"))
			tb.mu.Unlock()
		}
	})
	return tb
}

func (tb *tab) listen(ev any) {
	var line string
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		var args []string
		for _, a := range ev.Args {
			if a.Value != nil {
				args = append(args, string(a.Value))
			} else {
				args = append(args, a.Description)
			}
		}
		line = fmt.Sprintf("console.%s %s", ev.Type, strings.Join(args, " "))
	case *runtime.EventExceptionThrown:
		line = "exception: " + ev.ExceptionDetails.Text
		if ev.ExceptionDetails.Exception != nil {
			line += " " + ev.ExceptionDetails.Exception.Description
		}
	default:
		return
	}
	tb.mu.Lock()
	tb.log = append(tb.log, line)
	tb.mu.Unlock()
}

// do runs steps within stepTimeout.
func (tb *tab) do(steps ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		tb.t.Fatalf("browser: %v", err)
	}
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](tb *tab, expr string) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		tb.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// wait waits until expr is truthy, checking on every DOM change, and
// returns its value.
func wait[T any](tb *tab, what, expr string) T {
	tb.t.Helper()
	v, err := waitFor[T](tb, expr, stepTimeout)
	if err != nil {
		tb.t.Fatalf("waiting for %s (%s): %v", what, expr, err)
	}
	return v
}

func waitFor[T any](tb *tab, expr string, d time.Duration) (T, error) {
	ctx, cancel := context.WithTimeout(tb.ctx, d+time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Poll[T](expr, chromedp.WithPollingMutation(), chromedp.WithPollingTimeout(d)))
}

// open loads the page and waits for its first screen (the tree or the
// login form).
func (tb *tab) open(url string) {
	tb.t.Helper()
	tb.do(chromedp.Navigate(url))
	wait[bool](tb, "the page", `!!window.mote && (!document.getElementById('view').hidden || !document.getElementById('login').hidden)`)
}

// filter types a filter and waits for its snapshot to be drawn.
func (tb *tab) filter(f string) {
	tb.t.Helper()
	tb.typeFilter(f)
	wait[bool](tb, "the snapshot of "+f, fmt.Sprintf(`window.mote.view.filter === %q && window.mote.view.loaded`, f))
}

// typeFilter types f into the filter box, replacing what it held, and
// presses Enter.
func (tb *tab) typeFilter(f string) {
	tb.t.Helper()
	eval[any](tb, `document.getElementById('filter').value = '', null`)
	tb.do(chromedp.SendKeys(chromedp.ID("filter"), f+kb.Enter))
}

// valueJS is the text shown as the value of topic's row, or null when the
// row is not in the DOM.
func valueJS(topic string) string {
	return fmt.Sprintf(`(() => { const el = document.querySelector('.row[data-topic="' + CSS.escape(%q) + '"] .v'); return el ? el.textContent : null })()`, topic)
}

// env is a broker, the web view on an HTTP server, and a client that
// writes rows.
type env struct {
	b   *broker.Broker
	url string
	pub *client.Client
}

func newEnv(t *testing.T, opts broker.Options, cfg web.Config, user string) *env {
	t.Helper()
	opts.TCP, opts.WS = "127.0.0.1:0", "off"
	b, err := broker.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	cfg.MQTT = b.WSHandler()
	srv := httptest.NewServer(web.Handler(cfg))
	t.Cleanup(srv.Close) // after the broker has ended the page's connections
	t.Cleanup(func() { b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	pub, err := client.Dial(ctx, b.TCPAddr(), client.Options{ClientID: "pub", Username: user, Password: user + "-pw", CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	return &env{b: b, url: srv.URL, pub: pub}
}

func (e *env) publish(t *testing.T, topic, payload string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	if err := e.pub.Publish(ctx, topic, []byte(payload), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

// TestWebView drives the page in headless Chromium: it loads, shows the
// snapshot of a typed filter, a publish over MQTT changes its row in the
// DOM (and makes it flash; the latency is logged, not asserted: this is a
// shared, noisy machine), branches collapse, numeric
// rows under a history rule get a sparkline, the broker's figures and the
// page's own error reports show.
func TestWebView(t *testing.T) {
	browser := newBrowser(t)
	opts := broker.Options{Retain: retain.Options{History: []retain.HistoryRule{{Filter: "sensor/#", Keep: 100}}}}
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	opts.Store = st
	e := newEnv(t, opts, web.Config{}, "")
	for topic, v := range map[string]string{
		"light/bedroom/is_on": "1", "light/kitchen/is_on": "0", "light/kitchen/brightness": "55", "other/x": "hello",
	} {
		e.publish(t, topic, v)
	}
	for _, v := range []string{"20.5", "21", "21.5", "20.75"} {
		e.publish(t, "sensor/t", v)
	}
	tb := newTab(t, browser)
	tb.open(e.url)

	tb.filter("light/#")
	if got := eval[string](tb, `document.getElementById('count').textContent`); got != "3 rows" {
		t.Errorf("count %q, want 3 rows", got)
	}
	for topic, want := range map[string]any{"light/bedroom/is_on": "1", "light/kitchen/brightness": "55", "other/x": nil, "sensor/t": nil} {
		if got := eval[any](tb, valueJS(topic)); got != want {
			t.Errorf("%s shows %v, want %v", topic, got, want)
		}
	}

	// A publish over MQTT reaches the DOM (how fast is logged).
	var lat []time.Duration
	for i := range 10 {
		v := fmt.Sprint(100 + i)
		t0 := time.Now()
		e.publish(t, "light/bedroom/is_on", v)
		if _, err := waitFor[bool](tb, valueJS("light/bedroom/is_on")+` === `+fmt.Sprintf("%q", v), stepTimeout); err != nil {
			t.Fatalf("publish %d: the row did not show %s: %v", i, v, err)
		}
		lat = append(lat, time.Since(t0))
		// It flashes from the moment it shows the new value.
		if !eval[bool](tb, `(() => { const r = document.querySelector('.row[data-topic="light/bedroom/is_on"]'); return r.classList.contains('flash-a') || r.classList.contains('flash-b') || window.mote.view.byTopic.get('light/bedroom/is_on').flashes === `+fmt.Sprint(i+1)+` })()`) {
			t.Errorf("publish %d: the changed row does not flash", i)
		}
	}
	slices.Sort(lat)
	t.Logf("publish → DOM latency over 10 publishes: min %v, median %v, max %v", lat[0], lat[len(lat)/2], lat[len(lat)-1])
	if eval[string](tb, `document.querySelector('.row[data-topic="light/bedroom/is_on"] .time').textContent`) == "" {
		t.Error("a changed row shows no time of change")
	}

	// Branches collapse and open again.
	tb.do(chromedp.Click(chromedp.CSS(`.row[data-topic="light/kitchen"] .tog`)))
	wait[bool](tb, "kitchen collapsed", valueJS("light/kitchen/is_on")+` === null`)
	tb.do(chromedp.Click(chromedp.CSS(`.row[data-topic="light/kitchen"] .tog`)))
	wait[bool](tb, "kitchen open", valueJS("light/kitchen/is_on")+` === "0"`)

	// History: a sparkline where the broker keeps values; none elsewhere.
	tb.filter("sensor/#")
	wait[bool](tb, "a sparkline", `!!document.querySelector('.row[data-topic="sensor/t"] svg.spark polyline')`)
	pts := eval[string](tb, `document.querySelector('.row[data-topic="sensor/t"] svg.spark polyline').getAttribute('points')`)
	if n := len(strings.Fields(pts)); n != 4 {
		t.Errorf("sparkline of sensor/t has %d points (%s), want 4", n, pts)
	}
	e.publish(t, "sensor/t", "19")
	wait[bool](tb, "the sparkline grows", `document.querySelector('.row[data-topic="sensor/t"] svg.spark polyline').getAttribute('points').split(' ').length === 5`)
	tb.filter("light/#")
	if eval[bool](tb, `!!document.querySelector('svg.spark')`) {
		t.Error("a sparkline on a row without history")
	}

	// Random changes (rows set and deleted, rows with children, objects)
	// arrive as deltas applied row by row: the view ends as the broker's
	// rows, and as the Mirror's copy.
	mix := map[string]string{}
	for _, f := range []string{"mix/#", "mix/+/#"} {
		tb.filter(f)
		want := randomChanges(t, e, mix, f, 150)
		wantJSON, _ := json.Marshal(want)
		shown := `JSON.stringify(Object.fromEntries([...window.mote.view.byTopic].sort().map(([k, n]) => [k, n.full])))`
		if _, err := waitFor[bool](tb, shown+` === `+strconv.Quote(string(wantJSON)), stepTimeout); err != nil {
			t.Errorf("%s: the view shows %s, want %s", f, eval[string](tb, shown), wantJSON)
		}
		if m := eval[[]string](tb, `window.mote.view.mismatches()`); len(m) > 0 {
			t.Errorf("%s: the view differs from the Mirror's copy at %q", f, m)
		}
	}

	// The broker's figures, from $SYS.
	wait[bool](tb, "figures", `!document.getElementById('figures').hidden && Number(document.getElementById('fig-clients').textContent) >= 2`)
	wait[bool](tb, "a message rate", `/^[0-9.]+$/.test(document.getElementById('fig-in').textContent)`)

	// The page's own error reports.
	eval[any](tb, `window.mote.session.client.publish('$tree/x', 'not json', { qos: 1 }), null`)
	wait[bool](tb, "an error report", `document.querySelectorAll('#error-list li').length === 1 && document.getElementById('error-list').textContent.includes('$tree/x')`)

	// A malformed filter says so (MQTT.js refuses it before the broker).
	tb.typeFilter("a/#/b")
	if msg := wait[string](tb, "the refusal", `document.getElementById('filter-error').textContent`); !strings.Contains(msg, "a/#/b") {
		t.Errorf("a malformed filter: %q", msg)
	}
}

// randomChanges publishes n random retained changes (values, deletions)
// to rows under mix/, keeping rows up to date, and returns the rows that
// match filter f then, with their values as the page shows them.
func randomChanges(t *testing.T, e *env, rows map[string]string, f string, n int) map[string]string {
	t.Helper()
	r := rand.New(rand.NewPCG(uint64(len(f)), 7))
	levels := []string{"a", "b", "c"}
	values := []string{"1", "2.5", "ON", `{"x":1}`, "true", ""} // "": delete
	for range n {
		topic := "mix"
		for range 1 + r.IntN(3) {
			topic += "/" + levels[r.IntN(len(levels))]
		}
		v := values[r.IntN(len(values))]
		e.publish(t, topic, v)
		if v == "" {
			delete(rows, topic)
		} else {
			rows[topic] = v
		}
	}
	want := map[string]string{}
	for topic, v := range rows {
		if wire.Match(f, topic) {
			want[topic] = v
		}
	}
	return want
}

// TestLogin: with a password file the page asks for the MQTT username and
// password, says so when they are wrong, shows the tree with the right
// ones and goes back to the login form on logout; a row the ACL hides
// never reaches the DOM, whatever changes; the error reports of the
// user's other clients show, another user's never do.
func TestLogin(t *testing.T) {
	browser := newBrowser(t)
	users := auth.NewUsers()
	for _, u := range []string{"alice", "bob", "admin"} {
		if err := users.Set(u, u+"-pw", 10); err != nil {
			t.Fatal(err)
		}
	}
	acl, err := auth.ParseACL("acl", []byte(`
user alice
topic readwrite house/#
topic deny house/secret/#
topic read $SYS/broker/#
user bob
topic readwrite house/#
user admin
topic readwrite #
`))
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, broker.Options{Users: users, ACL: acl}, web.Config{Login: func() bool { return true }, Filter: "house/#"}, "admin")
	e.publish(t, "house/hall/lamp", "ON")
	e.publish(t, "house/secret/code", "s3cret")

	tb := newTab(t, browser)
	tb.open(e.url)
	if !eval[bool](tb, `document.getElementById('view').hidden && !document.getElementById('login').hidden`) {
		t.Fatal("the page shows the tree before a login")
	}
	// From here on, anything that shows the hidden row is recorded.
	eval[any](tb, `(() => {
		window.leaked = []
		const check = (n) => {
			if (n.nodeType === 1 && ((n.dataset && (n.dataset.topic || '').startsWith('house/secret')) || n.textContent.includes('s3cret'))) window.leaked.push(n.outerHTML)
			if (n.nodeType === 3 && n.textContent.includes('s3cret')) window.leaked.push(n.textContent)
		}
		new MutationObserver((ms) => ms.forEach((m) => { m.addedNodes.forEach(check); if (m.type !== 'childList') check(m.target) }))
			.observe(document.body, { childList: true, subtree: true, characterData: true, attributes: true, attributeFilter: ['data-topic', 'title'] })
		return null
	})()`)

	login := func(user, pass string) {
		tb.do(chromedp.SetValue(chromedp.ID("login-user"), user), chromedp.SetValue(chromedp.ID("login-pass"), pass),
			chromedp.Click(chromedp.CSS(`#login button[type=submit]`)))
	}
	login("alice", "wrong")
	wait[bool](tb, "the login error", `!document.getElementById('login').hidden && document.getElementById('login-error').textContent.includes('Wrong username or password')`)
	login("alice", "alice-pw")
	wait[bool](tb, "the tree", `!document.getElementById('view').hidden && window.mote.view.loaded`)
	if got := eval[any](tb, valueJS("house/hall/lamp")); got != "ON" {
		t.Errorf("house/hall/lamp shows %v", got)
	}
	if got := eval[string](tb, `document.getElementById('who-name').textContent`); got != "alice" {
		t.Errorf("logged in as %q", got)
	}
	wait[bool](tb, "figures", `!document.getElementById('figures').hidden`)

	// The hidden row changes, then a visible one: only the visible change
	// shows, and nothing of the hidden row was ever in the DOM.
	e.publish(t, "house/secret/code", "s3cret-2")
	e.publish(t, "house/secret/new", "s3cret-3")
	e.publish(t, "house/hall/lamp", "OFF")
	wait[bool](tb, "the lamp off", valueJS("house/hall/lamp")+` === "OFF"`)
	tb.filter("house/secret/#")
	tb.filter("house/#")
	if leaked := eval[[]string](tb, `window.leaked`); len(leaked) > 0 {
		t.Errorf("the ACL-hidden row reached the DOM: %q", leaked)
	}
	if eval[bool](tb, `document.body.innerHTML.includes('secret')`) {
		t.Error("the page names the hidden subtree")
	}

	// Error reports: alice's other client's show, bob's never.
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	for _, c := range []struct{ user, id string }{{"bob", "bob-phone"}, {"alice", "alice-phone"}} {
		cl, err := client.Dial(ctx, e.b.TCPAddr(), client.Options{ClientID: c.id, Username: c.user, Password: c.user + "-pw", CleanStart: true})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		err = cl.Publish(ctx, "$tree/house/x", []byte("not json"), client.PublishOptions{QoS: 1})
		if !errors.Is(err, client.ErrRefused) {
			t.Fatalf("%s: a bad tree publish: %v", c.id, err)
		}
	}
	wait[bool](tb, "alice-phone's report", `document.getElementById('error-list').textContent.includes('alice-phone')`)
	if eval[bool](tb, `document.getElementById('error-list').textContent.includes('bob-phone')`) {
		t.Error("alice's page shows bob's error report")
	}

	tb.do(chromedp.Click(chromedp.ID("logout")))
	wait[bool](tb, "the login form", `!document.getElementById('login').hidden && document.getElementById('view').hidden`)
	if n := eval[int](tb, `document.querySelectorAll('.row').length + document.querySelectorAll('#error-list li').length`); n != 0 {
		t.Errorf("%d rows and reports left after logout", n)
	}
	if got := eval[string](tb, `document.getElementById('login-pass').value`); got != "" {
		t.Error("the password stays in the form after logout")
	}
}

// TestPhone: in a phone-sized window the page fits its width (no
// horizontal scrolling of the page), long topics and values included.
func TestPhone(t *testing.T) {
	browser := newBrowser(t)
	e := newEnv(t, broker.Options{}, web.Config{}, "")
	long := strings.Repeat("very-long-level-name-", 6)
	e.publish(t, "phone/"+long+"/state", `{"state":"ON","brightness":255,"color":{"x":0.31,"y":0.32},"note":"`+strings.Repeat("x", 300)+`"}`)
	e.publish(t, "phone/a", "1")
	tb := newTab(t, browser)
	tb.do(chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateScale(3)))
	tb.open(e.url)
	tb.filter("phone/#")
	wait[bool](tb, "the long row", `!!document.querySelector('.row[data-topic$="/state"]')`)
	type dims struct {
		Inner int    `json:"inner"`
		Doc   int    `json:"doc"`
		Body  int    `json:"body"`
		Tree  int    `json:"tree"`
		Time  string `json:"time"`
	}
	d := eval[dims](tb, `({ inner: window.innerWidth, doc: document.documentElement.scrollWidth, body: document.body.scrollWidth,
		tree: document.getElementById('tree').scrollWidth,
		time: getComputedStyle(document.querySelector('.row .time')).display })`)
	t.Logf("phone: %+v", d)
	if d.Inner != 390 || d.Doc > d.Inner || d.Body > d.Inner || d.Tree > d.Inner {
		t.Errorf("the page overflows a 390 px window: %+v", d)
	}
	if d.Time != "none" {
		t.Errorf("the time column shows on a phone (display %s)", d.Time)
	}
}

// TestLargeTree: a 10,000-row tree. Reports the time from typing its
// filter to the rows drawn, and from a publish to its row changing; only
// the rows in sight are in the DOM, and scrolling reaches the last one.
func TestLargeTree(t *testing.T) {
	browser := newBrowser(t)
	e := newEnv(t, broker.Options{}, web.Config{Filter: "none/#"}, "")
	big := map[string]any{}
	for d := range 1000 {
		fields := map[string]any{}
		for f := range 10 {
			fields[fmt.Sprintf("f%d", f)] = d*10 + f
		}
		big[fmt.Sprintf("dev%04d", d)] = fields
	}
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	if err := e.pub.PublishTree(ctx, "big/+/+", big, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	tb := newTab(t, browser)
	tb.open(e.url)
	wait[bool](tb, "the first filter", `window.mote.view.loaded`)

	// Tasks over 50 ms (the browser's long tasks) keep the page from
	// answering its user: record the longest while the tree loads.
	eval[any](tb, `(() => { window.longest = 0; new PerformanceObserver((l) => l.getEntries().forEach((e) => { window.longest = Math.max(window.longest, e.duration) })).observe({ type: 'longtask' }); return null })()`)
	t0 := time.Now()
	tb.typeFilter("big/#")
	wait[bool](tb, "10,000 rows", `document.getElementById('count').textContent === '10000 rows'`)
	wall := time.Since(t0)
	type times struct {
		First float64 `json:"first"`
		All   float64 `json:"all"`
		Cost  float64 `json:"cost"`
	}
	tm := eval[times](tb, `({ first: window.mote.view.firstSlice, all: window.mote.view.firstRender, cost: window.mote.view.cost })`)
	t.Logf("10,000 rows: in the page, first rows drawn %.0f ms after the filter, all %.0f ms after (%.0f ms of work, in slices of at most ~%d ms); %v from Enter to all drawn (wall, via CDP)",
		tm.First, tm.All, tm.Cost, 12, wall.Round(time.Millisecond))

	hist := wait[float64](tb, "the history applied", `window.mote.view.historyCost`)
	t.Logf("10,000 rows: their history ($hist, for times and sparklines) applied in %.0f ms; the longest task while loading took %.0f ms (0: none over 50 ms)",
		hist, eval[float64](tb, `window.longest`))
	if n := eval[int](tb, `document.querySelectorAll('.row').length`); n > 200 || n < 10 {
		t.Errorf("%d rows in the DOM for 11,001 lines, want a screenful", n)
	}
	var lat []time.Duration
	for i := range 5 {
		v := fmt.Sprint(-1 - i)
		t0 := time.Now()
		e.publish(t, "big/dev0000/f1", v)
		if _, err := waitFor[bool](tb, valueJS("big/dev0000/f1")+fmt.Sprintf(` === %q`, v), stepTimeout); err != nil {
			t.Fatalf("with 10,000 rows, a change did not show: %v", err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	t.Logf("10,000 rows: publish → DOM latency min %v, median %v, max %v; a delta costs %.1f ms in the page",
		lat[0], lat[len(lat)/2], lat[len(lat)-1], eval[float64](tb, `window.mote.view.cost`))
	eval[any](tb, `(() => { const s = document.getElementById('tree'); s.scrollTop = s.scrollHeight; return null })()`)
	wait[bool](tb, "the last row after scrolling", valueJS("big/dev0999/f9")+` === "9999"`)
}
