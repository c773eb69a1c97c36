package client

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

func jsonDoc(t *testing.T, s string) any {
	t.Helper()
	v, err := Decode(JSON, []byte(s))
	if err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	return v
}

func sameJSON(t *testing.T, got any, want string) bool {
	t.Helper()
	g, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	json.Unmarshal(g, &a)
	if err := json.Unmarshal([]byte(want), &b); err != nil {
		t.Fatalf("want %s: %v", want, err)
	}
	return reflect.DeepEqual(a, b)
}

func TestSubscribeOptions(t *testing.T) {
	from := time.UnixMilli(1_700_000_000_000)
	to := time.UnixMilli(1_700_000_360_000)
	for _, tt := range []struct {
		name  string
		mode  Mode
		codec Codec
		opts  []SubscribeOption
		topic string
		props string // k=v,k=v
		err   string
	}{
		{"plain", Plain, JSON, nil, "a/+", "", ""},
		{"sync", Sync, JSON, nil, "$sync/a/+", "", ""},
		{"tree cbor", Tree, CBOR, nil, "$tree.cbor/a/+", "", ""},
		{"sync msgpack", Sync, MsgPack, nil, "$sync.msgpack/a/+", "", ""},
		{"since", Sync, JSON, []SubscribeOption{Since(42)}, "$sync/a/+", "mote-since=42", ""},
		{"since 0", Sync, JSON, []SubscribeOption{Since(0)}, "$sync/a/+", "mote-since=0", ""},
		{"since max", Sync, JSON, []SubscribeOption{Since(18446744073709551615)}, "$sync/a/+", "mote-since=18446744073709551615", ""},
		{"interval", Sync, CBOR, []SubscribeOption{Interval(250 * time.Millisecond)}, "$sync.cbor.250ms/a/+", "", ""},
		{"interval tree", Tree, JSON, []SubscribeOption{Interval(time.Hour)}, "$tree.3600000ms/a/+", "", ""},
		{"interval and since", Sync, JSON, []SubscribeOption{Interval(time.Second), Since(7)}, "$sync.1000ms/a/+", "mote-since=7", ""},
		{"history", Sync, JSON, []SubscribeOption{WithHistory()}, "$hist/a/+", "", ""},
		{"history cbor range", Sync, CBOR, []SubscribeOption{HistoryFrom(from), HistoryTo(to), HistoryLimit(10)}, "$hist.cbor/a/+",
			"mote-from=1700000000000,mote-to=1700000360000,mote-limit=10", ""},
		{"history interval", Sync, JSON, []SubscribeOption{HistoryLimit(1), Interval(5 * time.Millisecond)}, "$hist/a/+", "mote-interval=5,mote-limit=1", ""},
		{"nil option", Sync, JSON, []SubscribeOption{nil}, "$sync/a/+", "", ""},

		{"plain since", Plain, JSON, []SubscribeOption{Since(1)}, "", "", "plain"},
		{"plain interval", Plain, JSON, []SubscribeOption{Interval(time.Second)}, "", "", "plain"},
		{"tree since", Tree, JSON, []SubscribeOption{Since(1)}, "", "", "Since needs"},
		{"tree history", Tree, JSON, []SubscribeOption{WithHistory()}, "", "", "history needs"},
		{"history since", Sync, JSON, []SubscribeOption{WithHistory(), Since(3)}, "", "", "no resume"},
		{"interval 0.5ms", Sync, JSON, []SubscribeOption{Interval(500 * time.Microsecond)}, "", "", "whole milliseconds"},
		{"interval 1.5ms", Sync, JSON, []SubscribeOption{Interval(1500 * time.Microsecond)}, "", "", "whole milliseconds"},
		{"interval negative", Sync, JSON, []SubscribeOption{Interval(-time.Second)}, "", "", "whole milliseconds"},
		{"interval too long", Sync, JSON, []SubscribeOption{Interval(time.Hour + time.Millisecond)}, "", "", "whole milliseconds"},
		{"limit negative", Sync, JSON, []SubscribeOption{HistoryLimit(-1)}, "", "", "negative"},
		{"to before from", Sync, JSON, []SubscribeOption{HistoryFrom(to), HistoryTo(from)}, "", "", "before from"},
		{"before 1970", Sync, JSON, []SubscribeOption{HistoryFrom(time.UnixMilli(-5))}, "", "", "1970"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o, err := newSubOpts(tt.mode, tt.opts)
			if tt.err != "" {
				if !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want ErrOption with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := o.topic("a/+", tt.mode, tt.codec); got != tt.topic {
				t.Errorf("topic %q, want %q", got, tt.topic)
			}
			var kv []string
			for _, p := range o.properties() {
				kv = append(kv, p.Key+"="+p.Value)
			}
			if got := strings.Join(kv, ","); got != tt.props {
				t.Errorf("properties %q, want %q", got, tt.props)
			}
		})
	}
}

