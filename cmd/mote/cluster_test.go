package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/mote-mqtt/mote/bench"
	"github.com/mote-mqtt/mote/clients/client"
)

// procNode is one `mote broker --cluster…` child process.
type procNode struct {
	i           int
	addr, route string
	dir         string
	cmd         *exec.Cmd
	logs        *bench.LockedBuffer
}

// startProc starts node n's process (again, on its data directory) and
// returns without waiting: the nodes of a new cluster wait for each
// other.
func startProc(t *testing.T, n *procNode, routes []string) {
	t.Helper()
	n.logs = &bench.LockedBuffer{}
	n.cmd = exec.CommandContext(t.Context(), buildMote(t), "broker", "--tcp", n.addr, "--ws", "off", "--http", "off",
		"--data", n.dir, "--log-level", "info", "--cluster", "proc", "--cluster-node", fmt.Sprint("n", n.i),
		"--cluster-listen", n.route, "--cluster-routes", strings.Join(routes, ","))
	n.cmd.Stderr = n.logs
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd := n.cmd
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// waitListen waits (at most 30 s) until node n's MQTT port accepts TCP
// connections (a cluster node answers a CONNECT only once it has caught
// up with the log).
func waitListen(t *testing.T, n *procNode) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("tcp", n.addr); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %d not listening within 30 s:\n%s", n.i, n.logs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill9 kills node n with SIGKILL and reaps it.
func kill9(n *procNode) {
	n.cmd.Process.Kill()
	n.cmd.Wait()
}

// procWriter writes tree publishes (QoS 1, retained) to its own keys
// w/<name>/k<j> on one node, each a higher value than the last, and
// records which were acknowledged.
type procWriter struct {
	name string
	c    *client.Client

	mu         sync.Mutex
	acked      map[string]int   // key → last acknowledged value
	maybe      map[string][]int // key → values refused or unanswered (each may have landed)
	n          int              // acknowledged writes
	refused    int              // writes refused with 0x80 (the log took none within its timeout)
	unanswered int              // writes with no PUBACK within the client's timeout
	failed     error
	failedAt   time.Time
	stopping   atomic.Bool
	killed     bool // its node was killed (set before its client is closed)
	done       chan struct{}
}

const procKeys = 10

func startWriter(t *testing.T, ctx context.Context, addr, name string) *procWriter {
	t.Helper()
	c, err := client.Dial(ctx, addr, client.Options{ClientID: name, CleanStart: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("writer %s: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	w := &procWriter{name: name, c: c, acked: map[string]int{}, maybe: map[string][]int{}, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for v := 1; !w.stopping.Load() && ctx.Err() == nil; v++ {
			key := fmt.Sprint("k", v%procKeys)
			err := c.PublishTree(ctx, "w/"+name, map[string]any{key: v}, client.PublishOptions{QoS: 1, Retain: true})
			w.mu.Lock()
			if err != nil {
				w.maybe[key] = append(w.maybe[key], v)
				if errors.Is(err, client.ErrRefused) && strings.Contains(err.Error(), "reason 0x80 cluster: cannot replicate") {
					// Refused while the stream elects a leader (a node was
					// killed): not acknowledged, its outcome unknown.
					w.refused++
					w.mu.Unlock()
					continue
				}
				if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
					// Unanswered within Paho's 10 s: a write the log took
					// just before its leader was killed waits until this
					// node's follower reads it from the new leader.
					w.unanswered++
					w.mu.Unlock()
					continue
				}
				w.failed, w.failedAt = err, time.Now()
				w.mu.Unlock()
				return
			}
			w.acked[key] = v
			w.n++
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *procWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// stop ends the writer after its publish in flight (at most 30 s).
func (w *procWriter) stop(t *testing.T) {
	t.Helper()
	w.stopping.Store(true)
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("writer %s did not stop within 30 s", w.name)
	}
}

// waitWrites waits (at most 30 s) until the writers have at least n more
// acknowledged writes than from.
func waitWrites(t *testing.T, what string, ws []*procWriter, from, n int) int {
	t.Helper()
	total := func() int {
		s := 0
		for _, w := range ws {
			s += w.count()
		}
		return s
	}
	deadline := time.Now().Add(30 * time.Second)
	for total() < from+n {
		if time.Now().After(deadline) {
			var errs []string
			for _, w := range ws {
				errs = append(errs, fmt.Sprintf("%s: %d acked, %v", w.name, w.count(), w.failed))
			}
			t.Fatalf("%s: %d acknowledged writes in 30 s, want %d more than %d:\n%s", what, total(), n, from, strings.Join(errs, "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return total()
}

// warnings are the lines of a node's log above info.
func warnings(logs string) string {
	var out []string
	for _, l := range strings.Split(logs, "\n") {
		if !strings.Contains(l, `"level":"info"`) && !strings.Contains(l, `"level":"debug"`) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// normal is v as plain JSON values (numbers float64).
func normal(v any) any {
	b, _ := json.Marshal(v)
	var out any
	json.Unmarshal(b, &out)
	return out
}

// TestClusterProcesses: three `mote broker --cluster…` processes are one
// broker (SPEC §12). Writers on every node (tree publishes, QoS 1,
// retained); node 2 is killed with SIGKILL under load and the two others
// go on; it restarts on its data directory and catches up; every node's
// $sync copy equals the union of the acknowledged writes, and the nodes'
// copies and revisions are equal. A write without a PUBACK (its node
// killed; or refused with 0x80, or unanswered, while the stream elected a
// new leader) may have landed: besides the last acknowledged value, a key
// may hold only such a value sent after it. Then a node left alone refuses a QoS 1 retained
// write with reason 0x80 and applies nothing of it.
func TestClusterProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three mote processes forming a NATS JetStream cluster")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	var nodes []*procNode
	var routes []string
	for i := range 3 {
		n := &procNode{i: i, addr: "127.0.0.1:" + strconv.Itoa(freePort(t)), route: "127.0.0.1:" + strconv.Itoa(freePort(t)), dir: filepath.Join(dir, fmt.Sprint("n", i))}
		nodes, routes = append(nodes, n), append(routes, n.route)
	}
	for _, n := range nodes {
		startProc(t, n, routes)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("node %d's log above info:\n%s", n.i, warnings(n.logs.String()))
			}
		}
	})
	for _, n := range nodes {
		waitListen(t, n)
	}
	mirror := func(n *procNode, id string) *client.Mirror {
		t.Helper()
		// A node binds its port before it has caught up, and answers a
		// CONNECT once it has.
		c, err := client.Dial(ctx, n.addr, client.Options{ClientID: id, CleanStart: true, Timeout: 30 * time.Second})
		if err != nil {
			t.Fatalf("node %d: %v", n.i, err)
		}
		t.Cleanup(func() { c.Close() })
		m, err := c.Mirror(ctx, "w/#", client.JSON, 1, nil)
		if err != nil {
			t.Fatalf("node %d: mirror: %v", n.i, err)
		}
		return m
	}
	mirrors := []*client.Mirror{mirror(nodes[0], "m0"), mirror(nodes[1], "m1"), mirror(nodes[2], "m2")}

	var writers []*procWriter
	for _, n := range nodes {
		for j := range 2 {
			writers = append(writers, startWriter(t, ctx, n.addr, fmt.Sprintf("n%dw%d", n.i, j)))
		}
	}
	seen := waitWrites(t, "3 nodes", writers, 0, 150)

	// Node 2 killed under load: its writers fail, the others go on.
	t.Logf("%s: killing node 2 after %d writes", time.Now().Format(time.StampMilli), seen)
	kill9(nodes[2])
	for _, w := range writers[4:] {
		w.killed = true
		w.c.Close() // its publish in flight fails now, not at its timeout
	}
	seen = waitWrites(t, "2 of 3 nodes", writers[:4], seen, 150)

	// Node 2 back on its data directory: it answers once caught up, and
	// takes writes again.
	t.Logf("%s: restarting node 2 after %d writes", time.Now().Format(time.StampMilli), seen)
	startProc(t, nodes[2], routes)
	waitListen(t, nodes[2])
	t.Logf("%s: node 2 listens", time.Now().Format(time.StampMilli))
	mirrors[2] = mirror(nodes[2], "m2b")
	for j := range 2 {
		writers = append(writers, startWriter(t, ctx, nodes[2].addr, fmt.Sprintf("n2w%d-back", j)))
	}
	waitWrites(t, "node 2 restarted", writers[6:], 0, 50)
	for _, w := range writers {
		w.stop(t)
	}

	// Every acknowledged write is on every node; copies equal.
	total := 0
	// mismatch says how a copy differs from the writes, "" if it does
	// not: each key holds its last acknowledged value, or one sent after
	// it whose outcome is unknown (nothing older); a key never
	// acknowledged may be absent.
	mismatch := func(doc any) string {
		d, _ := normal(doc).(map[string]any)
		for _, w := range writers {
			w.mu.Lock()
			rows, _ := d[w.name].(map[string]any)
			for k := range rows {
				if _, ok := w.acked[k]; !ok && w.maybe[k] == nil {
					w.mu.Unlock()
					return fmt.Sprintf("%s/%s: %v, never written", w.name, k, rows[k])
				}
			}
			keys := map[string]bool{}
			for k := range w.acked {
				keys[k] = true
			}
			for k := range w.maybe {
				keys[k] = true
			}
			for k := range keys {
				got, has := rows[k].(float64)
				a, isAcked := w.acked[k]
				fine := has && isAcked && int(got) == a || !has && !isAcked
				for _, m := range w.maybe[k] {
					fine = fine || has && int(got) == m && m > a
				}
				if !fine {
					why := fmt.Sprintf("%s/%s: %v (present %v), acknowledged %d (%v), unknown outcomes %v", w.name, k, got, has, a, isAcked, w.maybe[k])
					w.mu.Unlock()
					return why
				}
			}
			w.mu.Unlock()
		}
		return ""
	}
	ok := func(doc any) bool { return mismatch(doc) == "" }
	refused, unanswered := 0, 0
	for _, w := range writers {
		total += w.count()
		refused += w.refused
		unanswered += w.unanswered
		if w.failed != nil && !w.killed {
			t.Errorf("writer %s on a live node failed at %s: %v", w.name, w.failedAt.Format(time.StampMilli), w.failed)
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := mirrors[0].Wait(wctx, ok); err != nil {
		var why string
		mirrors[0].Get(func(doc any) { why = mismatch(doc) })
		t.Fatalf("node 0's copy lacks acknowledged writes within 30 s: %v: %s", err, why)
	}
	var want any
	mirrors[0].Get(func(doc any) { want = normal(doc) })
	for i, m := range mirrors[1:] {
		if err := m.Wait(wctx, func(doc any) bool { return reflect.DeepEqual(normal(doc), want) }); err != nil {
			var got any
			m.Get(func(doc any) { got = normal(doc) })
			r0, _ := mirrors[0].Rev()
			ri, _ := m.Rev()
			t.Fatalf("node %d's copy (at revision %d) differs from node 0's (at %d): %v\n%v\nwant\n%v", i+1, ri, r0, err, got, want)
		}
	}
	revs := map[uint64]bool{}
	for _, m := range mirrors {
		r, _ := m.Rev()
		revs[r] = true
	}
	if len(revs) != 1 {
		t.Errorf("the copies' revisions differ: %v", revs)
	}
	t.Logf("%d writes acknowledged over the run, every one on all 3 nodes; while the stream elected a leader, %d refused with 0x80 and %d unanswered within 10 s", total, refused, unanswered)

	// A node alone refuses retained writes (0x80) and applies none.
	kill9(nodes[0])
	kill9(nodes[1])
	conn, err := net.Dial("tcp", nodes[2].addr)
	if err != nil {
		t.Fatal(err)
	}
	pc := paho.NewClient(paho.ClientConfig{Conn: conn})
	t.Cleanup(func() { pc.Disconnect(&paho.Disconnect{}) })
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	if _, err := pc.Connect(cctx, &paho.Connect{ClientID: "alone", CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	r, err := pc.Publish(cctx, &paho.Publish{Topic: "$tree/w/alone", Payload: []byte(`{"a":1}`), QoS: 1, Retain: true})
	if r == nil || r.ReasonCode != 0x80 {
		t.Fatalf("a retained write on a node alone: %+v, %v; want PUBACK reason 0x80", r, err)
	}
	if !strings.Contains(r.Properties.ReasonString, "cluster") {
		t.Errorf("reason string %q does not say the cluster refused it", r.Properties.ReasonString)
	}
	// What a node serves is what it applied: a fresh snapshot of its rows.
	c, err := client.Dial(ctx, nodes[2].addr, client.Options{ClientID: "alone-reader", CleanStart: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	snap := make(chan any, 1)
	if err := c.Subscribe(ctx, "w/alone/#", client.Sync, client.JSON, 1, func(m client.Message) {
		select {
		case snap <- normal(m.Tree):
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-snap:
		if !reflect.DeepEqual(got, map[string]any{}) {
			t.Errorf("a refused write was applied: %v", got)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no snapshot from the node alone within 30 s")
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("the test ran past its 3 minutes")
	}
}
