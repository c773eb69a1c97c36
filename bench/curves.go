package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// The curve scenarios measure how a broker scales: each run walks one
// broker up a ladder of sizes (publishers, retained rows, idle
// connections) and records a Point at every rung, so a run is a curve,
// not a point. Curves(runs) takes the median of each point over the
// rounds, and Plot draws them.
//
//   - curve-fan-in: Sizes.CurveMsgs QoS 0 messages in all, from each of
//     Sizes.CurvePubs publishers in turn (1, 10, 100, 1,000: the fan-in
//     scenario with the same total spread over more publishers) to one
//     subscriber: msgs/s delivered and broker CPU per message published;
//   - curve-snapshot: Sizes.CurveSyncRows retained rows (1k … 1M), loaded
//     rung by rung: time from a fresh client's SUBSCRIBE until it holds
//     every row. Mote answers $sync/dev/+/state with one snapshot; the
//     other brokers are read the only way a plain client can, dev/+/state
//     and its retained replay;
//   - curve-rows: Sizes.CurveMemRows retained rows (10k … 1M): the broker's
//     RSS, and its growth per row over the empty broker's, all of it and
//     its anonymous part (without mapped files: Mote's bbolt database);
//   - curve-idle: Sizes.CurveIdle idle MQTT connections (0, 1k, 5k: a
//     CONNECT each, no subscription, no keep-alive): the broker's RSS and
//     its growth per connection.
//
// Every rung is bounded: a rung a broker does not reach in time (loading
// rows, or a reader that stops receiving for curveIdle) is recorded as a
// failed Point, and the run stops climbing.

// Point is one point of a scaling curve: at X (of XName), the measure Y.
type Point struct {
	Measure string  `json:"measure"` // what Y is, with its unit: "msgs/s"
	XName   string  `json:"x_name"`  // what X counts: "publishers"
	X       float64 `json:"x"`
	Y       float64 `json:"y"`
	Lost    int64   `json:"lost,omitempty"` // messages or rows that did not arrive
	// Failed says why the point has no Y: it was not reached within
	// its bound.
	Failed string `json:"failed,omitempty"`
}

// CurvePrefix starts the name of every curve scenario; "curves" on the
// command line names them all.
const CurvePrefix = "curve-"

// curveIdle is how long a curve's reader waits for the next message
// before it counts what has not arrived as lost.
const curveIdle = 5 * time.Second

// curveFirst is how long a curve's reader waits for the first row of a
// retained replay.
const curveFirst = 30 * time.Second

// curveRung bounds one rung of a curve (a snapshot read, one level of
// rows loaded).
const curveRung = 2 * time.Minute

func curveScenarios() []scenario {
	return []scenario{
		{name: "curve-fan-in", variant: "qos0", unit: "points", everywhere: true, noRatio: true, floor: true, files: 4000, probed: fanInCurve},
		{name: "curve-snapshot", variant: "sync-or-plain", unit: "points", everywhere: true, noRatio: true, timeout: 10 * time.Minute, probed: snapshotCurve},
		{name: "curve-rows", variant: "plain", unit: "points", everywhere: true, noRatio: true, timeout: 10 * time.Minute, probed: rowsCurve},
		{name: "curve-idle", variant: "mqtt", unit: "points", everywhere: true, noRatio: true, floor: true, hold: true, files: 12_000, probed: idleCurve},
	}
}

// fanInCurve is the fan-in scenario, plain QoS 0, at each publisher
// count of s.CurvePubs with the same total of messages. The publishers
// connect first, stagedConnects at a time (Mote closes a host's
// connections past 256 that have not sent their CONNECT: 1,000 Paho
// clients dialling at once from 127.0.0.1 are more), then start
// together: msgs/s and CPU are of the publishing, not the connects.
func fanInCurve(ctx context.Context, t target, s Sizes) (outcome, error) {
	var pts []Point
	for _, n := range s.CurvePubs {
		each := max(1, s.CurveMsgs/n)
		o, err := fanInN(ctx, t.TCP, n, each, 0, fmt.Sprintf("c%d-", n), t.cpu)
		if err != nil {
			return outcome{points: pts}, fmt.Errorf("bench: fan-in with %d publishers: %w", n, err)
		}
		x := float64(n)
		pts = append(pts,
			Point{Measure: "msgs/s delivered", XName: "publishers", X: x, Y: o.value, Lost: o.lost},
			Point{Measure: "broker CPU µs/msg", XName: "publishers", X: x, Y: o.extra["cpu-s"] * 1e6 / float64(o.sent), Lost: o.lost})
		if ctx.Err() != nil {
			break
		}
	}
	return outcome{points: pts}, nil
}

