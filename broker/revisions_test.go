package broker

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/mote-mqtt/mote/retain"
)

// tree5 is an MQTT 5 client that records the publishes it receives.
type tree5 struct {
	*paho5.Client
	got chan *paho5.Publish
}

func dialTree5(t *testing.T, b *Broker, id string) *tree5 {
	t.Helper()
	c := &tree5{got: make(chan *paho5.Publish, 1000)}
	c.Client = dial5(t, b, id, paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { c.got <- p.Packet; return true, nil },
	}}, nil)
	return c
}

// subscribe sends one SUBSCRIBE with user properties (key, value, …) and
// returns its reason code.
func (c *tree5) subscribe(t *testing.T, filter string, props ...string) byte {
	t.Helper()
	s := &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: filter, QoS: 1}}, Properties: &paho5.SubscribeProperties{}}
	for i := 0; i+1 < len(props); i += 2 {
		s.Properties.User = append(s.Properties.User, paho5.UserProperty{Key: props[i], Value: props[i+1]})
	}
	ack, err := c.Subscribe(testCtx(t), s)
	if ack == nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return ack.Reasons[0]
}

func (c *tree5) next(t *testing.T) *paho5.Publish {
	t.Helper()
	select {
	case p := <-c.got:
		return p
	case <-time.After(testTimeout):
		t.Fatal("nothing received")
	}
	return nil
}

func (c *tree5) none(t *testing.T) {
	t.Helper()
	select {
	case p := <-c.got:
		t.Fatalf("unexpected %s %s %v", p.Topic, p.Payload, p.Properties.User)
	case <-time.After(200 * time.Millisecond):
	}
}

func (c *tree5) pub(t *testing.T, topic, payload string) {
	t.Helper()
	if _, err := c.Publish(testCtx(t), &paho5.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte(payload)}); err != nil {
		t.Fatal(err)
	}
}

func revOf(t *testing.T, p *paho5.Publish) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(p.Properties.User.Get("mote-rev"), 10, 64)
	if err != nil {
		t.Fatalf("%s %s: mote-rev %q", p.Topic, p.Payload, p.Properties.User.Get("mote-rev"))
	}
	return n
}

// TestRevisions: every snapshot and delta carries mote-rev, the store's
// revision once it is applied; it grows by one per batch that changes a
// row, and not for a publish that changes nothing or for an event.
func TestRevisions(t *testing.T) {
	b := start(t, Options{})
	c := dialTree5(t, b, "rev")
	c.pub(t, "r/a", "1")
	settle(t, b)
	c.subscribe(t, "$sync/r/+")
	snap := c.next(t)
	r0 := revOf(t, snap)
	if r0 == 0 || !jsonEqual(t, string(snap.Payload), `{"a":1}`) {
		t.Fatalf("snapshot %s rev %d", snap.Payload, r0)
	}
	c.pub(t, "r/a", "2")
	if d := c.next(t); revOf(t, d) != r0+1 || string(d.Payload) != `{"a":2}` {
		t.Fatalf("delta %s rev %d, want %d", d.Payload, revOf(t, d), r0+1)
	}
	c.pub(t, "r/a", "2") // the same value: delivered again, but the store does not change
	if d := c.next(t); revOf(t, d) != r0+1 || string(d.Payload) != `{"a":2}` {
		t.Fatalf("same value %s rev %d, want %d", d.Payload, revOf(t, d), r0+1)
	}
	if _, err := c.Publish(testCtx(t), &paho5.Publish{Topic: "r/e", QoS: 1, Payload: []byte("7")}); err != nil {
		t.Fatal(err)
	}
	if d := c.next(t); revOf(t, d) != r0+1 || string(d.Payload) != `{"e":7}` {
		t.Fatalf("event %s rev %d, want %d", d.Payload, revOf(t, d), r0+1)
	}
	c.pub(t, "r/b", "") // deleting a row that is not there: delivered, the store does not change
	if d := c.next(t); revOf(t, d) != r0+1 || string(d.Payload) != `{"b":null}` {
		t.Fatalf("no-op delete %s rev %d, want %d", d.Payload, revOf(t, d), r0+1)
	}
	c.pub(t, "other", "x") // another filter's row: the revision moves on
	c.pub(t, "r/a", "3")
	if d := c.next(t); revOf(t, d) != r0+3 || string(d.Payload) != `{"a":3}` {
		t.Fatalf("delta %s rev %d, want %d", d.Payload, revOf(t, d), r0+3)
	}
}

