package broker

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// scraped is one scrape of /metrics: each series (name and labels, as
// printed) → its value, and the families' types.
type scraped struct {
	values map[string]float64
	types  map[string]string
}

// scrape reads the broker's metrics over HTTP, as Prometheus would.
func scrape(t testing.TB, b *Broker) scraped {
	t.Helper()
	srv := httptest.NewServer(b.Metrics())
	defer srv.Close()
	req, err := http.NewRequestWithContext(testCtx(t), http.MethodGet, srv.URL+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s %q: %.500s", resp.Status, resp.Header.Get("Content-Type"), body)
	}
	s := scraped{values: map[string]float64{}, types: map[string]string{}}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(rest, " ")
			s.types[name] = typ
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		s.values[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitMetric waits until series reaches at least want, and returns it.
func waitMetric(t testing.TB, b *Broker, series string, want float64) float64 {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		s := scrape(t, b)
		v, ok := s.values[series]
		if ok && v >= want {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v (present: %v), want at least %v", series, v, ok, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// families are the metric families docs/metrics.md lists, by type; the
// retainer's only with a store.
var families = map[string]string{
	"mote_connections":                      "gauge",
	"mote_sessions":                         "gauge",
	"mote_rows":                             "gauge",
	"mote_inflight_messages":                "gauge",
	"mote_offline_held_bytes":               "gauge",
	"mote_snapshot_bytes":                   "gauge",
	"mote_snapshots_refused_total":          "counter",
	"mote_snapshots_waiting":                "gauge",
	"mote_snapshots_waited_total":           "counter",
	"mote_sessions_away":                    "gauge",
	"mote_sessions_away_tree_subscriptions": "gauge",
	"mote_sessions_ended_total":             "counter",
	"mote_readers_asleep":                   "gauge",
	"mote_loop_queue_requests":              "gauge",
	"mote_loop_queue_limit":                 "gauge",
	"mote_subscriptions":                    "gauge",
	"mote_bytes_received_total":             "counter",
	"mote_bytes_sent_total":                 "counter",
	"mote_messages_received_total":          "counter",
	"mote_messages_sent_total":              "counter",
	"mote_refusals_total":                   "counter",
	"mote_dropped_messages_total":           "counter",
	"mote_slow_client_drops_total":          "counter",
	"mote_queue_full_drops_total":           "counter",
	"mote_slow_client_disconnects_total":    "counter",
	"mote_panics_recovered_total":           "counter",
	"mote_publishes_applied_total":          "counter",
	"mote_publishes_throttled_total":        "counter",
	"mote_deltas_folded_total":              "counter",
	"mote_log_lines_suppressed_total":       "counter",
	"mote_loop_batch_requests":              "histogram",
	"mote_loop_batch_duration_seconds":      "histogram",
	"mote_retainer_commits_total":           "counter",
	"mote_retainer_commit_failures_total":   "counter",
	"mote_retainer_rows_committed_total":    "counter",
	"mote_retainer_rows_lost_total":         "counter",
	"mote_retainer_pending_rows":            "gauge",
	"mote_retainer_commit_duration_seconds": "histogram",
	"go_goroutines":                         "gauge",
	"process_cpu_seconds_total":             "counter",
}

// TestMetricsFamilies: every documented family is served, with its type
// and every value of its label; the retainer's only with a store; names
// and labels follow Prometheus' rules.
func TestMetricsFamilies(t *testing.T) {
	labelled := map[string][]string{
		`mote_messages_received_total{kind="%s"}`:  inKindNames[:],
		`mote_messages_sent_total{kind="%s"}`:      outKindNames[:],
		`mote_refusals_total{reason="%s"}`:         refusalReasonNames[:],
		`mote_dropped_messages_total{reason="%s"}`: append(dropReasonNames[:], "too_large"),
		`mote_subscriptions{mode="%s"}`:            {"plain", "sync", "tree", "hist"},
		`mote_queue_full_drops_total{why="%s"}`:    fullWhyNames[:],
	}
	for _, store := range []bool{false, true} {
		t.Run(fmt.Sprint("store=", store), func(t *testing.T) {
			var opts Options
			if store {
				st, err := retain.Open(t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				opts.Store = st
			}
			s := scrape(t, start(t, opts))
			for name, typ := range families {
				if strings.HasPrefix(name, "mote_retainer_") && !store {
					if _, ok := s.types[name]; ok {
						t.Errorf("%s served without a store", name)
					}
					continue
				}
				if s.types[name] != typ {
					t.Errorf("%s: type %q, want %q", name, s.types[name], typ)
				}
			}
			for format, values := range labelled {
				for _, v := range values {
					if _, ok := s.values[fmt.Sprintf(format, v)]; !ok {
						t.Errorf("no series %s", fmt.Sprintf(format, v))
					}
				}
			}
			name := regexp.MustCompile(`^mote_[a-z_]+$`)
			for f, typ := range s.types {
				if !strings.HasPrefix(f, "mote_") {
					continue
				}
				if !name.MatchString(f) || (typ == "counter") != strings.HasSuffix(f, "_total") {
					t.Errorf("family %s (%s): not a Prometheus name with its unit", f, typ)
				}
				if _, ok := families[f]; !ok {
					t.Errorf("family %s is not in docs/metrics.md's list (families)", f)
				}
			}
		})
	}
}

// TestMetricsMove: the figures move with what happens: publishes in by
// kind, messages out by kind, subscriptions by mode, refusals by reason,
// rows, the loop's batches and the retainer's commits.
func TestMetricsMove(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic readwrite #\n"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{ACL: acl, Store: st})
	ctx := testCtx(t)
	alice, mallory := Principal{User: "alice", ClientID: "a"}, Principal{User: "mallory", ClientID: "m"}
	got := make(chan Delivery, 100)
	s := b.Open(alice, func(d Delivery) { got <- d })
	defer s.Close()
	next := func(what string) Delivery {
		t.Helper()
		select {
		case d := <-got:
			return d
		case <-time.After(testTimeout):
			t.Fatalf("%s: nothing delivered", what)
		}
		return Delivery{}
	}

	if err := s.Subscribe("$sync/m/#", 0); err != nil {
		t.Fatal(err)
	}
	next("snapshot")
	waitMetric(t, b, `mote_messages_sent_total{kind="snapshot"}`, 1)
	waitMetric(t, b, `mote_subscriptions{mode="sync"}`, 1)

	steps := []struct {
		m      Message
		series string // what the publish adds 1 to
	}{
		{Message{Topic: "m/a", Payload: []byte("1"), Retain: true}, `mote_messages_received_total{kind="plain"}`},
		{Message{Topic: "$tree/m/b", Payload: []byte(`{"x":1}`), Retain: true}, `mote_messages_received_total{kind="tree"}`},
		{Message{Topic: "$set/m/+", Payload: []byte("2"), Retain: true}, `mote_messages_received_total{kind="set"}`},
	}
	for _, step := range steps {
		before := scrape(t, b).values
		if err := s.Publish(ctx, step.m); err != nil {
			t.Fatalf("%s: %v", step.m.Topic, err)
		}
		next(step.m.Topic + ": delta")
		waitMetric(t, b, step.series, before[step.series]+1)
		waitMetric(t, b, `mote_messages_sent_total{kind="delta"}`, before[`mote_messages_sent_total{kind="delta"}`]+1)
	}
	waitMetric(t, b, "mote_rows", 2)

	refusals := []struct {
		p      Principal
		m      Message
		reason string
	}{
		{mallory, Message{Topic: "m/a", Payload: []byte("x")}, "not_authorized"},
		{alice, Message{Topic: "$tree/m/c", Payload: []byte(`{"x":`), Retain: true}, "payload_invalid"},
		{alice, Message{Topic: "$SYS/x", Payload: []byte("x")}, "topic_invalid"},
	}
	for _, r := range refusals {
		series := `mote_refusals_total{reason="` + r.reason + `"}`
		before := scrape(t, b).values[series]
		var ref *Refusal
		if err := b.Publish(ctx, r.p, r.m); !errors.As(err, &ref) {
			t.Fatalf("%+v: %v, want a refusal", r.m, err)
		}
		if got := scrape(t, b).values[series]; got != before+1 {
			t.Errorf("%s = %v after a refusal, want %v", series, got, before+1)
		}
	}

	plain := b.Open(alice, func(d Delivery) { got <- d })
	defer plain.Close()
	if err := plain.Subscribe("m/#", 0); err != nil {
		t.Fatal(err)
	}
	next("retained m/a")
	next("retained m/b/x")
	waitMetric(t, b, `mote_messages_sent_total{kind="retained"}`, 2)
	waitMetric(t, b, `mote_subscriptions{mode="plain"}`, 1)

	s.Unsubscribe("$sync/m/#")
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if v := scrape(t, b).values[`mote_subscriptions{mode="sync"}`]; v != 0 {
		t.Errorf("%v $sync subscriptions after the unsubscribe", v)
	}

	waitMetric(t, b, "mote_loop_batch_requests_count", 1)
	waitMetric(t, b, "mote_loop_batch_duration_seconds_count", 1)
	waitMetric(t, b, "mote_retainer_rows_committed_total", 2)
	waitMetric(t, b, "mote_retainer_commit_duration_seconds_count", 1)
}

// TestMetricsMQTT: an MQTT client's connection, subscriptions by mode
// (tree subscriptions are filed in mochi's index too, and not counted as
// plain), messages and bytes both ways, and refusals by reason: a
// subscription the ACL forbids, a CONNECT with a wrong password.
func TestMetricsMQTT(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte("user alice\ntopic readwrite a/#\ntopic readwrite t/#\ntopic readwrite h/#\n"))
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Users: users(t), ACL: acl})
	c := dial3With(t, b, paho.NewClientOptions().SetClientID("m1").SetUsername("alice").SetPassword("alice-pw"))
	c.sub(t, "a/#", 0)
	c.sub(t, "$tree/t/#", 0)
	c.sub(t, "$hist/h/#", 0)
	c.wait(t, 1) // the $hist answer
	c.pub(t, "a/b", 1, false, "hello")
	c.wait(t, 2)
	waitMetric(t, b, "mote_connections", 1)
	waitMetric(t, b, `mote_subscriptions{mode="tree"}`, 1)
	waitMetric(t, b, `mote_subscriptions{mode="hist"}`, 1)
	waitMetric(t, b, `mote_messages_sent_total{kind="history"}`, 1)
	waitMetric(t, b, `mote_messages_sent_total{kind="plain"}`, 1)
	waitMetric(t, b, "mote_bytes_received_total", 1)
	waitMetric(t, b, "mote_bytes_sent_total", 1)
	if v := scrape(t, b).values[`mote_subscriptions{mode="plain"}`]; v != 1 {
		t.Errorf("%v plain subscriptions, want 1", v)
	}
	if code := c.sub(t, "secret/#", 0); code != 0x80 {
		t.Errorf("SUBACK 0x%02x for a forbidden filter", code)
	}
	waitMetric(t, b, `mote_refusals_total{reason="not_authorized"}`, 1)

	bad := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + b.TCPAddr()).SetClientID("m2").
		SetUsername("alice").SetPassword("wrong").SetAutoReconnect(false))
	if tok := bad.Connect(); tok.WaitTimeout(testTimeout) && tok.Error() == nil {
		bad.Disconnect(0)
		t.Fatal("connected with a wrong password")
	}
	waitMetric(t, b, `mote_refusals_total{reason="bad_credentials"}`, 1)
}