// snapshotCurve loads the rows of s.CurveSyncRows rung by rung and times a
// fresh client reading them all at each: $sync on Mote, the retained
// replay of a plain subscription elsewhere.
func snapshotCurve(ctx context.Context, t target, s Sizes) (outcome, error) {
	const xName, measure = "retained rows", "s until all rows held"
	var pts []Point
	loaded := 0
	for i, n := range s.CurveSyncRows {
		x := float64(n)
		if err := loadRange(ctx, t.TCP, loaded, n, fmt.Sprint("snap", i)); err != nil {
			pts = append(pts, Point{Measure: measure, XName: xName, X: x, Failed: "loading: " + err.Error()})
			break
		}
		loaded = n
		time.Sleep(200 * time.Millisecond) // let the broker settle, as dashboard does
		el, got, err := readRows(ctx, t.TCP, fmt.Sprint("snap-read-", i), n, t.b.Tree)
		if err != nil {
			pts = append(pts, Point{Measure: measure, XName: xName, X: x, Lost: int64(n - got), Failed: err.Error()})
			break
		}
		pts = append(pts, Point{Measure: measure, XName: xName, X: x, Y: el.Seconds(), Lost: int64(n - got)})
	}
	return outcome{points: pts}, nil
}

// rowsCurve loads the rows of s.CurveMemRows rung by rung and reads the
// broker's RSS at each, once it has settled.
func rowsCurve(ctx context.Context, t target, s Sizes) (outcome, error) {
	const xName = "retained rows"
	time.Sleep(s.CurveSettle)
	rss0, anon0 := t.rss(), t.anonRSS()
	var pts []Point
	loaded := 0
	for i, n := range s.CurveMemRows {
		x := float64(n)
		if err := loadRange(ctx, t.TCP, loaded, n, fmt.Sprint("mem", i)); err != nil {
			pts = append(pts, Point{Measure: "RSS MiB", XName: xName, X: x, Failed: "loading: " + err.Error()})
			break
		}
		loaded = n
		time.Sleep(s.CurveSettle)
		rss, anon := t.rss(), t.anonRSS()
		pts = append(pts,
			Point{Measure: "RSS MiB", XName: xName, X: x, Y: float64(rss) / (1 << 20)},
			Point{Measure: "RSS growth bytes/row", XName: xName, X: x, Y: float64(rss-rss0) / x},
			Point{Measure: "anonymous RSS growth bytes/row", XName: xName, X: x, Y: float64(anon-anon0) / x})
	}
	return outcome{points: pts, extra: map[string]float64{"rss-empty-MiB": float64(rss0) / (1 << 20)}}, nil
}

// anonRSS is the broker's anonymous resident memory now (RssAnon: its
// heap and stacks, without the pages of files it maps, such as a bbolt
// database).
func (t target) anonRSS() int64 {
	status, err := os.ReadFile("/proc/" + strconv.Itoa(t.b.cmd.Process.Pid) + "/status")
	if err != nil {
		return 0
	}
	return statusKB(status, "RssAnon:")
}

// idleCurve opens the idle connections of s.CurveIdle rung by rung and
// reads the broker's RSS at each, once it has settled.
func idleCurve(ctx context.Context, t target, s Sizes) (outcome, error) {
	const xName = "idle connections"
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	time.Sleep(s.CurveSettle)
	rss0 := t.rss()
	var pts []Point
	for _, n := range s.CurveIdle {
		x := float64(n)
		more, err := openIdle(ctx, t.TCP, len(conns), n)
		conns = append(conns, more...)
		if err != nil {
			pts = append(pts, Point{Measure: "RSS MiB", XName: xName, X: x, Failed: err.Error()})
			break
		}
		time.Sleep(s.CurveSettle)
		rss := t.rss()
		pts = append(pts, Point{Measure: "RSS MiB", XName: xName, X: x, Y: float64(rss) / (1 << 20)})
		if n > 0 {
			pts = append(pts, Point{Measure: "RSS growth KiB/conn", XName: xName, X: x, Y: float64(rss-rss0) / x / 1024})
		}
	}
	return outcome{points: pts}, nil
}

