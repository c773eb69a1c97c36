package js

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// vector is a snapshot and the deltas that followed it, as the tree core
// made them in one codec, and the snapshot at the end: mote.js's decoder
// and merge must turn the first and the deltas into the last. The payloads
// travel to the page as base64.
type vector struct {
	Filter   string   `json:"filter"`
	Snapshot []byte   `json:"snapshot"`
	Deltas   [][]byte `json:"deltas"`
	Final    []byte   `json:"final"`
}

var (
	vecLevels = []string{"a", "b", "c"}
	vecValues = []string{"1", "ON", `{"x":1}`, `[1,{"y":2}]`, "2.5", "true", "null"}
	vecFilter = []string{"#", "+", "a/#", "a/+", "+/+", "a/+/#", "+/b/#", "a/b", "a/+/c", "+/#", "a/+/+/+"}
)

func mergeVectors(t *testing.T, codec wire.Codec) []vector {
	var out []vector
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 11))
		tr := tree.New()
		vs := map[*tree.Sub]*vector{}
		for i, f := range vecFilter {
			s := &tree.Sub{Owner: fmt.Sprint("c", i), Topic: "$sync/" + f, Filter: f, Codec: codec}
			snap, err := tr.Subscribe(s)
			if err != nil {
				t.Fatal(err)
			}
			vs[s] = &vector{Filter: f, Snapshot: snap, Deltas: [][]byte{}}
		}
		for range 20 {
			var ops []tree.Op
			for range 1 + r.IntN(3) {
				var op tree.Op
				for range 1 + r.IntN(4) {
					levels := make([]string, 1+r.IntN(4))
					for i := range levels {
						levels[i] = vecLevels[r.IntN(len(vecLevels))]
					}
					row := tree.Row{Topic: strings.Join(levels, "/"), Retain: true}
					if r.IntN(4) > 0 {
						row.Value = wire.TypePlain([]byte(vecValues[r.IntN(len(vecValues))]))
					}
					op.Rows = append(op.Rows, row)
				}
				ops = append(ops, op)
			}
			for _, d := range tr.Apply(ops).Deltas {
				for _, s := range d.Subs {
					vs[s].Deltas = append(vs[s].Deltas, d.Payload)
				}
			}
		}
		for s, v := range vs {
			v.Final = tr.Snapshot(s.Filter, codec, nil)
			out = append(out, *v)
		}
	}
	return out
}

