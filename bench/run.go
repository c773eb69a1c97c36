package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Config is one suite run.
type Config struct {
	Sizes     Sizes
	Rounds    int      // A B A B …: each broker runs each scenario this often; default 3
	Scenarios []string // names to run ("fan-in", …); all if empty
	Brokers   []*Broker
	Progress  io.Writer // one line per run; nil for none
}

// Run is one scenario run on one broker.
type Run struct {
	Scenario string  `json:"scenario"`
	Variant  string  `json:"variant"`
	Broker   string  `json:"broker"`
	Round    int     `json:"round"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	CPU      float64 `json:"cpu_s"`
	// LoadCPU is this process's CPU time during the run (the load
	// generators: the bench's clients), Wall the run's wall-clock time,
	// both from the broker's start to the scenario's end: where the
	// broker's and the clients' CPU add up to the machine's cores over
	// Wall, the clients set the pace as much as the broker.
	LoadCPU float64            `json:"load_cpu_s"`
	Wall    float64            `json:"wall_s"`
	PeakRSS int64              `json:"peak_rss_bytes"`
	Msgs    int64              `json:"msgs_received"`
	Bytes   int64              `json:"bytes_received"`
	Sent    int64              `json:"publishes_sent"`
	Lost    int64              `json:"lost"`
	Extra   map[string]float64 `json:"extra,omitempty"`
	// Blocks are a paired scenario's p50 (µs) of each block of messages,
	// Pairs its block-by-block ratios against the lanes it is compared
	// with (paired.go).
	Blocks []float64   `json:"block_p50_us,omitempty"`
	Pairs  []PairRatio `json:"pairs,omitempty"`
	// Points are a curve scenario's measurements, one per rung climbed.
	Points []Point `json:"points,omitempty"`
	Err    string  `json:"error,omitempty"`
}

// Names lists the scenarios.
func Names() []string {
	var out []string
	for _, s := range scenarios() {
		if !slices.Contains(out, s.name) {
			out = append(out, s.name)
		}
	}
	return out
}

// Suite runs the scenarios, every broker in turn for each round, and
// returns every run.
func Suite(ctx context.Context, cfg Config) ([]Run, error) {
	if cfg.Rounds <= 0 {
		cfg.Rounds = 3
	}
	cfg.Scenarios = expandCurves(cfg.Scenarios)
	for _, n := range cfg.Scenarios {
		if !slices.Contains(Names(), n) {
			return nil, fmt.Errorf("bench: unknown scenario %q (have %s)", n, strings.Join(Names(), ", "))
		}
	}
	var runs []Run
	// Round by round, every variant of a scenario on every broker, so
	// what is compared runs side by side.
	for _, name := range Names() {
		if len(cfg.Scenarios) > 0 && !slices.Contains(cfg.Scenarios, name) {
			continue
		}
		for round := 1; round <= cfg.Rounds; round++ {
			record := func(r Run) {
				runs = append(runs, r)
				if cfg.Progress != nil {
					status := fmt.Sprintf("%.4g %s", r.Value, r.Unit)
					if r.Err != "" {
						status = "error: " + r.Err
					}
					fmt.Fprintf(cfg.Progress, "[%s] %s/%s round %d on %s: %s (cpu %.2fs, rss %d MiB, lost %d)\n",
						time.Now().Format(time.TimeOnly), r.Scenario, r.Variant, round, r.Broker, status, r.CPU, r.PeakRSS>>20, r.Lost)
				}
			}
			for _, sc := range scenarios() {
				if sc.name != name {
					continue
				}
				if sc.paired != nil {
					// Every broker at once, but go-hold (no broker) and
					// go-floor where the scenario needs more.
					bs := slices.DeleteFunc(slices.Clone(cfg.Brokers), func(b *Broker) bool { return b.Hold || (b.Floor && !sc.floor) })
					if ctx.Err() != nil {
						return runs, ctx.Err()
					}
					for _, r := range runPaired(ctx, sc, bs, cfg.Sizes, round) {
						record(r)
					}
					continue
				}
				for _, b := range cfg.Brokers {
					if why := skip(sc, b); why != "" {
						if round == 1 && cfg.Progress != nil {
							fmt.Fprintf(cfg.Progress, "[%s] %s/%s: not run on %s: %s\n", time.Now().Format(time.TimeOnly), sc.name, sc.variant, b.Name, why)
						}
						continue
					}
					if ctx.Err() != nil {
						return runs, ctx.Err()
					}
					for _, r := range runScenario(ctx, sc, b, cfg.Sizes, round) {
						record(r)
					}
				}
			}
		}
	}
	return runs, nil
}

// skip says why the scenario sc does not run on the broker b; "" if it does.
func skip(sc scenario, b *Broker) string {
	switch {
	case sc.web != nil && !b.Web:
		return "Mote's HTTP API (a build that has it)"
	case (sc.cluster || sc.clusterPart) && !b.Cluster:
		return "a cluster of `mote broker --cluster` nodes"
	case !sc.everywhere && !b.Tree:
		return "a Mote variant (trees, $sync), compared with this broker's plain one"
	case b.Floor && !sc.floor:
		return "needs what go-floor leaves out (retained messages, sessions, QoS 1 delivery)"
	case b.Hold && !sc.hold:
		return "go-hold reads nothing after CONNECT"
	}
	return ""
}

// expandCurves replaces "curves" in names with every curve scenario.
func expandCurves(names []string) []string {
	var out []string
	for _, n := range names {
		if n != "curves" {
			out = append(out, n)
			continue
		}
		for _, c := range Names() {
			if strings.HasPrefix(c, CurvePrefix) && !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	return out
}

func runOne(ctx context.Context, sc scenario, b *Broker, s Sizes, round int) Run {
	r := Run{Scenario: sc.name, Variant: sc.variant, Broker: b.Name, Round: round, Unit: sc.unit}
	if sc.files > 0 {
		// Before the broker starts: a child inherits the limit.
		if err := raiseFileLimit(sc.files); err != nil {
			r.Err = err.Error()
			return r
		}
	}
	if err := b.Start(sc.web != nil); err != nil {
		r.Err = err.Error()
		return r
	}
	defer b.Stop()
	cpu0, _, _ := b.Usage()
	self0, _, _ := procUsage(os.Getpid())
	wall0 := time.Now()
	ctx, cancel := sc.bound(ctx)
	defer cancel()
	var o outcome
	var err error
	switch {
	case sc.web != nil:
		o, err = sc.web(ctx, target{listeners: b.l, b: b}, s)
	case sc.probed != nil:
		o, err = sc.probed(ctx, target{listeners: b.l, b: b}, s)
	default:
		o, err = sc.run(ctx, b.Addr(), s)
	}
	cpu1, rss, _ := b.Usage()
	self1, _, _ := procUsage(os.Getpid())
	r.LoadCPU, r.Wall = (self1 - self0).Seconds(), time.Since(wall0).Seconds()
	if err != nil {
		r.Err = err.Error()
	}
	r.Value, r.Msgs, r.Bytes, r.Sent, r.Lost, r.Extra, r.Points = o.value, o.msgs, o.bytes, o.sent, o.lost, o.extra, o.points
	r.CPU, r.PeakRSS = (cpu1 - cpu0).Seconds(), rss
	for _, p := range o.points {
		if p.Failed == "" {
			r.Value++ // a curve's value: the points it reached
		}
	}
	return r
}

// Summary is the median (and range) of one scenario variant on one broker.
type Summary struct {
	Scenario, Variant, Broker, Unit string
	Median, Min, Max                float64
	CPU, PeakRSSMiB                 float64 // medians
	Msgs, Sent, Lost                int64   // medians
	Extra                           map[string]float64
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Summarize groups runs by scenario, variant and broker; curves are
// Curves'.
func Summarize(runs []Run) []Summary {
	type key struct{ sc, v, b string }
	groups := map[key][]Run{}
	var order []key
	for _, r := range runs {
		if r.Err != "" || len(r.Points) > 0 {
			continue
		}
		k := key{r.Scenario, r.Variant, r.Broker}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	var out []Summary
	for _, k := range order {
		rs := groups[k]
		var vals, cpu, rss, msgs, sent, lost []float64
		extra := map[string][]float64{}
		for _, r := range rs {
			vals = append(vals, r.Value)
			cpu = append(cpu, r.CPU)
			rss = append(rss, float64(r.PeakRSS)/(1<<20))
			msgs, sent, lost = append(msgs, float64(r.Msgs)), append(sent, float64(r.Sent)), append(lost, float64(r.Lost))
			for n, v := range r.Extra {
				extra[n] = append(extra[n], v)
			}
		}
		s := Summary{Scenario: k.sc, Variant: k.v, Broker: k.b, Unit: rs[0].Unit, Median: median(vals),
			Min: slices.Min(vals), Max: slices.Max(vals), CPU: median(cpu), PeakRSSMiB: median(rss),
			Msgs: int64(median(msgs)), Sent: int64(median(sent)), Lost: int64(median(lost)), Extra: map[string]float64{}}
		for n, v := range extra {
			s.Extra[n] = median(v)
		}
		out = append(out, s)
	}
	return out
}

// Table writes the summaries, with each scenario's ratio against Mote's
// plain (or tree) result where one exists.
func Table(w io.Writer, sums []Summary) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tvariant\tbroker\tmedian\t(min–max)\tunit\tcpu s\tpeak rss MiB\tmsgs\tsent\tlost\tnotes")
	for _, s := range sums {
		var notes []string
		for n, v := range s.Extra {
			notes = append(notes, fmt.Sprintf("%s=%.4g", n, v))
		}
		sort.Strings(notes)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.4g\t(%.4g–%.4g)\t%s\t%.2f\t%.0f\t%d\t%d\t%d\t%s\n", s.Scenario, s.Variant, s.Broker,
			s.Median, s.Min, s.Max, s.Unit, s.CPU, s.PeakRSSMiB, s.Msgs, s.Sent, s.Lost, strings.Join(notes, " "))
	}
	tw.Flush()
}

// Ratio compares Mote with another broker on one scenario, pair by pair
// (the same round), as the median of the per-round ratios; above 1 means
// Mote is better.
type Ratio struct {
	Scenario, MoteVariant, Other string
	Median, Min, Max             float64
	What                         string
}

// Baseline names an earlier Mote build run beside this one (mote bench
// -baseline BIN): its ratios compare the same variant.
const Baseline = "mote-base"

// Ratios pairs Mote's best variant of each scenario with every other
// broker's plain run of the same round: the value (speed or size) and,
// where it says more, broker CPU and messages.
func Ratios(runs []Run) []Ratio {
	better := map[string]bool{}
	for _, sc := range scenarios() {
		better[sc.name] = sc.higherBetter
	}
	type key struct {
		sc, v, b string
		round    int
	}
	by := map[key]Run{}
	for _, r := range runs {
		if r.Err == "" {
			by[key{r.Scenario, r.Variant, r.Broker, r.Round}] = r
		}
	}
	var out []Ratio
	for _, sc := range scenarios() {
		if sc.versus != "" {
			// A variant measured against another of the same broker
			// (HTTP against MQTT), round by round: the value and, where
			// both have them, the bytes received.
			for _, b := range []string{"mote", Baseline} {
				for _, what := range []string{"value", "bytes"} {
					var rs []float64
					for round := 1; round < 100; round++ {
						m, ok1 := by[key{sc.name, sc.variant, b, round}]
						o, ok2 := by[key{sc.name, sc.versus, b, round}]
						if !ok1 || !ok2 {
							continue
						}
						a, c := m.Value, o.Value
						if what == "bytes" {
							a, c = float64(m.Bytes), float64(o.Bytes)
						}
						if a <= 0 || c <= 0 {
							continue
						}
						if sc.higherBetter && what == "value" {
							rs = append(rs, a/c)
						} else {
							rs = append(rs, c/a)
						}
					}
					if len(rs) > 0 {
						out = append(out, Ratio{Scenario: sc.name, MoteVariant: sc.variant, Other: b + "/" + sc.versus, What: what,
							Median: median(rs), Min: slices.Min(rs), Max: slices.Max(rs)})
					}
				}
			}
		}
		if sc.paired != nil {
			out = append(out, pairedRatios(runs, sc.name)...) // block by block, within each run
			continue
		}
		if sc.noRatio {
			continue
		}
		for _, other := range []string{"mochi", MosquittoName, MosquittoPersistName, Baseline, Translate, Memory} {
			otherVariant := sc.variant
			if !sc.everywhere && other != Baseline && other != Translate && other != Memory {
				otherVariant = "plain"
			}
			whats := []string{"value", "cpu", "msgs"}
			if sc.name == "boot-storm" {
				whats = append(whats, stormCPU) // the storm's own CPU, without the check
			}
			for _, what := range whats {
				var rs []float64
				for round := 1; round < 100; round++ {
					m, ok1 := by[key{sc.name, sc.variant, "mote", round}]
					o, ok2 := by[key{sc.name, otherVariant, other, round}]
					if !ok1 || !ok2 {
						continue
					}
					a, b := m.Value, o.Value
					higher := better[sc.name]
					switch what {
					case "cpu":
						a, b, higher = m.CPU, o.CPU, false
					case stormCPU:
						a, b, higher = m.Extra[stormCPU], o.Extra[stormCPU], false
					case "msgs":
						a, b, higher = float64(m.Msgs), float64(o.Msgs), false
						if sc.name == "boot-storm" {
							a, b = float64(m.Sent), float64(o.Sent)
						}
					}
					if a <= 0 || b <= 0 {
						continue
					}
					if higher {
						rs = append(rs, a/b)
					} else {
						rs = append(rs, b/a)
					}
				}
				if len(rs) == 0 || (what != "value" && sc.name != "boot-storm" && sc.name != "live-dashboard") {
					continue
				}
				out = append(out, Ratio{Scenario: sc.name, MoteVariant: sc.variant, Other: other, What: what,
					Median: median(rs), Min: slices.Min(rs), Max: slices.Max(rs)})
			}
		}
	}
	return out
}

// stormCPU is the boot storm's note of the broker's CPU until the storm
// was done, before its check: a ratio measure of its own.
const stormCPU = "storm-cpu-s"

// RatioTable writes the ratios.
func RatioTable(w io.Writer, rs []Ratio) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tmote variant\tvs\tmeasure\tmote better by ×\t(min–max)")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.2f\t(%.2f–%.2f)\n", r.Scenario, r.MoteVariant, r.Other, r.What, r.Median, r.Min, r.Max)
	}
	tw.Flush()
}

// bound is ctx limited to the scenario's own timeout, 3 minutes when it
// sets none: a round that hangs ends instead of eating the run's budget.
func (sc scenario) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	timeout := sc.timeout
	if timeout == 0 {
		timeout = 3 * time.Minute
	}
	return context.WithTimeout(ctx, timeout)
}
