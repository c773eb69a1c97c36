package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/tidwall/gjson"

	"github.com/mote-mqtt/mote/clients/client"
)

// The cluster scenario (SPEC §12, docs/cluster.md): three `mote broker
// --cluster…` nodes, child processes of the bench with their embedded
// NATS nodes routed to each other on 127.0.0.1, started once a round and
// measured in turn:
//
//   - latency: a tree publish (QoS 1, retained) on node 0 until its delta
//     reaches a $sync subscriber on node 2, p50 and p99;
//   - write: acknowledged tree publishes a second, writers on every node;
//   - alone: the same writers on one `mote broker` without a cluster
//     (started after the cluster stopped), so write/alone is what the
//     replicated log costs;
//   - catch-up: node 2 killed (SIGKILL), CatchUpChanges rows changed on the
//     others, node 2 restarted on its data directory: seconds until a
//     $sync subscriber on it has the whole snapshot (the node answers MQTT
//     only once caught up), and until it accepts a CONNECT.
//
// Its runs' CPU is the sum of the nodes' during that measurement, their
// peak RSS the largest node's.

// clusterNodes is how many nodes the cluster scenario runs.
const clusterNodes = 3

// clusterScenarios are the cluster scenario's variants: one run
// (clusterRound) measures them all on one cluster, so the first entry
// runs and the others only name their variants (for the tables).
func clusterScenarios() []scenario {
	return []scenario{
		{name: "cluster", variant: "latency", unit: "p50-µs", noRatio: true, cluster: true},
		{name: "cluster", variant: "write", unit: "writes/s", higherBetter: true, noRatio: true, versus: "alone", cluster: true, clusterPart: true},
		{name: "cluster", variant: "alone", unit: "writes/s", higherBetter: true, noRatio: true, cluster: true, clusterPart: true},
		{name: "cluster", variant: "catch-up", unit: "s", noRatio: true, cluster: true, clusterPart: true},
	}
}

// runScenario runs one scenario on one broker: one run, or for the
// cluster scenario one run of each of its variants.
func runScenario(ctx context.Context, sc scenario, b *Broker, s Sizes, round int) []Run {
	switch {
	case sc.clusterPart:
		return nil // clusterRound's
	case sc.cluster:
		return clusterRound(ctx, b, s, round)
	}
	return []Run{runOne(ctx, sc, b, s, round)}
}

// LockedBuffer is a child process's output: written by exec's copier,
// read by whoever watches the child (safe for concurrent use).
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String is what was written so far.
func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// clusterNode is one node's process.
type clusterNode struct {
	addr, route, dir string
	cmd              *exec.Cmd
	logs             *LockedBuffer
	done             chan struct{} // closed once the process is reaped
}

// moteCluster is clusterNodes `mote broker --cluster` processes of one
// binary, in a temporary directory.
type moteCluster struct {
	bin    string
	dir    string
	routes []string
	nodes  []*clusterNode
	spent  time.Duration // CPU time of the nodes' processes killed so far
}

// startCluster starts the nodes together (JetStream waits for its peers)
// and returns once every one listens for MQTT, within 2 minutes.
func startCluster(ctx context.Context, bin string) (*moteCluster, error) {
	dir, err := os.MkdirTemp("", "mote-bench-cluster")
	if err != nil {
		return nil, err
	}
	c := &moteCluster{bin: bin, dir: dir}
	for i := range clusterNodes {
		tcp, err := freePort()
		if err != nil {
			c.stop()
			return nil, err
		}
		route, err := freePort()
		if err != nil {
			c.stop()
			return nil, err
		}
		c.routes = append(c.routes, route)
		c.nodes = append(c.nodes, &clusterNode{addr: tcp, route: route, dir: filepath.Join(dir, fmt.Sprint("n", i))})
	}
	for i := range c.nodes {
		if err := c.spawn(i); err != nil {
			c.stop()
			return nil, err
		}
	}
	for i := range c.nodes {
		if err := c.waitListen(ctx, i, 2*time.Minute); err != nil {
			c.stop()
			return nil, err
		}
	}
	return c, nil
}

// spawn starts node i's process (again, on its data directory).
func (c *moteCluster) spawn(i int) error {
	n := c.nodes[i]
	n.logs = &LockedBuffer{}
	n.cmd = exec.Command(c.bin, "broker", "--tcp", n.addr, "--ws", "off", "--http", "off", "--data", n.dir,
		"--log-level", "warn", "--cluster", "bench", "--cluster-node", fmt.Sprint("n", i),
		"--cluster-listen", n.route, "--cluster-routes", strings.Join(c.routes, ","))
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	if err := n.cmd.Start(); err != nil {
		n.cmd = nil
		return fmt.Errorf("bench: start cluster node %d: %w", i, err)
	}
	n.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(n.cmd, n.done)
	return nil
}