// histVectors are the Go client's answers for AppendHistory and Rows:
// mote.js's appendHistory and rows must give the same.
func histVectors(t *testing.T) map[string][]map[string]any {
	appendCases := []struct {
		filter, doc, delta string
		limit              int
	}{
		{"a", `[[1,1]]`, `2`, 0},
		{"a", `null`, `null`, 0},
		{"a/+", `{"x":[[1,1]]}`, `{"x":2,"y":3}`, 0},
		{"a/+", `{"x":[[1,1],[2,2]]}`, `{"x":null}`, 2},
		{"+/+", `{}`, `{"a":{"b":1}}`, 0},
		{"a/+/c", `{"x":[[1,{"o":1}]]}`, `{"x":{"o":2}}`, 0},
		{"a/#", `{"b":[[1,1]]}`, `{"b":2}`, 0},
		{"a/#", `{"b":[[1,1]]}`, `{"b":{"c":2}}`, 0},
		{"a/#", `{"b":{"/":[[1,1]],"c":[[1,2]]}}`, `{"b":{"/":null}}`, 0},
		{"a/#", `{"lamp":[[1,{"s":"ON"}]]}`, `{"lamp":{"/":{"s":"OFF"}}}`, 0},
		{"a/#", `{}`, `{"/":5}`, 0},
		{"a/#", `{"/":[[1,0]]}`, `{"x":{"y":1}}`, 1},
		{"dev/+/#", `{"a":[[1,0]]}`, `{"a":{"/":1}}`, 0},
		{"dev/+/#", `{"a":[[1,0]]}`, `{"a":{"t":1}}`, 0},
		{"#", `{}`, `{"__proto__":{"x":1},"constructor":2}`, 0},
	}
	rowCases := []struct{ filter, tree string }{
		{"a/b", `1`},
		{"light/+/is_on", `{"bedroom":1,"hall":null}`},
		{"light/+/+", `{"bedroom":{"is_on":1,"b":55}}`},
		{"z/+", `{"lamp":{"state":"ON"}}`},
		{"z/#", `{"lamp":{"/":{"state":"ON"}}}`},
		{"a/#", `{"/":0,"b":{"/":1,"c":2}}`},
		{"dev/+/#", `{"a":{"/":0,"t":1},"b":{"t":{"u":2}},"c":3}`},
		{"#", `{"a":{"b":1},"c":2}`},
		{"a/+/b", `{"":1,"x":2}`},
		{"s/+", `{"t":[[1,2],[3,4]]}`},
		{"+", `{"__proto__":1}`},
	}
	dec := func(s string) any {
		v, err := client.Decode(client.JSON, []byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	out := map[string][]map[string]any{}
	for _, c := range appendCases {
		want := client.AppendHistory(dec(c.doc), dec(c.delta), c.filter, 9, c.limit)
		out["append"] = append(out["append"], map[string]any{"filter": c.filter, "doc": c.doc, "delta": c.delta, "limit": c.limit, "want": enc(want)})
	}
	for _, c := range rowCases {
		out["rows"] = append(out["rows"], map[string]any{"filter": c.filter, "tree": c.tree, "want": enc(client.Rows(dec(c.tree), c.filter))})
	}
	return out
}

// proxy forwards TCP connections (here: WebSocket) to the broker; the
// page asks it to cut them and to refuse new ones for a while, to take an
// MQTT.js client offline.
type proxy struct {
	l       net.Listener
	target  string
	mu      sync.Mutex
	conns   []net.Conn
	blocked bool
}

func newProxy(t *testing.T, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target}
	t.Cleanup(func() { l.Close(); p.cut(false) })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			blocked := p.blocked
			p.mu.Unlock()
			b, err := net.Dial("tcp", target)
			if blocked || err != nil {
				c.Close()
				if b != nil {
					b.Close()
				}
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, b)
			p.mu.Unlock()
			go func() { io.Copy(b, c); b.Close(); c.Close() }()
			go func() { io.Copy(c, b); b.Close(); c.Close() }()
		}
	}()
	return p
}

