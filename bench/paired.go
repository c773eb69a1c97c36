package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// The paired latency scenario (latency-paired) measures what latency
// measures, the publish→receive time of a QoS 0 message at s.LatRate a
// second, s.LatCount messages, but on every broker at once: each broker
// is started once for the run, and each lane (a broker and a variant:
// plain lat/t, or on a broker that speaks the extension also $tree/tlat
// to $tree/tlat/+, each with its own Paho publisher and subscriber) gets
// one message a tick. Within a tick the lanes take their message in turn,
// in an order drawn anew each tick (from a fixed seed), and the next
// lane's message is sent only once the last one arrived (or was given up
// as lost after lostAfter): each message crosses a machine where the
// other brokers are idle, and every broker sees the same machine over the
// run. A round's p50 moves by 20–30% with the machine's state (latency,
// one broker at a time); here the machine's state is common to the
// lanes, and the ratio of two lanes' p50s, block by block (the run cut
// into pairedBlocks blocks of messages), shows how much of a difference
// is the brokers'. The order is shuffled, not rotated: a lane's time
// depends on the lane just before it, which rotation keeps the same
// (one binary run as both mote and mote-base read 0.89 for $tree and
// 0.92 for plain against itself rotated, 1.00 and 0.98 shuffled:
// bench/README.md, branch h-pair).

// pairedName is the paired latency scenario's name.
const pairedName = "latency-paired"

// pairedTreeRoot is the tree lane's root: latency's is lat, whose row
// lat/t is the plain lane's topic; on one broker each lane's subscriber
// would get the other's messages too.
const pairedTreeRoot = "tlat"

// Defaults of the paired scenario: the blocks a run is cut into (its
// ratios' count), how long a message may take before it is counted lost,
// and after how many lost messages in a row a lane is given up (its
// broker gone: the run goes on without it, the rest of its messages
// counted lost); each tick's order shuffled (not rotated), from a seed
// that makes it the same in every run.
const (
	pairedBlocks    = 9
	pairedLostAfter = 500 * time.Millisecond
	pairedDeadAfter = 20
	pairedShuffle   = true
	pairedSeed      = 15
)

// PairRatio is one lane's latency against another lane's of the same
// paired run, block by block: the other's quantile ÷ this lane's, so
// above 1 means this lane was faster, as in Ratio.
type PairRatio struct {
	Versus string    `json:"versus"`     // the other lane: broker/variant
	P50    []float64 `json:"p50_blocks"` // p50 ratio of each block
	P99    []float64 `json:"p99_blocks"` // p99 ratio of each block
}

// pairLane is one lane of a paired run: a publisher and a subscriber on
// broker's addr, for variant "plain" or "tree"; ext says the broker
// speaks the Mote extension.
type pairLane struct {
	broker, variant, addr string
	ext                   bool
}

// name is the lane's broker/variant.
func (l pairLane) name() string { return l.broker + "/" + l.variant }

// pairedOpts are the paired run's bounds (the defaults above; tests
// shorten them).
type pairedOpts struct {
	shuffle   bool // each tick's order drawn at random, not rotated
	blocks    int
	lostAfter time.Duration
	deadAfter int
}

// laneResult is what one lane measured: its latencies block by block,
// the messages sent, those that arrived after they were counted lost
// (late), and whether the lane was given up (dead).
type laneResult struct {
	blocks     [][]time.Duration
	sent, late int64
	dead       bool
}

// delivered is how many of the lane's messages arrived in time.
func (r laneResult) delivered() int64 {
	var n int64
	for _, b := range r.blocks {
		n += int64(len(b))
	}
	return n
}

// all is every latency the lane measured, sorted.
func (r laneResult) all() []time.Duration {
	out := slices.Concat(r.blocks...)
	slices.Sort(out)
	return out
}

// arrival is a message a lane's subscriber got: the time it was sent
// (its payload) and its latency.
type arrival struct {
	sent int64
	lat  time.Duration
}

