package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/tidwall/gjson"
)

// Sizes scale the scenarios.
type Sizes struct {
	FanInPubs, FanInEach   int // publishers, messages each
	FanOutSubs, FanOutMsgs int // subscribers, messages
	Rows                   int // retained rows of the dashboard load
	// The cluster scenario (cluster.go): its latency's publishes a second
	// and count; writers spread over the nodes and the tree publishes they
	// make together; rows changed while a node is down.
	ClusterLatRate, ClusterLatCount               int
	ClusterWriters, ClusterWrites, CatchUpChanges int
	Devices, DeviceRows                           int // boot storm
	Dashboards, LiveDevices                       int // live dashboard
	LiveRate                                      int // row changes per second
	LiveFor                                       time.Duration
	LatRate, LatCount                             int // latency: publishes per second, count
	StallPubs, StallEach                          int // stalled subscriber: publishers, QoS 1 messages each
	StallSubs                                     int // healthy subscribers beside the stalled one
	GetReps                                       int // http-get: pairs of requests per run (the value is their median)
	FanoutChanges                                 int // sse-fanout: rows changed (each once) …
	FanoutRate                                    int // … at this rate a second, to Dashboards watchers of LiveDevices rows
	IdleStreams                                   int // sse-idle: connections held open
	// The curves (curves.go): each a ladder of sizes, climbed in one run.
	CurvePubs     []int // curve-fan-in: publishers at each point …
	CurveMsgs     int   // … sharing this many QoS 0 messages
	CurveSyncRows []int // curve-snapshot: retained rows at each point
	CurveMemRows  []int // curve-rows: retained rows at each point
	CurveIdle     []int // curve-idle: idle connections at each point
	// CurveSettle is how long the memory curves let a broker settle
	// before they read its RSS.
	CurveSettle time.Duration
}

// DefaultSizes are the sizes (a full run fits in 10 minutes here).
func DefaultSizes() Sizes {
	return Sizes{ClusterLatRate: 100, ClusterLatCount: 1000, ClusterWriters: 12, ClusterWrites: 30_000, CatchUpChanges: 100_000,
		FanInPubs: 100, FanInEach: 1000, FanOutSubs: 1000, FanOutMsgs: 100, Rows: 100_000,
		Devices: 10_000, DeviceRows: 50, Dashboards: 500, LiveDevices: 10_000, LiveRate: 1000, LiveFor: 3 * time.Second,
		LatRate: 1000, LatCount: 3000, StallPubs: 10, StallEach: 2000, StallSubs: 5,
		GetReps: 9, FanoutChanges: 300, FanoutRate: 50, IdleStreams: 10_000,
		CurvePubs: []int{1, 10, 100, 1000}, CurveMsgs: 100_000, CurveSyncRows: []int{1000, 10_000, 100_000, 1_000_000},
		CurveMemRows: []int{10_000, 100_000, 1_000_000}, CurveIdle: []int{0, 1000, 5000}, CurveSettle: time.Second}
}

// SmokeSizes run every scenario in seconds, so the suite cannot rot.
func SmokeSizes() Sizes {
	return Sizes{ClusterLatRate: 100, ClusterLatCount: 100, ClusterWriters: 6, ClusterWrites: 600, CatchUpChanges: 1000,
		FanInPubs: 5, FanInEach: 100, FanOutSubs: 20, FanOutMsgs: 20, Rows: 2000,
		Devices: 100, DeviceRows: 50, Dashboards: 5, LiveDevices: 200, LiveRate: 500, LiveFor: time.Second,
		LatRate: 500, LatCount: 200, StallPubs: 2, StallEach: 200, StallSubs: 2,
		GetReps: 2, FanoutChanges: 100, FanoutRate: 200, IdleStreams: 200,
		CurvePubs: []int{1, 10}, CurveMsgs: 200, CurveSyncRows: []int{100, 1000},
		CurveMemRows: []int{500, 1000}, CurveIdle: []int{0, 20, 50}, CurveSettle: 50 * time.Millisecond}
}

// outcome is what one run of a scenario measured.
type outcome struct {
	value float64 // in the scenario's unit
	msgs  int64   // messages clients received
	bytes int64   // payload bytes clients received
	sent  int64   // publishes clients sent
	lost  int64   // messages that should have arrived and did not
	extra map[string]float64
	// points are a curve scenario's measurements (curves.go).
	points []Point
}

