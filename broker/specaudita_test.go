package broker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/fxamacker/cbor/v2"
	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/tree"
)

// This file holds black-box checks of SPEC v1.1 §1–§6 and §9 that no
// other test made as written (the audit is docs/spec-audit.md). Each test
// quotes the sentence it checks.

// logBuf is a broker's log kept for a test to read.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startLogged is start with the broker's log kept in a logBuf.
func startLogged(t *testing.T, opts Options) (*Broker, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	opts.TCP, opts.WS = "127.0.0.1:0", "127.0.0.1:0"
	opts.Log = zerolog.New(lb).Level(zerolog.InfoLevel)
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, lb
}

// ack5 publishes with an MQTT 5 client and returns the reason code of its
// PUBACK or PUBREC (0 at QoS 0) and its Reason String.
func ack5(t *testing.T, c *tree5, topic string, qos byte, retain bool, payload string) (byte, string) {
	t.Helper()
	r, err := c.Publish(testCtx(t), &paho5.Publish{Topic: topic, QoS: qos, Retain: retain, Payload: []byte(payload)})
	if r == nil {
		if qos == 0 && err == nil {
			return 0, ""
		}
		t.Fatalf("publish %s: no answer: %v", topic, err)
	}
	if r.Properties == nil {
		return r.ReasonCode, ""
	}
	return r.ReasonCode, r.Properties.ReasonString
}

// report reads the next report on c's error topic (c subscribed to it).
func report(t *testing.T, c *tree5) Report {
	t.Helper()
	p := c.next(t)
	var r Report
	if !strings.HasPrefix(p.Topic, ErrorTopic) || json.Unmarshal(p.Payload, &r) != nil {
		t.Fatalf("want a report, got %s %s", p.Topic, p.Payload)
	}
	return r
}

// TestSpecALimits: SPEC §5 "A tree publish … that breaks a limit (payload
// size, 100,000 rows, depth 32, all configurable) is rejected whole,
// nothing applied: MQTT 5 gets PUBACK/PUBREC reason 0x99 … with a Reason
// String; every client version gets a report published on
// $SYS/mote/errors/<client-id>, and a log line." At the default limits and
// at configured ones, a tree at each limit is applied and one past it is
// refused whole: its row "canary", within every limit, is not written.
func TestSpecALimits(t *testing.T) {
	rows := func(n int) string {
		var sb strings.Builder
		sb.WriteString(`{"canary":1`)
		for i := 1; i < n; i++ {
			fmt.Fprintf(&sb, `,"k%d":1`, i)
		}
		return sb.String() + "}"
	}
	objects := func(depth int) string { // nested objects, the outer one included
		return `{"canary":1,"d":` + strings.Repeat(`{"a":`, depth-1) + "1" + strings.Repeat("}", depth)
	}
	arrays := func(depth int) string { // arrays inside the outer object
		return `{"canary":1,"d":` + strings.Repeat("[", depth-1) + strings.Repeat("]", depth-1) + "}"
	}
	sized := func(n int) string { return `{"canary":1,"p":"` + strings.Repeat("x", n-19) + `"}` }
	small := tree.Limits{MaxPayload: 200, MaxRows: 3, MaxDepth: 4}
	cases := []struct {
		name    string
		limits  tree.Limits // zero: the defaults
		payload string
		qos     byte
		refused bool
	}{
		{"default depth 32", tree.Limits{}, objects(32), 1, false},
		{"default depth 33", tree.Limits{}, objects(33), 1, true},
		{"default array depth 33", tree.Limits{}, arrays(33), 2, true},
		{"default 100,000 rows", tree.Limits{}, rows(100_000), 1, false},
		{"default 100,001 rows", tree.Limits{}, rows(100_001), 2, true},
		{"configured 3 rows", small, rows(3), 1, false},
		{"configured 4 rows", small, rows(4), 1, true},
		{"configured depth 4", small, objects(4), 1, false},
		{"configured depth 5", small, objects(5), 2, true},
		{"configured 200 bytes", small, sized(200), 1, false},
		{"configured 201 bytes", small, sized(201), 1, true},
	}
	brokers := map[tree.Limits]*Broker{}
	logs := map[tree.Limits]*logBuf{}
	for _, l := range []tree.Limits{{}, small} {
		brokers[l], logs[l] = startLogged(t, Options{Limits: l})
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := brokers[tc.limits]
			id := fmt.Sprint("lim", i)
			c := dialTree5(t, b, id)
			c.subscribe(t, ErrorTopic+id)
			topic := fmt.Sprintf("$tree/lim/%d", i)
			code, reason := ack5(t, c, topic, tc.qos, true, tc.payload)
			settle(t, b)
			canary := dialTree5(t, b, id+"-canary")
			canary.subscribe(t, fmt.Sprintf("$sync/lim/%d/canary", i))
			got := string(canary.next(t).Payload)
			if !tc.refused {
				if code != 0 || got != "1" {
					t.Fatalf("at the limit: code %#x, canary %s, want applied", code, got)
				}
				return
			}
			if code != 0x99 || reason == "" || got != "null" {
				t.Fatalf("past the limit: code %#x reason %q canary %s, want 0x99 with a reason, nothing applied", code, reason, got)
			}
			if r := report(t, c); r.Code != 0x99 || r.Topic != topic || r.Client != id {
				t.Fatalf("report %+v", r)
			}
			if l := logs[tc.limits].String(); !strings.Contains(l, `"topic":"`+topic+`"`) || !strings.Contains(l, `"message":"refused"`) {
				t.Fatalf("no log line for %s in:\n%s", topic, l)
			}
		})
	}
}

