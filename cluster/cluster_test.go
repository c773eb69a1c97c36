package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/internal/freeport"
	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/wire"
)

// freeAddrs are n free 127.0.0.1 addresses for cluster ports (the nodes
// must know each other's before they start).
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs, err := freeport.Loopback(n)
	if err != nil {
		t.Fatal(err)
	}
	return addrs
}

// testCluster is n embedded nodes routed to each other, each with its own
// connection, log handle, store and follower.
type testCluster struct {
	t      testing.TB
	routes []string
	dir    string
	log    zerolog.Logger
	nodes  []*testNode
	// onApply, if set, is told of every batch a node applied, on its
	// follower's goroutine.
	onApply func(node int, seq uint64)
}

type testNode struct {
	name   string
	node   *Node
	nc     *nats.Conn
	log    *Log
	store  *Store
	cancel context.CancelFunc
	done   chan struct{} // closed when the follower ended, with err
	err    error
}

func startCluster(t testing.TB, n int, onApply func(node int, seq uint64)) *testCluster {
	c := &testCluster{t: t, routes: freeAddrs(t, n), dir: t.TempDir(), onApply: onApply,
		log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)}
	c.nodes = make([]*testNode, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = c.start(i) }) // together: JetStream waits for its peers
	}
	wg.Wait()
	t.Cleanup(func() {
		for i := range c.nodes {
			c.stop(i)
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return c
}

// start starts (or restarts, on its directories) node i and its follower.
func (c *testCluster) start(i int) error {
	name := fmt.Sprintf("n%d", i)
	o := NodeOptions{Name: name, Dir: filepath.Join(c.dir, name, "js")}
	if len(c.routes) > 1 { // a node alone has no routes: JetStream would wait for peers
		o.ClusterListen, o.Routes = c.routes[i], c.routes
	}
	node, err := StartNode(o, c.log.With().Str("node", name).Logger())
	if err != nil {
		return err
	}
	tn := &testNode{name: name, node: node}
	c.nodes[i] = tn
	if tn.nc, err = node.Connect("test-" + name); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.t.Context(), time.Minute)
	defer cancel()
	// Appends wait up to 20 s for a quorum: a stream that lost its leader
	// (a node stopped) elects another meanwhile, which on a loaded -race
	// run can take more than the 3 s this once allowed. The test that
	// wants a refusal bounds its own Append ("alone refuses").
	lo := LogOptions{Replicas: min(3, len(c.routes)), Timeout: 20 * time.Second,
		OnRetry: func(err error) { c.log.Info().Err(err).Str("node", name).Msg("follow again") }}
	if tn.log, err = OpenLog(ctx, tn.nc, lo); err != nil {
		return err
	}
	if tn.store, err = OpenStore(filepath.Join(c.dir, name, "rows")); err != nil {
		return err
	}
	fctx, fcancel := context.WithCancel(context.Background())
	tn.cancel, tn.done = fcancel, make(chan struct{})
	var applied func(Entry)
	if c.onApply != nil {
		applied = func(e Entry) { c.onApply(i, e.Seq) }
	}
	go func() { tn.err = tn.store.Mirror(fctx, tn.log, applied); close(tn.done) }()
	return nil
}

// stop stops node i's follower, store, connection and NATS node.
func (c *testCluster) stop(i int) {
	tn := c.nodes[i]
	if tn == nil {
		return
	}
	c.nodes[i] = nil
	if tn.cancel != nil {
		tn.cancel()
		<-tn.done
		if !errors.Is(tn.err, context.Canceled) {
			c.t.Errorf("node %s: follower: %v", tn.name, tn.err)
		}
	}
	if tn.store != nil {
		tn.store.Close()
	}
	if tn.nc != nil {
		tn.nc.Close()
	}
	tn.node.Close()
}

// caughtUp waits until every running node's store has every batch up to
// last, or fails the test at its deadline.
func (c *testCluster) caughtUp(last uint64) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.t.Context(), 30*time.Second)
	defer cancel()
	for _, tn := range c.nodes {
		if tn == nil {
			continue
		}
		for tn.store.Next() <= last {
			select {
			case <-tn.done:
				c.t.Fatalf("node %s: follower stopped at %d: %v", tn.name, tn.store.Next(), tn.err)
			case <-ctx.Done():
				c.t.Fatalf("node %s: at %d, want %d", tn.name, tn.store.Next()-1, last)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
}

// rows is a store's rows as topic → value and revision.
func rows(t testing.TB, s *Store) map[string]retain.Row {
	t.Helper()
	m := map[string]retain.Row{}
	if err := s.Load(func(r retain.Row) error { m[r.Topic] = r; return nil }); err != nil {
		t.Fatal(err)
	}
	return m
}

func str(s string) wire.Value { return wire.Value{Kind: wire.String, Data: s} }

// write appends batches batches of 3 rows on node i: two of its own, one
// shared by every writer, and a deletion of its previous own row; it
// returns the sequences acknowledged.
func (c *testCluster) write(i, batches int, tag string) ([]uint64, error) {
	tn := c.nodes[i]
	var seqs []uint64
	for k := range batches {
		ch := []retain.Change{
			{Topic: fmt.Sprintf("w%d/%s/%d", i, tag, k), Value: str(fmt.Sprint(k)), QoS: 1, MS: int64(k)},
			{Topic: fmt.Sprintf("w%d/last", i), Value: wire.Value{Kind: wire.JSON, Data: fmt.Sprint(k)}},
			{Topic: "shared", Value: str(fmt.Sprintf("%d/%d", i, k))},
		}
		if k > 0 {
			ch = append(ch, retain.Change{Topic: fmt.Sprintf("w%d/%s/%d", i, tag, k-1)}) // deleted
		}
		seq, err := tn.log.Append(context.Background(), ch)
		if err != nil {
			return seqs, fmt.Errorf("node %d, batch %d: %w", i, k, err)
		}
		seqs = append(seqs, seq)
	}
	return seqs, nil
}

// TestCluster forms three nodes in process, writes on every node at
// once, and checks every node's copy; then loses a node, writes on with
// two of three, restarts it and checks it caught up; then leaves one
// node alone, whose writes are refused.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("forms a JetStream cluster")
	}
	c := startCluster(t, 3, nil)
	for _, tn := range c.nodes {
		if tn.node.Routes() < 2 {
			// Routes are up once JetStream placed three replicas.
			t.Logf("node %s has %d routes", tn.name, tn.node.Routes())
		}
	}

	const batches = 60
	var wg sync.WaitGroup
	seqs := make([][]uint64, 3)
	errs := make([]error, 3)
	for i := range 3 {
		wg.Go(func() { seqs[i], errs[i] = c.write(i, batches, "a") })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	all := slices.Concat(seqs...)
	slices.Sort(all)
	if len(slices.Compact(all)) != 3*batches {
		t.Fatalf("%d distinct sequences for %d batches", len(all), 3*batches)
	}
	last := all[len(all)-1]
	c.caughtUp(last)

	want := rows(t, c.nodes[0].store)
	for i := range 3 {
		own := fmt.Sprintf("w%d/a/%d", i, batches-1)
		if r, ok := want[own]; !ok || r.Value != str(fmt.Sprint(batches-1)) || r.Rev != seqs[i][batches-1] {
			t.Errorf("row %s: %+v (present %v), want rev %d", own, r, ok, seqs[i][batches-1])
		}
		if _, ok := want[fmt.Sprintf("w%d/a/%d", i, batches-2)]; ok {
			t.Errorf("writer %d: deleted row still there", i)
		}
	}
	if len(want) != 3*2+1 {
		t.Errorf("%d rows, want 7: %v", len(want), want)
	}
	for _, tn := range c.nodes[1:] {
		if got := rows(t, tn.store); !equalRows(got, want) {
			t.Errorf("node %s differs from n0:\n%v\n%v", tn.name, got, want)
		}
	}
	for _, tn := range c.nodes {
		var dead []string
		if err := tn.store.Deleted(0, last, func(topic string, rev uint64) bool { dead = append(dead, topic); return true }); err != nil {
			t.Fatal(err)
		}
		if len(dead) != 3*(batches-1) {
			t.Errorf("node %s: %d deletion markers, want %d", tn.name, len(dead), 3*(batches-1))
		}
	}

	t.Run("events", func(t *testing.T) { testEvents(t, c) })

	t.Run("lost node catches up", func(t *testing.T) {
		start := time.Now()
		c.stop(2)
		t.Logf("stopped n2 in %v", time.Since(start).Round(time.Millisecond))
		start = time.Now()
		seqs, err := c.write(0, 100, "b") // two of three: a quorum
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("100 batches with 2 of 3 in %v", time.Since(start).Round(time.Millisecond))
		start = time.Now()
		if err := c.start(2); err != nil {
			t.Fatal(err)
		}
		t.Logf("restarted n2 in %v", time.Since(start).Round(time.Millisecond))
		start = time.Now()
		c.caughtUp(seqs[len(seqs)-1])
		t.Logf("caught up in %v", time.Since(start).Round(time.Millisecond))
		want := rows(t, c.nodes[0].store)
		if got := rows(t, c.nodes[2].store); !equalRows(got, want) {
			t.Errorf("restarted node differs:\n%v\n%v", got, want)
		}
		if m := c.nodes[2].store.Meta(); !m.Clean || m.Fresh || m.Rev < seqs[0]-1 {
			t.Errorf("restarted store meta %+v", m)
		}
	})

	t.Run("past the end", func(t *testing.T) {
		_, last, err := c.nodes[0].log.Bounds(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		err = c.nodes[0].log.Follow(t.Context(), last+2, func(Entry) error { return nil })
		if !errors.Is(err, ErrAhead) {
			t.Fatalf("follow from %d: %v, want ErrAhead", last+2, err)
		}
	})

	t.Run("alone refuses", func(t *testing.T) {
		c.stop(1)
		c.stop(2)
		start := time.Now()
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second) // no quorum comes: refused at its end
		defer cancel()
		_, err := c.nodes[0].log.Append(ctx, []retain.Change{{Topic: "lonely", Value: str("x")}})
		if !errors.Is(err, ErrUnreplicated) {
			t.Fatalf("append alone: %v, want ErrUnreplicated", err)
		}
		t.Logf("refused after %v: %v", time.Since(start).Round(time.Millisecond), err)
		if err := c.start(1); err != nil {
			t.Fatal(err)
		}
		seqs, err := c.write(1, 1, "c") // a quorum again: writes go on
		if err != nil {
			t.Fatal(err)
		}
		c.caughtUp(seqs[0])
	})
}

func equalRows(a, b map[string]retain.Row) bool {
	if len(a) != len(b) {
		return false
	}
	for k, r := range a {
		if b[k] != r {
			return false
		}
	}
	return true
}

// TestBatchTooLarge: a batch bigger than one message is refused whole.
func TestBatchTooLarge(t *testing.T) {
	node, err := StartNode(NodeOptions{Name: "solo", Dir: t.TempDir(), MaxPayload: 64 << 10}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Close)
	nc, err := node.Connect("test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	l, err := OpenLog(t.Context(), nc, LogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 70<<10)
	if _, err := l.Append(t.Context(), []retain.Change{{Topic: "big", Value: wire.Value{Kind: wire.Bytes, Data: string(big)}}}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("append 70 KiB: %v, want ErrTooLarge", err)
	}
	seq, err := l.Append(t.Context(), []retain.Change{{Topic: "small", Value: str("x")}})
	if err != nil || seq != 1 {
		t.Fatalf("append: %d %v, want sequence 1", seq, err)
	}
}

func TestNodeOptions(t *testing.T) {
	for _, o := range []NodeOptions{
		{Dir: "x"},
		{Name: "a b", Dir: "x"},
		{Name: "a"},
		{Name: "a", Dir: "x", Listen: "nohost"},
		{Name: "a", Dir: "x", Routes: []string{"127.0.0.1:1"}},
		{Name: "a", Dir: "x", ClusterListen: "127.0.0.1:99999"},
	} {
		if _, err := StartNode(o, zerolog.Nop()); !errors.Is(err, ErrNode) {
			t.Errorf("%+v: %v, want ErrNode", o, err)
		}
	}
}

// TestNodePortInUse: a node whose cluster or client port is taken fails
// to start at once, saying why, not after its whole Ready bound (NATS
// logs the listener's error as fatal and goes on without it).
func TestNodePortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	taken := l.Addr().String()
	for _, o := range []NodeOptions{
		{Name: "a", Dir: t.TempDir(), ClusterListen: taken, Routes: []string{taken}},
		{Name: "b", Dir: t.TempDir(), Listen: taken},
	} {
		o.Ready = time.Minute
		start := time.Now()
		n, err := StartNode(o, zerolog.Nop())
		if err == nil {
			n.Close()
			t.Fatalf("%s: started on a port in use", o.Name)
		}
		if !errors.Is(err, ErrNode) || !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("%s: %v, want ErrNode saying the address is in use", o.Name, err)
		}
		if took := time.Since(start); took > o.Ready/2 {
			t.Errorf("%s: failed after %v, want well within Ready (%v)", o.Name, took, o.Ready)
		}
	}
}
