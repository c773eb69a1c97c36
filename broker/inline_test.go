package broker

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"

	"github.com/mote-mqtt/mote/wire"
)

// TestInlinePublishKeepsOrder has clients' tree publishes run on their
// read goroutines while the loop is idle (runInline) and queued while it
// is busy (other publishers through Broker.Publish, and barriers, keep it
// so): each publisher's rows still reach a subscriber in the order they
// were published, none lost, and the rows end at the last values.
func TestInlinePublishKeepsOrder(t *testing.T) {
	b := start(t, Options{})
	sub := dial3(t, b, "watcher", true)
	sub.sub(t, "ord/+/n", 1)

	const pubs, each = 4, 400
	stop := make(chan struct{})
	var busy sync.WaitGroup
	busy.Add(2)
	go func() { // queued publishes: never inline
		defer busy.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			m := Message{Topic: "$tree/other", Payload: []byte(`{"x":` + strconv.Itoa(i) + `}`)}
			if err := b.Publish(context.Background(), Principal{ClientID: "busy"}, m); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() { // barriers: calls on the loop
		defer busy.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := b.Sync(testCtx(t)); err != nil {
				t.Error(err)
				return
			}
		}
	}()

	var wg sync.WaitGroup
	for p := range pubs {
		c := dial3(t, b, fmt.Sprintf("p%d", p), true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; i <= each; i++ {
				qos := byte(0)
				if i == each {
					qos = 1 // acknowledged once applied
				}
				tok := c.Publish(fmt.Sprintf("$tree/ord/p%d", p), qos, true, fmt.Sprintf(`{"n":%d}`, i))
				if qos == 1 && !waitTok(t, "publish", tok) {
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	busy.Wait()
	settle(t, b)

	got := sub.wait(t, pubs*each)
	last := map[string]int{}
	for _, m := range got {
		n, err := strconv.Atoi(m.payload)
		if err != nil {
			t.Fatalf("%s: %q", m.topic, m.payload)
		}
		if n != last[m.topic]+1 {
			t.Fatalf("%s: got %d after %d: out of order or lost", m.topic, n, last[m.topic])
		}
		last[m.topic] = n
	}
	for p := range pubs {
		topic := fmt.Sprintf("ord/p%d/n", p)
		if last[topic] != each {
			t.Errorf("%s: last delivered %d, want %d", topic, last[topic], each)
		}
	}
	tree, _, err := b.Tree(testCtx(t), Principal{ClientID: "reader"}, "ord/#", wire.CodecJSON)
	if err != nil {
		t.Fatal(err)
	}
	if want := `"n":` + strconv.Itoa(each); strings.Count(string(tree), want) != pubs {
		t.Errorf("rows: %s, want every n at %d", tree, each)
	}
	t.Logf("inline %d of %d batches", b.stats.Inline.Load(), b.stats.Batches.Load())
	// On a loaded machine the busy publisher and the barriers can keep the
	// loop busy the whole time (0 of 218 batches inline, once, in a full
	// run): then show at least that a publish finding the loop idle runs
	// inline. The $SYS ticker may make any one of them queue.
	idle := dial3(t, b, "idle", true)
	for deadline := time.Now().Add(testTimeout); b.stats.Inline.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("no publish ran inline (batches %d)", b.stats.Batches.Load())
		}
		settle(t, b)
		idle.pub(t, "$tree/idle", 1, true, `{"n":1}`)
	}
}

// TestInlineNotWhileClosing publishes from clients while the broker
// closes: a publish the closing loop no longer takes is not run inline
// either, and nothing runs on the tree once the loop has ended.
func TestInlineNotWhileClosing(t *testing.T) {
	for range 5 {
		b := start(t, Options{})
		var wg sync.WaitGroup
		for p := range 4 {
			r := dialRaw(t, b, fmt.Sprintf("c%d", p), 4, true, packets.Properties{})
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 5000; i++ {
					pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
						TopicName: fmt.Sprintf("$tree/close/c%d", p), Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))}
					var buf bytes.Buffer
					if err := pk.PublishEncode(&buf); err != nil {
						t.Error(err)
						return
					}
					r.c.SetWriteDeadline(time.Now().Add(testTimeout))
					if _, err := r.c.Write(buf.Bytes()); err != nil {
						return // closed by the broker
					}
				}
			}()
		}
		b.Close()
		wg.Wait()
		select {
		case <-b.loopDone:
		default:
			t.Fatal("loop still running after Close")
		}
		if b.runInline([]request{{kind: reqCall, call: func() { t.Error("ran after Close") }}}, pubMeta{}) {
			t.Fatal("runInline ran after Close")
		}
	}
}