// TestSpecADollarPublishes: SPEC §5 "A PUBLISH to $sync/… (or any
// $-prefix of Mote's other than a valid $tree/$set publish) is refused
// (MQTT 5: 0x90 topic name invalid) and delivered to nobody, so no client
// can inject a fake snapshot or delta into someone's tree subscription."
// Every malformed Mote prefix, at each QoS, from MQTT 5 and 3.1.1 clients:
// MQTT 5 gets 0x90 with a Reason String, 3.1.1 an ordinary ack, both a
// report, and the session goes on. A tree subscription on the very topic
// "$sync/x" gets its snapshot, then only the real delta.
func TestSpecADollarPublishes(t *testing.T) {
	b := start(t, Options{})
	victim := dialTree5(t, b, "victim")
	victim.subscribe(t, "$sync/x")
	if p := victim.next(t); string(p.Payload) != "null" {
		t.Fatalf("snapshot %s", p.Payload)
	}
	c5 := dialTree5(t, b, "c5")
	c5.subscribe(t, ErrorTopic+"c5")
	c3 := dial3(t, b, "c3", true)
	c3.sub(t, ErrorTopic+"c3", 0)
	topics := []string{
		"$sync/x", "$sync", "$sync.cbor/x", "$hist/x", "$hist",
		"$tree.250ms/x", "$tree.json.cbor/x", "$tree.replace.replace/x", "$tree.xml/x", "$tree./x",
		"$tree/a/#/b", "$tree/a+/b", "$tree/#/", "$tree/", "$tree",
		"$set.cbor/x", "$set.replace/x", "$set/", "$set",
		"$tree/$SYS/x", "$set/$SYS/#",
	}
	reports := 0
	for _, topic := range topics {
		for _, qos := range []byte{0, 1, 2} {
			code, reason := ack5(t, c5, topic, qos, true, `{"fake":1}`)
			if qos > 0 && (code != 0x90 || reason == "") {
				t.Errorf("MQTT 5 %s QoS %d: %#x %q, want 0x90 with a reason", topic, qos, code, reason)
			}
			if r := report(t, c5); r.Topic != topic || r.Code != 0x90 {
				t.Errorf("MQTT 5 %s QoS %d: report %+v", topic, qos, r)
			}
			c3.pub(t, topic, qos, true, `{"fake":1}`) // acked: 3.1.1 has no reason codes
			reports++
		}
	}
	for i, m := range c3.wait(t, reports) {
		var r Report
		if err := json.Unmarshal([]byte(m.payload), &r); err != nil || r.Client != "c3" || r.Code != 0x90 {
			t.Errorf("3.1.1 report %d: %s", i, m.payload)
		}
	}
	c5.pub(t, "x", `"real"`)
	if p := victim.next(t); string(p.Payload) != `"real"` || p.Properties.User.Get("mote-seq") != "1" {
		t.Fatalf("after the refusals: %s %v, want the real delta, mote-seq 1", p.Payload, p.Properties.User)
	}
}

