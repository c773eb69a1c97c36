package broker

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/mote-mqtt/mote/translate"
)

// TestRecycledRowsHolders: the row slices of tree publishes go back to
// the Parser once a batch is applied (h-storm3's Parser.Recycle) when no
// delta holds them. Here every holder left is slow or late: a plain
// subscriber that reads nothing until the publishers are done, a
// translation (SPEC §11) of a row of each publish, $set bulk updates
// between the tree publishes, from several publishers at once, each
// round with different values. Every value delivered, translated or
// stored must be its own topic's, byte for byte (a slice reused while
// read would show another publish's row).
func TestRecycledRowsHolders(t *testing.T) {
	const pubs, rounds, rows = 4, 150, 20
	set, err := translate.New([]translate.Rule{{From: "rt/+/t", To: "tr/+/t"}})
	if err != nil {
		t.Fatal(err)
	}
	br := start(t, Options{Translators: set})
	ctx := testCtx(t)
	stalled, err := rawSubscribe(ctx, br.TCPAddr(), "stalled", "rt/#")
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	live, err := rawSubscribe(ctx, br.TCPAddr(), "live", "tr/#")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	// rt/wW/rNN is W-K-NN (round K) or set-K; rt/wW/t and tr/wW/t are W-K-t.
	good := regexp.MustCompile(`^(?:rt/w(\d)/r(\d\d) (?:(\d)-\d+-(\d\d)|set-\d+)|(?:rt|tr)/w(\d)/t (\d)-\d+-t|rt/end .*|tr/end .*)$`)
	check := func(topic, payload string) error {
		m := good.FindStringSubmatch(topic + " " + payload)
		if m == nil || (m[3] != "" && (m[1] != m[3] || m[2] != m[4])) || m[5] != m[6] {
			return fmt.Errorf("%s = %q: not its own value", topic, payload)
		}
		return nil
	}
	liveDone := make(chan error, 1)
	go func() {
		n, err := readPubsUntil(live, "tr/end", check)
		if err == nil && n != pubs*rounds+1 {
			err = fmt.Errorf("%d translations and the end, want %d", n-1, pubs*rounds)
		}
		liveDone <- err
	}()
	var wg sync.WaitGroup
	errs := make(chan error, pubs)
	for w := range pubs {
		wg.Go(func() {
			p := Principal{ClientID: fmt.Sprintf("pub%d", w)}
			for k := range rounds {
				var b strings.Builder
				b.WriteString("{")
				for i := range rows {
					fmt.Fprintf(&b, `"r%02d":"%d-%d-%02d",`, i, w, k, i)
				}
				fmt.Fprintf(&b, `"t":"%d-%d-t"}`, w, k)
				m := Message{Topic: fmt.Sprintf("$tree/rt/w%d", w), Payload: []byte(b.String()), Retain: true}
				if k%3 == 0 { // some wait for the loop, some do not
					m.QoS = 1
				}
				if err := br.Publish(ctx, p, m); err != nil {
					errs <- err
					return
				}
				if w == 0 && k%3 == 1 { // a $set among the tree publishes
					m := Message{Topic: "$set/rt/+/r05", Payload: fmt.Appendf(nil, "set-%d", k), Retain: true}
					if err := br.Publish(ctx, Principal{ClientID: "setter"}, m); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := br.Sync(ctx); err != nil { // the last batch's deliveries are queued
		t.Fatal(err)
	}
	for _, end := range []string{"rt/end", "tr/end"} { // a plain event: queued by the caller
		if err := br.Publish(ctx, Principal{ClientID: "t"}, Message{Topic: end, Payload: []byte("1")}); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := readPubsUntil(stalled, "rt/end", check); err != nil || n < pubs*rounds*(rows+1)+1 {
		t.Fatalf("stalled subscriber: %d publishes, want at least %d: %v", n, pubs*rounds*(rows+1)+1, err)
	}
	if err := <-liveDone; err != nil {
		t.Fatal("translation subscriber: ", err)
	}
	if err := br.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// The store is the loop's (Get builds its index as it reads): read
	// it there.
	var bad error
	if !br.onLoop(ctx.Done(), func() {
		for w := range pubs {
			for i := range rows {
				topic := fmt.Sprintf("rt/w%d/r%02d", w, i)
				v, ok := br.tree.Store().Get(topic)
				if !ok {
					bad = fmt.Errorf("%s: no row", topic)
					return
				}
				if err := check(topic, v.Data); err != nil {
					bad = fmt.Errorf("store: %w", err)
					return
				}
			}
			for _, topic := range []string{fmt.Sprintf("rt/w%d/t", w), fmt.Sprintf("tr/w%d/t", w)} {
				if v, ok := br.tree.Store().Get(topic); !ok || v.Data != fmt.Sprintf("%d-%d-t", w, rounds-1) {
					bad = fmt.Errorf("store: %s = %q %v, want the last round's", topic, v.Data, ok)
					return
				}
			}
		}
	}) {
		t.Fatal("the loop did not run the check")
	}
	if bad != nil {
		t.Fatal(bad)
	}
}

// readPubsUntil reads publishes from c, checking each, until one to topic
// end, and returns how many came; a connection the broker closed (a slow
// reader's) ends it too.
func readPubsUntil(c net.Conn, end string, check func(topic, payload string) error) (int, error) {
	r := bufio.NewReader(c)
	for got := 0; ; {
		h, err := r.ReadByte()
		if err == io.EOF && got > 0 {
			return got, nil
		}
		if err != nil {
			return got, fmt.Errorf("after %d publishes: %w", got, err)
		}
		size, err := binary.ReadUvarint(r)
		if err != nil {
			return got, err
		}
		body := make([]byte, size)
		if _, err := io.ReadFull(r, body); err != nil {
			return got, err
		}
		if h>>4 != 3 {
			continue
		}
		got++
		tl := int(body[0])<<8 | int(body[1])
		topic, payload := string(body[2:2+tl]), body[2+tl:]
		if h&0x06 != 0 { // QoS 1 or 2: a packet id
			payload = payload[2:]
		}
		if err := check(topic, string(payload)); err != nil {
			return got, fmt.Errorf("publish %d: %w", got, err)
		}
		if topic == end {
			return got, nil
		}
	}
}