// stagedConnects is how many publishers of a staged fan-in connect at
// once.
const stagedConnects = 64

// stagedPublishers connects n load clients (client i as prefix+i),
// stagedConnects at a time, calls start once all are connected, then
// runs publish on all of them at once; it returns when all are done (and
// disconnected), with the first failure to connect.
func stagedPublishers(addr, prefix string, n int, start func(), publish func(i int, c paho.Client)) error {
	clients := make([]paho.Client, n)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Disconnect(500)
			}
		}
	}()
	sem := make(chan struct{}, stagedConnects)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := dial(addr, fmt.Sprint(prefix, i), nil)
			if err != nil {
				errs <- err
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	start()
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			publish(i, c)
		}()
	}
	wg.Wait()
	return nil
}

// openIdle opens MQTT connections from..to-1 (CONNECT, CONNACK, then
// nothing), 32 at a time; no goroutine stays per connection. It returns
// those it opened, with the first error.
func openIdle(ctx context.Context, addr string, from, to int) ([]net.Conn, error) {
	if to <= from {
		return nil, nil
	}
	conns := make([]net.Conn, to-from)
	next := make(chan int)
	errs := make(chan error, 32)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := idleMQTT(ctx, addr, fmt.Sprint("idle-", from+i))
				if err != nil {
					errs <- err
					return
				}
				conns[i] = c
			}
		}()
	}
	var err error
feed:
	for i := range to - from {
		select {
		case next <- i:
		case err = <-errs:
			break feed
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err == nil && len(errs) > 0 {
		err = <-errs
	}
	conns = slices.DeleteFunc(conns, func(c net.Conn) bool { return c == nil })
	return conns, err
}

// idleMQTT connects one idle MQTT 3.1.1 client (no keep-alive).
func idleMQTT(ctx context.Context, addr, id string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	c, err := dialCount(ctx, addr)
	if err != nil {
		return nil, err
	}
	if _, err := newMQTT(c, id); err != nil {
		c.Close()
		return nil, fmt.Errorf("bench: idle connection %s: %w", id, err)
	}
	c.SetDeadline(time.Time{}) //nolint:errcheck // idle from now on
	return c, nil
}

// loadRange publishes rows dev/dNNNNNN/state from..to-1 retained, over a
// few connections at QoS 1 (so every broker stores them all), within
// curveRung and ctx.
func loadRange(ctx context.Context, addr string, from, to int, prefix string) error {
	const conns = 8
	ctx, cancel := context.WithTimeout(ctx, curveRung)
	defer cancel()
	var sent atomic.Int64
	err := publishers(addr, prefix+"-load-", conns, func(w int, c paho.Client) {
		var toks []paho.Token
		for i := from + w; i < to && ctx.Err() == nil; i += conns {
			toks = append(toks, c.Publish(fmt.Sprintf("dev/d%06d/state", i), 1, true, strconv.Itoa(i%2)))
			sent.Add(1)
			toks = waitAll(toks, 1000)
		}
		waitAll(toks, 0)
	})
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("bench: %d of %d rows sent within the bound", sent.Load(), to-from)
	}
	return nil
}

// readRows connects a fresh client that subscribes to dev/+/state ($sync
// with sync) and reads until it holds want rows: the time from the
// SUBSCRIBE to the last byte of the last row, and the rows it got. A
// reader that receives nothing for curveIdle (curveFirst before the first
// row) stops (rows missing), as does one past curveRung (an error).
func readRows(ctx context.Context, addr, id string, want int, sync bool) (time.Duration, int, error) {
	ctx, cancel := context.WithTimeout(ctx, curveRung)
	defer cancel()
	c, err := dialCount(ctx, addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	m, err := newMQTT(c, id)
	if err != nil {
		return 0, 0, err
	}
	if sync {
		start := time.Now()
		if err := m.subscribe("$sync/" + treeFilter); err != nil {
			return 0, 0, err
		}
		body, err := m.publish()
		el := time.Since(start)
		if err != nil {
			return 0, 0, fmt.Errorf("bench: $sync snapshot of %d rows: %w", want, err)
		}
		got, err := rowCount(body, false)
		return el, got, err
	}
	start := time.Now()
	if err := m.subscribe(treeFilter); err != nil {
		return 0, 0, err
	}
	var last time.Time
	got := 0
	for got < want {
		if got%256 == 0 {
			idle := curveIdle
			if got == 0 {
				idle = curveFirst // a broker may take a while to start the replay
			}
			dl := time.Now().Add(idle)
			if d, ok := ctx.Deadline(); ok && d.Before(dl) {
				dl = d
			}
			c.SetReadDeadline(dl) //nolint:errcheck // a read past it fails, which ends the loop
		}
		typ, body, err := m.next()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
				break // nothing for curveIdle: the rest is lost
			}
			return time.Since(start), got, fmt.Errorf("bench: retained replay, %d of %d rows: %w", got, want, err)
		}
		if typ == 0x90 && len(body) >= 3 && body[2] >= 0x80 {
			return 0, 0, fmt.Errorf("bench: SUBSCRIBE refused: %#x", body[2])
		}
		if typ == 0x30 {
			got++
			last = time.Now()
		}
	}
	if last.IsZero() {
		return time.Since(start), 0, nil
	}
	return last.Sub(start), got, nil
}