// TestSpecAFilterEdges: SPEC §5 "A malformed $sync/$tree filter is refused
// in SUBACK (0x80; MQTT 5: 0x8F topic filter invalid)", for the odd
// shapes a conformance suite tries, in both protocol versions; and SPEC §2's
// own examples (options in any order, empty levels) are granted.
func TestSpecAFilterEdges(t *testing.T) {
	b := start(t, Options{})
	c5 := dialTree5(t, b, "c5")
	// A raw MQTT 3.1.1 peer: Paho refuses some of these filters itself.
	c3, _, _ := rawPeer(t, b.TCPAddr(), rawConnect(t, 4, "c3", true, 0, nil))
	sub3 := func(filter string) byte {
		t.Helper()
		c3.c.Write(ownerPacket(t, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: 4,
			PacketID: 1, Filters: packets.Subscriptions{{Filter: filter, Qos: 1}},
		}))
		_, body := c3.next(t, 9)
		return body[len(body)-1]
	}
	cases := []struct {
		filter string
		ok     bool
	}{
		{"$sync", false}, {"$sync/", false}, {"$tree", false}, {"$tree/", false}, {"$hist", false},
		{"$sync/a/#/b", false}, {"$sync/a+", false}, {"$sync/#a", false}, {"$sync/$sync/x", false},
		{"$sync.JSON/a", false}, {"$sync./a", false}, {"$sync.json./a", false}, {"$sync.xml/a", false},
		{"$sync.msgpack.cbor/a", false}, {"$hist.json.cbor/a", false}, {"$tree.replace/a", false},
		{"$sync.0ms/a", false}, {"$sync.3600001ms/a", false}, {"$sync.250ms.250ms/a", false},
		{"$share/g/$sync/a", false}, {"$set/a", false},
		{"$sync/light/+/is_on", true}, {"$tree.cbor/house/#", true}, {"$sync.cbor.250ms/dev/+/state", true},
		{"$sync.250ms.cbor/dev/+/state", true}, {"$sync.msgpack/a", true}, {"$sync//", true}, {"$sync/#", true},
		{"$sync/+/+", true}, {"$hist.cbor/a/#", true},
	}
	for _, tc := range cases {
		want5, want3 := byte(0x8F), byte(0x80)
		if tc.ok {
			want5, want3 = 1, 1
		}
		if got := c5.subscribe(t, tc.filter); got != want5 {
			t.Errorf("MQTT 5 SUBSCRIBE %s: %#x, want %#x", tc.filter, got, want5)
		}
		if got := sub3(tc.filter); got != want3 {
			t.Errorf("MQTT 3.1.1 SUBSCRIBE %s: %#x, want %#x", tc.filter, got, want3)
		}
	}
	// The MQTT 5 property form: an unknown mode or codec is refused too.
	for _, props := range [][]string{{"mote", "bogus"}, {"mote", "sync", "mote-codec", "xml"}, {"mote", "sync", "mote-interval", "0"}} {
		if got := c5.subscribe(t, "a/+", props...); got != 0x8F {
			t.Errorf("SUBSCRIBE a/+ with %v: %#x, want 0x8F", props, got)
		}
	}
}

