package web_test

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/web"
)

var update = flag.Bool("update", false, "regenerate docs/webview.png (go test ./web -run TestScreenshot -update)")

// screenshot is where the README's picture of the web view lives.
const screenshot = "../docs/webview.png"

// TestScreenshot regenerates docs/webview.png with -update: a broker with
// a small house in it, some history, a refused publish of one of the
// user's devices, and the page logged in, one row flashing.
func TestScreenshot(t *testing.T) {
	if !*update {
		t.Skip("run with -update to regenerate " + screenshot)
	}
	browser := newBrowser(t)
	users := auth.NewUsers()
	if err := users.Set("alice", "alice-pw", 10); err != nil {
		t.Fatal(err)
	}
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	hist := []retain.HistoryRule{{Filter: "home/+/temperature", Keep: 100}, {Filter: "home/+/humidity", Keep: 100},
		{Filter: "home/garden/soil", Keep: 100}, {Filter: "home/energy/power_w", Keep: 100}}
	e := newEnv(t, broker.Options{Users: users, Store: st, Retain: retain.Options{History: hist}}, web.Config{Login: func() bool { return true }, Filter: "home/#"}, "alice")
	series := func(topic string, base, amp float64, phase float64, digits int) {
		for i := range 40 {
			v := base + amp*math.Sin(float64(i)/5+phase) + amp/3*math.Sin(float64(i)*1.7)
			e.publish(t, topic, fmt.Sprintf("%.*f", digits, v))
		}
	}
	series("home/livingroom/temperature", 21.2, 0.8, 0, 1)
	series("home/livingroom/humidity", 47, 4, 1, 0)
	series("home/kitchen/temperature", 22.6, 1.4, 2, 1)
	series("home/bedroom/temperature", 19.4, 0.6, 3, 1)
	series("home/garden/soil", 33, 6, 0.5, 0)
	series("home/energy/power_w", 1200, 600, 1.5, 0)
	for topic, v := range map[string]string{
		"home/livingroom/light":     "ON",
		"home/livingroom/tv":        `{"power":"standby","input":"hdmi1"}`,
		"home/kitchen/light":        "OFF",
		"home/kitchen/dishwasher":   `{"state":"running","remaining_min":42}`,
		"home/bedroom/window":       "closed",
		"home/bedroom/blinds":       "60",
		"home/garden/sprinkler":     "false",
		"home/energy/today_kwh":     "7.82",
		"home/hall/door":            "locked",
		"home/hall/motion":          "false",
		"home/garage/door":          "closed",
		"home/garage/car/charging":  "true",
		"home/garage/car/battery_%": "76",
	} {
		e.publish(t, topic, v)
	}

	tb := newTab(t, browser)
	tb.do(chromedp.EmulateViewport(1000, 640, chromedp.EmulateScale(1)))
	tb.open(e.url)
	tb.do(chromedp.SetValue(chromedp.ID("login-user"), "alice"), chromedp.SetValue(chromedp.ID("login-pass"), "alice-pw"),
		chromedp.Click(chromedp.CSS(`#login button[type=submit]`)))
	wait[bool](tb, "the tree", `window.mote.view.loaded && window.mote.view.historyCost > 0`)
	wait[bool](tb, "figures", `/^[0-9.]+$/.test(document.getElementById('fig-in').textContent)`)

	// One of alice's devices sends a bad tree: its report shows.
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	dev, err := client.Dial(ctx, e.b.TCPAddr(), client.Options{ClientID: "thermostat-2", Username: "alice", Password: "alice-pw", CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	dev.Publish(ctx, "$tree/home/+/temperature", []byte(`{"attic": {"now": 17.5}`), client.PublishOptions{QoS: 1}) //nolint:errcheck // refused: that is the point
	wait[bool](tb, "the report", `document.querySelectorAll('#error-list li').length > 0`)
	eval[any](tb, `document.getElementById('errors').open = true, null`)
	tb.typeFilter("home/#")
	wait[bool](tb, "the tree again", `window.mote.view.loaded && window.mote.view.historyCost > 0`)
	e.publish(t, "home/bedroom/blinds", "75")
	wait[bool](tb, "the flash", `!!document.querySelector('.row.flash-a, .row.flash-b')`)
	eval[any](tb, `document.activeElement.blur(), null`)
	png, err := chromedp.Run(tb.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	if len(png) > 300<<10 {
		t.Fatalf("the screenshot is %d KiB, over 300", len(png)>>10)
	}
	if err := os.WriteFile(screenshot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d KiB)", screenshot, len(png)>>10)
}
