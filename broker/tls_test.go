package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/mote-mqtt/mote/clients/client"
)

// testCert writes a self-signed certificate for 127.0.0.1 and returns the
// file paths and a pool trusting it.
func testCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "mote test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	kb, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestTLS(t *testing.T) {
	certFile, keyFile, pool := testCert(t)
	tc, err := LoadTLS(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{TLS: "127.0.0.1:0", WSS: "127.0.0.1:0", TLSConfig: tc})
	ctx := testCtx(t)
	// A plain MQTT 3.1.1 client over TLS publishes a tree...
	o := paho.NewClientOptions().AddBroker("ssl://" + b.TLSAddr()).SetClientID("tls3").SetTLSConfig(&tls.Config{RootCAs: pool})
	p := paho.NewClient(o)
	if tok := p.Connect(); !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
		t.Fatalf("paho over TLS: %v", tok.Error())
	}
	defer p.Disconnect(0)
	if tok := p.Publish("$tree/secure", 1, true, `{"a":1}`); !tok.WaitTimeout(testTimeout) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	// ...that a WebSocket-over-TLS client mirrors.
	c, err := client.Dial(ctx, "wss://"+b.WSSAddr()+"/mqtt", client.Options{ClientID: "wss", TLS: &tls.Config{RootCAs: pool}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m, err := c.Mirror(ctx, "secure/+", client.JSON, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctx, func(doc any) bool { return same(t, doc, `{"a":1}`) }); err != nil {
		t.Fatal(err)
	}
	// Plain TCP to the TLS port gets nowhere; an untrusted certificate is refused.
	if _, err := client.Dial(ctx, "tcp://"+b.TLSAddr(), client.Options{Timeout: time.Second}); err == nil {
		t.Error("plain MQTT connected to the TLS listener")
	}
	if _, err := client.Dial(ctx, "mqtts://"+b.TLSAddr(), client.Options{Timeout: time.Second}); err == nil {
		t.Error("connected without trusting the certificate")
	}
}