// TestSpecAACLRows: SPEC §6 "A tree publish or $set is accepted only if
// the client may write every row it touches (else rejected whole, 0x87).
// Snapshots and deltas carry only rows the client may read." A row alice
// may read but not write, touched by a .replace deletion or a $set, refuses
// the whole publish; a delta of only rows she may not read is not sent at
// all (no gap in mote-seq follows); $hist shows only rows she may read
// (SPEC §9 "ACLs apply per row, as for snapshots").
func TestSpecAACLRows(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte(`
user alice
topic readwrite p/+/w
topic read p/#
topic deny p/secret/#
user bob
topic readwrite #
`))
	if err != nil {
		t.Fatal(err)
	}
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Users: users(t), ACL: acl, Store: st,
		Retain: retain.Options{History: []retain.HistoryRule{{Filter: "p/#", Keep: 5}}}})
	dialAs := func(user, id string) *tree5 {
		c := &tree5{got: make(chan *paho5.Publish, 100)}
		cl, _, err := dial5As(t, b, user, id, nil, paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
			func(p paho5.PublishReceived) (bool, error) { c.got <- p.Packet; return true, nil },
		}})
		if err != nil {
			t.Fatal(err)
		}
		c.Client = cl
		return c
	}
	bob, alice, watch := dialAs("bob", "bob"), dialAs("alice", "alice"), dialAs("alice", "watch")
	bob.pub(t, "p/a/w", "1")
	bob.pub(t, "p/b/x", "2")
	bob.pub(t, "p/secret/k", "3")
	settle(t, b)
	watch.subscribe(t, "$sync/p/#")
	if p := watch.next(t); !jsonEqual(t, string(p.Payload), `{"a":{"w":1},"b":{"x":2}}`) {
		t.Fatalf("snapshot %s", p.Payload)
	}
	for _, tc := range []struct{ topic, payload string }{
		{"$tree.replace/p", `{"a":{"w":5}}`}, // would delete p/b/x
		{"$set/p/+/+", `7`},                  // would set p/b/x
		{"$tree/p/+/w", `{"a":1,"secret":2}`},
	} {
		if code, _ := ack5(t, alice, tc.topic, 1, true, tc.payload); code != 0x87 {
			t.Errorf("%s %s: %#x, want 0x87", tc.topic, tc.payload, code)
		}
	}
	if code, _ := ack5(t, alice, "$set/p/+/w", 1, true, "8"); code != 0 {
		t.Fatalf("$set of writable rows: %#x", code)
	}
	if p := watch.next(t); string(p.Payload) != `{"a":{"w":8}}` || p.Properties.User.Get("mote-seq") != "1" {
		t.Fatalf("delta %s %v, want {\"a\":{\"w\":8}} alone, mote-seq 1", p.Payload, p.Properties.User)
	}
	bob.pub(t, "p/secret/k", "4") // a delta alice may not read: nothing
	bob.pub(t, "p/a/w", "9")
	if p := watch.next(t); string(p.Payload) != `{"a":{"w":9}}` || p.Properties.User.Get("mote-seq") != "2" {
		t.Fatalf("delta %s %v, want {\"a\":{\"w\":9}}, mote-seq 2", p.Payload, p.Properties.User)
	}
	h := dialAs("alice", "hist")
	h.subscribe(t, "$hist/p/#")
	var doc map[string]map[string][][2]any
	if p := h.next(t); json.Unmarshal(p.Payload, &doc) != nil || len(doc) != 2 || len(doc["a"]["w"]) != 3 || len(doc["b"]["x"]) != 1 {
		t.Fatalf("history %s, want p/a/w (3 values) and p/b/x only", p.Payload)
	}
}

// TestSpecAHistMaxAge: SPEC §9 "up to keep earlier values no older than
// max_age": once max_age has passed, a row's earlier values leave its
// $hist answer (the current value stays), whether or not the history was
// pruned yet.
func TestSpecAHistMaxAge(t *testing.T) {
	const age = 300 * time.Millisecond
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Store: st, Retain: retain.Options{PruneEvery: time.Hour,
		History: []retain.HistoryRule{{Filter: "s/#", Keep: 10, MaxAge: age}}}})
	w := dialTree5(t, b, "w")
	begin := time.Now()
	w.pub(t, "s/a", "1")
	w.pub(t, "s/a", "2")
	settle(t, b)
	read := func(id string) string {
		r := dialTree5(t, b, id)
		r.subscribe(t, "$hist/s/+")
		return trimTimes(t, r.next(t).Payload)
	}
	got := read("r1")
	if time.Since(begin) < age && got != `{"a":[1,2]}` {
		t.Fatalf("within max_age: %s, want {\"a\":[1,2]}", got)
	}
	time.Sleep(time.Until(begin.Add(age + 50*time.Millisecond))) // max_age is about the clock itself
	w.pub(t, "s/a", "3")
	settle(t, b)
	if got := read("r2"); got != `{"a":[3]}` {
		t.Fatalf("past max_age: %s, want {\"a\":[3]}", got)
	}
}

