package broker

import (
	"context"
	"strconv"
	"strings"
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

// TestQueueCloseWithWaiters: a queue that closes while publishers wait in
// line answers every one at once, nobody is left in line: their QoS 1/2
// messages join the leftovers for the session after what was queued, in
// line order, while they fit the bound, a QoS 0 one is dropped as of no
// use; from the first that does not fit on, they are told to deliver
// elsewhere (pushGone: once the connection handed its leftovers on, to its
// successor or the session). They were dropped: the queue was full when
// they came, so the leftovers had room for hardly any of them, and a
// persistent subscriber that reconnected while publishers waited lost
// every QoS 1 message in line though its new connection had room.
func TestQueueCloseWithWaiters(t *testing.T) {
	q := newOutQueue(1000, time.Minute)
	qos1 := func(p string) *plainItem {
		return &plainItem{msg: &message{topic: "t", payload: []byte(p + strings.Repeat("x", 39))}, qos: 1}
	}
	for i := range 4 { // 804 bytes of QoS 1
		q.put(qos1(strconv.Itoa(i)), pubWait{})
	}
	deadline := time.Now().Add(testTimeout)
	res := make([]chan pushResult, 6)
	for i := range res {
		res[i] = make(chan pushResult, 1)
		m := qos1(strconv.Itoa(4 + i))
		if i == 1 {
			m.qos = 0
		}
		go func() { res[i] <- q.put(m, pubWait{deadline: deadline}) }()
		awaitWaiting(t, q, i+1)
	}
	q.take(nil, 1)        // 603 bytes: the first waiter queues its message
	awaitWaiting(t, q, 5) // the second (1005 bytes) does not fit
	q.close()
	ctx := testCtx(t)
	// Leftovers hold 1000 bytes: 1, 2, 3 and 4 (804) fit; waiter 1 is
	// QoS 0: dropped; waiter 2 does not fit (1005): it and those after it
	// go elsewhere.
	want := []pushResult{pushed, pushed, pushGone, pushGone, pushGone, pushGone}
	for i, ch := range res {
		select {
		case r := <-ch:
			if r != want[i] {
				t.Errorf("waiter %d: %v, want %v", i, r, want[i])
			}
		case <-ctx.Done():
			t.Fatalf("waiter %d still waits after close", i)
		}
	}
	if n := queueWaiting(q); n != 0 {
		t.Errorf("%d left in line", n)
	}
	left, lost := q.leftovers()
	var got []string
	for _, p := range left {
		got = append(got, string(p.msg.payload[:1]))
	}
	if strings.Join(got, "") != "1234" || lost != 0 {
		t.Errorf("leftovers %v (lost %d), want 1234 (lost 0)", got, lost)
	}
	if r := q.put(qos1("9"), pubWait{deadline: deadline}); r != pushGone {
		t.Errorf("put after the leftovers went: %v, want pushGone", r)
	}
}
