package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/clients/client"
)

// TestDataOff: `--data off` keeps retained rows in memory only: a $sync
// subscriber gets what was published, no data directory is made, the log
// says the rows are not persisted; what needs a store is refused at start
// with the reason.
func TestDataOff(t *testing.T) {
	dir := t.TempDir()
	bin := buildMote(t)
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "broker", "--tcp", addr, "--ws", "off", "--http", "off", "--data", "off")
	cmd.Dir = dir
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	logs.waitLog(t, "mote broker listening", 1)
	// (logged once Start returned, after "listening": waited for, not
	// looked for at once — it flaked so in CI)
	logs.waitLog(t, "in memory only", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addr, client.Options{ClientID: "c", CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Publish(ctx, "$tree/light/bedroom", []byte(`{"is_on":1}`), client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	if err := c.Subscribe(ctx, "light/+/is_on", client.Sync, client.JSON, 1, func(m client.Message) { got <- string(m.Payload) }); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != `{"bedroom":1}` {
			t.Errorf("snapshot %s", p)
		}
	case <-ctx.Done():
		t.Fatal("no snapshot")
	}
	for _, name := range []string{"off", "data"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			t.Errorf("a directory %q was made", name)
		}
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--sync-retain"}, "--sync-retain"},
		{[]string{"--cluster", "c", "--cluster-node", "0", "--cluster-routes", "127.0.0.1:1"}, "cluster node"},
	} {
		args := append([]string{"broker", "--tcp", "127.0.0.1:0", "--ws", "off", "--http", "off", "--data", "off"}, tc.args...)
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: %v\n%s", tc.args, err, out)
		}
	}
	conf := filepath.Join(dir, "h.yaml")
	os.WriteFile(conf, []byte("history: [{filter: \"h/#\", keep: 5}]\n"), 0o600)
	out, err := exec.CommandContext(ctx, bin, "broker", "--tcp", "127.0.0.1:0", "--ws", "off", "--http", "off", "--data", "off", "--config", conf).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "history") {
		t.Errorf("history with --data off: %v\n%s", err, out)
	}
}
