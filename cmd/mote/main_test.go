package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/retain"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestSIGTERM runs the real binary: SIGTERM closes the listeners, drains
// the loop and exits 0.
func TestSIGTERM(t *testing.T) {
	dir := t.TempDir()
	bin := buildMote(t)
	port := freePort(t)
	var logs bytes.Buffer
	httpAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	cmd := exec.Command(bin, "broker", "--tcp", "127.0.0.1:"+strconv.Itoa(port), "--ws", "off", "--http", httpAddr, "--data", filepath.Join(dir, "data"))
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	addr := "127.0.0.1:" + strconv.Itoa(port)
	for _, a := range []string{addr, httpAddr} { // the HTTP listener opens after the broker's
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			c, err := net.Dial("tcp", a)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("broker never listened on %s: %s", a, logs.String())
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"pub", "-p", strconv.Itoa(port), "-h", "127.0.0.1", "-t", "a", "--tree", "-m", `{"b":1}`, "-r", "-q", "1"}, nil, &out, &out); err != nil {
		t.Fatalf("pub: %v %s", err, out.String())
	}
	// The HTTP API serves the same rows (--http).
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+httpAddr+"/api/tree/a/%23", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Errorf("GET /api/tree: %v", err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != `{"b":1}` {
			t.Errorf("GET /api/tree/a/%%23: %s %s", resp.Status, body)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no exit after SIGTERM\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "web view at http://localhost:"+httpAddr[len("127.0.0.1:"):]+"/") {
		t.Errorf("no web view line in the logs: %s", logs.String())
	}
	if !strings.Contains(logs.String(), "shutdown complete") {
		t.Errorf("logs: %s", logs.String())
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("listener still open")
	}
}

// TestPubSubCommands drives `mote pub` and `mote sub` against a broker.
func TestPubSubCommands(t *testing.T) {
	b, err := broker.New(broker.Options{TCP: "127.0.0.1:0", WS: "off"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, port, _ := net.SplitHostPort(b.TCPAddr())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // eight commands, each a connection
	defer cancel()
	var errs bytes.Buffer
	cmd := func(stdin string, args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := run(ctx, append(append([]string{args[0]}, "-h", "127.0.0.1", "-p", port), args[1:]...), strings.NewReader(stdin), &out, &errs); err != nil {
			t.Fatalf("%v: %v %s", args, err, errs.String())
		}
		return out.String()
	}
	cmd("", "pub", "-t", "light/bedroom", "--tree", "-m", `{"is_on":1,"brightness":55}`, "-r", "-q", "1")
	cmd("", "pub", "-t", "light/livingroom/is_on", "-m", "0", "-r", "-q", "1")
	cmd("l/x 1\n", "pub", "-t", "lines", "-l", "-q", "1", "-r")
	cmd("", "pub", "-t", "light/+/is_on", "--set", "-m", "1", "-q", "1")
	cmd("", "pub", "-t", "c", "--tree", "--codec", "cbor", "-m", `{"v":[1,2]}`, "-r", "-q", "1")
	if err := b.Sync(ctx); err != nil { // the $set applied: the loop's barrier, not a sleep
		t.Fatal(err)
	}
	out := cmd("", "sub", "-t", "light/+/is_on", "--sync", "-C", "1")
	if !strings.Contains(out, "snapshot seq 0") || !strings.Contains(out, `"bedroom": 1`) || !strings.Contains(out, `"livingroom": 1`) {
		t.Errorf("sub --sync printed:\n%s", out)
	}
	out = cmd("", "sub", "-t", "#", "-v", "-C", "5")
	for _, want := range []string{"light/bedroom/brightness 55", "lines l/x 1", "c/v [1,2]"} {
		if !strings.Contains(out, want) {
			t.Errorf("sub -v printed:\n%s\nwant a line %q", out, want)
		}
	}
	var usage bytes.Buffer
	if err := run(ctx, []string{"pub", "-m", "x"}, nil, &usage, &usage); err == nil {
		t.Error("pub without -t succeeded")
	}
	if err := run(ctx, []string{"nope"}, nil, &usage, &usage); err == nil || !strings.Contains(usage.String(), "unknown command") {
		t.Errorf("unknown command: %v %s", err, usage.String())
	}
	_ = os.Stderr
}

// TestStoreCommands: `mote store stats|dump` read a stopped broker's store,
// and a damaged store stops `mote broker` with an error naming the file.
func TestStoreCommands(t *testing.T) {
	dir := t.TempDir()
	b, err := broker.New(broker.Options{TCP: "127.0.0.1:0", WS: "off", Store: mustOpen(t, dir)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(b.TCPAddr())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"pub", "-h", "127.0.0.1", "-p", port, "-t", "house", "--tree", "-m", `{"t":21.5,"name":"home","raw":null}`, "-r", "-q", "1"}, nil, &out, &out); err != nil {
		t.Fatal(err, out.String())
	}
	b.Close()
	out.Reset()
	if err := run(ctx, []string{"store", "stats", "-data", dir}, nil, &out, &out); err != nil {
		t.Fatal(err, out.String())
	}
	if !strings.Contains(out.String(), "rows      2") || !strings.Contains(out.String(), "house/…") {
		t.Errorf("stats:\n%s", out.String())
	}
	out.Reset()
	if err := run(ctx, []string{"store", "dump", "-data", dir, "-t", "house/+"}, nil, &out, &out); err != nil {
		t.Fatal(err)
	}
	// Each line has the row's revision and the time of its change; both
	// rows came in one publish.
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if m["rev"].(float64) < 1 || m["t"].(float64) < float64(time.Now().Add(-time.Minute).UnixMilli()) {
			t.Errorf("rev and t: %s", line)
		}
		delete(m, "rev")
		delete(m, "t")
		j, _ := json.Marshal(m)
		got = append(got, string(j))
	}
	want := `[{"kind":"string","payload":"home","qos":1,"topic":"house/name"} {"kind":"json","payload":"21.5","qos":1,"topic":"house/t"}]`
	if fmt.Sprint(got) != want {
		t.Errorf("dump:\n%s\nwant\n%s", got, want)
	}
	os.WriteFile(filepath.Join(dir, "mote.db"), bytes.Repeat([]byte("junk"), 4096), 0o600)
	err = run(ctx, []string{"broker", "--tcp", "127.0.0.1:0", "--ws", "off", "--http", "off", "--data", dir}, nil, &out, &out)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "mote.db")) {
		t.Errorf("broker on a damaged store: %v", err)
	}
}