// TestSpecALeafBytes: SPEC §1 "A leaf of a tree publish keeps its type, and
// plain subscribers get it as: string → its UTF-8 bytes without quotes;
// number or bool → its JSON text; object or array at leaf depth → JSON
// text; CBOR byte string → the raw bytes", for leaves of JSON, CBOR and
// MessagePack trees, read by an MQTT 3.1.1 subscriber.
func TestSpecALeafBytes(t *testing.T) {
	b := start(t, Options{})
	plain := dial3(t, b, "plain", true)
	plain.sub(t, "lb/#", 1)
	w := dialTree5(t, b, "w")
	c, err := cbor.Marshal(map[string]any{"bytes": []byte{0xff, 0, 'a'}, "f": 21.5, "i": 3, "s": "ON", "t": true, "arr": []any{1, "x"}})
	if err != nil {
		t.Fatal(err)
	}
	msgpack := []byte{0x81, 0xa1, 'b', 0xc4, 3, 0xff, 0, 'a'} // {"b": bin ff 00 61}
	for _, p := range []struct{ topic, payload string }{
		{"$tree.cbor/lb/c", string(c)},
		{"$tree.msgpack/lb/m", string(msgpack)},
		{"$tree/lb/j", `{"s":"a\"b\u00e9","n":-0.5e-3,"f":false}`},
		{"$tree/lb/p/+", `{"o":{"q":1},"a":[true,null]}`},
	} {
		if code, reason := ack5(t, w, p.topic, 1, true, p.payload); code != 0 {
			t.Fatalf("%s: %#x %s", p.topic, code, reason)
		}
	}
	want := map[string]string{
		"lb/c/bytes": "\xff\x00a", "lb/c/f": "21.5", "lb/c/i": "3", "lb/c/s": "ON", "lb/c/t": "true", "lb/c/arr": `[1,"x"]`,
		"lb/m/b": "\xff\x00a",
		"lb/j/s": "a\"b\u00e9", "lb/j/n": "-0.5e-3", "lb/j/f": "false",
		"lb/p/o": `{"q":1}`, "lb/p/a": "[true,null]",
	}
	got := map[string]string{}
	for _, m := range plain.wait(t, len(want)) {
		got[m.topic] = m.payload
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

// TestSpecATreePublishAsAlone: SPEC §4 "the broker spreads it into rows and
// handles them as if each had been published alone with the packet's QoS
// and retain flag, all at once", and SPEC §2 "$tree/F: deltas only" with
// mote-seq counting from 1: a plain subscriber gets each row at the
// publish's QoS (and, on its established subscription, retain 0 as MQTT
// says); a non-retained tree publish is an event, in the delta but in no
// later snapshot.
func TestSpecATreePublishAsAlone(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	for i, tc := range []struct {
		qos    byte
		retain bool
	}{{0, false}, {1, false}, {2, false}, {0, true}, {1, true}, {2, true}} {
		t.Run(fmt.Sprintf("qos=%d retain=%v", tc.qos, tc.retain), func(t *testing.T) {
			plain := dial3(t, b, fmt.Sprint("plain", i), true)
			plain.sub(t, fmt.Sprintf("ta%d/#", i), 2)
			deltas := dialTree5(t, b, fmt.Sprint("deltas", i))
			deltas.subscribe(t, fmt.Sprintf("$tree/ta%d/#", i))
			ack5(t, w, fmt.Sprintf("$tree/ta%d", i), tc.qos, tc.retain, `{"a":1,"b":"x"}`)
			got := map[string]string{}
			for _, m := range plain.wait(t, 2) {
				if m.qos != tc.qos || m.retained {
					t.Errorf("%s at QoS %d retained %v, want QoS %d retained false", m.topic, m.qos, m.retained, tc.qos)
				}
				got[m.topic] = m.payload
			}
			if want := fmt.Sprintf("map[ta%d/a:1 ta%d/b:x]", i, i); fmt.Sprint(got) != want {
				t.Errorf("rows %v, want %s", got, want)
			}
			if p := deltas.next(t); !jsonEqual(t, string(p.Payload), `{"a":1,"b":"x"}`) || p.Properties.User.Get("mote-seq") != "1" {
				t.Errorf("$tree's first message %s %v, want the delta, mote-seq 1", p.Payload, p.Properties.User)
			}
			w.pub(t, "barrier", "1") // a QoS 1 publish after a QoS 0 one: settle waits for both
			settle(t, b)
			snap := dialTree5(t, b, fmt.Sprint("snap", i))
			snap.subscribe(t, fmt.Sprintf("$sync/ta%d/#", i))
			want := `{}`
			if tc.retain {
				want = `{"a":1,"b":"x"}`
			}
			if p := snap.next(t); !jsonEqual(t, string(p.Payload), want) {
				t.Errorf("snapshot %s, want %s", p.Payload, want)
			}
		})
	}
}

// TestSpecASetRetained: SPEC §4 "$set/F sets every existing retained row
// matching filter F to the payload (whatever the packet's retain flag;
// plain subscribers get each changed row as a retained publish)": a $set
// sent with retain 0 changes the stored rows, and an MQTT 5 subscriber
// with Retain As Published sees retain 1 on each (while snapshots and
// deltas keep SPEC §2's "Retain flag 0").
func TestSpecASetRetained(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	w.pub(t, "sr/a", "1")
	w.pub(t, "sr/b", "1")
	settle(t, b)
	s := dialTree5(t, b, "s")
	if _, err := s.Subscribe(testCtx(t), &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "sr/#", QoS: 1, RetainAsPublished: true}}}); err != nil {
		t.Fatal(err)
	}
	s.next(t) // the two retained rows
	s.next(t)
	if code, reason := ack5(t, w, "$set/sr/+", 1, false, "2"); code != 0 {
		t.Fatalf("$set: %#x %s", code, reason)
	}
	for range 2 {
		if p := s.next(t); !p.Retain || string(p.Payload) != "2" {
			t.Errorf("%s %q retain %v, want \"2\" retained", p.Topic, p.Payload, p.Retain)
		}
	}
	// SPEC §2 "Retain flag 0" for snapshots and deltas, even to a
	// subscription with Retain As Published.
	snap := dialTree5(t, b, "snap")
	if _, err := snap.Subscribe(testCtx(t), &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "$sync/sr/+", QoS: 1, RetainAsPublished: true}}}); err != nil {
		t.Fatal(err)
	}
	if p := snap.next(t); !jsonEqual(t, string(p.Payload), `{"a":2,"b":2}`) || p.Retain {
		t.Errorf("snapshot after a $set with retain 0: %s retain %v", p.Payload, p.Retain)
	}
	w.pub(t, "$set/sr/a", "3")
	if p := snap.next(t); string(p.Payload) != `{"a":3}` || p.Retain {
		t.Errorf("delta %s retain %v, want {\"a\":3} retain 0", p.Payload, p.Retain)
	}
}