func TestReadProperties(t *testing.T) {
	for _, tt := range []struct {
		props                    paho.UserProperties
		seq                      int64
		rev                      uint64
		hasRev, resume, snapshot bool
		part                     string
	}{
		{nil, -1, 0, false, false, false, ""},
		{paho.UserProperties{{Key: "mote-seq", Value: "0"}}, 0, 0, false, false, true, ""},
		{paho.UserProperties{{Key: "mote-seq", Value: "0"}, {Key: "mote-rev", Value: "0"}}, 0, 0, true, false, true, ""},
		{paho.UserProperties{{Key: "mote-seq", Value: "0"}, {Key: "mote-rev", Value: "18446744073709551615"}, {Key: "mote-part", Value: "2/3"}},
			0, 18446744073709551615, true, false, true, "2/3"},
		{paho.UserProperties{{Key: "mote-seq", Value: "0"}, {Key: "mote-rev", Value: "9"}, {Key: "mote-resume", Value: "1"}}, 0, 9, true, true, false, ""},
		{paho.UserProperties{{Key: "mote-seq", Value: "4"}, {Key: "mote-rev", Value: "12"}}, 4, 12, true, false, false, ""},
		{paho.UserProperties{{Key: "mote-seq", Value: "4"}, {Key: "mote-rev", Value: "x"}, {Key: "mote-resume", Value: "1"}}, 4, 0, false, false, false, ""},
	} {
		m := Message{Seq: -1}
		readProperties(&m, tt.props)
		if m.Seq != tt.seq || m.Rev != tt.rev || m.HasRev != tt.hasRev || m.Resume != tt.resume || m.Snapshot != tt.snapshot || m.Part != tt.part {
			t.Errorf("%v: got %+v", tt.props, m)
		}
	}
}

// testMirror is a Mirror with no connection: resubscribing is counted.
func testMirror(t *testing.T, filter string, codec Codec, opts ...SubscribeOption) (*Mirror, *atomic.Int32) {
	t.Helper()
	o, err := newSubOpts(Sync, opts)
	if err != nil {
		t.Fatal(err)
	}
	m := newMirror(&Client{timeout: time.Second}, filter, codec, 1, o, nil)
	var n atomic.Int32
	m.resub = func() { n.Add(1) }
	return m, &n
}

type msgSpec struct {
	tree   string
	seq    int64
	rev    uint64 // 0: no mote-rev
	part   string
	resume bool
}

func (m *Mirror) feed(t *testing.T, s msgSpec) {
	t.Helper()
	msg := Message{Tree: jsonDoc(t, s.tree), Seq: s.seq, Part: s.part, Rev: s.rev, HasRev: s.rev != 0, Resume: s.resume}
	msg.Snapshot = msg.Seq == 0 && !msg.Resume
	m.handle(msg)
}

func (m *Mirror) is(t *testing.T, want string) {
	t.Helper()
	m.Get(func(doc any) {
		if !sameJSON(t, doc, want) {
			b, _ := json.Marshal(doc)
			t.Errorf("copy %s, want %s", b, want)
		}
	})
}

