package js

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/wire"
)

// codecResult is what testdata/codecs.html posts.
type codecResult struct {
	Vectors map[string]struct {
		Total    int               `json:"total"`
		Failed   int               `json:"failed"`
		Failures []json.RawMessage `json:"failures"`
	} `json:"vectors"`
	Runs []struct {
		Codec    string `json:"codec"`
		Version  int    `json:"version"`
		Topic    string `json:"topic"`
		Snapshot any    `json:"snapshot"`
		Delta    any    `json:"delta"`
		Deleted  any    `json:"deleted"`
		Proto    bool   `json:"proto"`
		Raw      []int  `json:"raw"`
		Hist     any    `json:"hist"`
		Refused  string `json:"refused"`
		Replaced any    `json:"replaced"`
		Resume   *struct {
			Rev0    string `json:"rev0"`
			Rev1    string `json:"rev1"`
			Resumes int    `json:"resumes"`
			H       any    `json:"h"`
			G       any    `json:"g"`
		} `json:"resume"`
		Errors  int `json:"errors"`
		Resyncs int `json:"resyncs"`
	} `json:"runs"`
	Hostile []struct {
		Codec string  `json:"codec"`
		Name  string  `json:"name"`
		Want  string  `json:"want"`
		Error string  `json:"error"`
		Type  string  `json:"type"`
		Ms    float64 `json:"ms"`
	} `json:"hostile"`
	Mirror map[string]struct {
		Errors         []string `json:"errors"`
		ReadyRejected  string   `json:"readyRejected"`
		AfterSnapshot  any      `json:"afterSnapshot"`
		AfterDelta     any      `json:"afterDelta"`
		Resyncs        int      `json:"resyncs"`
		Subscribes     int      `json:"subscribes"`
		AfterResync    any      `json:"afterResync"`
		ProtoPolluted  bool     `json:"protoPolluted"`
		Evaluated      bool     `json:"evaluated"`
		ProtoKeyIsOwn  bool     `json:"protoKeyIsOwn"`
		UnknownCodec   string   `json:"unknownCodec"`
		DepthOptionErr string   `json:"depthOptionErr"`
	} `json:"mirror"`
	Fuzz []struct {
		Codec    string   `json:"codec"`
		Runs     int      `json:"runs"`
		Decoded  int      `json:"decoded"`
		Refused  int      `json:"refused"`
		Other    []string `json:"other"`
		NotPlain []string `json:"notPlain"`
	} `json:"fuzz"`
	Error string `json:"error"`
}