// tickOrder fills order (one place a lane) with the order of the lanes
// in tick i: a new permutation from rng each tick with shuffle, else the
// lanes in turn from lane i mod n (rotating).
func tickOrder(order []int, i int, rng *rand.Rand, shuffle bool) []int {
	n := len(order)
	for k := range order {
		order[k] = (i + k) % n
	}
	if shuffle {
		rng.Shuffle(n, func(a, b int) { order[a], order[b] = order[b], order[a] })
	}
	return order
}

// blockOf is the block of message i of count, cut into blocks.
func blockOf(i, count, blocks int) int { return i * blocks / count }

// quantile is the f-quantile of sorted latencies, as latency takes it,
// in µs; 0 for none.
func quantile(sorted []time.Duration, f float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[min(len(sorted)-1, int(f*float64(len(sorted))))].Nanoseconds()) / 1e3
}

// blockRatios is, block by block, other's f-quantile ÷ self's, over the
// blocks (each sorted) where both have latencies.
func blockRatios(self, other [][]time.Duration, f float64) []float64 {
	var out []float64
	for i := range min(len(self), len(other)) {
		a, b := quantile(self[i], f), quantile(other[i], f)
		if a > 0 && b > 0 {
			out = append(out, b/a)
		}
	}
	return out
}

// versus lists, for lane i, the lanes it is compared with: on a broker
// that speaks the extension, every other broker's plain lane (the only
// one of Mosquitto, mochi and the floor), for the tree lane its own
// broker's plain one, and for mote's lanes the same variant on the other
// Mote builds (mote-base).
func versus(lanes []pairLane, i int) []int {
	self := lanes[i]
	if !self.ext {
		return nil
	}
	var out []int
	for j, o := range lanes {
		switch {
		case j == i:
		case o.broker == self.broker:
			if self.variant == "tree" && o.variant == "plain" {
				out = append(out, j)
			}
		case !o.ext:
			out = append(out, j)
		case self.broker == "mote" && o.variant == self.variant:
			out = append(out, j)
		}
	}
	return out
}

// latencyPaired runs the lanes side by side (the scenario's comment
// above) and returns each lane's result, its blocks sorted.
func latencyPaired(ctx context.Context, lanes []pairLane, s Sizes, o pairedOpts) ([]laneResult, error) {
	if s.LatCount <= 0 || s.LatRate <= 0 {
		return nil, fmt.Errorf("bench: %s needs a rate and a count (have %d a second, %d)", pairedName, s.LatRate, s.LatCount)
	}
	blocks := max(1, min(o.blocks, s.LatCount))
	type conn struct {
		pub  paho.Client
		got  chan arrival
		tree bool
	}
	conns := make([]conn, 0, len(lanes))
	var clients []paho.Client
	defer func() {
		for _, c := range clients {
			c.Disconnect(0)
		}
	}()
	for i, l := range lanes {
		got := make(chan arrival, 64)
		sub, err := dial(l.addr, "lat-sub-"+l.variant, func(_ paho.Client, m paho.Message) {
			sent, err := strconv.ParseInt(strings.Trim(string(m.Payload()), `{}"t:`), 10, 64)
			if err != nil {
				return
			}
			select {
			case got <- arrival{sent: sent, lat: time.Since(time.Unix(0, sent))}:
			default: // only late ones pile up: the lane waits for each message
			}
		})
		if err != nil {
			return nil, fmt.Errorf("bench: lane %d %s: %w", i, l.name(), err)
		}
		clients = append(clients, sub)
		filter := "lat/t"
		if l.variant == "tree" {
			filter = "$tree/" + pairedTreeRoot + "/+"
		}
		if err := wait(sub.Subscribe(filter, 0, nil)); err != nil {
			return nil, fmt.Errorf("bench: lane %s: subscribe: %w", l.name(), err)
		}
		pub, err := dial(l.addr, "lat-pub-"+l.variant, nil)
		if err != nil {
			return nil, fmt.Errorf("bench: lane %s: %w", l.name(), err)
		}
		clients = append(clients, pub)
		conns = append(conns, conn{pub: pub, got: got, tree: l.variant == "tree"})
	}
	res := make([]laneResult, len(lanes))
	misses := make([]int, len(lanes))
	for j := range res {
		res[j].blocks = make([][]time.Duration, blocks)
	}
	order := make([]int, len(lanes))
	rng := rand.New(rand.NewPCG(pairedSeed, 0))
	timer := time.NewTimer(o.lostAfter)
	defer timer.Stop()
	tick := time.NewTicker(time.Second / time.Duration(s.LatRate))
	defer tick.Stop()
	for i := range s.LatCount {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("bench: %s: %w after %d of %d ticks", pairedName, ctx.Err(), i, s.LatCount)
		}
		blk := blockOf(i, s.LatCount, blocks)
		for _, j := range tickOrder(order, i, rng, o.shuffle) {
			if res[j].dead {
				continue
			}
			c := conns[j]
			sent := time.Now().UnixNano()
			now := strconv.FormatInt(sent, 10)
			if c.tree {
				c.pub.Publish("$tree/"+pairedTreeRoot, 0, false, `{"t":`+now+`}`)
			} else {
				c.pub.Publish("lat/t", 0, false, now)
			}
			res[j].sent++
			timer.Reset(o.lostAfter)
		waiting:
			for {
				select {
				case a := <-c.got:
					if a.sent != sent {
						res[j].late++ // one given up as lost before
						continue
					}
					res[j].blocks[blk] = append(res[j].blocks[blk], a.lat)
					misses[j] = 0
					timer.Stop()
					break waiting
				case <-timer.C:
					if misses[j]++; misses[j] >= o.deadAfter {
						res[j].dead = true
					}
					break waiting
				case <-ctx.Done():
					return nil, fmt.Errorf("bench: %s: %w after %d of %d ticks", pairedName, ctx.Err(), i, s.LatCount)
				}
			}
		}
	}
	for _, r := range res {
		for _, b := range r.blocks {
			slices.Sort(b)
		}
	}
	return res, nil
}