// waitFor waits until ok holds, up to 30 s (only a hang: 200 tries 5 ms
// apart, a second, is short for a loaded -race run).
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestMirrorResumeMerge: after a gap the Mirror subscribes again with
// mote-since = the last revision it applied; a resume delta is merged into
// the copy (rows it does not name stay), a full snapshot replaces it.
func TestMirrorResumeMerge(t *testing.T) {
	m, resubs := testMirror(t, "a/+", JSON)
	if rev, ok := m.since(); ok {
		t.Fatalf("since before any snapshot: %d", rev)
	}
	m.feed(t, msgSpec{tree: `{"x":1,"y":2}`, seq: 0, rev: 10})
	m.feed(t, msgSpec{tree: `{"x":3}`, seq: 1, rev: 11})
	m.is(t, `{"x":3,"y":2}`)
	if rev, ok := m.since(); !ok || rev != 11 {
		t.Fatalf("since %d %v, want 11", rev, ok)
	}
	m.feed(t, msgSpec{tree: `{"z":9}`, seq: 3, rev: 13}) // 2 is lost
	waitFor(t, "a resubscribe", func() bool { return resubs.Load() == 1 })
	if rev, ok := m.since(); !ok || rev != 11 {
		t.Fatalf("since after a gap %d %v, want 11 (the copy still reflects 11)", rev, ok)
	}
	m.feed(t, msgSpec{tree: `{"w":4}`, seq: 4, rev: 14}) // the old subscription's: ignored
	m.feed(t, msgSpec{tree: `{"y":null,"z":9}`, seq: 0, rev: 13, resume: true})
	m.is(t, `{"x":3,"z":9}`)
	if m.Resumes() != 1 || m.Resyncs() != 1 {
		t.Errorf("resumes %d resyncs %d", m.Resumes(), m.Resyncs())
	}
	if rev, _ := m.Rev(); rev != 13 {
		t.Errorf("rev %d, want 13", rev)
	}
	m.feed(t, msgSpec{tree: `{"x":null}`, seq: 1, rev: 15})
	m.is(t, `{"z":9}`)

	// A resume delta in parts: each part merges.
	m.dropped()
	m.feed(t, msgSpec{tree: `{"a":1}`, seq: 0, rev: 17, part: "1/2", resume: true})
	if err := m.Wait(expired(t), func(any) bool { return true }); err == nil {
		t.Error("Wait returned on half a resume delta")
	}
	m.feed(t, msgSpec{tree: `{"z":null}`, seq: 0, rev: 17, part: "2/2", resume: true})
	m.is(t, `{"a":1}`)
	if m.Resumes() != 2 {
		t.Errorf("resumes %d", m.Resumes())
	}

	// The broker could not resume: a full snapshot replaces the copy.
	m.dropped()
	m.feed(t, msgSpec{tree: `{"q":1}`, seq: 0, rev: 40, part: "1/2"})
	if _, ok := m.since(); ok {
		t.Error("half a full snapshot still offers a revision to resume from")
	}
	m.feed(t, msgSpec{tree: `{"r":2}`, seq: 0, rev: 40, part: "2/2"})
	m.is(t, `{"q":1,"r":2}`)
	if rev, ok := m.since(); !ok || rev != 40 {
		t.Errorf("since %d %v, want 40", rev, ok)
	}
}

func expired(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}

// TestMirrorNoRev: a broker without revisions: no mote-since is offered,
// and every seq 0 replaces the copy as before.
func TestMirrorNoRev(t *testing.T) {
	m, resubs := testMirror(t, "a/#", JSON)
	m.feed(t, msgSpec{tree: `{"b":{"/":1,"c":2}}`, seq: 0})
	m.feed(t, msgSpec{tree: `{"b":{"/":null}}`, seq: 1})
	m.is(t, `{"b":{"c":2}}`)
	m.feed(t, msgSpec{tree: `{"d":1}`, seq: 5})
	waitFor(t, "a resubscribe", func() bool { return resubs.Load() == 1 })
	if _, ok := m.since(); ok {
		t.Error("since offered without mote-rev")
	}
	m.feed(t, msgSpec{tree: `{"d":1}`, seq: 0})
	m.is(t, `{"d":1}`)
}

// TestMirrorSubscribeProperties: the SUBSCRIBE a Mirror sends again
// carries mote-since once it has a revision.
func TestMirrorSubscribeProperties(t *testing.T) {
	m, _ := testMirror(t, "a/+", JSON, Interval(100*time.Millisecond))
	if m.sub.topic != "$sync.100ms/a/+" {
		t.Errorf("topic %s", m.sub.topic)
	}
	props := func() string {
		o := m.sub.opts
		if rev, ok := m.sub.since(); ok {
			o.since, o.hasSince = rev, true
		}
		var kv []string
		for _, p := range o.properties() {
			kv = append(kv, p.Key+"="+p.Value)
		}
		return strings.Join(kv, ",")
	}
	if p := props(); p != "" {
		t.Errorf("first SUBSCRIBE properties %q", p)
	}
	m.feed(t, msgSpec{tree: `{}`, seq: 0, rev: 5})
	m.feed(t, msgSpec{tree: `{"a":1}`, seq: 1, rev: 1234567890123})
	m.sub.dropped()
	if p := props(); p != "mote-since=1234567890123" {
		t.Errorf("SUBSCRIBE after a loss: properties %q", p)
	}
	h, _ := testMirror(t, "a/+", JSON, HistoryLimit(3))
	h.feed(t, msgSpec{tree: `{"a":[[1,1]]}`, seq: 0, rev: 5})
	if _, ok := h.sub.since(); ok {
		t.Error("a history mirror offers mote-since")
	}
}