// waitListen waits until node i accepts TCP connections, at most within.
func (c *moteCluster) waitListen(ctx context.Context, i int, within time.Duration) error {
	n := c.nodes[i]
	deadline := time.Now().Add(within)
	for {
		if conn, err := net.Dial("tcp", n.addr); err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-n.done:
			return fmt.Errorf("bench: cluster node %d exited: %s", i, n.logs)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: cluster node %d not listening within %v: %s", i, within, n.logs)
		}
	}
}

// kill ends node i with SIGKILL and reaps it.
func (c *moteCluster) kill(i int) {
	n := c.nodes[i]
	if n.cmd == nil {
		return
	}
	cpu, _, _ := procUsage(n.cmd.Process.Pid)
	c.spent += cpu
	n.cmd.Process.Kill()
	<-n.done
	n.cmd = nil
}

// stop ends every node (SIGINT, then SIGKILL after 10 s) and removes the
// data.
func (c *moteCluster) stop() {
	for _, n := range c.nodes {
		if n.cmd != nil {
			n.cmd.Process.Signal(os.Interrupt)
		}
	}
	for i, n := range c.nodes {
		if n.cmd == nil {
			continue
		}
		select {
		case <-n.done:
			n.cmd = nil
		case <-time.After(10 * time.Second):
			c.kill(i)
		}
	}
	os.RemoveAll(c.dir)
}

// dumpLogs writes the nodes' logs to a file in the temporary directory
// (a run that failed or lost writes) and says where.
func (c *moteCluster) dumpLogs() string {
	f, err := os.CreateTemp("", "mote-bench-cluster-*.log")
	if err != nil {
		return ""
	}
	defer f.Close()
	for i, n := range c.nodes {
		if n.logs != nil {
			fmt.Fprintf(f, "== node %d (%s)\n%s\n", i, n.addr, n.logs)
		}
	}
	return " (nodes' logs: " + f.Name() + ")"
}

// usage is the nodes' CPU time so far (summed, killed processes'
// included) and the largest peak RSS of the running ones.
func (c *moteCluster) usage() (time.Duration, int64) {
	cpu := c.spent
	var rss int64
	for _, n := range c.nodes {
		if n.cmd == nil {
			continue
		}
		u, r, _ := procUsage(n.cmd.Process.Pid)
		cpu, rss = cpu+u, max(rss, r)
	}
	return cpu, rss
}

// clusterRound measures the cluster scenario's variants once on broker
// b's binary (b must be Mote: Broker.Cluster).
func clusterRound(ctx context.Context, b *Broker, s Sizes, round int) []Run {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	run := func(variant, unit string) Run {
		return Run{Scenario: "cluster", Variant: variant, Broker: b.Name, Round: round, Unit: unit}
	}
	failAll := func(err error) []Run {
		var out []Run
		for _, sc := range clusterScenarios() {
			r := run(sc.variant, sc.unit)
			r.Err = err.Error()
			out = append(out, r)
		}
		return out
	}
	start := time.Now()
	c, err := startCluster(ctx, b.bin)
	if err != nil {
		return failAll(err)
	}
	formed := time.Since(start)
	measure := func(r Run, f func() (outcome, error)) Run {
		cpu0, _ := c.usage()
		o, err := f()
		cpu1, rss := c.usage()
		if err != nil {
			r.Err = err.Error()
		}
		r.Value, r.Msgs, r.Bytes, r.Sent, r.Lost, r.Extra = o.value, o.msgs, o.bytes, o.sent, o.lost, o.extra
		r.CPU, r.PeakRSS = (cpu1 - cpu0).Seconds(), rss
		return r
	}
	var out []Run
	lat := measure(run("latency", "p50-µs"), func() (outcome, error) {
		return clusterLatency(ctx, c.nodes[0].addr, c.nodes[clusterNodes-1].addr, s)
	})
	if lat.Err != "" {
		lat.Err += c.dumpLogs()
	}
	if lat.Extra == nil {
		lat.Extra = map[string]float64{}
	}
	lat.Extra["form-s"] = formed.Seconds() // the cluster's start, to every node listening
	out = append(out, lat)
	var addrs []string
	for _, n := range c.nodes {
		addrs = append(addrs, n.addr)
	}
	out = append(out, measure(run("write", "writes/s"), func() (outcome, error) { return clusterWrites(ctx, addrs, s, "cw") }))
	out = append(out, measure(run("catch-up", "s"), func() (outcome, error) { return catchUp(ctx, c, s) }))
	for _, r := range out[1:] {
		if r.Err != "" || r.Lost > 0 {
			out[len(out)-1].Err += c.dumpLogs()
			break
		}
	}
	c.stop()

	// The same writers on one node alone, no cluster.
	alone := run("alone", "writes/s")
	if err := b.Start(false); err != nil {
		alone.Err = err.Error()
	} else {
		cpu0, _, _ := b.Usage()
		addrs := make([]string, clusterNodes)
		for i := range addrs {
			addrs[i] = b.Addr()
		}
		o, err := clusterWrites(ctx, addrs, s, "aw")
		cpu1, rss, _ := b.Usage()
		b.Stop()
		if err != nil {
			alone.Err = err.Error()
		}
		alone.Value, alone.Sent, alone.Lost, alone.Extra = o.value, o.sent, o.lost, o.extra
		alone.CPU, alone.PeakRSS = (cpu1 - cpu0).Seconds(), rss
	}
	// In the order of clusterScenarios.
	return append(out[:1], append([]Run{out[1], alone}, out[2:]...)...)
}

