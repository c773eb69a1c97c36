package mqtt

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// expiredGate holds the first OnClientExpired of client id "exp".
type expiredGate struct {
	HookBase
	held    atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (*expiredGate) ID() string           { return "expired-gate" }
func (*expiredGate) Provides(b byte) bool { return b == OnClientExpired }
func (h *expiredGate) OnClientExpired(cl *Client) {
	if cl.ID != "exp" || !h.held.CompareAndSwap(false, true) {
		return
	}
	close(h.entered)
	<-h.release
}

// TestMoteExpirySparesTakeover: a session that expires (clearExpiredClients)
// while a CONNECT of its client id takes it over leaves the new client
// filed in s.Clients. The expiry ran OnClientExpired and then deleted the
// id from s.Clients (by id): a takeover in between (held open here: a hook
// holds the expiry in OnClientExpired) lost its filing, and stayed
// connected where no later CONNECT of the id would find it.
func TestMoteExpirySparesTakeover(t *testing.T) {
	s := newServer()
	defer s.Close()
	h := &expiredGate{entered: make(chan struct{}), release: make(chan struct{})}
	if err := s.AddHook(h, nil); err != nil {
		t.Fatal(err)
	}
	r0, w0 := net.Pipe()
	defer w0.Close()
	old := s.NewClient(r0, "tcp", "exp", false)
	old.Properties.ProtocolVersion = 5
	old.Properties.EditProps().SessionExpiryInterval, old.Properties.EditProps().SessionExpiryIntervalFlag = 1, true
	old.Stop(nil) // away since now
	s.Clients.Add(old)
	expired := make(chan struct{})
	go func() {
		defer close(expired)
		s.clearExpiredClients(time.Now().Unix() + 10)
	}()
	select {
	case <-h.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not expire")
	}

	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Keepalive: 30, ClientIdentifier: "exp"},
		Properties:      packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true},
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	type result struct {
		cl    *Client
		serve func() error
		err   error
	}
	r, w := net.Pipe()
	defer w.Close()
	done := make(chan result, 1)
	go func() {
		cl := s.NewClient(r, "tcp", "", false)
		serve, err := s.establishClient(cl, "tcp")
		done <- result{cl, serve, err}
	}()
	w.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := w.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	connack := make(chan error, 1)
	go func() {
		h, _, err := rtReadPacket(bufio.NewReader(w))
		if err == nil && h != 0x20 {
			err = io.ErrUnexpectedEOF
		}
		connack <- err
		io.Copy(io.Discard, w) //nolint:errcheck // until closed
	}()
	var next result
	deadline := time.Now().Add(10 * time.Second)
	for got := false; !got; {
		select {
		case next = <-done:
			got = true
		default:
			s.takeovers.mu.Lock()
			waiting := s.takeovers.by["exp"] != nil && s.takeovers.by["exp"].refs == 2
			s.takeovers.mu.Unlock()
			if waiting {
				got = true
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the CONNECT neither completed nor waited")
			}
			runtime.Gosched()
		}
	}
	close(h.release)
	select {
	case <-expired:
	case <-time.After(10 * time.Second):
		t.Fatal("the expiry did not end")
	}
	if next.cl == nil {
		select {
		case next = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the CONNECT did not complete")
		}
	}
	if next.err != nil {
		t.Fatal(next.err)
	}
	if err := <-connack; err != nil {
		t.Fatal(err)
	}
	if cur, ok := s.Clients.Get("exp"); !ok || cur != next.cl {
		t.Errorf("s.Clients holds %v (found %v) for the id, want the connected client", cur != nil, ok)
	}
	served := make(chan error, 1)
	go func() { served <- next.serve() }() // its end lets s.Close go
	w.Close()
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not end")
	}
}