// CurvePoint is one point of a curve over the rounds: the median (and
// range) of Y at X for one scenario, measure and broker.
type CurvePoint struct {
	Scenario, Variant, Broker string
	Measure, XName            string
	X                         float64
	Median, Min, Max          float64
	Rounds                    int    // rounds that reached the point
	Lost                      int64  // median over those rounds
	Failed                    string // why a round did not reach it (the first such)
}

// Curves gathers the points of the runs' curves: one CurvePoint per
// scenario, measure, broker and X, in the order they first appear.
func Curves(runs []Run) []CurvePoint {
	type key struct {
		sc, v, b, m string
		x           float64
	}
	groups := map[key]*struct {
		cp       CurvePoint
		ys, lost []float64
	}{}
	var order []key
	for _, r := range runs {
		for _, p := range r.Points {
			k := key{r.Scenario, r.Variant, r.Broker, p.Measure, p.X}
			g, ok := groups[k]
			if !ok {
				g = &struct {
					cp       CurvePoint
					ys, lost []float64
				}{cp: CurvePoint{Scenario: r.Scenario, Variant: r.Variant, Broker: r.Broker, Measure: p.Measure, XName: p.XName, X: p.X}}
				groups[k] = g
				order = append(order, k)
			}
			if p.Failed != "" {
				if g.cp.Failed == "" {
					g.cp.Failed = p.Failed
				}
				continue
			}
			g.ys = append(g.ys, p.Y)
			g.lost = append(g.lost, float64(p.Lost))
		}
	}
	// Curve by curve, measure by measure, X by X, brokers in the order
	// they ran.
	rank := map[string]int{}
	for _, k := range order {
		for _, name := range []string{"s:" + k.sc, "m:" + k.m, "b:" + k.b} {
			if _, ok := rank[name]; !ok {
				rank[name] = len(rank)
			}
		}
	}
	slices.SortStableFunc(order, func(a, b key) int {
		return cmp.Or(cmp.Compare(rank["s:"+a.sc], rank["s:"+b.sc]), cmp.Compare(rank["m:"+a.m], rank["m:"+b.m]),
			cmp.Compare(a.x, b.x), cmp.Compare(rank["b:"+a.b], rank["b:"+b.b]))
	})
	out := make([]CurvePoint, 0, len(order))
	for _, k := range order {
		g := groups[k]
		cp := g.cp
		if len(g.ys) > 0 {
			cp.Median, cp.Min, cp.Max = median(g.ys), slices.Min(g.ys), slices.Max(g.ys)
			cp.Rounds, cp.Lost = len(g.ys), int64(median(g.lost))
		}
		out = append(out, cp)
	}
	return out
}

// CurveTable writes the curves' points, one line each.
func CurveTable(w io.Writer, cps []CurvePoint) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "curve\tmeasure\tx\tbroker\tmedian\t(min–max)\trounds\tlost\tnotes")
	for _, c := range cps {
		note := ""
		if c.Failed != "" {
			note = "not reached in a round: " + c.Failed
		}
		fmt.Fprintf(tw, "%s\t%s\t%g %s\t%s\t%.4g\t(%.4g–%.4g)\t%d\t%d\t%s\n", c.Scenario, c.Measure, c.X, c.XName, c.Broker,
			c.Median, c.Min, c.Max, c.Rounds, c.Lost, strings.TrimSpace(note))
	}
	tw.Flush()
}
