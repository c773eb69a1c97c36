package client_test

import (
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/retain"
)

// seenStore is a store that tells which topics its commits held
// (committed): a test's barrier for "the retainer committed this change".
type seenStore struct {
	*retain.Store
	mu   sync.Mutex
	seen map[string]bool
}

func (s *seenStore) Commit(b retain.Batch) ([]retain.Rejected, error) {
	rejected, err := s.Store.Commit(b)
	if err == nil {
		s.mu.Lock()
		for _, c := range b.Changes {
			s.seen[c.Topic] = true
		}
		s.mu.Unlock()
	}
	return rejected, err
}

// committed waits until a commit of s held a change of topic.
func (s *seenStore) committed(t *testing.T, topic string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		s.mu.Lock()
		ok := s.seen[topic]
		s.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no commit of %s", topic)
		}
	}
}

// storeBroker runs a broker on dir's store at addr.
func storeBroker(t *testing.T, dir, addr string) (*broker.Broker, *seenStore) {
	t.Helper()
	opened, err := retain.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	st := &seenStore{Store: opened, seen: map[string]bool{}}
	var b *broker.Broker
	for i := 0; ; i++ { // the old listener's port may take a moment
		b, err = broker.New(broker.Options{TCP: addr, WS: "off", Store: st})
		if err == nil {
			if err = b.Start(); err == nil {
				break
			}
			b.Close()
		}
		if i > 50 {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() { b.Close(); st.Close() })
	return b, st
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	out.Close()
}

// TestRedTeam12bMirrorRestart: a Mirror with AutoReconnect keeps a copy
// equal to the broker's rows across a clean restart (a resume delta) and
// across a crash that lost the last commits (a full snapshot: its copy
// had rows the restarted broker no longer has).
func TestRedTeam12bMirrorRestart(t *testing.T) {
	dir := t.TempDir()
	b, _ := storeBroker(t, dir, "127.0.0.1:0")
	addr := b.TCPAddr()
	ctx := testCtx(t)
	opts := client.PublishOptions{QoS: 1, Retain: true}
	seed := dial(t, addr, "seed", client.Options{AutoReconnect: true, MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err := seed.PublishTree(ctx, "m", map[string]any{"a": 1, "b": 2, "c": 3}, opts); err != nil {
		t.Fatal(err)
	}
	c := dial(t, addr, "mirror", client.Options{AutoReconnect: true, MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	m, err := c.Mirror(ctx, "m/+", client.JSON, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitCopy(t, m, `{"a":1,"b":2,"c":3}`)

	// Clean restart; rows change before the mirror is back.
	b.Close()
	b, st := storeBroker(t, dir, addr)
	w := dial(t, addr, "w", client.Options{})
	if err := w.PublishTree(ctx, "m", map[string]any{"a": 10, "b": nil}, opts); err != nil {
		t.Fatal(err)
	}
	waitCopy(t, m, `{"a":10,"c":3}`)
	if m.Resumes() < 1 {
		t.Errorf("clean restart: %d resumes", m.Resumes())
	}
	w.Close()

	// A crash: the file as it was committed (running, not clean) before
	// the last change, which the mirror saw.
	// Committed: the only change of m/b since this broker started (a
	// wait of 300 ms for it, six commit intervals, could copy the file
	// before the commit on a loaded machine, and the crash then lost it).
	st.committed(t, "m/b")
	crash := t.TempDir()
	copyFile(t, filepath.Join(dir, retain.FileName), filepath.Join(crash, retain.FileName))
	if err := seed.PublishTree(ctx, "m", map[string]any{"c": nil, "d": 4}, opts); err != nil {
		t.Fatal(err)
	}
	waitCopy(t, m, `{"a":10,"d":4}`)
	b.Close()
	storeBroker(t, crash, addr)
	waitCopy(t, m, `{"a":10,"c":3}`)
}
