//go:build linux

package broker

import (
	"bytes"
	"context"
	"encoding/binary"
	"strconv"
	"sync"
	"testing"
	"time"
)

// A subscriber whose direct write was cut short closes its socket without
// reading: the writer's write of the rest fails, the connection ends, and
// nothing else waits on it: the publisher's next publishes return, another
// subscriber of the same topic gets every message in order, and the
// broker closes.
func TestDirectWriteCutThenClose(t *testing.T) {
	b, err := New(Options{TCP: "127.0.0.1:0", WS: "127.0.0.1:0", QueueBytes: 64 << 20, WriteTimeout: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			b.Close()
		}
	})
	other := dial3(t, b, "other", true)
	other.sub(t, "d/t", 0)
	nc := dialSmallRcvBuf(t, b)
	slow := benchConn(t, nc, "slow")
	slow.subscribe(t, "d/t")
	ctx := testCtx(t)
	payload := bytes.Repeat([]byte("x"), 8<<10)
	sent := 0
	publish := func() {
		binary.BigEndian.PutUint32(payload, uint32(sent))
		if err := b.Publish(ctx, Principal{ClientID: "pub"}, Message{Topic: "d/t", Payload: bytes.Clone(payload)}); err != nil {
			t.Fatal(err)
		}
		sent++
	}
	for b.stats.DirectRest.Load() == 0 {
		waitIdle(t, b, "slow")
		if sent == 4000 {
			t.Fatalf("no direct write was cut short after %d messages (%d direct)", sent, b.stats.Direct.Load())
		}
		publish()
	}
	for range 20 { // queued behind the rest
		publish()
	}
	nc.Close() // unread data: the kernel resets the connection
	for range 200 {
		publish() // a publish that waited on the dead socket would hang here
	}
	got := other.wait(t, sent)
	for i, m := range got {
		if n := int(binary.BigEndian.Uint32([]byte(m.payload))); n != i || len(m.payload) != len(payload) {
			t.Fatalf("other: message %d is number %d (%d bytes)", i, n, len(m.payload))
		}
	}
	for b.connByID("slow") != nil {
		select {
		case <-ctx.Done():
			t.Fatal("the closed subscriber's connection never ended")
		case <-time.After(5 * time.Millisecond):
		}
	}
	done := make(chan struct{})
	go func() { b.Close(); close(done) }()
	select {
	case <-done:
		closed = true
	case <-time.After(testTimeout):
		t.Fatal("the broker did not close")
	}
}

// A client id taken over again and again (persistent session, MQTT
// 3.1.1) while a publisher streams QoS 0 messages to it, most of them
// written directly: every connection gets its messages in order, none
// twice, and the last one gets what is published after it connected.
func TestDirectWriteTakeover(t *testing.T) {
	b := start(t, Options{})
	first := dial3(t, b, "sub", false)
	first.sub(t, "d/t", 0)
	ctx, cancel := context.WithCancel(testCtx(t))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the publisher
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			if err := b.Publish(ctx, Principal{ClientID: "pub"}, Message{Topic: "d/t", Payload: []byte(strconv.Itoa(i))}); err != nil && ctx.Err() == nil {
				t.Error(err)
				return
			}
		}
	}()
	clients := []*v3{first}
	for range 10 {
		clients[len(clients)-1].wait(t, 1) // the previous one got messages
		clients = append(clients, dial3(t, b, "sub", false))
	}
	last := clients[len(clients)-1]
	last.wait(t, 1)
	cancel()
	wg.Wait()
	if err := b.Publish(testCtx(t), Principal{ClientID: "pub"}, Message{Topic: "d/t", Payload: []byte("end")}); err != nil {
		t.Fatal(err)
	}
	for {
		got := last.wait(t, 1)
		if got[len(got)-1].payload == "end" {
			break
		}
		select {
		case <-last.got:
		case <-time.After(testTimeout):
			t.Fatal("the last connection did not get the message published after it connected")
		}
	}
	for k, c := range clients {
		c.mu.Lock()
		msgs := append([]msg(nil), c.msgs...)
		c.mu.Unlock()
		prev := -1
		for _, m := range msgs {
			if m.payload == "end" {
				continue
			}
			n, err := strconv.Atoi(m.payload)
			if err != nil || n <= prev {
				t.Fatalf("connection %d: %q after %d", k, m.payload, prev)
			}
			prev = n
		}
	}
	t.Logf("%d direct writes", b.stats.Direct.Load())
}
