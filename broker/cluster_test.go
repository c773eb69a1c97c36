package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/cluster"
	"github.com/mote-mqtt/mote/internal/freeport"
)

// testNodes is n brokers, each with an embedded NATS node, routed to each
// other: one cluster in one process (SPEC §12).
type testNodes struct {
	t      *testing.T
	dir    string
	routes []string
	nats   []*cluster.Node
	b      []*Broker
}

// freeRoutes are n free 127.0.0.1 addresses for NATS routes (the nodes
// must know each other's before they start).
func freeRoutes(t *testing.T, n int) []string {
	t.Helper()
	addrs, err := freeport.Loopback(n)
	if err != nil {
		t.Fatal(err)
	}
	return addrs
}

// startNodes starts n cluster nodes (together: JetStream waits for its
// peers) and stops them with the test.
func startNodes(t *testing.T, n int, timeout time.Duration) *testNodes {
	tn := &testNodes{t: t, dir: t.TempDir(), routes: freeRoutes(t, n), nats: make([]*cluster.Node, n), b: make([]*Broker, n)}
	t.Cleanup(func() {
		for i := range tn.b {
			tn.stop(i)
		}
	})
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = tn.start(i, timeout) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return tn
}

// start starts (or restarts, on its directories) node i.
func (tn *testNodes) start(i int, timeout time.Duration) error {
	name := fmt.Sprintf("n%d", i)
	log := zerolog.New(zerolog.NewTestWriter(tn.t)).Level(zerolog.WarnLevel).With().Str("node", name).Logger()
	o := cluster.NodeOptions{Name: name, Dir: filepath.Join(tn.dir, name, "nats")}
	if len(tn.routes) > 1 {
		o.ClusterListen, o.Routes = tn.routes[i], tn.routes
	}
	node, err := cluster.StartNode(o, log)
	if err != nil {
		return err
	}
	tn.nats[i] = node
	nc, err := node.Connect("test-" + name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lg, err := cluster.OpenLog(ctx, nc, cluster.LogOptions{Replicas: min(3, len(tn.routes)), Timeout: timeout})
	if err != nil {
		return err
	}
	id, err := lg.ID(ctx)
	if err != nil {
		return err
	}
	store, err := cluster.OpenStore(filepath.Join(tn.dir, name, "rows"))
	if err != nil {
		return err
	}
	if err := store.Bind(id); err != nil {
		store.Close()
		return err
	}
	b, err := New(Options{TCP: "127.0.0.1:0", WS: "off", Store: store, Log: log, AllowAnonymous: true,
		Cluster: &Cluster{Log: lg, Events: cluster.NewEvents(nc, "", name), CatchUp: time.Minute}})
	if err != nil {
		store.Close()
		return err
	}
	if err := b.Start(); err != nil {
		b.Close()
		return err
	}
	tn.b[i] = b
	return nil
}

// stop closes node i's broker, then its NATS node.
func (tn *testNodes) stop(i int) {
	if tn.b[i] != nil {
		tn.b[i].Close()
		tn.b[i] = nil
	}
	if tn.nats[i] != nil {
		tn.nats[i].Close()
		tn.nats[i] = nil
	}
}

func dialNode(t *testing.T, b *Broker, id string) *client.Client {
	t.Helper()
	c, err := client.Dial(testCtx(t), b.TCPAddr(), client.Options{ClientID: id, CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// docJSON is a mirror's copy as normalised JSON.
func docJSON(m *client.Mirror) string {
	var out string
	m.Get(func(doc any) {
		b, _ := json.Marshal(doc)
		var v any
		json.Unmarshal(b, &v)
		b, _ = json.Marshal(v)
		out = string(b)
	})
	return out
}

func waitDoc(t *testing.T, what string, m *client.Mirror, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var w any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	err := m.Wait(ctx, func(doc any) bool {
		b, _ := json.Marshal(doc)
		var v any
		json.Unmarshal(b, &v)
		return reflect.DeepEqual(v, w)
	})
	if err != nil {
		t.Fatalf("%s: copy %s, want %s: %v", what, docJSON(m), want, err)
	}
}

// TestClusterNodes: three brokers are one (SPEC §12). Writers on every
// node; a $sync copy on every node equals the union of the writes; plain
// events cross nodes; revisions are the cluster's (the same on every
// node, so a client resumes on any); a $set sees the rows its client
// wrote just before; a node killed and restarted catches up.
func TestClusterNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster")
	}
	tn := startNodes(t, 3, 5*time.Second)
	ctx := testCtx(t)
	var mirrors []*client.Mirror
	var plain []*collector
	for i, b := range tn.b {
		c := dialNode(t, b, fmt.Sprintf("reader%d", i))
		m, err := c.Mirror(ctx, "dev/#", client.JSON, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		mirrors = append(mirrors, m)
		col := newCollector()
		if err := c.Subscribe(ctx, "ev/#", client.Plain, client.JSON, 1, col.handle); err != nil {
			t.Fatal(err)
		}
		plain = append(plain, col)
	}
	// Writers on every node at once, tree publishes at QoS 1.
	const per = 30
	var wg sync.WaitGroup
	for i, b := range tn.b {
		w := dialNode(t, b, fmt.Sprintf("writer%d", i))
		wg.Go(func() {
			for k := range per {
				err := w.PublishTree(ctx, fmt.Sprintf("dev/n%d/k%d", i, k), map[string]any{"v": k, "node": i}, client.PublishOptions{QoS: 1, Retain: true})
				if err != nil {
					t.Errorf("node %d write %d: %v", i, k, err)
					return
				}
			}
		})
	}
	wg.Wait()
	want := map[string]any{}
	for i := range tn.b {
		n := map[string]any{}
		for k := range per {
			n[fmt.Sprintf("k%d", k)] = map[string]any{"v": k, "node": i}
		}
		want[fmt.Sprintf("n%d", i)] = n
	}
	wb, _ := json.Marshal(want)
	for i, m := range mirrors {
		waitDoc(t, fmt.Sprintf("node %d", i), m, string(wb))
	}
	revs := map[uint64]bool{}
	for i, b := range tn.b {
		if err := b.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		rev, err := b.Rev(ctx)
		if err != nil {
			t.Fatal(err)
		}
		revs[rev] = true
		if m, _ := mirrors[i].Rev(); m != rev {
			t.Errorf("node %d: copy at mote-rev %d, broker at %d", i, m, rev)
		}
	}
	if len(revs) != 1 {
		t.Errorf("the nodes' revisions differ after the same writes: %v", revs)
	}

	// A client resumes on another node (SPEC §8, §12): a revision seen on
	// node 0, a change made on node 1, a resume on node 2 gets only it.
	r0 := dialTree5(t, tn.b[0], "resumer0")
	r0.subscribe(t, "$sync/dev/n1/+/v")
	seen := revOf(t, r0.next(t))
	w1 := dialNode(t, tn.b[1], "writer-resume")
	if err := w1.PublishTree(ctx, "dev/n1/k3/v", 333, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	want["n1"].(map[string]any)["k3"].(map[string]any)["v"] = 333
	wb, _ = json.Marshal(want)
	waitDoc(t, "node 2 before the resume", mirrors[2], string(wb))
	r2 := dialTree5(t, tn.b[2], "resumer2")
	r2.subscribe(t, "$sync/dev/n1/+/v", "mote-since", fmt.Sprint(seen))
	if p := r2.next(t); p.Properties.User.Get("mote-resume") != "1" || !jsonEqual(t, string(p.Payload), `{"k3":333}`) {
		t.Errorf("resume on node 2 from node 0's revision %d: %s %v, want a resume delta {\"k3\":333}", seen, p.Payload, p.Properties.User)
	}

	// A $set right after the client's own tree publish sees its rows.
	w0 := dialNode(t, tn.b[0], "setter")
	if err := w0.PublishTree(ctx, "dev/s", map[string]any{"a": 1, "b": 2}, client.PublishOptions{QoS: 0, Retain: true}); err != nil {
		t.Fatal(err)
	}
	if err := w0.Set(ctx, "dev/s/+", []byte("9"), 1); err != nil {
		t.Fatal(err)
	}
	want["s"] = map[string]any{"a": 9, "b": 9}
	wb, _ = json.Marshal(want)
	for i, m := range mirrors {
		waitDoc(t, fmt.Sprintf("node %d after $set", i), m, string(wb))
	}

	// Plain events cross nodes, once each.
	if err := w0.Publish(ctx, "ev/x", []byte("1"), client.PublishOptions{QoS: 1}); err != nil {
		t.Fatal(err)
	}
	for i, col := range plain {
		got := col.wait(t, 1)
		if len(got) != 1 || got[0].Topic != "ev/x" {
			t.Errorf("node %d: events %v, want one on ev/x", i, got)
		}
	}

	checkSessionsStay(t, tn)

	// Node 2 killed (its broker and NATS node stop; nothing is flushed by
	// the cluster: its copy is what it committed), writes go on with 2 of
	// 3, node 2 restarts on its directories and catches up.
	tn.stop(2)
	w1 = dialNode(t, tn.b[1], "writer-late")
	for k := range 20 {
		if err := w1.PublishTree(ctx, fmt.Sprintf("dev/late/k%d", k), k, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
			t.Fatalf("write %d with 2 of 3 nodes: %v", k, err)
		}
	}
	// A deletion it missed too (SPEC §12: "catches up with every change").
	if err := w1.Publish(ctx, "dev/s/a", nil, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	delete(want["s"].(map[string]any), "a")
	late := map[string]any{}
	for k := range 20 {
		late[fmt.Sprintf("k%d", k)] = k
	}
	want["late"] = late
	wb, _ = json.Marshal(want)
	if err := tn.start(2, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	c2 := dialNode(t, tn.b[2], "reader2b")
	m2, err := c2.Mirror(ctx, "dev/#", client.JSON, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitDoc(t, "node 2 restarted", m2, string(wb)) // at once: it listens only once caught up
	rev1, _ := tn.b[1].Rev(ctx)
	rev2, _ := tn.b[2].Rev(ctx)
	if rev1 != rev2 {
		t.Errorf("after catch-up: node 1 at %d, node 2 at %d", rev1, rev2)
	}
}

// TestClusterAlone: a node that cannot reach a quorum refuses retained
// writes with 0x80 (SPEC §12), and applies nothing of them.
func TestClusterAlone(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster")
	}
	tn := startNodes(t, 3, 2*time.Second)
	ctx := testCtx(t)
	tn.stop(1)
	tn.stop(2)
	b := tn.b[0]
	err := b.Publish(ctx, Principal{ClientID: "w"}, Message{Topic: "$tree/alone", Payload: []byte(`{"a":1}`), QoS: 1, Retain: true})
	var r *Refusal
	if !errors.As(err, &r) || r.Code.Code != 0x80 || !errors.Is(err, cluster.ErrUnreplicated) {
		t.Fatalf("a write without a quorum: %v, want a 0x80 refusal wrapping ErrUnreplicated", err)
	}
	out, _, err := b.Tree(ctx, Principal{ClientID: "r"}, "alone/#", 0)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "{}" {
		t.Errorf("a refused write was applied: %s", out)
	}
	// Events and $SYS go on: they are not the log's.
	if err := b.Publish(ctx, Principal{ClientID: "w"}, Message{Topic: "ev/x", Payload: []byte("1")}); err != nil {
		t.Errorf("an event on a node alone: %v", err)
	}
}

// TestClusterAnswerWait: a publisher whose write does not come back
// through the log in time is answered (0x80, outcome unknown), never left
// waiting; the write may still be applied after.
func TestClusterAnswerWait(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS node")
	}
	tn := startNodes(t, 1, 5*time.Second)
	b := tn.b[0]
	b.cl.opts.AnswerWait = 300 * time.Millisecond // before any publish
	ctx := testCtx(t)
	release := make(chan struct{})
	held := make(chan struct{})
	go b.onLoop(ctx.Done(), func() { close(held); <-release }) // the loop cannot apply anything
	<-held
	start := time.Now()
	err := b.Publish(ctx, Principal{ClientID: "w"}, Message{Topic: "$tree/late", Payload: []byte(`{"a":1}`), QoS: 1, Retain: true})
	close(release)
	var r *Refusal
	if !errors.As(err, &r) || r.Code.Code != 0x80 || !errors.Is(err, cluster.ErrUnreplicated) {
		t.Fatalf("a write not applied in time: %v, want a 0x80 refusal wrapping ErrUnreplicated", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("answered after %v, with AnswerWait 300 ms", took)
	}
	// Its outcome was unknown: here the log takes it once the loop goes on.
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _, err := b.Tree(ctx, Principal{ClientID: "r"}, "late/#", 0)
		if err != nil {
			t.Fatal(err)
		}
		if string(out) == `{"a":1}` {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the write was not applied after the loop went on: %s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
