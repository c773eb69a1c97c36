package broker

import (
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/clients/client"
)

// needTool finds a command-line tool; CI (which installs them) fails
// without it, a developer's machine skips.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed (.ci/run installs mosquitto-clients)", name)
		}
		t.Skipf("%s not installed: apt-get install mosquitto-clients", name)
	}
	return p
}

func hostPort(t *testing.T, addr string) (string, string) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// Rows of tree publishes reach mosquitto_sub as retained messages.
func TestMosquittoSubSeesTreeRows(t *testing.T) {
	sub := needTool(t, "mosquitto_sub")
	b := start(t, Options{})
	ctx := testCtx(t)
	mc := mote(t, b, "dev")
	if err := mc.PublishTree(ctx, "light/bedroom", map[string]any{"is_on": 1, "name": "bed room", "cfg": map[string]any{"/": 5}}, client.PublishOptions{QoS: 1, Retain: true}); err != nil {
		t.Fatal(err)
	}
	settle(t, b)
	h, p := hostPort(t, b.TCPAddr())
	out, err := exec.CommandContext(testCtx(t), sub, "-h", h, "-p", p, "-t", "light/#", "-C", "3", "-W", "5", "-F", "%r %t %p").CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_sub: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	sort.Strings(lines)
	want := []string{"1 light/bedroom/cfg 5", "1 light/bedroom/is_on 1", "1 light/bedroom/name bed room"}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("mosquitto_sub got\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

// mosquitto_pub -r rows appear in snapshots and deltas, and mosquitto_sub
// can subscribe to $sync itself.
func TestMosquittoPubRowsInTrees(t *testing.T) {
	pub := needTool(t, "mosquitto_pub")
	sub := needTool(t, "mosquitto_sub")
	b := start(t, Options{})
	h, p := hostPort(t, b.TCPAddr())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.CommandContext(testCtx(t), pub, append([]string{"-h", h, "-p", p, "-q", "1"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub %v: %v: %s", args, err, out)
		}
	}
	run("-r", "-t", "sensor/kitchen/temp", "-m", "21.5")
	run("-r", "-t", "sensor/hall/temp", "-m", "19")
	settle(t, b)
	ctx := testCtx(t)
	mc := mote(t, b, "app")
	m, err := mc.Mirror(ctx, "sensor/+/temp", client.CBOR, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.Get(func(doc any) {
		if !same(t, doc, `{"kitchen":21.5,"hall":19}`) {
			t.Errorf("snapshot %v", doc)
		}
	})
	run("-r", "-t", "sensor/kitchen/temp", "-n") // an empty retained publish deletes
	run("-t", "sensor/attic/temp", "-m", "30")   // an event: in deltas, not stored
	if err := m.Wait(ctx, func(doc any) bool { return same(t, doc, `{"hall":19,"attic":30}`) }); err != nil {
		m.Get(func(doc any) { t.Fatalf("mirror %v", doc) })
	}
	out, err := exec.CommandContext(testCtx(t), sub, "-h", h, "-p", p, "-t", "$sync/sensor/+/temp", "-C", "1", "-W", "5", "-F", "%t %p").CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_sub: %v: %s", err, out)
	}
	topic, payload, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	if topic != "$sync/sensor/+/temp" || !jsonEqual(t, payload, `{"hall":19}`) {
		t.Errorf("mosquitto_sub $sync: %s", out)
	}
}