// scenario is one benchmark. A scenario runs on every broker when it is
// plain MQTT (everywhere), and its ratios compare the same variant on each
// broker; the Mote-only variants (trees, sync) are compared with the other
// brokers' "plain" variant of the same scenario.
type scenario struct {
	name, variant, unit string
	higherBetter        bool
	everywhere          bool // plain MQTT: every broker runs it
	noRatio             bool // no ratio line (a variant measured for itself)
	floor               bool // go-floor can serve it (Broker.Floor)
	hold                bool // go-hold can serve it (Broker.Hold): connections that send nothing after CONNECT
	// versus names the variant of the same scenario this one is compared
	// with on the same broker (HTTP against MQTT): its ratio lines.
	versus string
	run    func(ctx context.Context, addr string, s Sizes) (outcome, error)
	// web, instead of run, is a scenario of Mote's HTTP API: it runs on
	// brokers that serve it (Broker.Web), started with HTTP and WebSocket
	// listeners.
	web func(ctx context.Context, t target, s Sizes) (outcome, error)
	// probed, instead of run, is a scenario that reads the broker's CPU
	// time or RSS as it goes (boot-storm, the curves); it runs where run
	// would.
	probed func(ctx context.Context, t target, s Sizes) (outcome, error)
	// timeout bounds one run (default 3 minutes); files is how many
	// open files this process and the broker need (0: the default).
	timeout time.Duration
	files   uint64
	// paired, instead of run, is a scenario of every broker at once
	// (paired.go): one run a round starts them all and measures each of
	// its lanes, a Run for each.
	paired func(ctx context.Context, lanes []pairLane, s Sizes) ([]laneResult, error)
	// cluster, instead of run, is the cluster scenario (cluster.go): one
	// run on a cluster of the broker's nodes measures every variant, the
	// first entry's; clusterPart marks the others.
	cluster, clusterPart bool
}

func scenarios() []scenario {
	return append([]scenario{
		{name: "fan-in", variant: "qos0", unit: "msgs/s", higherBetter: true, everywhere: true, floor: true,
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return fanIn(ctx, a, s, 0) }},
		{name: "fan-in", variant: "qos1", unit: "msgs/s", higherBetter: true, everywhere: true, noRatio: true, floor: true,
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return fanIn(ctx, a, s, 1) }},
		{name: "fan-out", variant: "qos0", unit: "msgs/s", higherBetter: true, everywhere: true, floor: true, run: fanOut},
		{name: "dashboard", variant: "plain", unit: "s", everywhere: true, noRatio: true,
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return dashboard(ctx, a, s, false) }},
		{name: "dashboard", variant: "sync", unit: "s",
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return dashboard(ctx, a, s, true) }},
		{name: "boot-storm", variant: "plain", unit: "s", everywhere: true, noRatio: true,
			probed: func(ctx context.Context, t target, s Sizes) (outcome, error) { return bootStorm(ctx, t, s, false) }},
		{name: "boot-storm", variant: "tree", unit: "s",
			probed: func(ctx context.Context, t target, s Sizes) (outcome, error) { return bootStorm(ctx, t, s, true) }},
		{name: "live-dashboard", variant: "plain", unit: "msgs", everywhere: true, noRatio: true,
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return live(ctx, a, s, "") }},
		{name: "live-dashboard", variant: "sync", unit: "msgs",
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return live(ctx, a, s, "$sync/") }},
		{name: "live-dashboard", variant: "paced", unit: "msgs",
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return live(ctx, a, s, "$sync.250ms/") }},
		{name: "reconnect", variant: "plain", unit: "bytes", everywhere: true, noRatio: true,
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return reconnect(ctx, a, s, "plain") }},
		{name: "reconnect", variant: "sync", unit: "bytes",
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return reconnect(ctx, a, s, "sync") }},
		{name: "reconnect", variant: "resume", unit: "bytes",
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return reconnect(ctx, a, s, "resume") }},
		{name: "latency", variant: "plain", unit: "p50-µs", everywhere: true, noRatio: true, floor: true,
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return latency(ctx, a, s, false) }},
		{name: "latency", variant: "tree", unit: "p50-µs",
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return latency(ctx, a, s, true) }},
		{name: pairedName, variant: "plain", unit: "p50-µs", everywhere: true, noRatio: true, floor: true,
			paired: func(ctx context.Context, lanes []pairLane, s Sizes) ([]laneResult, error) {
				return latencyPaired(ctx, lanes, s, pairedOpts{shuffle: pairedShuffle, blocks: pairedBlocks, lostAfter: pairedLostAfter, deadAfter: pairedDeadAfter})
			}},
		{name: "stalled-sub", variant: "healthy", unit: "pubs/s", higherBetter: true, everywhere: true,
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return stalledSub(ctx, a, s, false) }},
		{name: "stalled-sub", variant: "stalled", unit: "pubs/s", higherBetter: true, everywhere: true,
			run: func(ctx context.Context, a string, s Sizes) (outcome, error) { return stalledSub(ctx, a, s, true) }},
		{name: "http-get", variant: "json", unit: "ms",
			web: func(ctx context.Context, t target, s Sizes) (outcome, error) { return httpGet(ctx, t, s, false) }},
		{name: "http-get", variant: "cbor", unit: "ms",
			web: func(ctx context.Context, t target, s Sizes) (outcome, error) { return httpGet(ctx, t, s, true) }},
		{name: "sse-fanout", variant: "mqtt-ws", unit: "cpu-s", noRatio: true,
			web: func(ctx context.Context, t target, s Sizes) (outcome, error) { return sseFanout(ctx, t, s, false) }},
		{name: "sse-fanout", variant: "sse", unit: "cpu-s", versus: "mqtt-ws",
			web: func(ctx context.Context, t target, s Sizes) (outcome, error) { return sseFanout(ctx, t, s, true) }},
		{name: "sse-idle", variant: "mqtt-ws", unit: "KiB/conn", noRatio: true,
			web: func(ctx context.Context, t target, s Sizes) (outcome, error) { return sseIdle(ctx, t, s, false) }},
		{name: "sse-idle", variant: "sse", unit: "KiB/conn", versus: "mqtt-ws",
			web: func(ctx context.Context, t target, s Sizes) (outcome, error) { return sseIdle(ctx, t, s, true) }},
	}, append(curveScenarios(), clusterScenarios()...)...)
}

