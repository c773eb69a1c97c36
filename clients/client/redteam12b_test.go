package client_test

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/retain"
)

// storeBroker runs a broker on dir's store at addr.
func storeBroker(t *testing.T, dir, addr string) *broker.Broker {
	t.Helper()
	st, err := retain.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
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
	return b
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
	b := storeBroker(t, dir, "127.0.0.1:0")
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
	b = storeBroker(t, dir, addr)
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
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // committed
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
