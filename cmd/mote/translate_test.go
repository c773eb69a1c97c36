package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/clients/client"
)

const zigbeeYAML = `translate:
  - from: "zigbee2mqtt/+/state"
    to: "home/+/on"
    values: {"ON": true, "OFF": false}
    two_way: true
`

// TestTranslateCheck: `mote translate check FILE` answers 0 and a summary
// for a valid file, 1 and every problem (rule, line) for an invalid one,
// 2 for a bad command line.
func TestTranslateCheck(t *testing.T) {
	for _, tc := range []struct {
		name    string
		yaml    string
		args    []string // instead of check FILE
		err     error
		out     []string // in stdout (valid) or stderr (not)
		without []string // in neither
	}{
		{name: "zigbee", yaml: zigbeeYAML, out: []string{"OK, 1 translator", "zigbee2mqtt/+/state → home/+/on (2 values)", "home/+/on → zigbee2mqtt/+/state (2 values) [two_way]"}},
		{name: "none", yaml: "log_level: info\n", out: []string{"OK, 0 translators"}},
		{name: "typed keys", yaml: "translate: [{from: a/+, to: b/+, values: {1: one, \"1\": uno, true: yes, 2.5: half, 99999999999999999999: big}}]\n", out: []string{"OK, 1 translator", "(5 values)"}},
		// SPEC §11: a translated publish is never translated again, so a
		// target may match a source (a chain, a cycle, a rule's own).
		{name: "chain", yaml: zigbeeYAML + "  - {from: \"x/+\", to: \"zigbee2mqtt/+/state\"}\n",
			out: []string{"OK, 2 translators", `translate[1] (line 6, from "x/+" to "zigbee2mqtt/+/state"): x/+ → zigbee2mqtt/+/state`}},
		{name: "cycle and self", yaml: "translate:\n- {from: a/+, to: b/+}\n- {from: b/+, to: a/+}\n- {from: x/#, to: x/y/#}\n", out: []string{"OK, 3 translators"}},
		{name: "two_way overlap", yaml: "translate:\n- {from: a/+, to: +/b, two_way: true}\n", err: errInvalid, out: []string{"translate[0] (line 2", "which way"}},
		{name: "ambiguous", yaml: "translate:\n- {from: a/+/s, to: b/+/s}\n- {from: a/x/+, to: c/x/+}\n", err: errInvalid, out: []string{"line 2", "line 3", "ambiguous"}},
		{name: "bad wildcard", yaml: "translate:\n- {from: a/b#, to: c/#}\n", err: errInvalid, out: []string{"translate[0] (line 2", "from:"}},
		{name: "wildcards differ", yaml: "translate:\n- {from: a/+/+, to: c/+}\n", err: errInvalid, out: []string{"translate[0]", "wildcards"}},
		{name: "null value", yaml: "translate:\n- {from: a/+, to: c/+, values: {\"ON\": null}}\n", err: errInvalid, out: []string{"translate[0] (line 2", "deletions stay deletions"}},
		{name: "object value", yaml: "translate:\n- {from: a/+, to: c/+, values: {\"ON\": {a: 1}}}\n", err: errInvalid, out: []string{"translate[0] (line 2", "not a mapping"}},
		{name: "list value", yaml: "translate:\n- {from: a/+, to: c/+, values: {\"ON\": [1]}}\n", err: errInvalid, out: []string{"translate[0]", "not a list"}},
		{name: "values not a map", yaml: "translate:\n- {from: a/+, to: c/+, values: [ON, true]}\n", err: errInvalid, out: []string{"translate[0]", "want a mapping"}},
		{name: "inf", yaml: "translate:\n- {from: a/+, to: c/+, values: {x: .inf}}\n", err: errInvalid, out: []string{"translate[0]", "not a number JSON can hold"}},
		{name: "binary", yaml: "translate:\n- {from: a/+, to: c/+, values: {x: !!binary aGk=}}\n", err: errInvalid, out: []string{"translate[0]", "!!binary"}},
		{name: "duplicate", yaml: "translate:\n- {from: a/+, to: c/+, values: {1: x, 1.0: y}}\n", err: errInvalid, out: []string{"translate[0]", "twice"}},
		{name: "not invertible", yaml: "translate:\n- {from: a/+, to: c/+, two_way: true, values: {\"ON\": true, \"on\": true}}\n", err: errInvalid, out: []string{"translate[0]", "way back"}},
		{name: "unknown key", yaml: "translate:\n- {from: a/+, to: c/+, twoway: true}\n", err: errInvalid, out: []string{"line 2", `"twoway"`}},
		{name: "not a mapping", yaml: "translate: [a/+]\n", err: errInvalid, out: []string{"line 1", "a translator is a mapping"}},
		{name: "every problem", yaml: "translate:\n- {from: a/+, to: c/+, values: {x: [1]}}\n- {from: d/+/+, to: e/+}\n", err: errInvalid, out: []string{"translate[0]", "translate[1]"}},
		{name: "other keys", yaml: "history: [{filter: a}]\n", err: errInvalid, out: []string{"keep is missing"}},
		{name: "unknown file", args: []string{"check", "/nonexistent/mote.yaml"}, err: errInvalid, out: []string{"no such file"}},
		{name: "usage", args: []string{"check"}, err: errUsage, out: []string{"usage: mote translate check FILE"}},
		{name: "usage verb", args: []string{"test", "x"}, err: errUsage, out: []string{"usage:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if args == nil {
				path := filepath.Join(t.TempDir(), "mote.yaml")
				if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
					t.Fatal(err)
				}
				args = []string{"check", path}
			}
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append([]string{"translate"}, args...), nil, &stdout, &stderr)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("err %v, want %v\nstdout %s\nstderr %s", err, tc.err, &stdout, &stderr)
			}
			text := stdout.String()
			if tc.err != nil {
				text = stderr.String()
			}
			for _, w := range tc.out {
				if !strings.Contains(text, w) {
					t.Errorf("output %q\nlacks %q", text, w)
				}
			}
		})
	}
}