// TestMetricsSlowClient: a subscriber that does not take its messages
// has them dropped, or is disconnected, by policy; both are counted.
func TestMetricsSlowClient(t *testing.T) {
	for _, policy := range []SlowPolicy{SlowDrop, SlowDisconnect} {
		t.Run(string(policy), func(t *testing.T) {
			b := start(t, Options{QueueBytes: 4096, PublishWait: time.Millisecond, SlowClient: policy})
			stuck := make(chan struct{})
			defer close(stuck)
			s := b.Open(Principal{ClientID: "slow"}, func(Delivery) { <-stuck })
			defer s.Close()
			if err := s.Subscribe("ev/#", 0); err != nil {
				t.Fatal(err)
			}
			ctx := testCtx(t)
			payload := []byte(strings.Repeat("x", 1024))
			for range 20 {
				if err := b.Publish(ctx, Principal{ClientID: "pub"}, Message{Topic: "ev/x", Payload: payload}); err != nil {
					t.Fatal(err)
				}
			}
			waitMetric(t, b, `mote_dropped_messages_total{reason="queue_full"}`, 1)
			if policy == SlowDrop {
				waitMetric(t, b, "mote_slow_client_drops_total", 1)
			} else {
				waitMetric(t, b, "mote_slow_client_disconnects_total", 1)
			}
		})
	}
}

