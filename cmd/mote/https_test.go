package main

import (
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestHTTPS: --https serves the API and the web view over TLS with the
// broker's certificate: /healthz answers, a write from the broker's own
// https origin passes while the same origin as http is refused (the page
// is not the broker's: r.TLS is seen), plain HTTP to the port gets no API;
// without a certificate the broker refuses to start, saying why.
func TestHTTPS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeCert(t, dir, 7, "localhost")
	bin := buildMote(t)
	httpsAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "broker", "--tcp", "127.0.0.1:"+strconv.Itoa(freePort(t)), "--ws", "off", "--http", "off",
		"--https", httpsAddr, "--cert", certFile, "--key", keyFile, "--data", filepath.Join(dir, "data"))
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	logs.waitLog(t, "web view at https://localhost:"+httpsAddr[len("127.0.0.1:"):]+"/", 1)

	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		// writeCert's certificate names its host in the Common Name only,
		// which Go no longer verifies: the serial says it is the broker's.
		InsecureSkipVerify: true, //nolint:gosec // checked below
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || cs.PeerCertificates[0].SerialNumber.Int64() != 7 {
				return errors.New("not the broker's certificate")
			}
			return nil
		},
	}}}
	do := func(method, path, origin, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, "https://"+httpsAddr+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := do(http.MethodGet, "/healthz", "", ""); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	for _, tc := range []struct {
		origin string
		want   int
	}{
		{"https://" + httpsAddr, http.StatusNoContent},
		{"http://" + httpsAddr, http.StatusForbidden},
		{"", http.StatusNoContent},
	} {
		if code, body := do(http.MethodPut, "/api/tree/a/b", tc.origin, `{"x":1}`); code != tc.want {
			t.Errorf("PUT with Origin %q: %d %s, want %d", tc.origin, code, body, tc.want)
		}
	}
	if code, body := do(http.MethodGet, "/api/tree/a/%23", "", ""); code != http.StatusOK || !strings.Contains(body, `"x":1`) {
		t.Errorf("GET: %d %s", code, body)
	}
	plain := &http.Client{Timeout: 10 * time.Second}
	if resp, err := plain.Get("http://" + httpsAddr + "/api/tree/a/%23"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("plain HTTP to the HTTPS port answered 200: %s", b)
		}
	}

	out, err := exec.Command(bin, "broker", "--tcp", "127.0.0.1:0", "--ws", "off", "--http", "off", "--https", "127.0.0.1:0", "--data", filepath.Join(dir, "data2")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--https need --cert and --key") {
		t.Errorf("--https without a certificate: %v\n%s", err, out)
	}
}
