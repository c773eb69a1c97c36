package httpapi

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
)

// serialCert is a self-signed certificate for 127.0.0.1 whose serial
// number tells it apart.
func serialCert(t *testing.T, serial int64) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "mote test"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// httpsEnv serves a broker's API over TLS (Broker.ServerTLS) on loopback.
func httpsEnv(t *testing.T, bo broker.Options, o Options) (*broker.Broker, *Server, string) {
	t.Helper()
	bo.TCP, bo.WS, bo.Log = "127.0.0.1:0", "off", logger(t)
	bo.TLSConfig = &tls.Config{Certificates: []tls.Certificate{serialCert(t, 1)}}
	b, err := broker.New(bo)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	o.Log = logger(t)
	s := New(b, o)
	l, err := s.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.ServeTLS(l, b.ServerTLS()) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-served; err != nil {
			t.Errorf("ServeTLS: %v", err)
		}
	})
	return b, s, l.Addr().String()
}

// dialSerial makes a TLS handshake with addr and returns the serial of
// the certificate it was shown.
func dialSerial(t *testing.T, addr string) (int64, error) {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // the serial is checked
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.Int64(), nil
}

// TestHTTPSListener: the API over TLS (ServeTLS with Broker.ServerTLS).
func TestHTTPSListener(t *testing.T) {
	t.Run("reload reaches new handshakes", func(t *testing.T) {
		b, _, addr := httpsEnv(t, broker.Options{AllowAnonymous: true}, Options{})
		if s, err := dialSerial(t, addr); err != nil || s != 1 {
			t.Fatalf("first handshake: serial %d, %v; want 1", s, err)
		}
		if err := b.Reload(broker.Reload{AllowAnonymous: true, TLSConfig: &tls.Config{Certificates: []tls.Certificate{serialCert(t, 2)}}}); err != nil {
			t.Fatal(err)
		}
		if s, err := dialSerial(t, addr); err != nil || s != 2 {
			t.Fatalf("after Reload: serial %d, %v; want 2", s, err)
		}
	})
	t.Run("a silent client's handshake is bounded", func(t *testing.T) {
		_, _, addr := httpsEnv(t, broker.Options{AllowAnonymous: true}, Options{ReadHeaderTimeout: 200 * time.Millisecond})
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second)) // a hang fails here, long after the server's bound
		var ne net.Error
		if _, err := c.Read(make([]byte, 1)); err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Fatalf("read from a silent handshake: %v, want the server to close it", err)
		}
	})
	t.Run("handshakes count against MaxConns", func(t *testing.T) {
		_, _, addr := httpsEnv(t, broker.Options{AllowAnonymous: true}, Options{MaxConns: 2})
		for range 2 { // two handshakes never begun hold both connections
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
		if _, err := dialSerial(t, addr); err == nil {
			t.Fatal("a third connection was served past MaxConns 2")
		}
	})
	t.Run("plain HTTP gets no API", func(t *testing.T) {
		_, _, addr := httpsEnv(t, broker.Options{AllowAnonymous: true}, Options{})
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, "GET /api/tree/%23 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer to plain HTTP: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "HTTPS") {
			t.Errorf("plain HTTP: %d %s, want 400 naming HTTPS", resp.StatusCode, body)
		}
	})
	t.Run("close ends streams and the listener", func(t *testing.T) {
		_, s, addr := httpsEnv(t, broker.Options{AllowAnonymous: true}, Options{})
		hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // a test's own certificate
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+addr+"/api/tree/%23", nil)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.TLS == nil {
			t.Fatalf("stream: %d, TLS %v", resp.StatusCode, resp.TLS != nil)
		}
		ended := make(chan error, 1)
		go func() { _, err := io.Copy(io.Discard, resp.Body); ended <- err }()
		s.Close()
		select {
		case <-ended:
		case <-time.After(20 * time.Second):
			t.Fatal("the event stream did not end at Close")
		}
		if c, err := net.DialTimeout("tcp", addr, 10*time.Second); err == nil {
			c.Close()
			t.Error("the HTTPS listener still accepts after Close")
		}
	})
}

// TestConnsAcrossListeners: MaxConns bounds the connections of a Server
// in all, over every listener it serves (`mote broker --http` and
// `--https` together): a client may not take twice the bound, or twice
// MaxConnsPerHost, by opening connections on both ports.
func TestConnsAcrossListeners(t *testing.T) {
	bo := broker.Options{TCP: "127.0.0.1:0", WS: "off", Log: logger(t), AllowAnonymous: true,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{serialCert(t, 1)}}}
	b, err := broker.New(bo)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	s := New(b, Options{MaxConns: 2, Log: logger(t)})
	var addrs []string
	served := make(chan error, 2)
	for _, secure := range []bool{false, true} {
		l, err := s.Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, l.Addr().String())
		go func() {
			if secure {
				served <- s.ServeTLS(l, b.ServerTLS())
			} else {
				served <- s.Serve(l)
			}
		}()
	}
	t.Cleanup(func() {
		s.Close()
		for range 2 {
			if err := <-served; err != nil {
				t.Errorf("serve: %v", err)
			}
		}
	})
	client := func() *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // a test's own certificate
	}
	get := func(c *http.Client, url string) error {
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			return errors.New(resp.Status)
		}
		return nil
	}
	// One connection on each listener, answered and kept alive: both are
	// counted once their answers have come.
	plain, secure := client(), client()
	defer plain.CloseIdleConnections()
	defer secure.CloseIdleConnections()
	if err := get(plain, "http://"+addrs[0]+"/healthz"); err != nil {
		t.Fatal(err)
	}
	if err := get(secure, "https://"+addrs[1]+"/healthz"); err != nil {
		t.Fatal(err)
	}
	for _, url := range []string{"http://" + addrs[0] + "/healthz", "https://" + addrs[1] + "/healthz"} {
		c := client()
		if err := get(c, url); err == nil {
			t.Errorf("%s: a third connection was served past MaxConns 2 (two listeners)", url)
		}
		c.CloseIdleConnections()
	}
}