// TestBrowserCodecs runs mote.js in headless Chromium in each codec (JSON,
// CBOR, MessagePack) against a broker: the tree core's snapshots and
// deltas in that codec decode and merge to its final snapshot; a Mirror
// gets a snapshot of plain rows typed as SPEC §1 and §11 say (bytes as
// Uint8Array in CBOR and MessagePack), the deltas of its own tree
// publishes (bytes too), deletions and a row named __proto__; history
// answers in the codec; hostile payloads (huge declared lengths, deep
// nesting, tags, extension types) are refused with an error, fast, and a
// Mirror reports them with onError and recovers.
func TestBrowserCodecs(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	// The page comes from its own server (another port): the broker lists
	// its origin.
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
	type run struct {
		codec   string
		version int
	}
	runs := []run{{"json", 5}, {"cbor", 5}, {"msgpack", 5}, {"cbor", 4}, {"msgpack", 4}}
	plain := map[string][]byte{"a": []byte("21.5"), "b": []byte("3"), "c": []byte("ON"), "d": {0xff, 0x00, 0xfe},
		"e": []byte(`{"x":[1,2]}`), "big": []byte("4294967296000"), "neg": []byte("-70000")}
	for _, r := range runs {
		for k, v := range plain {
			topic := fmt.Sprintf("c_%s_%d/%s", r.codec, r.version, k)
			if err := seed.Publish(ctx, topic, v, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
				t.Fatal(err)
			}
		}
	}

	vectors := map[string][]vector{}
	for name, c := range map[string]wire.Codec{"json": wire.CodecJSON, "cbor": wire.CodecCBOR, "msgpack": wire.CodecMsgPack} {
		vectors[name] = mergeVectors(t, c)
	}
	mux.HandleFunc("/vectors", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(vectors)
	})
	var q strings.Builder
	for _, r := range runs {
		fmt.Fprintf(&q, "&run=%s_%d", r.codec, r.version)
	}
	body, logs := runPage(t, ctx, srv, "codecs.html", "ws=ws://"+b.WSAddr()+"/mqtt"+q.String())
	defer func() {
		if t.Failed() {
			t.Logf("chromium:\n%s", logs)
		}
	}()
	if testing.Verbose() {
		t.Logf("page: %s", body)
	}
	var res codecResult
	if err := json.Unmarshal(body, &res); err != nil {
		t.Fatalf("page result %s: %v", body, err)
	}
	if res.Error != "" {
		t.Fatalf("page: %s", res.Error)
	}
	for name, v := range vectors {
		got := res.Vectors[name]
		if got.Total != len(v) || got.Failed != 0 {
			t.Errorf("%s vectors: %d of %d differ from the tree core: %s", name, got.Failed, got.Total, got.Failures)
		}
	}

	bytesOf := func(b ...float64) any { return map[string]any{"$bytes": toAny(b)} }
	if len(res.Runs) != len(runs) {
		t.Fatalf("runs: %+v", res.Runs)
	}
	for i, r := range res.Runs {
		name := fmt.Sprintf("%s over MQTT %d", r.Codec, r.Version)
		if r.Codec != runs[i].codec || r.Version != runs[i].version {
			t.Fatalf("run %d is %s", i, name)
		}
		bin := r.Codec != "json"
		wantTopic := fmt.Sprintf("$sync.%s/c_%s_%d/+", r.Codec, r.Codec, r.Version)
		if !bin {
			wantTopic = "$sync/c_json_5/+"
		}
		if r.Topic != wantTopic {
			t.Errorf("%s: topic %q, want %q", name, r.Topic, wantTopic)
		}
		// SPEC §1: JSON text nests as its value, other UTF-8 as a string,
		// the rest as bytes: a byte string in CBOR and MessagePack, base64
		// text in JSON.
		want := map[string]any{"a": 21.5, "b": 3.0, "c": "ON", "d": any("/wD+"), "e": map[string]any{"x": []any{1.0, 2.0}},
			"big": 4294967296000.0, "neg": -70000.0}
		if bin {
			want["d"] = bytesOf(255, 0, 254)
		}
		if !reflect.DeepEqual(r.Snapshot, any(want)) {
			t.Errorf("%s: snapshot %v, want %v", name, r.Snapshot, want)
		}
		want["f"], want["g"], want["h"] = 7.0, any("AQID"), 1.25
		if bin {
			want["g"] = bytesOf(1, 2, 3)
		}
		if !reflect.DeepEqual(r.Delta, any(want)) {
			t.Errorf("%s: after a tree publish %v, want %v", name, r.Delta, want)
		}
		delete(want, "f")
		if !reflect.DeepEqual(r.Deleted, any(want)) {
			t.Errorf("%s: after deletions %v, want %v", name, r.Deleted, want)
		}
		if !r.Proto {
			t.Errorf("%s: a row named __proto__ was not an own key of the copy, or reached Object.prototype", name)
		}
		// The bytes of a binary leaf are the row's payload (SPEC §1).
		wantRaw := []int{1, 2, 3}
		if !bin {
			wantRaw = []int{'A', 'Q', 'I', 'D'}
		}
		if !reflect.DeepEqual(r.Raw, wantRaw) {
			t.Errorf("%s: a plain subscriber got %v for the leaf g, want %v", name, r.Raw, wantRaw)
		}
		if r.Version == 5 {
			h, _ := r.Hist.(map[string]any)
			pairs, _ := h["a"].([]any)
			if len(pairs) != 1 {
				t.Errorf("%s: history of a: %v", name, h["a"])
			} else if p, _ := pairs[0].([]any); len(p) != 2 || p[1] != 21.5 {
				t.Errorf("%s: history of a: %v, want [[t, 21.5]]", name, pairs)
			} else if _, ok := p[0].(float64); !ok {
				t.Errorf("%s: history of a: t is %T, want a number", name, p[0])
			}
			if rs := r.Resume; rs == nil || rs.Rev0 == "" || rs.Rev1 == "" || rs.Rev1 == rs.Rev0 || rs.Resumes != 1 ||
				rs.H != 2.5 || !reflect.DeepEqual(rs.G, want["g"]) {
				t.Errorf("%s: resume: %+v, want a resume delta after mote-since (rev moving on, g kept)", name, rs)
			}
			if !strings.Contains(r.Refused, "Payload format invalid") {
				t.Errorf("%s: a tree the broker refuses resolved or said %q", name, r.Refused)
			}
		}
		if !reflect.DeepEqual(r.Replaced, doc(`{"only":1}`)) {
			t.Errorf("%s: after a .replace tree publish %v", name, r.Replaced)
		}
		if r.Errors != 0 || r.Resyncs != 0 {
			t.Errorf("%s: %d decode errors, %d resyncs", name, r.Errors, r.Resyncs)
		}
	}

	if len(res.Hostile) < 20 {
		t.Errorf("only %d hostile payloads tried", len(res.Hostile))
	}
	for _, h := range res.Hostile {
		if h.Type != "DecodeError" || !strings.HasPrefix(h.Error, "mote: "+h.Codec+": ") || h.Want == "" || !strings.Contains(h.Error, h.Want) {
			t.Errorf("%s %s: decodeTree gave %s %q, want a DecodeError saying %q", h.Codec, h.Name, h.Type, h.Error, h.Want)
		}
	}
	if len(res.Fuzz) != 3 {
		t.Errorf("fuzz: %+v", res.Fuzz)
	}
	for _, f := range res.Fuzz {
		if f.Decoded+f.Refused != f.Runs || f.Decoded == 0 || f.Refused == 0 {
			t.Errorf("fuzz %s: of %d mutated payloads %d decoded, %d refused with a DecodeError; thrown otherwise: %q; not plain values: %q",
				f.Codec, f.Runs, f.Decoded, f.Refused, f.Other, f.NotPlain)
		}
	}
	for _, c := range []string{"json", "cbor", "msgpack"} {
		m, ok := res.Mirror[c]
		if !ok {
			t.Errorf("%s: no Mirror run on hostile input", c)
			continue
		}
		if len(m.Errors) != 2 || !strings.HasPrefix(m.ReadyRejected, "mote: $sync") {
			t.Errorf("%s: onError got %q; ready rejected with %q", c, m.Errors, m.ReadyRejected)
		}
		for _, e := range m.Errors {
			if !strings.HasPrefix(e, "mote: $sync") {
				t.Errorf("%s: onError's error does not name the subscription: %q", c, e)
			}
		}
		if !reflect.DeepEqual(m.AfterSnapshot, doc(`{"x":1}`)) || !reflect.DeepEqual(m.AfterDelta, doc(`{"x":1,"y":2}`)) ||
			m.Resyncs != 1 || m.Subscribes != 2 || !reflect.DeepEqual(m.AfterResync, doc(`{"z":3}`)) {
			t.Errorf("%s: Mirror after hostile messages: %+v", c, m)
		}
		if m.ProtoPolluted || m.Evaluated || (c != "json" && !m.ProtoKeyIsOwn) {
			t.Errorf("%s: polluted %v, evaluated %v, __proto__ an own key %v", c, m.ProtoPolluted, m.Evaluated, m.ProtoKeyIsOwn)
		}
		if !strings.Contains(m.UnknownCodec, "want one of json, cbor, msgpack") || (c != "json" && !strings.Contains(m.DepthOptionErr, "deeper than 2")) {
			t.Errorf("%s: an unknown codec said %q; maxDepth 2 said %q", c, m.UnknownCodec, m.DepthOptionErr)
		}
	}
}

func toAny(fs []float64) []any {
	out := make([]any, len(fs))
	for i, f := range fs {
		out[i] = f
	}
	return out
}
