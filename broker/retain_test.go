package broker

import (
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/retain"
)

// startOn runs a broker with a bbolt store in dir.
func startOn(t *testing.T, dir string, opts Options) *Broker {
	t.Helper()
	st, err := retain.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	opts.Store = st
	return start(t, opts)
}

// allRetained is every retained row as plain subscribers get it: "topic=payload".
func allRetained(t *testing.T, b *Broker, n int) []string {
	t.Helper()
	c := dial3(t, b, "all", true)
	c.sub(t, "#", 0)
	var out []string
	if n > 0 {
		for _, m := range c.wait(t, n) {
			if !m.retained {
				t.Errorf("%s not retained", m.topic)
			}
			out = append(out, m.topic+"="+m.payload)
		}
	}
	c.quiet(t, n)
	c.Disconnect(0)
	sort.Strings(out)
	return out
}

// TestRestart: rows written every way survive a stop and start, in the
// $sync snapshot and in plain retained delivery alike.
func TestRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := testCtx(t)
	b := startOn(t, dir, Options{})
	mc := mote(t, b, "dev")
	p := dial3(t, b, "plain", true)
	p.pub(t, "plain/a", 1, true, "21.5")
	p.pub(t, "plain/b", 1, true, "gone soon")
	p.pub(t, "plain/b", 1, true, "") // delete
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(mc.PublishTree(ctx, "dev/d1", map[string]any{"state": "on", "n": 1, "cfg": map[string]any{"x": true}}, client.PublishOptions{QoS: 1, Retain: true}))
	must(mc.PublishTree(ctx, "dev/d2", map[string]any{"state": "off", "old": 1}, client.PublishOptions{QoS: 1, Retain: true}))
	must(mc.PublishTree(ctx, "dev/d2", map[string]any{"state": "on"}, client.PublishOptions{QoS: 1, Retain: true, Replace: true}))
	must(mc.Set(ctx, "dev/+/state", []byte("idle"), 1))
	must(mc.PublishTree(ctx, "dev/d1", map[string]any{"n": nil}, client.PublishOptions{QoS: 1, Retain: true}))
	settle(t, b)
	before := string(b.snapshot("#"))
	rowsBefore := allRetained(t, b, 4)
	b.Close()

	b2 := startOn(t, dir, Options{})
	after := string(b2.snapshot("#"))
	if !jsonEqual(t, after, before) {
		t.Errorf("snapshot after restart\n%s\nbefore\n%s", after, before)
	}
	if rowsAfter := allRetained(t, b2, 4); strings.Join(rowsAfter, "\n") != strings.Join(rowsBefore, "\n") {
		t.Errorf("retained after restart\n%v\nbefore\n%v", rowsAfter, rowsBefore)
	}
	want := `{"plain":{"a":21.5},"dev":{"d1":{"state":"idle","cfg":{"x":true}},"d2":{"state":"idle"}}}`
	if !jsonEqual(t, after, want) {
		t.Errorf("rows %s, want %s", after, want)
	}
}

// slowStore blocks every commit until released.
type slowStore struct {
	retain.RowStore
	release chan struct{}
}

func (s *slowStore) Commit(b retain.Batch) ([]retain.Rejected, error) {
	<-s.release
	return s.RowStore.Commit(b)
}

// TestDeltasFlowWhileDiskStuck: the message loop never waits on the
// retainer; a commit stuck on the disk still lets deltas flow.
func TestDeltasFlowWhileDiskStuck(t *testing.T) {
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	slow := &slowStore{RowStore: st, release: make(chan struct{})}
	b := start(t, Options{Store: slow, Retain: retain.Options{Interval: time.Millisecond}})
	defer close(slow.release)
	app := dial3(t, b, "app", true)
	app.sub(t, "$tree/s/+", 1)
	dev := dial3(t, b, "dev", true)
	for i := range 50 {
		dev.pub(t, "s/"+itoa(i), 1, true, itoa(i))
	}
	app.wait(t, 1) // deltas arrive although no commit has finished
	if b.ret.Committed.Load() != 0 {
		t.Fatal("a commit finished; the test proves nothing")
	}
}

// TestSyncRetainAcksAfterCommit: with SyncRetain a QoS 1 retained publish
// is acknowledged only once its rows are committed.
func TestSyncRetainAcksAfterCommit(t *testing.T) {
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	slow := &slowStore{RowStore: st, release: make(chan struct{})}
	b := start(t, Options{Store: slow, SyncRetain: true})
	ctx := testCtx(t)
	mc := mote(t, b, "dev")
	acked := make(chan error, 1)
	go func() {
		acked <- mc.PublishTree(ctx, "a", map[string]any{"b": 1}, client.PublishOptions{QoS: 1, Retain: true})
	}()
	select {
	case err := <-acked:
		t.Fatalf("acked before the commit: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(slow.release)
	select {
	case err := <-acked:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testTimeout):
		t.Fatal("never acked")
	}
	if b.ret.Committed.Load() != 1 {
		t.Errorf("%d rows committed", b.ret.Committed.Load())
	}
}