// runPaired is one round of a paired scenario: every broker started at
// once (each stopped at the end, whatever happens), its lanes run side by
// side, and a Run for each lane. A broker's CPU time is over the whole
// run, all its lanes together (cpu-µs/msg divides it by the messages
// its lanes delivered).
func runPaired(ctx context.Context, sc scenario, brokers []*Broker, s Sizes, round int) []Run {
	var lanes []pairLane
	var laneBroker []*Broker // each lane's
	for _, b := range brokers {
		if b.Tree {
			laneBroker = append(laneBroker, b)
			lanes = append(lanes, pairLane{broker: b.Name, variant: "tree", ext: true})
		}
		laneBroker = append(laneBroker, b)
		lanes = append(lanes, pairLane{broker: b.Name, variant: "plain", ext: b.Tree})
	}
	if len(lanes) == 0 {
		return nil
	}
	runs := make([]Run, len(lanes))
	for i, l := range lanes {
		runs[i] = Run{Scenario: sc.name, Variant: l.variant, Broker: l.broker, Round: round, Unit: sc.unit}
	}
	fail := func(err error) []Run {
		for i := range runs {
			runs[i].Err = err.Error()
		}
		return runs
	}
	var started []*Broker
	defer func() {
		for _, b := range started {
			b.Stop()
		}
	}()
	for _, b := range brokers {
		if err := b.Start(false); err != nil {
			return fail(err)
		}
		started = append(started, b)
	}
	for i := range lanes {
		lanes[i].addr = laneBroker[i].Addr()
	}
	cpu0, sw0 := map[*Broker]time.Duration{}, map[*Broker]int64{}
	for _, b := range brokers {
		cpu0[b], _, _ = b.Usage()
		sw0[b] = ctxSwitches(b.cmd.Process.Pid)
	}
	self0, _, _ := procUsage(os.Getpid())
	wall0 := time.Now()
	ctx, cancel := sc.bound(ctx)
	defer cancel()
	res, err := sc.paired(ctx, lanes, s)
	self1, _, _ := procUsage(os.Getpid())
	wall := time.Since(wall0)
	if err != nil {
		return fail(err)
	}
	cpu, rss, msgs, sw := map[*Broker]time.Duration{}, map[*Broker]int64{}, map[*Broker]int64{}, map[*Broker]int64{}
	for _, b := range brokers {
		c, r, _ := b.Usage()
		cpu[b], rss[b], sw[b] = c-cpu0[b], r, ctxSwitches(b.cmd.Process.Pid)-sw0[b]
	}
	for i, r := range res {
		msgs[laneBroker[i]] += r.delivered()
	}
	for i, r := range res {
		b, all := laneBroker[i], r.all()
		run := &runs[i]
		run.Value, run.Msgs, run.Sent = quantile(all, 0.5), r.delivered(), r.sent
		run.Lost = int64(s.LatCount) - r.delivered()
		run.CPU, run.PeakRSS = cpu[b].Seconds(), rss[b]
		run.LoadCPU, run.Wall = (self1 - self0).Seconds(), wall.Seconds()
		run.Extra = map[string]float64{"p99-µs": quantile(all, 0.99), "p999-µs": quantile(all, 0.999),
			"late": float64(r.late), "lanes": float64(len(lanes))}
		if msgs[b] > 0 {
			run.Extra["cpu-µs/msg"] = cpu[b].Seconds() * 1e6 / float64(msgs[b])
			run.Extra["switches/msg"] = float64(sw[b]) / float64(msgs[b])
		}
		if r.dead {
			run.Extra["dead"] = 1
		}
		for _, blk := range r.blocks {
			run.Blocks = append(run.Blocks, quantile(blk, 0.5))
		}
		for _, j := range versus(lanes, i) {
			run.Pairs = append(run.Pairs, PairRatio{Versus: lanes[j].name(),
				P50: blockRatios(r.blocks, res[j].blocks, 0.5), P99: blockRatios(r.blocks, res[j].blocks, 0.99)})
		}
	}
	return runs
}