// TestMirrorHistory: a history Mirror appends each delta's values, with
// the receive time, trimmed to the limit.
func TestMirrorHistory(t *testing.T) {
	m, _ := testMirror(t, "s/+/t", JSON, HistoryLimit(3))
	now := int64(1000)
	m.now = func() time.Time { now++; return time.UnixMilli(now) }
	m.feed(t, msgSpec{tree: `{"a":[[5,1],[7,2]],"b":[[6,"x"]]}`, seq: 0, rev: 3})
	m.feed(t, msgSpec{tree: `{"a":3,"c":true}`, seq: 1, rev: 4})
	m.feed(t, msgSpec{tree: `{"a":4,"b":null}`, seq: 2, rev: 5})
	m.is(t, `{"a":[[7,2],[1001,3],[1002,4]],"b":[[6,"x"],[1002,null]],"c":[[1001,true]]}`)
	var h History
	m.Get(func(doc any) { h = History{Filter: "s/+/t", Tree: doc} })
	rows, err := h.Rows()
	if err != nil {
		t.Fatal(err)
	}
	if want := []Point{{7, json.Number("2")}, {1001, json.Number("3")}, {1002, json.Number("4")}}; !reflect.DeepEqual(rows["s/a/t"], want) {
		t.Errorf("s/a/t %v, want %v", rows["s/a/t"], want)
	}
	if len(rows) != 3 || rows["s/b/t"][1].Value != nil || rows["s/c/t"][0].Time().UnixMilli() != 1001 {
		t.Errorf("rows %v", rows)
	}

	// HistoryTo in the past: nothing is appended.
	p, _ := testMirror(t, "a", CBOR, HistoryTo(time.UnixMilli(500)))
	p.now = func() time.Time { return time.UnixMilli(600) }
	p.feed(t, msgSpec{tree: `[[1,1]]`, seq: 0})
	p.feed(t, msgSpec{tree: `2`, seq: 1})
	p.is(t, `[[1,1]]`)
}

func TestAppendHistory(t *testing.T) {
	for _, tt := range []struct {
		filter, doc, delta, want string
		limit                    int
	}{
		{"a", `[[1,1]]`, `2`, `[[1,1],[9,2]]`, 0},
		{"a", `null`, `null`, `[[9,null]]`, 0},
		{"a/+", `{"x":[[1,1]]}`, `{"x":2,"y":3}`, `{"x":[[1,1],[9,2]],"y":[[9,3]]}`, 0},
		{"a/+", `{"x":[[1,1],[2,2]]}`, `{"x":null}`, `{"x":[[2,2],[9,null]]}`, 2},
		{"+/+", `{}`, `{"a":{"b":1}}`, `{"a":{"b":[[9,1]]}}`, 0},
		{"a/+/c", `{"x":[[1,{"o":1}]]}`, `{"x":{"o":2}}`, `{"x":[[1,{"o":1}],[9,{"o":2}]]}`, 0},
		// Below '#': "/" is a node's own value; a bare array is a row without children.
		{"a/#", `{"b":[[1,1]]}`, `{"b":2}`, `{"b":[[1,1],[9,2]]}`, 0},
		{"a/#", `{"b":[[1,1]]}`, `{"b":{"c":2}}`, `{"b":{"/":[[1,1]],"c":[[9,2]]}}`, 0},
		{"a/#", `{"b":{"/":[[1,1]],"c":[[1,2]]}}`, `{"b":{"/":null}}`, `{"b":{"/":[[1,1],[9,null]],"c":[[1,2]]}}`, 0},
		{"a/#", `{"lamp":[[1,{"s":"ON"}]]}`, `{"lamp":{"/":{"s":"OFF"}}}`, `{"lamp":[[1,{"s":"ON"}],[9,{"s":"OFF"}]]}`, 0},
		{"a/#", `{}`, `{"/":5}`, `{"/":[[9,5]]}`, 0},
		{"a/#", `{"/":[[1,0]]}`, `{"x":{"y":1}}`, `{"/":[[1,0]],"x":{"y":[[9,1]]}}`, 0},
		{"dev/+/#", `{"a":[[1,0]]}`, `{"a":{"/":1}}`, `{"a":[[1,0],[9,1]]}`, 0},
		{"dev/+/#", `{"a":[[1,0]]}`, `{"a":{"t":1}}`, `{"a":{"/":[[1,0]],"t":[[9,1]]}}`, 0},
	} {
		got := AppendHistory(jsonDoc(t, tt.doc), jsonDoc(t, tt.delta), tt.filter, 9, tt.limit)
		if !sameJSON(t, got, tt.want) {
			b, _ := json.Marshal(got)
			t.Errorf("%s: %s + %s = %s, want %s", tt.filter, tt.doc, tt.delta, b, tt.want)
		}
	}
}

