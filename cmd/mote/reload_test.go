package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/clients/client"
)

// syncBuffer is a log the broker process writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitLog waits until the log holds n lines containing substr, and
// returns the last of them.
func (s *syncBuffer) waitLog(t *testing.T, substr string, n int) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var found []string
		for line := range strings.Lines(s.String()) {
			if strings.Contains(line, substr) {
				found = append(found, line)
			}
		}
		if len(found) >= n {
			return found[n-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d log lines with %q:\n%s", n, substr, s.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSIGHUPReload runs the binary: after the ACL file is edited, SIGHUP
// applies it to a connected reader and writer (who stay connected) from
// their next message on, and the log says what was reloaded; a broken ACL
// file, then a broken config file, are logged with file and line and leave
// the rules as they were; SIGTERM still stops the broker.
func TestSIGHUPReload(t *testing.T) {
	dir := t.TempDir()
	pw, acl, conf := filepath.Join(dir, "passwd"), filepath.Join(dir, "acl"), filepath.Join(dir, "mote.yaml")
	u := auth.NewUsers()
	for _, name := range []string{"w", "r"} {
		if err := u.Set(name, name+"-pw", 10); err != nil {
			t.Fatal(err)
		}
	}
	if err := u.Save(pw); err != nil {
		t.Fatal(err)
	}
	write := func(path, text string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const open = "user w\ntopic readwrite #\nuser r\ntopic read #\n"
	write(acl, open)
	write(conf, fmt.Sprintf("password_file: %s\nacl_file: %s\nhistory: [{filter: \"h/#\", keep: 5}]\n", pw, acl))
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	logs := &syncBuffer{}
	cmd := exec.Command(buildMote(t), "broker", "--tcp", addr, "--ws", "off", "--data", filepath.Join(dir, "data"), "--config", conf)
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	logs.waitLog(t, "mote broker listening", 1)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dial := func(user string) *client.Client {
		t.Helper()
		c, err := client.Dial(ctx, addr, client.Options{ClientID: user, Username: user, Password: user + "-pw", CleanStart: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	w, r := dial("w"), dial("r")
	got := make(chan string, 100)
	if err := r.Subscribe(ctx, "a/#", client.Plain, client.JSON, 1, func(m client.Message) { got <- m.Topic }); err != nil {
		t.Fatal(err)
	}
	// round publishes a/secret/<n> then a/ok/<n>, and returns what r got
	// up to a/ok/<n>.
	round := func(n int) []string {
		t.Helper()
		for _, topic := range []string{fmt.Sprint("a/secret/", n), fmt.Sprint("a/ok/", n)} {
			if err := w.Publish(ctx, topic, []byte("x"), client.PublishOptions{QoS: 1}); err != nil {
				t.Fatal(err)
			}
		}
		var topics []string
		for {
			select {
			case topic := <-got:
				topics = append(topics, topic)
				if topic == fmt.Sprint("a/ok/", n) {
					return topics
				}
			case <-ctx.Done():
				t.Fatalf("round %d: got %v", n, topics)
			}
		}
	}
	connected := func(when string) {
		t.Helper()
		for name, c := range map[string]*client.Client{"w": w, "r": r} {
			select {
			case <-c.Done():
				t.Fatalf("%s: %s was disconnected\n%s", when, name, logs)
			default:
			}
		}
	}
	hup := func() {
		t.Helper()
		if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	if got := round(1); len(got) != 2 {
		t.Fatalf("before the reload r got %v", got)
	}

	// The reader may no longer read a/secret/#, the writer may no longer write a/w/#.
	write(acl, open+"topic deny a/secret/#\nuser w\ntopic deny a/w/#\n")
	hup()
	line := logs.waitLog(t, `"reloaded: `, 1)
	for _, want := range []string{"password file " + pw + " (2 users)", "acl file " + acl + " (4 rules; changed)", "history (1 rule)"} {
		if !strings.Contains(line, want) {
			t.Errorf("reload log %s lacks %q", line, want)
		}
	}
	if got := round(2); fmt.Sprint(got) != "[a/ok/2]" {
		t.Errorf("after the reload r got %v, want a/ok/2 only", got)
	}
	err := w.Publish(ctx, "a/w/x", []byte("x"), client.PublishOptions{QoS: 1})
	if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "0x87") {
		t.Errorf("w's publish to a/w/x after the reload: %v, want refused with 0x87", err)
	}
	connected("after the reload")

	// A broken ACL file: the error names it and its line; the rules stay.
	write(acl, "user w\ntopic readwrite #\nbogus line\n")
	hup()
	if line := logs.waitLog(t, "reload failed", 1); !strings.Contains(line, acl+":3") {
		t.Errorf("reload error %s does not name %s:3", line, acl)
	}
	if got := round(3); fmt.Sprint(got) != "[a/ok/3]" {
		t.Errorf("after a failed reload r got %v, want a/ok/3 only", got)
	}
	// A broken config file (and a bad history rule) likewise.
	write(acl, open)
	write(conf, fmt.Sprintf("password_file: %s\nacl_file: %s\nhistory: [{filter: \"h/#\", keep: 5}]\nnot_a_key: 1\n", pw, acl))
	hup()
	if line := logs.waitLog(t, "reload failed", 2); !strings.Contains(line, conf) || !strings.Contains(line, "line 4") {
		t.Errorf("reload error %s does not name %s, line 4", line, conf)
	}
	write(conf, fmt.Sprintf("password_file: %s\nacl_file: %s\nhistory: [{filter: \"h/#\", keep: 0}]\n", pw, acl))
	hup()
	if line := logs.waitLog(t, "reload failed", 3); !strings.Contains(line, conf) || !strings.Contains(line, "history[0]") {
		t.Errorf("reload error %s does not name %s and history[0]", line, conf)
	}
	if got := round(4); fmt.Sprint(got) != "[a/ok/4]" {
		t.Errorf("after failed reloads r got %v, want a/ok/4 only", got)
	}
	// Fixed: the open ACL is back; a listener change is only warned about.
	write(conf, fmt.Sprintf("password_file: %s\nacl_file: %s\nhistory: [{filter: \"h/#\", keep: 5}]\nmax_clients: 7\n", pw, acl))
	hup()
	logs.waitLog(t, `"reloaded: `, 2)
	if line := logs.waitLog(t, "applied only at a restart", 1); !strings.Contains(line, "max_clients") {
		t.Errorf("restart warning %s", line)
	}
	if got := round(5); len(got) != 2 {
		t.Errorf("after the last reload r got %v, want both", got)
	}
	connected("after every reload")

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, logs)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no exit after SIGTERM\n%s", logs)
	}
}

// writeCert writes a self-signed certificate and its key as PEM files.
func writeCert(t *testing.T, dir string, serial int64, name string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

// TestReadSettings: what a reload reads and how it describes what changed,
// step by step against the one before; flags win over the file.
func TestReadSettings(t *testing.T) {
	dir := t.TempDir()
	pw, acl := filepath.Join(dir, "passwd"), filepath.Join(dir, "acl")
	u := auth.NewUsers()
	u.Set("alice", "pw", 10)
	if err := u.Save(pw); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(acl, []byte("topic read #\n"), 0o600)
	certFile, keyFile := writeCert(t, dir, 1, "one")
	var prev settings
	for _, step := range []struct {
		name   string
		yaml   string
		flags  reloadFlags
		before func()
		want   string // describe's parts
		err    string
	}{
		{name: "start", yaml: "acl_file: " + acl + "\n", flags: reloadFlags{pwFile: pw, certFile: certFile, keyFile: keyFile, tls: true},
			want: "password file PW (1 user; changed), acl file ACL (1 rule; changed), history (0 rules), tls certificate CERT (CN=one, serial 1, until DATE; changed)"},
		{name: "same", yaml: "acl_file: " + acl + "\n", flags: reloadFlags{pwFile: pw, certFile: certFile, keyFile: keyFile, tls: true},
			want: "password file PW (1 user), acl file ACL (1 rule), history (0 rules), tls certificate CERT (CN=one, serial 1, until DATE)"},
		{name: "new certificate, ACL gone, history, anonymous", yaml: "allow_anonymous: true\nhistory: [{filter: a/#, keep: 2}]\n",
			flags: reloadFlags{pwFile: pw, certFile: certFile, keyFile: keyFile, tls: true}, before: func() { writeCert(t, dir, 2, "two") },
			want: "password file PW (1 user), no acl file (changed), allow_anonymous true (changed), history (1 rule; changed), tls certificate CERT (CN=two, serial 2, until DATE; changed)"},
		{name: "the flag wins over the file", yaml: "password_file: /nonexistent\n", flags: reloadFlags{pwFile: pw},
			want: "password file PW (1 user), no acl file, allow_anonymous false (changed), history (0 rules; changed)"},
		{name: "missing file", yaml: "acl_file: " + acl + ".gone\n", err: acl + ".gone"},
		{name: "bad history", yaml: "history: [{filter: a/#}]\n", err: "config CONF: history[0]"},
		{name: "no key", yaml: "", flags: reloadFlags{certFile: certFile, tls: true}, err: "--cert and --key"},
	} {
		if step.before != nil {
			step.before()
		}
		conf := filepath.Join(dir, "mote.yaml")
		os.WriteFile(conf, []byte(step.yaml), 0o600)
		cfg, err := loadConfig(conf)
		if err != nil {
			t.Fatal(err)
		}
		s, err := readSettings(cfg, conf, step.flags)
		if step.err != "" {
			if want := strings.ReplaceAll(step.err, "CONF", conf); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %v, want an error with %q", step.name, err, want)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		parts, _ := s.describe(prev)
		got := strings.Join(parts, ", ")
		got = strings.NewReplacer(pw, "PW", acl, "ACL", certFile, "CERT", time.Now().Add(time.Hour).UTC().Format(time.DateOnly), "DATE").Replace(got)
		if got != step.want {
			t.Errorf("%s:\n got %s\nwant %s", step.name, got, step.want)
		}
		prev = s
	}
}