// TestResume: SPEC §8 — a resume delta holds exactly the rows matching
// F changed after R, deleted ones as null; a revision the broker cannot
// answer from gets a full snapshot.
func TestResume(t *testing.T) {
	b := start(t, Options{Retain: retain.Options{ResumeWindow: 5}})
	c := dialTree5(t, b, "w")
	for _, k := range []string{"a", "b", "c"} {
		c.pub(t, "r/"+k+"/v", "1")
	}
	c.pub(t, "s/x", "1")
	settle(t, b)
	c.subscribe(t, "$sync/r/+/v")
	r0 := revOf(t, c.next(t))
	c.pub(t, "r/a/v", "2")
	c.pub(t, "r/b/v", "")
	c.pub(t, "r/d/v", `{"k":true}`)
	c.pub(t, "s/x", "2") // not under the filter
	settle(t, b)
	now := rev(t, b)

	cases := []struct {
		name   string
		filter string
		since  uint64
		resume bool
		want   string
	}{
		{"changed since R", "$sync/r/+/v", r0, true, `{"a":2,"b":null,"d":{"k":true}}`},
		{"nothing since now", "$sync/r/+/v", now, true, `{}`},
		{"one change since", "$sync.cbor/r/+/v", now - 1, false, ""}, // CBOR: checked below by mote-resume only
		{"bare value", "$sync/r/a/v", r0, true, `2`},
		{"from the future", "$sync/r/+/v", now + 10, false, `{"a":2,"c":1,"d":{"k":true}}`},
		{"older than the window", "$sync/r/+/v", 1, false, `{"a":2,"c":1,"d":{"k":true}}`},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := dialTree5(t, b, fmt.Sprint("r", i))
			if code := r.subscribe(t, tc.filter, "mote-since", strconv.FormatUint(tc.since, 10)); code != 1 {
				t.Fatalf("SUBACK %#x", code)
			}
			p := r.next(t)
			if p.Properties.User.Get("mote-seq") != "0" || revOf(t, p) != now {
				t.Errorf("seq %q rev %d, want 0 and %d", p.Properties.User.Get("mote-seq"), revOf(t, p), now)
			}
			if tc.want == "" {
				return
			}
			if got := p.Properties.User.Get("mote-resume") == "1"; got != tc.resume {
				t.Errorf("mote-resume %v, want %v", got, tc.resume)
			}
			if !jsonEqual(t, string(p.Payload), tc.want) {
				t.Errorf("payload %s, want %s", p.Payload, tc.want)
			}
		})
	}
	// Deltas follow a resume as usual.
	r := dialTree5(t, b, "after")
	r.subscribe(t, "$sync/r/+/v", "mote-since", strconv.FormatUint(now, 10))
	r.next(t)
	c.pub(t, "r/c/v", "")
	if d := r.next(t); string(d.Payload) != `{"c":null}` || d.Properties.User.Get("mote-seq") != "1" || revOf(t, d) != now+1 {
		t.Fatalf("delta after resume %s %v", d.Payload, d.Properties.User)
	}
}