// clusterLatency: a tree publish (QoS 1, retained) on from,
// s.ClusterLatRate a second, s.ClusterLatCount of them, each carrying its
// send time; a $sync subscriber on to takes each delta's arrival. Deltas
// that fold several publishes count the newest. The rate stays below what
// one client can write (a node answers a client's QoS 1 publishes one
// after the other, each once it came back through the log), so the
// figure is the path's latency, not a queue's.
func clusterLatency(ctx context.Context, from, to string, s Sizes) (outcome, error) {
	var mu sync.Mutex
	var lat []time.Duration
	sub, err := dial(to, "clat-sub", func(_ paho.Client, m paho.Message) {
		ns := gjson.GetBytes(m.Payload(), "t").Int()
		if ns == 0 {
			return // the snapshot, before the first publish
		}
		mu.Lock()
		lat = append(lat, time.Since(time.Unix(0, ns)))
		mu.Unlock()
	})
	if err != nil {
		return outcome{}, err
	}
	defer sub.Disconnect(0)
	if err := wait(sub.Subscribe("$sync/clat/+", 0, nil)); err != nil {
		return outcome{}, err
	}
	pub, err := dial(from, "clat-pub", nil)
	if err != nil {
		return outcome{}, err
	}
	defer pub.Disconnect(0)
	tick := time.NewTicker(time.Second / time.Duration(s.ClusterLatRate))
	defer tick.Stop()
	var toks []paho.Token
	failed := int64(0)
	for range s.ClusterLatCount {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return outcome{}, ctx.Err()
		}
		toks = append(toks, pub.Publish("$tree/clat", 1, true, `{"t":`+strconv.FormatInt(time.Now().UnixNano(), 10)+`}`))
		if len(toks) >= 1000 {
			for _, t := range toks {
				if wait(t) != nil {
					failed++
				}
			}
			toks = toks[:0]
		}
	}
	for _, t := range toks {
		if wait(t) != nil {
			failed++
		}
	}
	time.Sleep(500 * time.Millisecond) // the last deltas
	mu.Lock()
	defer mu.Unlock()
	if len(lat) == 0 {
		return outcome{}, errors.New("bench: cluster latency: no delta reached the other node")
	}
	slices.Sort(lat)
	q := func(f float64) float64 { return float64(lat[min(len(lat)-1, int(f*float64(len(lat))))].Microseconds()) }
	return outcome{value: q(0.5), msgs: int64(len(lat)), sent: int64(s.ClusterLatCount), lost: failed,
		extra: map[string]float64{"p99-µs": q(0.99), "max-µs": q(1)}}, nil
}

// clusterWrites: s.ClusterWriters writers spread over addrs, together
// s.ClusterWrites tree publishes (QoS 1, retained, one row of 50 each
// writer owns), up to 100 in flight each; value = acknowledged publishes
// a second. A publish refused or unanswered within 30 s is lost.
func clusterWrites(ctx context.Context, addrs []string, s Sizes, prefix string) (outcome, error) {
	per := max(1, s.ClusterWrites/s.ClusterWriters)
	var acked, lost atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, s.ClusterWriters)
	start := time.Now()
	for w := range s.ClusterWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial(addrs[w%len(addrs)], fmt.Sprint(prefix, w), nil)
			if err != nil {
				errs <- err
				return
			}
			defer c.Disconnect(500)
			var toks []paho.Token
			flush := func(keep int) {
				if len(toks) < keep {
					return
				}
				for _, t := range toks {
					if wait(t) != nil {
						lost.Add(1)
					} else {
						acked.Add(1)
					}
				}
				toks = toks[:0]
			}
			for i := range per {
				if ctx.Err() != nil {
					break
				}
				toks = append(toks, c.Publish(fmt.Sprintf("$tree/%s/w%d", prefix, w), 1, true, fmt.Sprintf(`{"k%d":%d}`, i%50, i)))
				flush(100)
			}
			flush(0)
		}()
	}
	wg.Wait()
	el := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return outcome{}, err
	}
	sent := int64(per * s.ClusterWriters)
	return outcome{value: float64(acked.Load()) / el.Seconds(), sent: sent, lost: lost.Load()}, ctx.Err()
}

