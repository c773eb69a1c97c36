package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker/auth"
)

// TestWebLoginAfterSIGHUP runs the binary: a SIGHUP that adds a password
// file makes the web view ask for a login (the flag used to be read once
// at start), and one that drops it stops asking.
func TestWebLoginAfterSIGHUP(t *testing.T) {
	dir := t.TempDir()
	pw, conf := filepath.Join(dir, "passwd"), filepath.Join(dir, "mote.yaml")
	u := auth.NewUsers()
	if err := u.Set("alice", "alice-pw", 10); err != nil {
		t.Fatal(err)
	}
	if err := u.Save(pw); err != nil {
		t.Fatal(err)
	}
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("{}\n")
	httpAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	logs := &syncBuffer{}
	cmd := exec.Command(buildMote(t), "broker", "--tcp", "127.0.0.1:"+strconv.Itoa(freePort(t)), "--ws", "off",
		"--http", httpAddr, "--data", filepath.Join(dir, "data"), "--config", conf)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	logs.waitLog(t, "web view at", 1)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	login := func() bool {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		switch {
		case strings.Contains(string(b), "&#34;login&#34;:true"):
			return true
		case strings.Contains(string(b), "&#34;login&#34;:false"):
			return false
		}
		t.Fatalf("GET /: %s: no login flag in %.300s", resp.Status, b)
		return false
	}
	hup := func(n int) {
		t.Helper()
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		logs.waitLog(t, `reloaded: `, n)
	}
	if login() {
		t.Error("the page asks for a login without a password file")
	}
	write(fmt.Sprintf("password_file: %s\n", pw))
	hup(1)
	if !login() {
		t.Errorf("the page does not ask for a login once a reload added a password file\n%s", logs)
	}
	write("{}\n")
	hup(2)
	if login() {
		t.Error("the page asks for a login once a reload dropped the password file")
	}
}
