package web_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/httpapi"
	"github.com/mote-mqtt/mote/web"
)

// rebound is the name the test's Chromium resolves to 127.0.0.1, as an
// attacker's DNS would after a rebinding.
const rebound = "rebind.evil.example"

// rebindBrowser is newBrowser whose host resolver maps rebound to
// 127.0.0.1, with extra options.
func rebindBrowser(t *testing.T, extra ...chromedp.ExecAllocatorOption) context.Context {
	bin := chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("host-resolver-rules", "MAP "+rebound+" 127.0.0.1"))
	opts = append(opts, extra...)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	whole, cancelWhole := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancelWhole)
	actx, cancelAlloc := chromedp.NewExecAllocator(whole, opts...)
	t.Cleanup(cancelAlloc)
	bctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(cancel)
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(bctx) }()
	select {
	case err := <-started:
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) || strings.Contains(err.Error(), "exec") {
				t.Skipf("chromium could not start here: %v", err)
			}
			t.Fatalf("start chromium: %v", err)
		}
	case <-time.After(stepTimeout):
		cancelAlloc()
		t.Fatal("chromium did not start in time")
	}
	return bctx
}

// TestRebindInChromium: a broker with anonymous access serves its API and
// web view on plain HTTP; a page that Chromium loaded from a DNS-rebound
// name (the broker's own web view here, as any page of the attacker's
// would be) reads nothing from the API and opens no MQTT WebSocket, while
// the same page opened as http://127.0.0.1 or http://localhost does both.
// Chromium sends no Fetch Metadata to a plain http:// name: the API must
// know its requests by their User-Agent.
func TestRebindInChromium(t *testing.T) {
	browser := rebindBrowser(t)
	b, err := broker.New(broker.Options{TCP: "127.0.0.1:0", WS: "off", AllowAnonymous: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	api := httpapi.New(b, httpapi.Options{Web: web.Handler(web.Config{MQTT: b.WSHandler()})})
	l, err := api.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- api.Serve(l) }()
	t.Cleanup(func() {
		api.Close()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	const read = `fetch('/api/tree/%23').then(r => r.status, e => 'failed: ' + e)`
	const spoof = `fetch('/api/tree/%23', {headers: {'User-Agent': 'curl/8.5.0'}}).then(r => r.status, e => 'failed: ' + e)`
	const ws = `new Promise(res => { const s = new WebSocket('ws://' + location.host + '/mqtt', 'mqtt');
		s.onopen = () => { s.close(); res('open') }; s.onerror = () => res('refused') })`
	for _, tc := range []struct {
		host     string
		wantRead float64
		wantWS   string
	}{
		{rebound, 403, "refused"},
		{"127.0.0.1", 200, "open"},
		{"localhost", 200, "open"},
	} {
		t.Run(tc.host, func(t *testing.T) {
			tb := newTab(t, browser)
			tb.do(chromedp.Navigate("http://" + tc.host + ":" + port + "/"))
			if got := eval[any](tb, read); got != tc.wantRead {
				t.Errorf("GET /api/tree/%%23 from http://%s: %v, want %v", tc.host, got, tc.wantRead)
			}
			if got := eval[string](tb, ws); got != tc.wantWS {
				t.Errorf("WebSocket from http://%s: %s, want %s", tc.host, got, tc.wantWS)
			}
			// The page cannot pass for a program: Chromium keeps its own
			// User-Agent whatever fetch is told to send.
			if got := eval[any](tb, spoof); got != tc.wantRead {
				t.Errorf("GET /api/tree/%%23 from http://%s with User-Agent curl: %v, want %v", tc.host, got, tc.wantRead)
			}
		})
	}
}

// TestWebViewHTTPS: the web view served over TLS (ServeTLS with the
// broker's certificate, as `mote broker --https` does) opens its MQTT
// WebSocket over wss to its own origin (the origin rule sees r.TLS and
// wants https), and a rebound name's page reads nothing there either
// (over https Chromium sends Fetch Metadata). The test's Chromium takes
// the self-signed certificate.
func TestWebViewHTTPS(t *testing.T) {
	browser := rebindBrowser(t, chromedp.Flag("ignore-certificate-errors", true))
	cert := selfSigned(t)
	b, err := broker.New(broker.Options{TCP: "127.0.0.1:0", WS: "off", AllowAnonymous: true,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	api := httpapi.New(b, httpapi.Options{Web: web.Handler(web.Config{MQTT: b.WSHandler()})})
	l, err := api.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- api.ServeTLS(l, b.ServerTLS()) }()
	t.Cleanup(func() {
		api.Close()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	const read = `fetch('/api/tree/%23').then(r => r.status, e => 'failed: ' + e)`
	const ws = `new Promise(res => { const s = new WebSocket('wss://' + location.host + '/mqtt', 'mqtt');
		s.onopen = () => { s.close(); res('open') }; s.onerror = () => res('refused') })`
	for _, tc := range []struct {
		host     string
		wantRead float64
		wantWS   string
	}{
		{"localhost", 200, "open"},
		{"127.0.0.1", 200, "open"},
		{rebound, 403, "refused"},
	} {
		t.Run(tc.host, func(t *testing.T) {
			tb := newTab(t, browser)
			tb.do(chromedp.Navigate("https://" + tc.host + ":" + port + "/"))
			if got := eval[any](tb, read); got != tc.wantRead {
				t.Errorf("GET /api/tree/%%23 from https://%s: %v, want %v", tc.host, got, tc.wantRead)
			}
			if got := eval[string](tb, ws); got != tc.wantWS {
				t.Errorf("WebSocket from https://%s: %s, want %s", tc.host, got, tc.wantWS)
			}
		})
	}
}

// selfSigned is a certificate for localhost and 127.0.0.1.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
