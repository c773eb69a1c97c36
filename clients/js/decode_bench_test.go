package js

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// benchRows builds the snapshot of the decode benchmark: rows
// bench/d<i>/<field> for n/5 devices, five fields each (a float, an
// integer, a string of two values, a boolean, a version string), typed as
// plain publishes are; the filter bench/+/+ nests them two levels deep.
func benchSnapshots(t *testing.T, n int) map[string][]byte {
	tr := tree.New()
	var ops []tree.Op
	var op tree.Op
	for i := range n / 5 {
		dev := fmt.Sprintf("bench/d%d/", i)
		for _, f := range [][2]string{
			{"temp", strconv.FormatFloat(15+float64(i%200)/10, 'f', 1, 64)},
			{"hum", strconv.Itoa(30 + i%60)},
			{"state", []string{"ON", "OFF"}[i%2]},
			{"ok", []string{"true", "false"}[i%3/2]},
			{"fw", fmt.Sprintf("v1.%d.%d", i%7, i%13)},
		} {
			op.Rows = append(op.Rows, tree.Row{Topic: dev + f[0], Value: wire.TypePlain([]byte(f[1])), Retain: true})
		}
		if len(op.Rows) >= 1000 {
			ops, op = append(ops, op), tree.Op{}
		}
	}
	ops = append(ops, op)
	tr.Apply(ops)
	out := map[string][]byte{}
	for name, c := range map[string]wire.Codec{"json": wire.CodecJSON, "cbor": wire.CodecCBOR, "msgpack": wire.CodecMsgPack} {
		out[name] = tr.Snapshot("bench/+/+", c, nil)
	}
	return out
}

// TestBrowserDecodeBench measures, in headless Chromium, how long mote.js
// takes to decode a 100,000-row snapshot in JSON, CBOR and MessagePack
// (decodeTree: for CBOR and MessagePack the hostile-input check, then the
// library; for JSON TextDecoder and JSON.parse), and each library alone.
// The variants alternate within every round, in a rotating order, after a
// forced GC. A benchmark, not a test: it runs only with MOTE_JS_BENCH=1
// (MOTE_JS_BENCH_ROUNDS rounds, default 9) and logs the median and
// min–max of each, and of the per-round ratio to JSON.
//
//	MOTE_JS_BENCH=1 go test -run TestBrowserDecodeBench -v ./clients/js/
func TestBrowserDecodeBench(t *testing.T) {
	if os.Getenv("MOTE_JS_BENCH") == "" {
		t.Skip("a benchmark: set MOTE_JS_BENCH=1 to run it")
	}
	rounds := 9
	if s := os.Getenv("MOTE_JS_BENCH_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 5 {
			t.Fatalf("MOTE_JS_BENCH_ROUNDS=%q: want a number, at least 5", s)
		}
		rounds = n
	}
	const rows = 100000
	snaps := benchSnapshots(t, rows)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	srv, mux, _ := pageServer()
	defer srv.Close()
	mux.HandleFunc("/snap/{codec}", func(w http.ResponseWriter, r *http.Request) {
		b, ok := snaps[r.PathValue("codec")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	})
	body, logs := runPage(t, ctx, srv, "bench.html", fmt.Sprintf("rounds=%d&rows=%d", rounds, rows), "--js-flags=--expose-gc")
	var res struct {
		Rows  map[string]int       `json:"rows"`
		Times map[string][]float64 `json:"times"`
		Error string               `json:"error"`
		Env   map[string]any       `json:"env"`
	}
	if err := json.Unmarshal(body, &res); err != nil {
		t.Fatalf("page result %s: %v", body, err)
	}
	if res.Error != "" {
		t.Fatalf("page: %s\n%s", res.Error, logs)
	}
	for c, n := range res.Rows {
		if n != rows {
			t.Errorf("%s: the decoded snapshot has %d rows, want %d", c, n, rows)
		}
	}
	stats := func(xs []float64) (med, lo, hi float64) {
		s := slices.Sorted(slices.Values(xs))
		return s[len(s)/2], s[0], s[len(s)-1]
	}
	var tab strings.Builder
	fmt.Fprintf(&tab, "decode of a %d-row snapshot (bench/+/+) in headless Chromium, %d rounds: median (min–max)\n", rows, rounds)
	fmt.Fprintf(&tab, "| codec | bytes | mote.js decodeTree, ms | library alone, ms | decodeTree vs JSON |\n|---|---:|---:|---:|---:|\n")
	for _, c := range []string{"json", "cbor", "msgpack"} {
		mote, lib := res.Times[c+"/mote"], res.Times[c+"/lib"]
		if len(mote) != rounds || len(lib) != rounds {
			t.Fatalf("%s: %d and %d times, want %d", c, len(mote), len(lib), rounds)
		}
		ratios := make([]float64, rounds)
		for i := range ratios {
			ratios[i] = mote[i] / res.Times["json/mote"][i]
		}
		m, lo, hi := stats(mote)
		lm, llo, lhi := stats(lib)
		rm, rlo, rhi := stats(ratios)
		fmt.Fprintf(&tab, "| %s | %d | %.1f (%.1f–%.1f) | %.1f (%.1f–%.1f) | %.2f (%.2f–%.2f) |\n", c, len(snaps[c]), m, lo, hi, lm, llo, lhi, rm, rlo, rhi)
	}
	load, _ := os.ReadFile("/proc/loadavg") // how busy the machine was: absent off Linux
	fmt.Fprintf(&tab, "browser: %v; load average: %s", res.Env, strings.TrimSpace(string(load)))
	t.Log("\n" + tab.String())
}
