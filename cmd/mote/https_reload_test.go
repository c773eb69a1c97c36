package main

import (
	"crypto/tls"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHTTPSReloadAndPorts: with --https the only TLS listener, SIGHUP's
// certificate reaches new HTTPS handshakes; with no password file the
// HTTPS listener is bound to 127.0.0.1 whatever --https names; --http and
// --https on one port is a clear error, and the broker exits.
func TestHTTPSReloadAndPorts(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeCert(t, dir, 7, "seven")
	bin := buildMote(t)
	port := strconv.Itoa(freePort(t))
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "broker", "--tcp", "127.0.0.1:"+strconv.Itoa(freePort(t)), "--ws", "off", "--http", "off",
		"--https", ":"+port, "--cert", certFile, "--key", keyFile, "--data", filepath.Join(dir, "data"))
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if line := logs.waitLog(t, "web view at https://", 1); !strings.Contains(line, `"https":"127.0.0.1:`+port+`"`) {
		t.Errorf("--https :%s without a password file: %s, want bound to 127.0.0.1", port, line)
	}
	serial := func() int64 {
		t.Helper()
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // the serial is checked
		c, err := d.DialContext(t.Context(), "tcp", "127.0.0.1:"+port)
		if err != nil {
			t.Fatalf("handshake: %v\n%s", err, logs)
		}
		defer c.Close()
		return c.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if s := serial(); s != 7 {
		t.Fatalf("serial %d, want 7", s)
	}
	writeCert(t, dir, 8, "eight")
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	logs.waitLog(t, `"reloaded: `, 1)
	if s := serial(); s != 8 {
		t.Errorf("after SIGHUP: serial %d, want 8", s)
	}

	same := strconv.Itoa(freePort(t))
	out, err := exec.Command(bin, "broker", "--tcp", "127.0.0.1:0", "--ws", "off", "--http", "127.0.0.1:"+same,
		"--https", "127.0.0.1:"+same, "--cert", certFile, "--key", keyFile, "--data", filepath.Join(dir, "data2")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "HTTPS listener (--https, listeners.https)") {
		t.Errorf("--http and --https on one port: %v\n%s", err, out)
	}
}
