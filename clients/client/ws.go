package client

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/gorilla/websocket"

	"github.com/mote-mqtt/mote/internal/wsstream"
)

// dialWebSocket opens MQTT over WebSocket (subprotocol "mqtt").
func dialWebSocket(ctx context.Context, u *url.URL, timeout time.Duration, tc *tls.Config) (net.Conn, error) {
	d := websocket.Dialer{Subprotocols: []string{"mqtt"}, HandshakeTimeout: timeout, TLSClientConfig: tc}
	ws, err := wsstream.Dial(ctx, d, u.String())
	if err != nil {
		return nil, err
	}
	c, err := wsstream.New(ws, false)
	if err != nil {
		ws.Close()
		return nil, fmt.Errorf("websocket %s: %w", u.Redacted(), err)
	}
	return c, nil
}
