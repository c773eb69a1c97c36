package broker

import (
	"context"
	"testing"
	"time"
)

// TestQueueSpentWaitDoesNotQueue: a publisher whose wait is over (past its
// limit, or past its deadline with a client written nothing for a patience)
// is refused at once by a full queue, without joining the line. It used to
// join it and sleep a timer's minimum (1 ms) before giving up: a publish to
// 10,000 full subscribers ran 10 s past its 5 × publish_wait limit, and
// every such publisher spent the subscriber's credit as if it had waited,
// so publishers with nothing left to wait stalled a client that reads.
func TestQueueSpentWaitDoesNotQueue(t *testing.T) {
	past := time.Now().Add(-time.Hour)
	for _, tc := range []struct {
		name   string
		w      pubWait
		writen bool // the client was just written something
	}{
		{"past the limit, client being written", pubWait{deadline: past, limit: past}, true},
		{"past the deadline, client silent", pubWait{deadline: past, limit: time.Now().Add(time.Hour)}, false},
		{"past the deadline, no limit, client silent", pubWait{deadline: past}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newOutQueue(1000, time.Second)
			defer q.close()
			for range 4 {
				if r := q.put(waitItem(), pubWait{}); r != pushed {
					t.Fatalf("filling: %v", r)
				}
			}
			if tc.writen {
				q.mu.Lock()
				q.lastWrote = time.Now()
				q.mu.Unlock()
			}
			for i := range 100 {
				if r := q.put(waitItem(), tc.w); r != pushLate {
					t.Fatalf("put %d: %v, want pushLate", i, r)
				}
			}
			q.mu.Lock()
			credit, stalled := q.credit, q.stalled
			q.mu.Unlock()
			if credit != q.patience || stalled {
				t.Errorf("credit %v (stalled %v) after publishers with no wait left, want %v untouched", credit, stalled, q.patience)
			}
		})
	}
}

// TestPublishCtxEndsWait: a publish through the door (Broker.Publish, as
// the HTTP API makes with its request's context) waits for room in a full
// subscriber's queue no longer than its context lives. It used to wait
// its publish_wait, and up to 5 × publish_wait while the subscriber was
// being written, whatever the context: an HTTP client that gave up held
// its handler goroutine and its message in line all that time.
func TestPublishCtxEndsWait(t *testing.T) {
	b := start(t, Options{QueueBytes: 1000, PublishWait: time.Minute})
	release := make(chan struct{})
	defer close(release)
	got := make(chan struct{}, 1)
	s := b.Open(Principal{ClientID: "door-sub"}, func(Delivery) {
		select {
		case got <- struct{}{}:
		default:
		}
		<-release // the subscriber's reader is stuck: its queue fills
	})
	defer s.Close()
	if err := s.Subscribe("rt/ctx", 0); err != nil {
		t.Fatal(err)
	}
	pub := Principal{ClientID: "door-pub"}
	ctx := testCtx(t)
	if err := b.Publish(ctx, pub, Message{Topic: "rt/ctx", Payload: []byte("first")}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got: // the writer holds the first message
	case <-ctx.Done():
		t.Fatal("first message not delivered")
	}
	room := func() bool { // for one more small message (under 400 bytes)
		s.c.q.mu.Lock()
		defer s.c.q.mu.Unlock()
		return s.c.q.bytes+400 <= s.c.q.max
	}
	for room() {
		if err := b.Publish(ctx, pub, Message{Topic: "rt/ctx", Payload: []byte("fill")}); err != nil {
			t.Fatal(err)
		}
	}
	gone, cancel := context.WithCancel(ctx)
	cancel()
	done := make(chan error, 1)
	go func() { done <- b.Publish(gone, pub, Message{Topic: "rt/ctx", Payload: make([]byte, 500)}) }()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("a publish whose context ended waits for room in a full queue")
	}
	if n := b.meter.queueFull[fullLate].Load(); n != 1 {
		t.Errorf("deadline drops %d, want 1", n)
	}
}

// TestQueueStopMidWait: a publisher that gives up while first in line
// (its context ends) leaves the line and hands the room it could not use
// to the next, whose message fits: nobody behind it is left waiting.
func TestQueueStopMidWait(t *testing.T) {
	q := newOutQueue(1000, time.Minute)
	defer q.close()
	for range 4 { // 804 bytes
		q.put(waitItem(), pubWait{})
	}
	ctx := testCtx(t)
	deadline := time.Now().Add(testTimeout)
	stop := make(chan struct{})
	big := &plainItem{msg: &message{topic: "t", payload: make([]byte, 439)}} // 600 bytes
	first := make(chan pushResult, 1)
	go func() { first <- q.put(big, pubWait{deadline: deadline, stop: stop}) }()
	awaitWaiting(t, q, 1)
	second := make(chan pushResult, 1)
	go func() { second <- q.put(waitItem(), pubWait{deadline: deadline}) }()
	awaitWaiting(t, q, 2)
	if got := len(q.take(nil, 1)); got != 1 { // 603 bytes: room for the second, not the first
		t.Fatalf("took %d items", got)
	}
	close(stop)
	for name, ch := range map[string]chan pushResult{"first": first, "second": second} {
		want := map[string]pushResult{"first": pushLate, "second": pushed}[name]
		select {
		case r := <-ch:
			if r != want {
				t.Errorf("%s publisher: %v, want %v", name, r, want)
			}
		case <-ctx.Done():
			t.Fatalf("%s publisher still waits", name)
		}
	}
	if n := queueWaiting(q); n != 0 {
		t.Errorf("%d left in line", n)
	}
}