func mustOpen(t *testing.T, dir string) *retain.Store {
	t.Helper()
	s, err := retain.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPasswdWithMosquitto: a file `mote passwd` writes authenticates users
// in Debian's mosquitto broker, and one mosquitto_passwd writes
// authenticates them in Mote.
func TestPasswdWithMosquitto(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pw")
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, []string{"passwd", "-c", "-b", file, "alice", "al1ce"}, nil, &out, &out); err != nil {
		t.Fatal(err, out.String())
	}
	if err := run(ctx, []string{"passwd", file, "bob"}, strings.NewReader("b0b\nb0b\n"), &out, &out); err != nil {
		t.Fatal(err, out.String())
	}
	mosq, err := exec.LookPath("mosquitto")
	if err != nil {
		mosq, err = exec.LookPath("/usr/sbin/mosquitto")
	}
	pub, err2 := exec.LookPath("mosquitto_pub")
	mp, err3 := exec.LookPath("mosquitto_passwd")
	if err != nil || err2 != nil || err3 != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("mosquitto, mosquitto_pub or mosquitto_passwd missing")
		}
		t.Skip("mosquitto not installed")
	}
	port := freePort(t)
	conf := filepath.Join(dir, "mosquitto.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("user root\nlistener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\n", port, file)), 0o644)
	m := exec.Command(mosq, "-c", conf)
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { m.Process.Kill(); m.Wait() }()
	try := func(p int, user, pw string) error {
		var last error
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			out, err := exec.CommandContext(ctx, pub, "-h", "127.0.0.1", "-p", strconv.Itoa(p), "-u", user, "-P", pw, "-t", "x", "-m", "1").CombinedOutput()
			if err == nil {
				return nil
			}
			last = fmt.Errorf("%v: %s", err, out)
			if strings.Contains(string(out), "not authori") || strings.Contains(string(out), "Connection Refused") {
				return last
			}
		}
		return last
	}
	for _, c := range []struct {
		user, pw string
		ok       bool
	}{{"alice", "al1ce", true}, {"bob", "b0b", true}, {"alice", "wrong", false}} {
		if err := try(port, c.user, c.pw); (err == nil) != c.ok {
			t.Errorf("mosquitto with mote's file, %s/%s: %v", c.user, c.pw, err)
		}
	}
	// The other way: mosquitto_passwd's file in mote broker.
	file2 := filepath.Join(dir, "pw2")
	if out, err := exec.Command(mp, "-c", "-b", file2, "carol", "c4rol").CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	_, addr, _ := startBinary(t, filepath.Join(dir, "data"), "--password-file", file2)
	_, mport, _ := net.SplitHostPort(addr)
	p2, _ := strconv.Atoi(mport)
	if err := try(p2, "carol", "c4rol"); err != nil {
		t.Errorf("mote with mosquitto_passwd's file: %v", err)
	}
	if err := try(p2, "carol", "nope"); err == nil {
		t.Error("mote accepted a wrong password")
	}
}
