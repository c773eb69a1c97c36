package broker

import (
	"testing"
	"time"
)

// TestFiledAfterTakeover: a client id taken over by a new connection: the
// old connection's netConn no longer names a conn (its late packets find
// none: hook.conn), the new one's names the new conn, filed under the id.
func TestFiledAfterTakeover(t *testing.T) {
	b := start(t, Options{})
	ctx := testCtx(t)
	keepAliveDial(t, b, 4, "x", 60)
	oldCl, ok := b.server.Clients.Get("x")
	if !ok {
		t.Fatal("first client not filed")
	}
	oldNC := oldCl.Net.Conn.(*netConn)
	for oldNC.filed.Load() == nil { // OnSessionEstablished runs after the CONNACK
		select {
		case <-ctx.Done():
			t.Fatal("first connection never filed")
		case <-time.After(time.Millisecond):
		}
	}
	keepAliveDial(t, b, 4, "x", 60) // takes the session over
	for {
		newCl, _ := b.server.Clients.Get("x")
		if newCl != oldCl && oldNC.filed.Load() == nil {
			nc := newCl.Net.Conn.(*netConn)
			if c := nc.filed.Load(); c != nil {
				if c != b.connByID("x") {
					t.Fatal("the new connection's netConn names a conn not filed under its id")
				}
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("after the takeover: old netConn names %p, new client %v", oldNC.filed.Load(), newCl != oldCl)
		case <-time.After(time.Millisecond):
		}
	}
}
