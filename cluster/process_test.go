package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/mote-mqtt/mote/retain"
)

// childEnv makes the test binary a cluster node (childMain) instead of
// running tests.
const childEnv = "MOTE_CLUSTER_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		if err := childMain(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// childMain is one node in its own process: a NATS node, the log, the
// node's copy following it. It prints "ready" once it follows; "stop N"
// on stdin makes it wait until it applied batch N, close and exit.
func childMain() error {
	var o NodeOptions
	o.Name = os.Getenv("NODE_NAME")
	o.Dir = filepath.Join(os.Getenv("NODE_DIR"), "js")
	o.Listen = os.Getenv("NODE_LISTEN")
	o.ClusterListen = os.Getenv("NODE_CLUSTER")
	o.Routes = strings.Split(os.Getenv("NODE_ROUTES"), ",")
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel).With().Str("node", o.Name).Logger()
	node, err := StartNode(o, log)
	if err != nil {
		return err
	}
	defer node.Close()
	nc, err := node.Connect("child")
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // never outlive the test
	defer cancel()
	l, err := OpenLog(ctx, nc, LogOptions{Replicas: 3})
	if err != nil {
		return err
	}
	s, err := OpenStore(filepath.Join(os.Getenv("NODE_DIR"), "rows"))
	if err != nil {
		return err
	}
	defer s.Close()
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	done := make(chan error, 1)
	go func() { done <- s.Mirror(fctx, l, nil) }()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		last, ok := strings.CutPrefix(in.Text(), "stop ")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(last, 10, 64)
		if err != nil {
			return err
		}
		for s.Next() <= n {
			select {
			case err := <-done:
				return fmt.Errorf("follower stopped at %d: %w", s.Next(), err)
			case <-ctx.Done():
				return fmt.Errorf("at %d, want %d: %w", s.Next()-1, n, ctx.Err())
			case <-time.After(5 * time.Millisecond):
			}
		}
		fcancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	}
	return errors.New("stdin closed before stop")
}

// child is a node process.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *strings.Builder
	url    string
}

func startChild(t *testing.T, i int, dir string, clients, routes []string) *child {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", fmt.Sprintf("NODE_NAME=p%d", i), "NODE_DIR="+filepath.Join(dir, fmt.Sprint(i)),
		"NODE_LISTEN="+clients[i], "NODE_CLUSTER="+routes[i], "NODE_ROUTES="+strings.Join(routes, ","))
	c := &child{cmd: cmd, stderr: &strings.Builder{}, url: "nats://" + clients[i]}
	cmd.Stderr = c.stderr
	var err error
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.cmd.Process.Kill(); c.cmd.Wait() })
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ready <- sc.Scan() && sc.Text() == "ready"
		io.Copy(io.Discard, out)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("node %d did not start: %s", i, c.stderr)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("node %d not ready in 60 s", i)
	}
	return c
}

// TestProcesses: three nodes in three processes, a writer on each; one
// node is killed (SIGKILL) under load and restarted. Every acknowledged
// write is in every node's copy, and the copies are equal.
func TestProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("three processes forming a JetStream cluster")
	}
	dir := t.TempDir()
	addrs := freeAddrs(t, 6)
	clients, routes := addrs[:3], addrs[3:]
	children := make([]*child, 3)
	var wg sync.WaitGroup
	var mu sync.Mutex // guards children during the start
	for i := range 3 {
		wg.Go(func() {
			c := startChild(t, i, dir, clients, routes)
			mu.Lock()
			children[i] = c
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	type write struct {
		topic string
		seq   uint64
	}
	var amu sync.Mutex
	var acked []write
	stop := make(chan struct{})
	writer := func(i int, tag string) error {
		nc, err := nats.Connect(children[i].url, nats.MaxReconnects(0))
		if err != nil {
			return err
		}
		defer nc.Close()
		l, err := OpenLog(t.Context(), nc, LogOptions{Replicas: 3, Timeout: 2 * time.Second})
		if err != nil {
			return err
		}
		for k := 0; ; k++ {
			select {
			case <-stop:
				return nil
			default:
			}
			topic := fmt.Sprintf("w%d/%s/%d", i, tag, k)
			seq, err := l.Append(t.Context(), []retain.Change{{Topic: topic, Value: str(fmt.Sprint(k))}})
			if errors.Is(err, ErrUnreplicated) && !(i == 2 && tag == "a") {
				// No quorum within the timeout: the stream is electing a
				// leader after the kill (4–9 s). Refused, not counted (its
				// outcome is unknown); a live node's writer goes on (the
				// killed node's stops at its first error).
				continue
			}
			if err != nil {
				return err // not acknowledged: not counted
			}
			amu.Lock()
			acked = append(acked, write{topic, seq})
			amu.Unlock()
		}
	}
	count := func() int { amu.Lock(); defer amu.Unlock(); return len(acked) }
	waitWrites := func(n int) {
		deadline := time.Now().Add(30 * time.Second)
		for count() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d writes acknowledged in 30 s, want %d", count(), n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	var wwg sync.WaitGroup
	errs := make([]error, 4)
	for i := range 3 {
		wwg.Go(func() { errs[i] = writer(i, "a") })
	}
	waitWrites(300)
	children[2].cmd.Process.Kill() // kill -9, under load
	children[2].cmd.Wait()
	t.Logf("killed node 2 after %d writes", count())
	n := count()
	waitWrites(n + 300) // two of three go on
	children[2] = startChild(t, 2, dir, clients, routes)
	t.Logf("restarted node 2 after %d writes", count())
	wwg.Go(func() { errs[3] = writer(2, "b") })
	waitWrites(count() + 300)
	close(stop)
	wwg.Wait()
	if errs[2] == nil {
		t.Errorf("the writer on the killed node saw no error")
	}
	for _, i := range []int{0, 1, 3} {
		if errs[i] != nil {
			t.Errorf("writer %d: %v", i, errs[i])
		}
	}
	var last uint64
	for _, w := range acked {
		last = max(last, w.seq)
	}
	for i, c := range children {
		if _, err := fmt.Fprintf(c.stdin, "stop %d\n", last); err != nil {
			t.Fatal(err)
		}
		if err := c.cmd.Wait(); err != nil {
			t.Fatalf("node %d: %v: %s", i, err, c.stderr)
		}
	}
	var copies []map[string]retain.Row
	for i := range 3 {
		s, err := OpenStore(filepath.Join(dir, fmt.Sprint(i), "rows"))
		if err != nil {
			t.Fatal(err)
		}
		copies = append(copies, rows(t, s))
		s.Close()
	}
	for _, w := range acked {
		for i, c := range copies {
			if r, ok := c[w.topic]; !ok || r.Rev != w.seq {
				t.Fatalf("node %d: acknowledged write %s at %d: %+v (present %v)", i, w.topic, w.seq, r, ok)
			}
		}
	}
	for i := 1; i < 3; i++ {
		if !equalRows(copies[i], copies[0]) {
			t.Errorf("node %d's copy differs from node 0's: %d rows, %d", i, len(copies[i]), len(copies[0]))
		}
	}
	t.Logf("%d acknowledged writes, last sequence %d, %d rows on every node", len(acked), last, len(copies[0]))
}