func dial(addr, id string, handler paho.MessageHandler) (paho.Client, error) {
	return dialWith(addr, id, handler, nil)
}

// dialWith is dial with a handler for a connection lost (nil: none).
func dialWith(addr, id string, handler paho.MessageHandler, lost func(error)) (paho.Client, error) {
	o := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).SetWriteTimeout(10 * time.Second).
		SetMessageChannelDepth(100_000)
	if handler != nil {
		o.SetDefaultPublishHandler(handler)
	}
	if lost != nil {
		o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost(err) })
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(15*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("bench: connect %s: %v", id, tok.Error())
	}
	return c, nil
}

func wait(t paho.Token) error {
	if !t.WaitTimeout(30 * time.Second) {
		return fmt.Errorf("bench: timed out")
	}
	return t.Error()
}

// waitAll waits for the tokens once there are at least max of them (all,
// with max 0), keeping that many publishes in flight; it returns what is
// left to wait for.
func waitAll(toks []paho.Token, max int) []paho.Token {
	if len(toks) < max {
		return toks
	}
	for _, t := range toks {
		wait(t)
	}
	return toks[:0]
}

// await waits until n reaches want, or stops moving for idle (the first
// arrival may take up to 30 s: a broker still storing what it acked), or
// ctx ends.
func await(ctx context.Context, n *atomic.Int64, want int64, idle time.Duration) {
	start := time.Now()
	for n.Load() == 0 && time.Since(start) < 30*time.Second && ctx.Err() == nil {
		time.Sleep(2 * time.Millisecond)
	}
	last, at := int64(-1), time.Now()
	for n.Load() < want && time.Since(at) < idle && ctx.Err() == nil {
		if v := n.Load(); v != last {
			last, at = v, time.Now()
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func fanIn(ctx context.Context, addr string, s Sizes, qos byte) (outcome, error) {
	return fanInN(ctx, addr, s.FanInPubs, s.FanInEach, qos, "fanin-", nil)
}

// fanInN is pubs publishers (client ids prefix+i) sending each messages
// of 64 bytes at qos to one subscriber (prefix+"sub") of all of them:
// value = messages delivered a second, from the publishers' start to the
// last arrival. With cpu (the broker's CPU time) the publishers connect
// first, stagedConnects at a time, and start together once all are
// connected; the clock starts then, and extra "cpu-s" is the broker's CPU
// time from then to the last arrival. Without, each publishes as soon as
// it is connected, and the clock includes the connects.
func fanInN(ctx context.Context, addr string, pubs, each int, qos byte, prefix string, cpu func() time.Duration) (outcome, error) {
	var got, bytes atomic.Int64
	var lastAt atomic.Int64
	sub, err := dial(addr, prefix+"sub", func(_ paho.Client, m paho.Message) {
		got.Add(1)
		bytes.Add(int64(len(m.Payload())))
		lastAt.Store(time.Now().UnixNano())
	})
	if err != nil {
		return outcome{}, err
	}
	defer sub.Disconnect(0)
	if err := wait(sub.Subscribe("fan/#", qos, nil)); err != nil {
		return outcome{}, err
	}
	payload := strings.Repeat("x", 64)
	publish := func(p int, c paho.Client) {
		var last paho.Token
		for range each {
			last = c.Publish(fmt.Sprint("fan/", p), qos, false, payload)
		}
		wait(last)
	}
	start := time.Now()
	var cpu0 time.Duration
	if cpu != nil {
		err = stagedPublishers(addr, prefix, pubs, func() { start, cpu0 = time.Now(), cpu() }, publish)
	} else {
		err = publishers(addr, prefix, pubs, publish)
	}
	if err != nil {
		return outcome{}, err
	}
	total := int64(pubs * each)
	await(ctx, &got, total, 2*time.Second)
	elapsed := time.Duration(lastAt.Load() - start.UnixNano())
	if elapsed <= 0 {
		elapsed = time.Since(start)
	}
	o := outcome{value: float64(got.Load()) / elapsed.Seconds(), msgs: got.Load(), bytes: bytes.Load(), sent: total, lost: total - got.Load()}
	if cpu != nil {
		o.extra = map[string]float64{"cpu-s": (cpu() - cpu0).Seconds()}
	}
	return o, nil
}

func fanOut(ctx context.Context, addr string, s Sizes) (outcome, error) {
	var got atomic.Int64
	var lastAt atomic.Int64
	subs := make([]paho.Client, 0, s.FanOutSubs)
	defer func() {
		for _, c := range subs {
			c.Disconnect(0)
		}
	}()
	for i := range s.FanOutSubs {
		c, err := dial(addr, fmt.Sprint("out-", i), func(paho.Client, paho.Message) { got.Add(1); lastAt.Store(time.Now().UnixNano()) })
		if err != nil {
			return outcome{}, err
		}
		subs = append(subs, c)
		if err := wait(c.Subscribe("out/t", 0, nil)); err != nil {
			return outcome{}, err
		}
	}
	pub, err := dial(addr, "out-pub", nil)
	if err != nil {
		return outcome{}, err
	}
	defer pub.Disconnect(0)
	start := time.Now()
	payload := strings.Repeat("y", 64)
	for range s.FanOutMsgs {
		pub.Publish("out/t", 0, false, payload)
	}
	total := int64(s.FanOutSubs * s.FanOutMsgs)
	await(ctx, &got, total, 2*time.Second)
	elapsed := time.Duration(lastAt.Load() - start.UnixNano())
	if elapsed <= 0 {
		elapsed = time.Since(start)
	}
	return outcome{value: float64(got.Load()) / elapsed.Seconds(), msgs: got.Load(), sent: int64(s.FanOutMsgs), lost: total - got.Load()}, nil
}

// loadRows publishes rows dev/dNNNNNN/state retained, over a few
// connections, at QoS 1 so every broker has them all.
func loadRows(addr string, rows int, prefix string) error {
	const conns = 8
	return publishers(addr, prefix+"-load-", conns, func(w int, c paho.Client) {
		var toks []paho.Token
		for i := w; i < rows; i += conns {
			toks = append(toks, c.Publish(fmt.Sprintf("dev/d%06d/state", i), 1, true, strconv.Itoa(i%2)))
			toks = waitAll(toks, 1000)
		}
		waitAll(toks, 0)
	})
}

// publishers runs n load clients at once, client i connected as prefix+i
// and handed to publish; it returns when all are done (and disconnected),
// with the first failure to connect.
func publishers(addr, prefix string, n int, publish func(i int, c paho.Client)) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial(addr, fmt.Sprint(prefix, i), nil)
			if err != nil {
				errs <- err
				return
			}
			defer c.Disconnect(500)
			publish(i, c)
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func dashboard(ctx context.Context, addr string, s Sizes, snap bool) (outcome, error) {
	if err := loadRows(addr, s.Rows, "dash"); err != nil {
		return outcome{}, err
	}
	time.Sleep(200 * time.Millisecond) // let the broker settle
	var got, bytes atomic.Int64
	done := make(chan struct{})
	var once sync.Once
	c, err := dial(addr, "dash-sub", func(_ paho.Client, m paho.Message) {
		bytes.Add(int64(len(m.Payload())))
		if !snap {
			got.Add(1)
			return
		}
		// Count the rows as the plain clients do: without decoding values.
		var rows int64
		gjson.ParseBytes(m.Payload()).ForEach(func(_, _ gjson.Result) bool { rows++; return true })
		got.Store(rows)
		once.Do(func() { close(done) })
	})
	if err != nil {
		return outcome{}, err
	}
	defer c.Disconnect(0)
	filter := "dev/+/state"
	if snap {
		filter = "$sync/" + filter
	}
	start := time.Now()
	if err := wait(c.Subscribe(filter, 0, nil)); err != nil {
		return outcome{}, err
	}
	if snap {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
		}
	} else {
		await(ctx, &got, int64(s.Rows), 2*time.Second)
	}
	el := time.Since(start)
	return outcome{value: el.Seconds(), msgs: got.Load(), bytes: bytes.Load(), lost: int64(s.Rows) - got.Load()}, nil
}

// deviceTree is one device's rows as a JSON tree.
func deviceTree(d, rows int) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range rows {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"r%02d":%d`, i, d+i)
	}
	b.WriteString("}")
	return b.String()
}

// bootStorm is the boot storm: s.Devices devices publish s.DeviceRows
// retained rows each at QoS 1 over 50 connections, as one tree publish
// (tree) or one plain publish a row; value = the seconds until the last is
// acknowledged. The broker's CPU is read twice: once the storm is wholly
// done (storm-cpu-s: every publish applied, see stormDone, and then the
// broker quiet, so Mote's commits to its store are in: quietCPU), and after the check that follows (check-cpu-s):
// a wildcard subscriber counts the retained rows, a replay of every row
// that every broker pays alike.
func bootStorm(ctx context.Context, t target, s Sizes, tree bool) (outcome, error) {
	const conns = 50
	addr := t.TCP
	cpu0 := t.cpu()
	start := time.Now()
	var sent atomic.Int64
	err := publishers(addr, "boot-", conns, func(w int, c paho.Client) {
		var toks []paho.Token
		for d := w; d < s.Devices; d += conns {
			if tree {
				toks = append(toks, c.Publish(fmt.Sprintf("$tree/boot/d%05d", d), 1, true, deviceTree(d, s.DeviceRows)))
				sent.Add(1)
			} else {
				for r := range s.DeviceRows {
					toks = append(toks, c.Publish(fmt.Sprintf("boot/d%05d/r%02d", d, r), 1, true, strconv.Itoa(d+r)))
					sent.Add(1)
				}
			}
			toks = waitAll(toks, 500)
		}
		waitAll(toks, 0)
	})
	if err != nil {
		return outcome{}, err
	}
	el := time.Since(start)
	if err := stormDone(ctx, addr, t.b.Tree); err != nil {
		return outcome{}, err
	}
	done := time.Since(start)
	extra := map[string]float64{"done-s": done.Seconds()}
	if sv := t.b.saves; sv != nil && !tree {
		// A broker that saves its whole state now and then
		// (mosquitto-persist) has every row on disk once a save begun
		// after the storm has ended: its storm CPU runs until then.
		if err := savedStorm(ctx, t, s, sv, start, extra); err != nil {
			return outcome{}, err
		}
	}
	// Work a broker does after answering: Mote commits rows to its store
	// off the message loop, and its $hist answer waits for those commits
	// only when history rules are configured (none here).
	quiet := time.Now()
	cpu1 := quietCPU(ctx, t.cpu)
	extra["quiet-s"] = time.Since(quiet).Seconds()
	// Check nothing was lost: count the retained rows.
	var got atomic.Int64
	c, err := dial(addr, "boot-check", func(_ paho.Client, m paho.Message) {
		if m.Retained() {
			got.Add(1)
		}
	})
	if err != nil {
		return outcome{}, err
	}
	defer c.Disconnect(0)
	want := int64(s.Devices * s.DeviceRows)
	if err := wait(c.Subscribe("boot/+/+", 0, nil)); err != nil {
		return outcome{}, err
	}
	await(ctx, &got, want, 2*time.Second)
	cpu2 := t.cpu()
	extra["all-stored-s"] = time.Since(start).Seconds()
	extra["storm-cpu-s"], extra["check-cpu-s"] = (cpu1 - cpu0).Seconds(), (cpu2 - cpu1).Seconds()
	return outcome{value: el.Seconds(), sent: sent.Load(), msgs: got.Load(), lost: want - got.Load(), extra: extra}, nil
}

// savedStorm waits, after a boot storm, for the first save that holds
// every row (saver.saveAfter) and checks that the database it wrote is of
// the size the storm's rows take (checkSaved). Its notes: saved-s, from
// the storm's start until that save ended; final-save-cpu-s, the broker's
// CPU from the storm done until then (that save, the broker otherwise
// idle); saves, how many saves had begun by then; db-bytes.
func savedStorm(ctx context.Context, t target, s Sizes, sv *saver, start time.Time, extra map[string]float64) error {
	cpu := t.cpu()
	n, err := sv.begun(t.b.dir)
	if err != nil {
		return err
	}
	size, err := sv.saveAfter(ctx, t.b.dir, n)
	if err != nil {
		return err
	}
	extra["saved-s"], extra["final-save-cpu-s"] = time.Since(start).Seconds(), (t.cpu() - cpu).Seconds()
	saves, err := sv.begun(t.b.dir)
	if err != nil {
		return err
	}
	extra["saves"], extra["db-bytes"] = float64(saves), float64(size)
	var data int64
	for d := range s.Devices {
		for r := range s.DeviceRows {
			data += int64(len(fmt.Sprintf("boot/d%05d/r%02d", d, r)) + len(strconv.Itoa(d+r)))
		}
	}
	return checkSaved(size, int64(s.Devices*s.DeviceRows), data)
}

// quietCPU returns the broker's CPU time once it has gone quiet: under
// quietShare of one core over quietWindow, checked window after window
// for at most a minute (it returns what it read then).
func quietCPU(ctx context.Context, cpu func() time.Duration) time.Duration {
	last := cpu()
	for end := time.Now().Add(time.Minute); time.Now().Before(end) && ctx.Err() == nil; {
		time.Sleep(quietWindow)
		now := cpu()
		if now-last < time.Duration(quietShare*float64(quietWindow)) {
			return now
		}
		last = now
	}
	return last
}

// A broker is quiet when it used under 2% of a core over 250 ms.
const (
	quietWindow = 250 * time.Millisecond
	quietShare  = 0.02
)

// stormDone returns once the broker has done all the work of the publishes
// acknowledged before it is called. On Mote (mote) a QoS 1 publish is
// acknowledged once handed to its message loop: a $hist subscription's
// answer waits for the loop to apply everything handed in before it (and,
// only with history rules, for the retainer to commit it: the caller
// waits for the broker's CPU to go quiet, quietCPU). On mochi and Mosquitto, which apply a publish
// before they acknowledge it, a marker message's round trip after the
// acknowledgements is the barrier.
func stormDone(ctx context.Context, addr string, mote bool) error {
	got := make(chan struct{}, 1)
	c, err := dial(addr, "boot-barrier", func(paho.Client, paho.Message) {
		select {
		case got <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return err
	}
	defer c.Disconnect(0)
	filter := "boot-marker"
	if mote {
		filter = "$hist/boot/d00000/r00"
	}
	if err := wait(c.Subscribe(filter, 1, nil)); err != nil {
		return err
	}
	if !mote {
		if err := wait(c.Publish(filter, 1, false, "done")); err != nil {
			return err
		}
	}
	select {
	case <-got:
		return nil
	case <-time.After(time.Minute):
		return fmt.Errorf("bench: no answer on %s within a minute", filter)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// live is the live dashboard: s.Dashboards subscribers of dev/+/state
// (plain, or a tree subscription with prefix) while s.LiveRate changes a
// second come for s.LiveFor, each to its own device's row. Every change
// is a row every subscriber must get: the run waits until each has all of
// them, or nothing arrives for liveIdle (a plain subscriber first drains
// its retained replay), and counts the rows delivered (plain: messages;
// trees: the rows in its deltas; each change once per subscriber), the
// duplicates, and lost = changes × subscribers − delivered.
//
// Its times: drain-s from the last publish to the end of the wait, and,
// since a broker may replay the retained rows before it acknowledges the
// next SUBSCRIBE (the subscribers subscribe one after another) or after,
// so that the replays fall before or after the publishes, times from the
// first subscriber's connect: subscribed-s (the last SUBACK), replayed-s
// (the last retained row any subscriber got), done-s (the end of the
// wait); publish-s: the publishes' own time. lag-*-s: each live row's
// delay from its publish to a subscriber; bench-cpu-s: this process's CPU
// (the subscribers' reading) over the run.
//
// The subscribers are liveSub clients (raw MQTT 3.1.1, keep-alive 0, one
// goroutine each): they never end a connection for their own slowness, so
// disconnects counts only connections the broker or the socket ended, and
// the rows those subscribers missed are lost.
func live(ctx context.Context, addr string, s Sizes, prefix string) (outcome, error) {
	snap := prefix != ""
	if err := loadRows(addr, s.LiveDevices, "live"); err != nil {
		return outcome{}, err
	}
	changes := int(s.LiveFor.Seconds() * float64(s.LiveRate))
	subs := make([]*liveSub, 0, s.Dashboards)
	defer func() {
		for _, c := range subs {
			c.close()
		}
	}()
	filter := prefix + "dev/+/state"
	start := time.Now()
	cpu0, _, _ := procUsage(os.Getpid())
	t := newLiveTally(changes, snap, start)
	seen := make([]*liveSeen, s.Dashboards)
	for i := range s.Dashboards {
		sn := t.subscriber()
		seen[i] = sn
		c, err := dialLive(addr, fmt.Sprint("live-", i), filter,
			func(retained bool, payload []byte) { t.take(sn, retained, payload) },
			func(error) { t.dropped.Add(1) })
		if err != nil {
			return outcome{}, err
		}
		subs = append(subs, c)
	}
	subscribed := time.Since(start)
	if snap {
		await(ctx, &t.ready, int64(s.Dashboards), 5*time.Second)
	} else {
		time.Sleep(time.Second) // let the retained replays start
	}
	pub, err := dial(addr, "live-pub", nil)
	if err != nil {
		return outcome{}, err
	}
	defer pub.Disconnect(0)
	// Change i is due at i/LiveRate after the first: one that comes late
	// (this process busy reading) is published at once, so the changes
	// come at the scenario's rate whatever the broker makes the
	// subscribers do (a ticker drops its ticks while no one reads them).
	pubStart := time.Now()
	for i := range changes {
		time.Sleep(time.Until(pubStart.Add(time.Duration(i) * time.Second / time.Duration(s.LiveRate))))
		t.published[i].Store(int64(time.Since(start)))
		pub.Publish(fmt.Sprintf("dev/d%06d/state", i%s.LiveDevices), 0, true, strconv.Itoa(liveBase+i))
	}
	end := time.Now()
	awaitProgress(ctx, &t.rows, int64(changes*s.Dashboards), &t.arrived, liveIdle)
	done := time.Since(start)
	cpu1, _, _ := procUsage(os.Getpid())
	got := t.rows.Load()
	out := outcome{value: float64(t.msgs.Load()), msgs: t.msgs.Load(), bytes: t.bytes.Load(), sent: int64(changes), lost: t.lost(s.Dashboards),
		extra: map[string]float64{"rows-delivered": float64(got), "dups": float64(t.dups.Load()), "not-live": float64(t.notLive.Load()),
			"retained": float64(t.retained.Load()), "drain-s": time.Since(end).Seconds(),
			"disconnects":  float64(t.dropped.Load()),
			"subscribed-s": subscribed.Seconds(), "publish-s": end.Sub(pubStart).Seconds(), "done-s": done.Seconds(), "bench-cpu-s": (cpu1 - cpu0).Seconds()}}
	var lags []time.Duration
	var replayed time.Duration
	for _, sn := range seen {
		sn.mu.Lock()
		lags = append(lags, sn.lags...)
		replayed = max(replayed, sn.lastRetained)
		sn.mu.Unlock()
	}
	if !snap {
		out.extra["replayed-s"] = replayed.Seconds()
	}
	if len(lags) > 0 {
		slices.Sort(lags)
		q := func(f float64) float64 { return lags[min(len(lags)-1, int(f*float64(len(lags))))].Seconds() }
		out.extra["lag-p50-s"], out.extra["lag-p99-s"], out.extra["lag-max-s"] = q(0.5), q(0.99), lags[len(lags)-1].Seconds()
	}
	if ctx.Err() != nil {
		out.extra["timed-out"] = 1 // the run's deadline ended the wait: lost includes rows still on their way
	}
	return out, nil
}

// liveIdle is how long the live dashboard waits for a message before it
// counts what has not arrived as lost.
const liveIdle = 3 * time.Second

// awaitProgress waits until n reaches want, or nothing arrives (progress
// stands still) for idle, or ctx ends.
func awaitProgress(ctx context.Context, n *atomic.Int64, want int64, progress *atomic.Int64, idle time.Duration) {
	last, at := int64(-1), time.Now()
	for n.Load() < want && time.Since(at) < idle && ctx.Err() == nil {
		if v := progress.Load(); v != last {
			last, at = v, time.Now()
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// forLeaves calls fn with every value of a JSON tree that is not an
// object: the rows of a tree message.
func forLeaves(r gjson.Result, fn func(gjson.Result)) {
	if !r.IsObject() {
		fn(r)
		return
	}
	r.ForEach(func(_, v gjson.Result) bool { forLeaves(v, fn); return true })
}

func latency(ctx context.Context, addr string, s Sizes, tree bool) (outcome, error) {
	var mu sync.Mutex
	var lat []time.Duration
	sub, err := dial(addr, "lat-sub", func(_ paho.Client, m paho.Message) {
		p := strings.Trim(string(m.Payload()), `{}"t:`)
		ns, err := strconv.ParseInt(p, 10, 64)
		if err != nil {
			return
		}
		mu.Lock()
		lat = append(lat, time.Since(time.Unix(0, ns)))
		mu.Unlock()
	})
	if err != nil {
		return outcome{}, err
	}
	defer sub.Disconnect(0)
	filter := "lat/t"
	if tree {
		filter = "$tree/lat/+"
	}
	if err := wait(sub.Subscribe(filter, 0, nil)); err != nil {
		return outcome{}, err
	}
	pub, err := dial(addr, "lat-pub", nil)
	if err != nil {
		return outcome{}, err
	}
	defer pub.Disconnect(0)
	tick := time.NewTicker(time.Second / time.Duration(s.LatRate))
	defer tick.Stop()
	for range s.LatCount {
		<-tick.C
		now := strconv.FormatInt(time.Now().UnixNano(), 10)
		if tree {
			pub.Publish("$tree/lat", 0, false, `{"t":`+now+`}`)
		} else {
			pub.Publish("lat/t", 0, false, now)
		}
	}
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(lat) == 0 {
		return outcome{}, fmt.Errorf("bench: no latency samples")
	}
	slices.Sort(lat)
	q := func(f float64) float64 { return float64(lat[min(len(lat)-1, int(f*float64(len(lat))))].Microseconds()) }
	return outcome{value: q(0.5), msgs: int64(len(lat)), sent: int64(s.LatCount),
		extra: map[string]float64{"p99-µs": q(0.99), "p999-µs": q(0.999)}}, nil
}