// TestMetricsPerBroker: each broker counts in its own registry.
func TestMetricsPerBroker(t *testing.T) {
	one, two := start(t, Options{}), start(t, Options{})
	ctx := testCtx(t)
	for range 3 {
		if err := one.Publish(ctx, Principal{ClientID: "p"}, Message{Topic: "x", Payload: []byte("1")}); err != nil {
			t.Fatal(err)
		}
	}
	series := `mote_messages_received_total{kind="plain"}`
	if a, b := scrape(t, one).values[series], scrape(t, two).values[series]; a != 3 || b != 0 {
		t.Errorf("%s: %v and %v, want 3 and 0", series, a, b)
	}
}

// TestRefusalReasons: every refusal maps to a reason from the fixed set,
// the one its code and cause say.
func TestRefusalReasons(t *testing.T) {
	cases := []struct {
		op   string
		err  error
		want string
	}{
		{"publish", fmt.Errorf("%w: write", tree.ErrDenied), "not_authorized"},
		{"publish", wire.ErrReservedf("x"), "topic_invalid"},
		{"subscribe", errors.New("bad filter"), "filter_invalid"},
		{"publish", errors.New("bad json"), "payload_invalid"},
		{"publish", errQuotaf("too many"), "quota"},
		{"deliver", fmt.Errorf("%w: big", errTooLarge), "too_large"},
		{"publish", fmt.Errorf("x: %w", retain.ErrUnstorable), "unstorable"},
		{"publish", fmt.Errorf("x: %w", retain.ErrCommit), "store_failed"},
		{"publish", context.DeadlineExceeded, "canceled"},
		{"publish", errShutdown, "shutting_down"},
	}
	for _, c := range cases {
		code := reasonCode(c.op, c.err)
		if got := refusalReasonNames[refusalReasonOf(code, c.err)]; got != c.want {
			t.Errorf("%s %v (0x%02x): %s, want %s", c.op, c.err, code.Code, got, c.want)
		}
	}
	connect := map[packets.Code]string{
		packets.ErrBadUsernameOrPassword:    "bad_credentials",
		packets.ErrClientIdentifierNotValid: "client_id_invalid",
		packets.ErrServerBusy:               "other",
		packets.ErrConnectionRateExceeded:   "connection_rate",
	}
	for code, want := range connect {
		if got := refusalReasonNames[refusalReasonOf(code, nil)]; got != want {
			t.Errorf("0x%02x: %s, want %s", code.Code, got, want)
		}
	}
}