// TestSpecATreeAtomic: SPEC §4 "atomic: a snapshot never shows half of a
// tree publish", and SPEC §2 "All rows of one incoming publish are always
// in one delta": while a writer keeps publishing {"a":i,"b":i,"c":i},
// every snapshot taken meanwhile and every delta of a standing
// subscription holds the three rows with one value.
func TestSpecATreeAtomic(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	w.pub(t, "$tree/at", `{"a":0,"b":0,"c":0}`)
	settle(t, b)
	standing := dialTree5(t, b, "standing")
	standing.subscribe(t, "$sync/at/+")
	standing.next(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // owned by this test: stopped by stop, waited for below
		defer wg.Done()
		for i := 1; i < 1_000_000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p := &paho5.Publish{Topic: "$tree/at", QoS: 1, Retain: true, Payload: fmt.Appendf(nil, `{"a":%d,"b":%d,"c":%d}`, i, i, i)}
			if _, err := w.Publish(testCtx(t), p); err != nil {
				t.Errorf("publish %d: %v", i, err)
				return
			}
		}
	}()
	whole := func(what string, payload []byte) {
		t.Helper()
		var doc map[string]int
		if err := json.Unmarshal(payload, &doc); err != nil || len(doc) != 3 || doc["a"] != doc["b"] || doc["b"] != doc["c"] {
			t.Fatalf("%s %s: not one whole tree publish", what, payload)
		}
	}
	for i := range 50 {
		r := dialTree5(t, b, fmt.Sprint("r", i))
		r.subscribe(t, "$sync/at/+")
		whole("snapshot", r.next(t).Payload)
		r.Client.Disconnect(&paho5.Disconnect{})
	}
	close(stop)
	waitGroup(t, "writer", &wg)
	for {
		select {
		case p := <-standing.got:
			whole("delta", p.Payload)
			continue
		default:
		}
		break
	}
}

