package bench

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/bench/floor"
)

// µs is n microseconds.
func µs(n ...int) []time.Duration {
	out := make([]time.Duration, len(n))
	for i, v := range n {
		out[i] = time.Duration(v) * time.Microsecond
	}
	return out
}

// TestBlockOf: a run's messages fall into blocks of sizes that differ by
// at most one, in order, every block used.
func TestBlockOf(t *testing.T) {
	tests := []struct {
		count, blocks int
		sizes         []int
	}{
		{count: 3000, blocks: 9, sizes: []int{334, 333, 333, 334, 333, 333, 334, 333, 333}},
		{count: 200, blocks: 9, sizes: []int{23, 22, 22, 22, 23, 22, 22, 22, 22}},
		{count: 9, blocks: 9, sizes: []int{1, 1, 1, 1, 1, 1, 1, 1, 1}},
		{count: 10, blocks: 1, sizes: []int{10}},
	}
	for _, tt := range tests {
		sizes := make([]int, tt.blocks)
		last := 0
		for i := range tt.count {
			b := blockOf(i, tt.count, tt.blocks)
			if b < last || b >= tt.blocks {
				t.Fatalf("count %d, blocks %d: message %d in block %d after block %d", tt.count, tt.blocks, i, b, last)
			}
			last = b
			sizes[b]++
		}
		if !slices.Equal(sizes, tt.sizes) {
			t.Errorf("count %d, blocks %d: block sizes %v, want %v", tt.count, tt.blocks, sizes, tt.sizes)
		}
	}
}

// TestTickOrder: every tick's order holds each lane once; rotated, lane
// i mod n goes first; either way, over n² ticks every lane takes every
// place, and shuffled, every lane follows every other (a lane's time
// depends on the broker that ran just before it: rotated, that is
// always the same one).
func TestTickOrder(t *testing.T) {
	const n = 6
	for _, shuffle := range []bool{false, true} {
		rng := rand.New(rand.NewPCG(pairedSeed, 0))
		order := make([]int, n)
		var places, after [n][n]int
		for i := range 100 * n * n {
			got := tickOrder(order, i, rng, shuffle)
			seen := make([]bool, n)
			for k, j := range got {
				if seen[j] {
					t.Fatalf("shuffle %v, tick %d: lane %d twice in %v", shuffle, i, j, got)
				}
				seen[j] = true
				places[j][k]++
				if k > 0 {
					after[j][got[k-1]]++
				}
			}
			if !shuffle && got[0] != i%n {
				t.Fatalf("rotated, tick %d starts with lane %d, want %d", i, got[0], i%n)
			}
		}
		for j := range n {
			for k := range n {
				if places[j][k] == 0 {
					t.Errorf("shuffle %v: lane %d never in place %d", shuffle, j, k)
				}
				if shuffle && j != k && after[j][k] == 0 {
					t.Errorf("shuffled: lane %d never right after lane %d", j, k)
				}
				if !shuffle && j != k && k != (j+n-1)%n && after[j][k] != 0 {
					t.Errorf("rotated: lane %d right after lane %d %d times", j, k, after[j][k])
				}
			}
		}
	}
}

// TestQuantile takes quantiles as latency does: the sample at f × n.
func TestQuantile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Microsecond
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		f      float64
		want   float64
	}{
		{"none", nil, 0.5, 0},
		{"one", µs(7), 0.99, 7},
		{"p50 of four", µs(1, 2, 3, 4), 0.5, 3},
		{"p50 of a hundred", hundred, 0.5, 51},
		{"p99 of a hundred", hundred, 0.99, 100},
		{"sub-µs kept", []time.Duration{1500 * time.Nanosecond}, 0.5, 1.5},
	}
	for _, tt := range tests {
		if got := quantile(tt.sorted, tt.f); got != tt.want {
			t.Errorf("%s: quantile %v = %v, want %v", tt.name, tt.f, got, tt.want)
		}
	}
}