// TestResumeRefusals: bad mote-since, mote-from, mote-to and mote-limit
// values, or ones on the wrong kind of subscription, are refused in
// SUBACK with 0x8F and a reason string; nothing else changes.
func TestResumeRefusals(t *testing.T) {
	b := start(t, Options{})
	c := dialTree5(t, b, "bad")
	cases := []struct {
		filter string
		props  []string
	}{
		{"$sync/a/+", []string{"mote-since", "abc"}},
		{"$sync/a/+", []string{"mote-since", "-1"}},
		{"$sync/a/+", []string{"mote-since", ""}},
		{"$sync/a/+", []string{"mote-since", "18446744073709551616"}},
		{"$tree/a/+", []string{"mote-since", "5"}},
		{"$hist/a/+", []string{"mote-since", "5"}},
		{"$hist/a/+", []string{"mote-from", "10", "mote-to", "9"}},
		{"$hist/a/+", []string{"mote-from", "yesterday"}},
		{"$hist/a/+", []string{"mote-limit", "0"}},
		{"$hist/a/+", []string{"mote-limit", "1000001"}},
		{"$hist/a/+", []string{"mote-limit", "99999999999999999999999"}},
		{"$sync/a/+", []string{"mote-limit", "5"}},
		{"a/+", []string{"mote", "hist", "mote-limit", "0"}},
	}
	for _, tc := range cases {
		if code := c.subscribe(t, tc.filter, tc.props...); code != 0x8F {
			t.Errorf("%s %v: SUBACK %#x, want 0x8f", tc.filter, tc.props, code)
		}
	}
	// A plain subscription ignores Mote's properties.
	if code := c.subscribe(t, "a/+", "mote-since", "abc"); code != 1 {
		t.Errorf("plain subscription with mote-since: %#x", code)
	}
	settle(t, b)
	if n := b.treeSubs.Load(); n != 0 {
		t.Errorf("%d tree subscriptions after refusals", n)
	}
}

// TestRevisionSurvivesRestart: the revision and the deletion markers are
// stored; after a clean stop a resume from before it works, after an
// unclean one the revision skips ahead and resumes get full snapshots.
func TestRevisionSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	open := func() *Broker {
		st, err := retain.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		return start(t, Options{Store: st})
	}
	b := open()
	c := dialTree5(t, b, "w")
	c.pub(t, "k/a", "1")
	c.pub(t, "k/b", "1")
	c.subscribe(t, "$sync/k/+")
	r0 := revOf(t, c.next(t))
	c.pub(t, "k/b", "")
	c.pub(t, "k/c", "3")
	settle(t, b)
	c.Disconnect(&paho5.Disconnect{})
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	b = open()
	now := rev(t, b)
	if now < r0+2 || now > r0+bootRevSkip/2 { // $SYS rows count too
		t.Fatalf("revision after a clean restart %d, want %d or a little more", now, r0+2)
	}
	r := dialTree5(t, b, "r")
	r.subscribe(t, "$sync/k/+", "mote-since", strconv.FormatUint(r0, 10))
	p := r.next(t)
	if p.Properties.User.Get("mote-resume") != "1" || !jsonEqual(t, string(p.Payload), `{"b":null,"c":3}`) || revOf(t, p) != now {
		t.Fatalf("resume after restart: %s %v", p.Payload, p.Properties.User)
	}
	r.Disconnect(&paho5.Disconnect{})
	b.Close()

	// An unclean stop: the store was marked running and never clean.
	st, err := retain.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.MarkRunning(); err != nil {
		t.Fatal(err)
	}
	st.Close()
	b = open()
	if got := rev(t, b); got < now+bootRevSkip {
		t.Fatalf("revision after an unclean stop %d, want at least %d", got, now+bootRevSkip)
	}
	r = dialTree5(t, b, "r2")
	r.subscribe(t, "$sync/k/+", "mote-since", strconv.FormatUint(now, 10))
	if p := r.next(t); p.Properties.User.Get("mote-resume") != "" || !jsonEqual(t, string(p.Payload), `{"a":1,"c":3}`) {
		t.Fatalf("resume after an unclean stop: %s %v", p.Payload, p.Properties.User)
	}
}