// countLeaves counts the rows (leaves) of a JSON tree.
func countLeaves(r gjson.Result) int64 {
	if !r.IsObject() {
		return 1
	}
	var n int64
	r.ForEach(func(_, v gjson.Result) bool { n += countLeaves(v); return true })
	return n
}

// catchUp kills the last node, changes s.CatchUpChanges rows (tree
// publishes of 10 rows, QoS 1, retained, writers on the other nodes),
// restarts it on its data directory and times it: value = seconds from
// the restart until a $sync subscriber on it has every changed row (its
// first snapshot: a node answers MQTT once caught up); connect-s until it
// accepts a CONNECT, write-s how long the changes took.
func catchUp(ctx context.Context, c *moteCluster, s Sizes) (outcome, error) {
	last := clusterNodes - 1
	c.kill(last)
	const rows, conns = 10, 8
	pubs := max(1, s.CatchUpChanges/rows)
	// MQTT 5 writers (clients/client), one publish at a time each: a write
	// the cluster refuses (0x80, while the stream elects a leader) is seen
	// as refused, where an MQTT 3.1.1 client gets an ordinary PUBACK.
	var refused, lost atomic.Int64
	wstart := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mc, err := client.Dial(ctx, c.nodes[w%last].addr, client.Options{ClientID: fmt.Sprint("cu-", w), CleanStart: true, Timeout: 30 * time.Second})
			if err != nil {
				errs <- err
				return
			}
			defer mc.Close()
			for d := w; d < pubs && ctx.Err() == nil; d += conns {
				err := mc.PublishTree(ctx, fmt.Sprintf("cu/d%06d", d), json.RawMessage(deviceTree(d, rows)), client.PublishOptions{QoS: 1, Retain: true})
				switch {
				case errors.Is(err, client.ErrRefused):
					refused.Add(1)
				case err != nil:
					lost.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return outcome{}, err
	}
	wrote := time.Since(wstart)
	// A refused or unanswered write may still have landed (its outcome is
	// unknown): the rows are at least the acknowledged ones, at most all.
	least, most := (int64(pubs)-refused.Load()-lost.Load())*rows, int64(pubs)*rows

	start := time.Now()
	if err := c.spawn(last); err != nil {
		return outcome{}, err
	}
	if err := c.waitListen(ctx, last, 3*time.Minute); err != nil {
		return outcome{}, err
	}
	// The port is bound before the node has caught up; it answers a
	// CONNECT only once it has (a connect times out after 15 s: try again).
	got := make(chan int64, 1)
	var bytes atomic.Int64
	var sub paho.Client
	for try, deadline := 0, time.Now().Add(3*time.Minute); sub == nil; try++ {
		var err error
		// A client id of its own each try: a CONNECT given up on may still
		// be answered later, and would take over the id.
		sub, err = dial(c.nodes[last].addr, fmt.Sprint("cu-sub-", try), func(_ paho.Client, m paho.Message) {
			bytes.Add(int64(len(m.Payload())))
			select {
			case got <- countLeaves(gjson.ParseBytes(m.Payload())):
			default:
			}
		})
		if err != nil && (time.Now().After(deadline) || ctx.Err() != nil) {
			return outcome{}, fmt.Errorf("bench: catch-up: the restarted node answers no CONNECT: %w", err)
		}
	}
	connected := time.Since(start)
	defer sub.Disconnect(0)
	if err := wait(sub.Subscribe("$sync/cu/+/+", 0, nil)); err != nil {
		return outcome{}, err
	}
	var n int64
	select {
	case n = <-got:
	case <-time.After(time.Minute):
		return outcome{}, errors.New("bench: catch-up: no snapshot from the restarted node within a minute")
	case <-ctx.Done():
		return outcome{}, ctx.Err()
	}
	el := time.Since(start)
	o := outcome{value: el.Seconds(), msgs: 1, bytes: bytes.Load(), sent: int64(pubs), lost: lost.Load(),
		extra: map[string]float64{"connect-s": connected.Seconds(), "write-s": wrote.Seconds(), "changes": float64(n), "refused": float64(refused.Load())}}
	if n < least || n > most {
		return o, fmt.Errorf("bench: catch-up: the restarted node's first snapshot has %d rows, want %d–%d (%d writes refused, %d unanswered)", n, least, most, refused.Load(), lost.Load())
	}
	return o, nil
}