// stalledSub measures QoS 1 publishers' throughput (acknowledged publishes
// a second) to subscribers that keep up, with and without one more
// subscriber that reads but never acknowledges (MQTT 5, Receive Maximum
// 1): a broker should not make publishers wait for it. Healthy
// subscribers must still get every message.
func stalledSub(ctx context.Context, addr string, s Sizes, stall bool) (outcome, error) {
	if stall {
		c, err := stalledClient(addr, "stall/#")
		if err != nil {
			return outcome{}, err
		}
		defer c.Close()
	}
	var got atomic.Int64
	var subs []paho.Client
	defer func() {
		for _, c := range subs {
			c.Disconnect(0)
		}
	}()
	for i := range s.StallSubs {
		c, err := dial(addr, fmt.Sprint("stall-sub-", i), func(paho.Client, paho.Message) { got.Add(1) })
		if err != nil {
			return outcome{}, err
		}
		subs = append(subs, c)
		if err := wait(c.Subscribe("stall/#", 1, nil)); err != nil {
			return outcome{}, err
		}
	}
	payload := strings.Repeat("s", 64)
	start := time.Now()
	err := publishers(addr, "stall-pub-", s.StallPubs, func(p int, c paho.Client) {
		var toks []paho.Token
		for range s.StallEach {
			toks = append(toks, c.Publish(fmt.Sprint("stall/", p), 1, false, payload))
			toks = waitAll(toks, 100)
		}
		waitAll(toks, 0)
	})
	if err != nil {
		return outcome{}, err
	}
	elapsed := time.Since(start)
	sent := int64(s.StallPubs * s.StallEach)
	want := sent * int64(s.StallSubs)
	await(ctx, &got, want, 2*time.Second)
	return outcome{value: float64(sent) / elapsed.Seconds(), msgs: got.Load(), sent: sent, lost: want - got.Load()}, nil
}

// stalledClient connects a raw MQTT 5 client with Receive Maximum 1 that
// subscribes to filter at QoS 1, reads everything and acknowledges nothing.
func stalledClient(addr, filter string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	id := "stalled"
	connect := []byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 3, 0x21, 0, 1, 0, byte(len(id))}
	connect = append(connect, id...)
	sub := []byte{0, 1, 0, 0, byte(len(filter))}
	sub = append(append(sub, filter...), 1)
	var out []byte
	out = append(append(append(out, 0x10), remaining(len(connect))...), connect...)
	out = append(append(append(out, 0x82), remaining(len(sub))...), sub...)
	if _, err := c.Write(out); err != nil {
		c.Close()
		return nil, err
	}
	go io.Copy(io.Discard, c) //nolint:errcheck // reads until closed, acknowledges nothing
	time.Sleep(100 * time.Millisecond)
	return c, nil
}

// remaining is an MQTT remaining-length varint.
func remaining(n int) []byte {
	var out []byte
	for {
		b := byte(n % 128)
		if n /= 128; n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			return out
		}
	}
}
