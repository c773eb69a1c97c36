package js

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

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

// vector is a snapshot and the deltas that followed it, as the tree core
// made them, and the snapshot at the end: mote.js's merge must turn the
// first and the deltas into the last.
type vector struct {
	Filter   string   `json:"filter"`
	Snapshot string   `json:"snapshot"`
	Deltas   []string `json:"deltas"`
	Final    string   `json:"final"`
}

var (
	vecLevels = []string{"a", "b", "c"}
	vecValues = []string{"1", "ON", `{"x":1}`, `[1,{"y":2}]`, "2.5", "true", "null"}
	vecFilter = []string{"#", "+", "a/#", "a/+", "+/+", "a/+/#", "+/b/#", "a/b", "a/+/c", "+/#", "a/+/+/+"}
)

func mergeVectors(t *testing.T) []vector {
	var out []vector
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 11))
		tr := tree.New()
		vs := map[*tree.Sub]*vector{}
		for i, f := range vecFilter {
			s := &tree.Sub{Owner: fmt.Sprint("c", i), Topic: "$sync/" + f, Filter: f, Codec: wire.CodecJSON}
			snap, err := tr.Subscribe(s)
			if err != nil {
				t.Fatal(err)
			}
			vs[s] = &vector{Filter: f, Snapshot: string(snap), Deltas: []string{}}
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
					vs[s].Deltas = append(vs[s].Deltas, string(d.Payload))
				}
			}
		}
		for s, v := range vs {
			v.Final = string(tr.Snapshot(s.Filter, wire.CodecJSON, nil))
			out = append(out, *v)
		}
	}
	return out
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
	bin := chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := broker.New(broker.Options{TCP: "127.0.0.1:0", WS: "127.0.0.1:0"})
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

	vectors := mergeVectors(t)
	results := make(chan []byte, 1)
	mux := http.NewServeMux()
	var loaded atomic.Bool // chromium asked for the page
	serve := func(path, file, ctype string) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			loaded.Store(true)
			w.Header().Set("Content-Type", ctype)
			http.ServeFile(w, r, file)
		})
	}
	serve("/{$}", "testdata/test.html", "text/html")
	serve("/mote.js", "mote.js", "text/javascript")
	serve("/mqtt.esm.js", "testdata/mqtt.esm.js", "text/javascript")
	mux.HandleFunc("/vectors", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(vectors)
	})
	mux.HandleFunc("/result", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		select {
		case results <- body:
		default:
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir="+t.TempDir(),
		srv.URL+"/?ws=ws://"+b.WSAddr()+"/mqtt")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	var body []byte
	select {
	case body = <-results:
	case err := <-exited:
		exited <- err
		if !loaded.Load() { // the machine cannot run it: not mote.js's failure
			t.Skipf("chromium could not start here (%v):\n%s", err, logs.String())
		}
		t.Fatalf("chromium exited before the page reported: %v\n%s", err, logs.String())
	case <-ctx.Done():
		t.Fatalf("the page did not report within the time limit\n%s", logs.String())
	}
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
		t.Logf("chromium:\n%s", logs.String())
	}
}