// TestHistory: SPEC §9 — $hist answers each row's past values as
// [t, value] pairs, oldest first, ending with the current value (a
// deleted row with null); keep, mote-limit, mote-from and mote-to select
// them; rows outside every rule answer their current value; deltas follow.
func TestHistory(t *testing.T) {
	dir := t.TempDir()
	st, err := retain.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Store: st, Retain: retain.Options{History: []retain.HistoryRule{{Filter: "sensor/#", Keep: 3}}}})
	c := dialTree5(t, b, "w")
	before := time.Now().UnixMilli()
	for i := 1; i <= 6; i++ {
		c.pub(t, "sensor/a", strconv.Itoa(i))
	}
	c.pub(t, "sensor/b", `"on"`)
	c.pub(t, "sensor/b", "")
	c.pub(t, "other/x", "9")
	settle(t, b)
	after := time.Now().UnixMilli()

	type pairs map[string][][2]any
	read := func(t *testing.T, filter string, props ...string) (pairs, *paho5.Publish) {
		t.Helper()
		r := dialTree5(t, b, fmt.Sprint("h", time.Now().UnixNano()))
		if code := r.subscribe(t, filter, props...); code != 1 {
			t.Fatalf("SUBACK %#x", code)
		}
		p := r.next(t)
		var got pairs
		if err := json.Unmarshal(p.Payload, &got); err != nil {
			t.Fatalf("%s: %v", p.Payload, err)
		}
		for topic, ps := range got {
			for _, pr := range ps {
				if ms := int64(pr[0].(float64)); ms < before || ms > after {
					t.Errorf("%s: time %d not within [%d, %d]", topic, ms, before, after)
				}
			}
		}
		return got, p
	}
	values := func(ps [][2]any) string { // the values, without their times
		var out []any
		for _, p := range ps {
			out = append(out, p[1])
		}
		j, _ := json.Marshal(out)
		return string(j)
	}
	got, p := read(t, "$hist/sensor/+")
	if values(got["a"]) != "[3,4,5,6]" || values(got["b"]) != `["on",null]` || len(got) != 2 {
		t.Errorf("history %s", p.Payload)
	}
	if p.Properties.User.Get("mote-seq") != "0" || p.Properties.User.Get("mote-rev") == "" {
		t.Errorf("properties %v", p.Properties.User)
	}
	if got, p := read(t, "$hist/sensor/+", "mote-limit", "2"); values(got["a"]) != "[5,6]" || values(got["b"]) != `["on",null]` {
		t.Errorf("mote-limit 2: %s", p.Payload)
	}
	if got, p := read(t, "$hist/sensor/+", "mote-to", strconv.FormatInt(before-1, 10)); len(got) != 0 {
		t.Errorf("mote-to before everything: %s", p.Payload)
	}
	if got, p := read(t, "$hist/sensor/+", "mote-from", strconv.FormatInt(after+1, 10)); len(got) != 0 {
		t.Errorf("mote-from after everything: %s", p.Payload)
	}
	if got, p := read(t, "$hist/other/+"); values(got["x"]) != "[9]" {
		t.Errorf("a row outside every rule: %s", p.Payload)
	}
	// The property form, and deltas as plain values after the history.
	r := dialTree5(t, b, "prop")
	r.subscribe(t, "sensor/+", "mote", "hist", "mote-limit", "1")
	if p := r.next(t); p.Topic != "sensor/+" || !jsonEqual(t, trimTimes(t, p.Payload), `{"a":[6],"b":[null]}`) {
		t.Fatalf("property form: %s %s", p.Topic, p.Payload)
	}
	c.pub(t, "sensor/a", "7")
	if d := r.next(t); string(d.Payload) != `{"a":7}` || d.Properties.User.Get("mote-seq") != "1" {
		t.Fatalf("delta after history: %s %v", d.Payload, d.Properties.User)
	}
	// Restart: the history is on disk.
	r.Disconnect(&paho5.Disconnect{})
	c.Disconnect(&paho5.Disconnect{})
	b.Close()
	st, err = retain.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	b = start(t, Options{Store: st, Retain: retain.Options{History: []retain.HistoryRule{{Filter: "sensor/#", Keep: 3}}}})
	after = time.Now().UnixMilli()
	r = dialTree5(t, b, "bare")
	r.subscribe(t, "$hist/sensor/a")
	p = r.next(t)
	var bare [][2]any
	if err := json.Unmarshal(p.Payload, &bare); err != nil || values(bare) != "[4,5,6,7]" {
		t.Errorf("bare filter after restart: %s %v", p.Payload, err)
	}
}

func rev(t *testing.T, b *Broker) uint64 {
	t.Helper()
	r, err := b.Rev(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// trimTimes replaces each [t, value] pair of a history tree by its value.
func trimTimes(t *testing.T, payload []byte) string {
	t.Helper()
	var v map[string][][2]any
	if err := json.Unmarshal(payload, &v); err != nil {
		t.Fatalf("%s: %v", payload, err)
	}
	out := map[string][]any{}
	for k, ps := range v {
		out[k] = []any{}
		for _, p := range ps {
			out[k] = append(out[k], p[1])
		}
	}
	j, _ := json.Marshal(out)
	return string(j)
}