// ctxSwitches is how often the threads of process pid alive now have
// been switched off a CPU, waiting or preempted (/proc/PID/task/*/status:
// voluntary and nonvoluntary); 0 if it cannot be read.
func ctxSwitches(pid int) int64 {
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/status")
	var n int64
	for _, t := range tasks {
		status, err := os.ReadFile(t)
		if err != nil {
			continue // a thread that ended
		}
		for _, line := range strings.Split(string(status), "\n") {
			if rest, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				v, _ := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
				n += v
			} else if rest, ok := strings.CutPrefix(line, "nonvoluntary_ctxt_switches:"); ok {
				v, _ := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
				n += v
			}
		}
	}
	return n
}

// pairedRatios pools a paired scenario's block ratios over the rounds:
// for each lane and each lane it is compared with, the median and range
// of every block's p50 ratio and p99 ratio. The lane's variant is named
// as Mote's, with its broker before it unless that is mote.
func pairedRatios(runs []Run, name string) []Ratio {
	type key struct{ broker, variant, versus, what string }
	pooled := map[key][]float64{}
	var order []key
	for _, r := range runs {
		if r.Scenario != name || r.Err != "" {
			continue
		}
		for _, p := range r.Pairs {
			for _, q := range []struct {
				what string
				rs   []float64
			}{{"p50 by block", p.P50}, {"p99 by block", p.P99}} {
				k := key{r.Broker, r.Variant, p.Versus, q.what}
				if _, ok := pooled[k]; !ok {
					order = append(order, k)
				}
				pooled[k] = append(pooled[k], q.rs...)
			}
		}
	}
	var out []Ratio
	for _, k := range order {
		rs := pooled[k]
		if len(rs) == 0 {
			continue
		}
		v := k.variant
		if k.broker != "mote" {
			v = k.broker + "/" + v
		}
		out = append(out, Ratio{Scenario: name, MoteVariant: v, Other: k.versus, What: k.what,
			Median: median(rs), Min: slices.Min(rs), Max: slices.Max(rs)})
	}
	return out
}