// TestSpecAPacedQoS: SPEC §2 "for deltas the highest QoS among the folded
// rows, capped by the granted QoS", for the rows a paced subscription
// folds: a row set at QoS 2 and then at QoS 0 within one interval leaves
// as one delta, its newest value at QoS 2 (at QoS 1 where 1 was granted).
func TestSpecAPacedQoS(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	for _, granted := range []byte{2, 1} {
		t.Run(fmt.Sprint("granted=", granted), func(t *testing.T) {
			topic := fmt.Sprintf("pq%d/a", granted)
			r := dialTree5(t, b, fmt.Sprint("r", granted))
			s := &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: fmt.Sprintf("$sync.1000ms/pq%d/+", granted), QoS: granted}}}
			if _, err := r.Subscribe(testCtx(t), s); err != nil {
				t.Fatal(err)
			}
			r.next(t) // the snapshot starts the interval
			ack5(t, w, topic, 2, true, `"early"`)
			ack5(t, w, topic, 0, true, `"late"`)
			if p := r.next(t); string(p.Payload) != `{"a":"late"}` || p.QoS != granted {
				t.Fatalf("paced delta %s at QoS %d, want {\"a\":\"late\"} at QoS %d", p.Payload, p.QoS, granted)
			}
		})
	}
}

// TestSpecAPlainJSONATreeHolds: SPEC §1 "valid JSON text → that JSON
// value", where the value nests in every codec's tree. A plain retained
// publish of JSON text that no tree can hold — an object with a duplicate
// key, a number beyond float64 inside an object or array — was typed as an
// object or array: CBOR and MessagePack snapshots then carried a map with a
// duplicate key (not valid CBOR, RFC 8949 §5.6) or an infinity, and the Go
// client refused every MessagePack snapshot holding such a row whole, the
// other rows with it. Such text is typed as the string it is (as a bare
// 1e400 already was); the plain subscriber's bytes are unchanged.
func TestSpecAPlainJSONATreeHolds(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	rows := map[string]string{
		"pj/dup":     `{"a":1,"a":{"b":2}}`,
		"pj/deepdup": `[{"x":{"k":1,"k":2}}]`,
		"pj/big":     `{"x":1e400}`,
		"pj/bigarr":  `[1,-1e999]`,
		"pj/ok":      `{"a":1,"b":[1.5e300]}`,
	}
	for topic, payload := range rows {
		w.pub(t, topic, payload)
	}
	settle(t, b)
	want := `{"dup":"{\"a\":1,\"a\":{\"b\":2}}","deepdup":"[{\"x\":{\"k\":1,\"k\":2}}]","big":"{\"x\":1e400}","bigarr":"[1,-1e999]","ok":{"a":1,"b":[1.5e300]}}`
	for _, c := range []struct {
		filter string
		codec  client.Codec
	}{{"$sync/pj/+", client.JSON}, {"$sync.msgpack/pj/+", client.MsgPack}, {"$sync.cbor/pj/+", client.CBOR}} {
		r := dialTree5(t, b, "r")
		r.subscribe(t, c.filter)
		p := r.next(t)
		doc, err := client.Decode(c.codec, p.Payload)
		if err != nil || !same(t, doc, want) {
			t.Errorf("%s: %q (%v), want %s", c.filter, p.Payload, err, want)
		}
	}
	plain := dial3(t, b, "plain", true)
	plain.sub(t, "pj/+", 1)
	for _, m := range plain.wait(t, len(rows)) {
		if m.payload != rows[m.topic] {
			t.Errorf("plain %s = %q, want %q", m.topic, m.payload, rows[m.topic])
		}
	}
}