// healthz is how an HTTP front end serves Health.
func healthz(b *Broker) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := b.Health(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
}

// TestHealth: healthy brokers answer 200; a store that fails, a message
// loop that does not answer and a closed broker answer 503 with why.
func TestHealth(t *testing.T) {
	get := func(t *testing.T, b *Broker) (int, string) {
		t.Helper()
		rec := httptest.NewRecorder()
		healthz(b).ServeHTTP(rec, httptest.NewRequestWithContext(testCtx(t), http.MethodGet, "/healthz", nil))
		return rec.Code, rec.Body.String()
	}
	bolt := func(t *testing.T) retain.RowStore {
		st, err := retain.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	cases := []struct {
		name   string
		store  func(t *testing.T) retain.RowStore
		breaks func(t *testing.T, b *Broker) // nil: stays healthy
		want   string
	}{
		{"memory", nil, nil, ""},
		{"bolt", bolt, nil, ""},
		{"failing store", func(*testing.T) retain.RowStore { return failingStore{} }, nil, "disk on fire"},
		{"closed", bolt, func(t *testing.T, b *Broker) { b.Close() }, "broker: closed"},
		{"loop stuck", nil, func(t *testing.T, b *Broker) {
			release := make(chan struct{})
			t.Cleanup(func() { close(release) })
			b.reqs.push(request{kind: reqCall, call: func() { <-release }})
		}, "message loop did not answer within"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opts := Options{Retain: retain.Options{Interval: time.Millisecond}}
			if c.store != nil {
				opts.Store = c.store(t)
			}
			b := start(t, opts)
			b.healthWait = 200 * time.Millisecond
			if c.breaks != nil {
				c.breaks(t, b)
			}
			code, body := get(t, b)
			t.Logf("%d %s", code, strings.TrimSpace(body))
			switch {
			case c.want == "" && code != http.StatusOK:
				t.Errorf("healthy broker: %d %q", code, body)
			case c.want != "" && (code != http.StatusServiceUnavailable || !strings.Contains(body, c.want)):
				t.Errorf("%d %q, want 503 saying %q", code, body, c.want)
			}
			if c.want == "" { // and again, within a second of the last commit: no probe
				if code, body := get(t, b); code != http.StatusOK {
					t.Errorf("second check: %d %q", code, body)
				}
			}
		})
	}
}

// BenchmarkMeters: what the broker pays for its figures. count: one event
// counted (a message in or out, a refusal, a drop), from every core at
// once on one counter, the worst case; batch: what the loop adds per
// batch, a clock reading and two histogram observations; scrape: one GET
// /metrics, off the hot path.
func BenchmarkMeters(b *testing.B) {
	br, err := New(Options{TCP: "127.0.0.1:0", WS: "off"}) // not started: nothing listens
	if err != nil {
		b.Fatal(err)
	}
	b.Run("count", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				br.meter.out[outPlain].Add(1)
			}
		})
	})
	b.Run("batch", func(b *testing.B) {
		start := time.Now()
		for b.Loop() {
			br.meter.batchSize.Observe(3)
			br.meter.batchSeconds.Observe(time.Since(start).Seconds())
		}
	})
	b.Run("scrape", func(b *testing.B) {
		b.ReportAllocs()
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		for b.Loop() {
			rec := httptest.NewRecorder()
			br.Metrics().ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Fatal(rec.Code)
			}
		}
	})
}