func TestRows(t *testing.T) {
	for _, tt := range []struct {
		filter, tree, want string
	}{
		{"a/b", `1`, `{"a/b":1}`},
		{"a/b", `null`, `{"a/b":null}`},
		{"light/+/is_on", `{"bedroom":1,"hall":null}`, `{"light/bedroom/is_on":1,"light/hall/is_on":null}`},
		{"light/+/+", `{"bedroom":{"is_on":1,"b":55}}`, `{"light/bedroom/is_on":1,"light/bedroom/b":55}`},
		{"z/+", `{"lamp":{"state":"ON"}}`, `{"z/lamp":{"state":"ON"}}`},
		{"z/#", `{"lamp":{"/":{"state":"ON"}}}`, `{"z/lamp":{"state":"ON"}}`},
		{"a/#", `{"/":0,"b":{"/":1,"c":2}}`, `{"a":0,"a/b":1,"a/b/c":2}`},
		{"dev/+/#", `{"a":{"/":0,"t":1},"b":{"t":{"u":2}},"c":3}`, `{"dev/a":0,"dev/a/t":1,"dev/b/t/u":2,"dev/c":3}`},
		{"#", `{"a":{"b":1},"c":2}`, `{"a/b":1,"c":2}`},
		{"a/+/b", `{"":1,"x":2}`, `{"a//b":1,"a/x/b":2}`},
		{"s/+", `{"t":[[1,2],[3,4]]}`, `{"s/t":[[1,2],[3,4]]}`},
		{"a/#", `{}`, `{}`},
	} {
		got := Rows(jsonDoc(t, tt.tree), tt.filter)
		if !sameJSON(t, got, tt.want) {
			b, _ := json.Marshal(got)
			t.Errorf("Rows(%s, %s) = %s, want %s", tt.tree, tt.filter, b, tt.want)
		}
	}
}

func TestPoints(t *testing.T) {
	ps, err := Points(jsonDoc(t, `[[1700000000000,21.5],[1700000000001,null]]`))
	if err != nil || len(ps) != 2 || ps[0].T != 1700000000000 || ps[0].Value != json.Number("21.5") || ps[1].Value != nil {
		t.Fatalf("%v %v", ps, err)
	}
	cb, _ := Encode(CBOR, []any{[]any{uint64(5), "x"}, []any{int64(6), []byte{1}}})
	v, err := Decode(CBOR, cb)
	if err != nil {
		t.Fatal(err)
	}
	if ps, err := Points(v); err != nil || ps[0].T != 5 || ps[1].T != 6 {
		t.Errorf("cbor: %v %v", ps, err)
	}
	mp, _ := Encode(MsgPack, []any{[]any{uint64(5), "x"}, []any{int64(6), []byte{1}}, []any{7.0, -1}})
	v, err = Decode(MsgPack, mp)
	if err != nil {
		t.Fatal(err)
	}
	if ps, err := Points(v); err != nil || ps[0].T != 5 || ps[1].T != 6 || ps[2].T != 7 || ps[2].Value != int64(-1) {
		t.Errorf("msgpack: %v %v", ps, err)
	}
	if b, ok := v.([]any)[1].([]any)[1].([]byte); !ok || len(b) != 1 {
		t.Errorf("msgpack binary: %#v", v)
	}
	for _, hostile := range [][]byte{{0xdf, 0xff, 0xff, 0xff, 0xff}, {0xc6, 0xff, 0xff, 0xff, 0xff}, {0xd6, 0xff, 0, 0, 0, 0}} {
		if _, err := Decode(MsgPack, hostile); err == nil {
			t.Errorf("Decode(MsgPack, %x) took it", hostile)
		}
	}
	for _, bad := range []string{`{}`, `[1]`, `[[1]]`, `[["x",1]]`, `[[1.5,1]]`} {
		if _, err := Points(jsonDoc(t, bad)); err == nil {
			t.Errorf("Points(%s) took it", bad)
		}
	}
}
