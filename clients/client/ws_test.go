package client_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/clients/client"
)

// TestWebSocket: the client connects over ws:// and wss:// (its
// WebSocket over a wsstream.Socket, under TLS for wss) and gets back
// what it publishes.
func TestWebSocket(t *testing.T) {
	ts := httptest.NewTLSServer(nil) // only for its certificate, for 127.0.0.1
	cert, roots := ts.TLS.Certificates[0], x509.NewCertPool()
	roots.AddCert(ts.Certificate())
	ts.Close()
	b, err := broker.New(broker.Options{TCP: "127.0.0.1:0", WS: "127.0.0.1:0", WSS: "127.0.0.1:0",
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	for _, tc := range []struct{ scheme, addr string }{{"ws", b.WSAddr()}, {"wss", b.WSSAddr()}} {
		t.Run(tc.scheme, func(t *testing.T) {
			url := tc.scheme + "://" + tc.addr + "/mqtt"
			c := dial(t, url, "ws-"+tc.scheme, client.Options{TLS: &tls.Config{RootCAs: roots}})
			got := make(chan client.Message, 1)
			if err := c.Subscribe(testCtx(t), "echo", client.Plain, client.JSON, 1, func(m client.Message) { got <- m }); err != nil {
				t.Fatal(err)
			}
			if err := c.Publish(testCtx(t), "echo", []byte("over "+tc.scheme), client.PublishOptions{QoS: 1}); err != nil {
				t.Fatal(err)
			}
			select {
			case m := <-got:
				if string(m.Payload) != "over "+tc.scheme {
					t.Errorf("got %q", m.Payload)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("no message back")
			}
		})
	}
}