// TestSIGHUPTranslators: translators come with a reload, a bad rule set
// is refused whole (the log names the rule; the old rules stay), and they
// go with the next reload.
func TestSIGHUPTranslators(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "mote.yaml")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("log_level: info\n")
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	logs := &syncBuffer{}
	cmd := exec.Command(buildMote(t), "broker", "--tcp", addr, "--ws", "off", "--http", "off", "--data", filepath.Join(dir, "data"), "--config", conf)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	logs.waitLog(t, "mote broker listening", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addr, client.Options{ClientID: "c", CleanStart: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make(chan string, 100)
	if err := c.Subscribe(ctx, "home/#", client.Plain, client.JSON, 1, func(m client.Message) { got <- m.Topic + "=" + string(m.Payload) }); err != nil {
		t.Fatal(err)
	}
	// round publishes zigbee2mqtt/lamp/state=v, then a marker home/m=n,
	// and returns what came on home/# up to the marker.
	n := 0
	round := func(v string) []string {
		t.Helper()
		n++
		for _, p := range [][2]string{{"zigbee2mqtt/lamp/state", v}, {"home/m", strconv.Itoa(n)}} {
			if err := c.Publish(ctx, p[0], []byte(p[1]), client.PublishOptions{QoS: 1}); err != nil {
				t.Fatal(err)
			}
		}
		var out []string
		for {
			select {
			case m := <-got:
				if m == "home/m="+strconv.Itoa(n) {
					return out
				}
				out = append(out, m)
			case <-ctx.Done():
				t.Fatalf("round %d: got %v", n, out)
			}
		}
	}
	hup := func(text string) {
		t.Helper()
		write(text)
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	if out := round("ON"); len(out) != 0 {
		t.Fatalf("translated before any rule: %v", out)
	}
	hup(zigbeeYAML)
	if line := logs.waitLog(t, `"reloaded: `, 1); !strings.Contains(line, "translate (1 rule; changed)") {
		t.Errorf("reload log %s", line)
	}
	if out := round("ON"); fmt.Sprint(out) != "[home/lamp/on=true]" {
		t.Errorf("after the reload: %v", out)
	}
	hup(zigbeeYAML + "  - {from: \"zigbee2mqtt/x/+\", to: \"y/+\"}\n") // ambiguous: both match zigbee2mqtt/x/state
	if line := logs.waitLog(t, "reload failed", 1); !strings.Contains(line, `translate[1] (line 6, from \"zigbee2mqtt/x/+\"`) || !strings.Contains(line, "ambiguous") {
		t.Errorf("refused reload's log %s", line)
	}
	if out := round("OFF"); fmt.Sprint(out) != "[home/lamp/on=false]" {
		t.Errorf("after a refused reload: %v", out)
	}
	hup("log_level: info\n")
	if line := logs.waitLog(t, `"reloaded: `, 2); !strings.Contains(line, "translate (0 rules; changed)") {
		t.Errorf("reload log %s", line)
	}
	if out := round("ON"); len(out) != 0 {
		t.Errorf("translated after the rules went: %v", out)
	}
}