// TestBlockRatios: the other lane's quantile over this lane's, block by
// block, above 1 when this lane is faster; a block either lane has no
// latency in is left out.
func TestBlockRatios(t *testing.T) {
	tests := []struct {
		name        string
		self, other [][]time.Duration
		f           float64
		want        []float64
	}{
		{"faster", [][]time.Duration{µs(100, 100, 100), µs(50, 50)}, [][]time.Duration{µs(200, 200, 200), µs(100, 100)}, 0.5, []float64{2, 2}},
		{"slower", [][]time.Duration{µs(100)}, [][]time.Duration{µs(80)}, 0.5, []float64{0.8}},
		{"empty block left out", [][]time.Duration{µs(100), nil, µs(100)}, [][]time.Duration{µs(110), µs(90), nil}, 0.5, []float64{1.1}},
		{"p99 of the block", [][]time.Duration{µs(10, 20, 30, 400)}, [][]time.Duration{µs(10, 20, 30, 200)}, 0.99, []float64{0.5}},
		{"fewer blocks", [][]time.Duration{µs(100), µs(100)}, [][]time.Duration{µs(300)}, 0.5, []float64{3}},
	}
	for _, tt := range tests {
		got := blockRatios(tt.self, tt.other, tt.f)
		if !slices.EqualFunc(got, tt.want, func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }) {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestVersus: a Mote lane is compared with every plain lane of a broker
// without the extension, its tree with its own plain, mote's with the
// same variant on mote-base; the others' lanes with none.
func TestVersus(t *testing.T) {
	lanes := []pairLane{
		{broker: "mote", variant: "tree", ext: true}, {broker: "mote", variant: "plain", ext: true},
		{broker: "mote-base", variant: "tree", ext: true}, {broker: "mote-base", variant: "plain", ext: true},
		{broker: "mosquitto", variant: "plain"}, {broker: FloorName, variant: "plain"},
	}
	want := map[string][]string{
		"mote/tree":       {"mote/plain", "mote-base/tree", "mosquitto/plain", "go-floor/plain"},
		"mote/plain":      {"mote-base/plain", "mosquitto/plain", "go-floor/plain"},
		"mote-base/tree":  {"mote-base/plain", "mosquitto/plain", "go-floor/plain"},
		"mote-base/plain": {"mosquitto/plain", "go-floor/plain"},
		"mosquitto/plain": nil,
		"go-floor/plain":  nil,
	}
	for i, l := range lanes {
		var got []string
		for _, j := range versus(lanes, i) {
			got = append(got, lanes[j].name())
		}
		if !slices.Equal(got, want[l.name()]) {
			t.Errorf("%s against %v, want %v", l.name(), got, want[l.name()])
		}
	}
}

// TestPairedRatios pools the block ratios of every round: median and
// range of all blocks, runs with an error left out, a lane of another
// broker than mote named with its broker.
func TestPairedRatios(t *testing.T) {
	runs := []Run{
		{Scenario: pairedName, Variant: "tree", Broker: "mote", Round: 1,
			Pairs: []PairRatio{{Versus: "mosquitto/plain", P50: []float64{0.9, 1.0, 0.95}, P99: []float64{1.2}}}},
		{Scenario: pairedName, Variant: "tree", Broker: "mote", Round: 2,
			Pairs: []PairRatio{{Versus: "mosquitto/plain", P50: []float64{0.8, 0.92}, P99: []float64{0.8}}}},
		{Scenario: pairedName, Variant: "tree", Broker: "mote", Round: 3, Err: "bench: timed out",
			Pairs: []PairRatio{{Versus: "mosquitto/plain", P50: []float64{5}}}},
		{Scenario: pairedName, Variant: "plain", Broker: "mote-base", Round: 1,
			Pairs: []PairRatio{{Versus: "go-floor/plain", P50: []float64{1.1}}}},
		{Scenario: "latency", Variant: "tree", Broker: "mote", Round: 1,
			Pairs: []PairRatio{{Versus: "mosquitto/plain", P50: []float64{7}}}},
	}
	want := []Ratio{
		{Scenario: pairedName, MoteVariant: "tree", Other: "mosquitto/plain", What: "p50 by block", Median: 0.92, Min: 0.8, Max: 1.0},
		{Scenario: pairedName, MoteVariant: "tree", Other: "mosquitto/plain", What: "p99 by block", Median: 1.0, Min: 0.8, Max: 1.2},
		{Scenario: pairedName, MoteVariant: "mote-base/plain", Other: "go-floor/plain", What: "p50 by block", Median: 1.1, Min: 1.1, Max: 1.1},
	}
	got := pairedRatios(runs, pairedName)
	near := func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
	if !slices.EqualFunc(got, want, func(a, b Ratio) bool {
		return a.Scenario == b.Scenario && a.MoteVariant == b.MoteVariant && a.Other == b.Other && a.What == b.What &&
			near(a.Median, b.Median) && near(a.Min, b.Min) && near(a.Max, b.Max)
	}) {
		t.Errorf("pairedRatios:\n got %+v\nwant %+v", got, want)
	}
}

// serveFloor is a Go floor broker in this process, closed at the test's
// end.
func serveFloor(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := floor.Serve(ln, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(func() { s.Close() })
	return s.Addr().String()
}

// TestLatencyPaired runs lanes side by side on two floor brokers: each
// plain lane gets every message, in every block; a tree lane on the
// floor (which delivers no $tree/lat to $tree/lat/+) loses its messages
// and is given up after deadAfter of them, the run going on without it.
func TestLatencyPaired(t *testing.T) {
	a, b := serveFloor(t), serveFloor(t)
	lanes := []pairLane{{broker: "a", variant: "plain", addr: a}, {broker: "a", variant: "tree", addr: a}, {broker: "b", variant: "plain", addr: b}}
	s := Sizes{LatRate: 1000, LatCount: 90}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	res, err := latencyPaired(ctx, lanes, s, pairedOpts{blocks: 9, lostAfter: 50 * time.Millisecond, deadAfter: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 2} {
		r := res[i]
		if r.sent != 90 || r.delivered() != 90 || r.dead || len(r.blocks) != 9 {
			t.Errorf("%s: sent %d, delivered %d, dead %v, %d blocks; want 90, 90, false, 9", lanes[i].name(), r.sent, r.delivered(), r.dead, len(r.blocks))
		}
		for k, blk := range r.blocks {
			if len(blk) != 10 || !slices.IsSorted(blk) {
				t.Errorf("%s: block %d has %d latencies (sorted %v), want 10, sorted", lanes[i].name(), k, len(blk), slices.IsSorted(blk))
			}
		}
		if got := blockRatios(r.blocks, res[2-i].blocks, 0.5); len(got) != 9 {
			t.Errorf("%s: %d block ratios, want 9", lanes[i].name(), len(got))
		}
	}
	if r := res[1]; r.sent != 3 || r.delivered() != 0 || !r.dead {
		t.Errorf("tree lane on the floor: sent %d, delivered %d, dead %v; want 3, 0, true", r.sent, r.delivered(), r.dead)
	}
}

// TestLatencyPairedBounded: a lane that never answers cannot hold a run
// past its context.
func TestLatencyPairedBounded(t *testing.T) {
	a := serveFloor(t)
	lanes := []pairLane{{broker: "a", variant: "tree", addr: a}}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := latencyPaired(ctx, lanes, Sizes{LatRate: 1000, LatCount: 1000}, pairedOpts{blocks: 9, lostAfter: 30 * time.Second, deadAfter: 1000})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err %v, want the context's deadline", err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("took %v after a deadline of 300ms", el)
	}
}

// TestPairedSmoke runs latency-paired as `mote bench -smoke` does, on
// mote, the Go floor and (where installed) Mosquitto, child processes
// of a mote built for the test: a run for each lane, nothing lost, mote's
// tree lane compared with the others block by block, no lane getting
// another's messages (mote's two share its broker), and every broker
// stopped at the end; and once more with a broker that cannot start
// after the others did: every lane reports the error and the brokers
// started are stopped.
func TestPairedSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds mote and runs brokers")
	}
	bin := filepath.Join(t.TempDir(), "mote")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/mote-mqtt/mote/cmd/mote").CombinedOutput(); err != nil {
		t.Fatalf("build mote: %v: %s", err, out)
	}
	broken := &Broker{Name: "broken", args: func(listeners, string) ([]string, error) {
		return []string{filepath.Join(t.TempDir(), "no-such-broker")}, nil
	}}
	tests := []struct {
		name    string
		broken  bool
		wantErr bool
	}{
		{name: "every broker"},
		{name: "one cannot start", broken: true, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			brokers := []*Broker{Mote(bin), GoFloor(bin)}
			if m := Mosquitto(); m != nil {
				brokers = append(brokers, m)
			}
			if tt.broken {
				brokers = append(brokers, broken)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
			defer cancel()
			runs, err := Suite(ctx, Config{Sizes: SmokeSizes(), Rounds: 1, Scenarios: []string{pairedName}, Brokers: brokers})
			if err != nil {
				t.Fatal(err)
			}
			lanes := len(brokers) + 1 // mote's tree lane too
			if len(runs) != lanes {
				t.Fatalf("%d runs, want %d: %+v", len(runs), lanes, runs)
			}
			for _, b := range brokers {
				if b.Addr() == "" {
					continue // never started
				}
				if c, err := net.DialTimeout("tcp", b.Addr(), time.Second); err == nil {
					c.Close()
					t.Errorf("%s still listens on %s after the run", b.Name, b.Addr())
				}
			}
			for _, r := range runs {
				if tt.wantErr {
					if r.Err == "" {
						t.Errorf("%s/%s: no error, want the broken broker's", r.Broker, r.Variant)
					}
					continue
				}
				if r.Err != "" || r.Sent != int64(SmokeSizes().LatCount) || r.Lost != 0 || r.Value <= 0 || len(r.Blocks) != pairedBlocks {
					t.Errorf("%s/%s: err %q, sent %d, lost %d, p50 %v µs, %d blocks", r.Broker, r.Variant, r.Err, r.Sent, r.Lost, r.Value, len(r.Blocks))
				}
				if r.Extra["late"] != 0 {
					// Nothing is lost, so a late arrival is another lane's message.
					t.Errorf("%s/%s: %v arrivals not its own", r.Broker, r.Variant, r.Extra["late"])
				}
				if r.Broker == "mote" && r.Variant == "tree" {
					for _, p := range r.Pairs {
						if len(p.P50) != pairedBlocks {
							t.Errorf("mote/tree against %s: %d block ratios, want %d", p.Versus, len(p.P50), pairedBlocks)
						}
					}
					if len(r.Pairs) != lanes-1 {
						t.Errorf("mote/tree compared with %d lanes, want %d", len(r.Pairs), lanes-1)
					}
				}
			}
			if !tt.wantErr && len(pairedRatios(runs, pairedName)) == 0 {
				t.Error("no ratios")
			}
		})
	}
}