// cut closes every connection; block says whether new ones are refused.
func (p *proxy) cut(block bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = block
	if block {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

// result is what the page posts.
type result struct {
	Merge struct {
		Total    int               `json:"total"`
		Failed   int               `json:"failed"`
		Failures []json.RawMessage `json:"failures"`
	} `json:"merge"`
	Mirror struct {
		Early        bool `json:"early"`
		Snapshot     any  `json:"snapshot"`
		AfterDelta   any  `json:"afterDelta"`
		Resubscribed bool `json:"resubscribed"`
		AfterResync  any  `json:"afterResync"`
		Resumed      any  `json:"resumed"`
		Renewed      bool `json:"renewed"`
	} `json:"mirror"`
	Resume struct {
		Topic         string `json:"topic"`
		FirstProps    string `json:"firstProps"`
		BigRev        string `json:"bigRev"`
		GapSince      string `json:"gapSince"`
		Force         bool   `json:"force"`
		HalfReady     bool   `json:"halfReady"`
		Merged        any    `json:"merged"`
		Resumes       int    `json:"resumes"`
		OwnSubscribes int    `json:"ownSubscribes"`
		HeldSince     string `json:"heldSince"`
		Replaced      any    `json:"replaced"`
		Rev           string `json:"rev"`
	} `json:"resume"`
	Hist struct {
		Total    int               `json:"total"`
		Failures []json.RawMessage `json:"failures"`
	} `json:"hist"`
	Live *struct {
		Snapshot   any     `json:"snapshot"`
		Rev0       *string `json:"rev0"`
		After      any     `json:"after"`
		Rev1       *string `json:"rev1"`
		Resumes    int     `json:"resumes"`
		Resyncs    int     `json:"resyncs"`
		History    any     `json:"history"`
		HistoryAll any     `json:"historyAll"`
		Paced      *struct {
			Messages int    `json:"messages"`
			Elapsed  int64  `json:"elapsed"`
			Topic    string `json:"topic"`
		} `json:"paced"`
	} `json:"live"`
	Runs []struct {
		Version   int    `json:"version"`
		Snapshot  any    `json:"snapshot"`
		Published any    `json:"published"`
		Proto     bool   `json:"proto"`
		Set       any    `json:"set"`
		Refused   string `json:"refused"`
		Resyncs   int    `json:"resyncs"`
	} `json:"runs"`
	Error string `json:"error"`
}

func doc(s string) any {
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		panic(err)
	}
	return v
}

// TestBrowser runs mote.js with MQTT.js (MQTT 3.1.1 and 5, over WebSocket)
// in headless Chromium against a broker: a Mirror gets its snapshot and
// the deltas of its own tree publishes and $set; a refused $set rejects
// over MQTT 5; merge agrees with the tree core on random snapshots and
// deltas; Mirror handles mote-part and a gap in mote-seq.
func TestBrowser(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	// The page comes from its own server, another origin than the
	// broker's WebSocket listener (another port): the broker lists it.
	srv, mux, origin := pageServer()
	defer srv.Close()
	b, err := broker.New(broker.Options{TCP: "127.0.0.1:0", WS: "127.0.0.1:0", AllowedOrigins: []string{origin}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	seed, err := client.Dial(ctx, b.TCPAddr(), client.Options{ClientID: "seed", CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer seed.Close()
	for _, v := range []string{"4", "5"} {
		rooms := map[string]any{"bedroom": map[string]any{"is_on": 1}, "livingroom": map[string]any{"is_on": 0}}
		if err := seed.PublishTree(ctx, "room"+v, rooms, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
			t.Fatal(err)
		}
	}

	vectors := mergeVectors(t, wire.CodecJSON)
	mux.HandleFunc("/vectors", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(vectors)
	})
	hv := histVectors(t)
	mux.HandleFunc("/histvectors", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(hv)
	})
	px := newProxy(t, b.WSAddr())
	mux.HandleFunc("/cut", func(w http.ResponseWriter, r *http.Request) { px.cut(true) })
	mux.HandleFunc("/restore", func(w http.ResponseWriter, r *http.Request) { px.cut(false) })
	body, logs := runPage(t, ctx, srv, "test.html", "ws=ws://"+b.WSAddr()+"/mqtt&wsproxy=ws://"+px.l.Addr().String()+"/mqtt")
	var res result
	if err := json.Unmarshal(body, &res); err != nil {
		t.Fatalf("page result %s: %v", body, err)
	}
	if res.Merge.Total != len(vectors) || res.Merge.Failed != 0 {
		t.Errorf("merge: %d of %d vectors differ from the tree core: %s", res.Merge.Failed, res.Merge.Total, res.Merge.Failures)
	}
	if res.Error != "" {
		t.Fatalf("page: %s", res.Error)
	}
	mr := res.Mirror
	if !mr.Early || !reflect.DeepEqual(mr.Snapshot, doc(`{"x":1,"y":2}`)) || !reflect.DeepEqual(mr.AfterDelta, doc(`{"y":2,"z":3}`)) ||
		!mr.Resubscribed || !reflect.DeepEqual(mr.AfterResync, doc(`{"fresh":1}`)) ||
		!reflect.DeepEqual(mr.Resumed, doc(`{"again":2}`)) || !mr.Renewed {
		t.Errorf("Mirror logic: %+v", mr)
	}
	rs := res.Resume
	if rs.Topic != "$sync.250ms/a/+" || rs.FirstProps != `{}` || rs.BigRev != "18446744073709551615" ||
		rs.GapSince != "18446744073709551615" || !rs.Force || rs.HalfReady || !reflect.DeepEqual(rs.Merged, doc(`{"x":3,"z":9}`)) ||
		rs.Resumes != 1 || rs.OwnSubscribes != 0 || rs.HeldSince != "30" || !reflect.DeepEqual(rs.Replaced, doc(`{"q":1}`)) || rs.Rev != "40" {
		t.Errorf("Mirror resume logic: %+v", rs)
	}
	if res.Hist.Total != len(hv["append"])+len(hv["rows"]) || len(res.Hist.Failures) != 0 {
		t.Errorf("history helpers: %d cases, these differ from the Go client: %s", res.Hist.Total, res.Hist.Failures)
	}
	checkLive(t, res)
	if len(res.Runs) != 2 {
		t.Fatalf("runs: %+v", res.Runs)
	}
	for _, r := range res.Runs {
		if !reflect.DeepEqual(r.Snapshot, doc(`{"bedroom":1,"livingroom":0}`)) {
			t.Errorf("MQTT %d: snapshot %v", r.Version, r.Snapshot)
		}
		if !reflect.DeepEqual(r.Published, doc(`{"kitchen":1,"livingroom":0}`)) {
			t.Errorf("MQTT %d: after the tree publishes %v", r.Version, r.Published)
		}
		if !r.Proto {
			t.Errorf("MQTT %d: a row named __proto__ was not a plain key of the copy, or reached Object.prototype", r.Version)
		}
		if !reflect.DeepEqual(r.Set, doc(`{"kitchen":0,"livingroom":0}`)) {
			t.Errorf("MQTT %d: after $set %v", r.Version, r.Set)
		}
		if r.Version == 5 && !strings.Contains(r.Refused, "Topic Name invalid") {
			t.Errorf("MQTT 5: a refused $set resolved or said %q", r.Refused)
		}
		if r.Version == 4 && r.Refused != "" {
			t.Errorf("MQTT 3.1.1: a refused $set has no reason code, yet: %q", r.Refused)
		}
		if r.Resyncs != 0 {
			t.Errorf("MQTT %d: %d resyncs", r.Version, r.Resyncs)
		}
		// The broker holds what the page did.
		m, err := seed.Mirror(ctx, fmt.Sprintf("room%d/+/is_on", r.Version), client.JSON, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		m.Get(func(got any) {
			if b, _ := json.Marshal(got); !reflect.DeepEqual(doc(string(b)), doc(`{"kitchen":0,"livingroom":0}`)) {
				t.Errorf("MQTT %d: broker's rows %s", r.Version, b)
			}
		})
	}
	if t.Failed() {
		t.Logf("chromium:\n%s", logs)
	}
}

// checkLive checks the page's live run: a Mirror catches up after MQTT.js
// reconnects (always); with a resume delta, and history and paced deltas
// work (once the broker sends mote-rev: skipped before).
func checkLive(t *testing.T, res result) {
	lv := res.Live
	if lv == nil {
		t.Error("the page made no live run")
		return
	}
	if !reflect.DeepEqual(lv.Snapshot, doc(`{"a":1,"b":2,"c":3}`)) || !reflect.DeepEqual(lv.After, doc(`{"a":10,"c":3,"d":4}`)) {
		t.Errorf("live Mirror across a reconnect: snapshot %v, after %v", lv.Snapshot, lv.After)
	}
	t.Run("MirrorResume", func(t *testing.T) {
		if lv.Rev0 == nil {
			t.Skip("the broker sends no mote-rev yet (SPEC §8 revisions not implemented): skipped until it does")
		}
		if lv.Resumes != 1 || lv.Rev1 == nil || *lv.Rev1 == *lv.Rev0 {
			t.Errorf("after the reconnect: %d resume deltas (want 1), rev %v then %v", lv.Resumes, *lv.Rev0, lv.Rev1)
		}
	})
	t.Run("History", func(t *testing.T) {
		if lv.Rev0 == nil {
			t.Skip("the broker sends no mote-rev yet (SPEC §8 revisions not implemented): skipped until it does")
		}
		h, _ := lv.History.(map[string]any)
		for k, want := range map[string]float64{"a": 10, "c": 3, "d": 4} {
			pairs, _ := h[k].([]any)
			if len(pairs) != 1 {
				t.Errorf("history limit 1 of %s: %v", k, h[k])
				continue
			}
			if p, _ := pairs[0].([]any); len(p) != 2 || p[1] != want {
				t.Errorf("history of %s: %v, want [t, %v]", k, pairs[0], want)
			}
		}
		all, _ := lv.HistoryAll.(map[string]any)
		if pairs, _ := all["a"].([]any); len(pairs) == 0 {
			t.Errorf("history from 0: %v", lv.HistoryAll)
		} else if last, _ := pairs[len(pairs)-1].([]any); len(last) != 2 || last[1] != float64(10) {
			t.Errorf("history of a does not end with the current value: %v", pairs)
		}
	})
	t.Run("Interval", func(t *testing.T) {
		if lv.Rev0 == nil {
			t.Skip("the broker sends no mote-rev yet (SPEC §8 revisions not implemented): skipped until it does")
		}
		p := lv.Paced
		if p == nil || p.Topic != "$sync.300ms/live/+" {
			t.Fatalf("paced: %+v", p)
		}
		if max := 2 + int(p.Elapsed/300); p.Messages > max {
			t.Errorf("paced 300ms: %d messages in %d ms, want at most %d", p.Messages, p.Elapsed, max)
		}
	})
}
