package broker

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// waitSnapshotWaiters waits, for testTimeout at most, until n resumed
// snapshots wait for room in the budget.
func waitSnapshotWaiters(t *testing.T, b *Broker, n int) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		now, _ := b.snaps.waits()
		if now == n {
			return
		}
		if time.Now().After(deadline) {
			held, peak, _ := b.snaps.stats()
			t.Fatalf("resumed snapshots waiting for room: %d, want %d (%d bytes held, %d at most)", now, n, held, peak)
		}
		time.Sleep(time.Millisecond)
	}
}

// readTreeMessage reads r's packets until a PUBLISH on topic and returns
// its payload.
func readTreeMessage(t *testing.T, r *raw, v byte, topic string) string {
	t.Helper()
	for {
		typ, body := r.read()
		if typ != packets.Publish {
			continue
		}
		m, ok := decodeRawPublish(packets.Publish<<4, body, v)
		if !ok {
			t.Fatalf("PUBLISH % x does not decode", body[:min(len(body), 64)])
		}
		if m.topic == topic {
			return m.payload
		}
	}
}

// TestResumedReaderGetsSnapshot: a client that reads resumes its
// persistent $sync session while a client that never reads holds the
// snapshot budget: its snapshot waits for room, then, once the other
// client goes, comes whole, with the row changed while it waited, and
// the event published meanwhile follows it as a delta. The budget is
// never passed. Before the fix the snapshot came at once, past the
// budget.
func TestResumedReaderGetsSnapshot(t *testing.T) {
	const (
		hogRows = 3_000 // ~3 MB held by the client that never reads (estimate ~4 MB)
		rows    = 1_000 // the reader's ~1 MB: its estimate (~1.35 MB) does not fit beside
		limit   = 4 << 20
	)
	for _, v := range []byte{5, 4} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			b := start(t, Options{MaxSnapshotBytes: limit, WriteTimeout: 5 * testTimeout})
			value := `"` + strings.Repeat("x", 1000) + `"`
			for i := range hogRows {
				loadRow(b, fmt.Sprintf("hog/r%04d", i), value)
			}
			for i := range rows {
				loadRow(b, fmt.Sprintf("rd/r%04d", i), value)
			}
			if err := b.Sync(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			var persist packets.Properties
			if v == 5 {
				persist = packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true}
			}
			const filter = "$sync/rd/#"
			r := dialRaw(t, b, "reader", v, false, persist)
			if code := r.subscribeCode(1, filter); code != 0 {
				t.Fatalf("SUBACK %#x", code)
			}
			readTreeMessage(t, r, v, filter)
			r.c.Close()
			waitSnapshotBytes(t, b, 0)

			hc, err := dialSmallRcvbuf(b.TCPAddr())
			if err != nil {
				t.Fatal(err)
			}
			hog := connectRaw(t, hc, "hog", 5, true, packets.Properties{})
			if code := hog.subscribeCode(1, "$sync/hog/#"); code != 0 {
				t.Fatalf("hog: SUBACK %#x", code)
			}
			// and never reads: its snapshot is held until it goes

			r = dialRaw(t, b, "reader", v, false, persist)
			waitSnapshotWaiters(t, b, 1)
			loadRow(b, "rd/r0000", `"changed"`)
			b.Publish(testCtx(t), systemPrincipal, Message{Topic: "rd/ev", Payload: []byte(`"e1"`)}) //nolint:errcheck // the broker's own publish
			if err := b.Sync(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			if now, _ := b.snaps.waits(); now != 1 {
				t.Fatalf("%d waiting after the changes, want 1", now)
			}
			hog.c.Close() // the budget frees

			var snap map[string]json.RawMessage
			if err := json.Unmarshal([]byte(readTreeMessage(t, r, v, filter)), &snap); err != nil {
				t.Fatal(err)
			}
			if len(snap) != rows || string(snap["r0000"]) != `"changed"` {
				t.Errorf("resumed snapshot: %d rows, r0000 %.20s; want %d rows, r0000 \"changed\"", len(snap), snap["r0000"], rows)
			}
			if _, ok := snap["ev"]; ok {
				t.Errorf("the event is in the snapshot")
			}
			if got := readTreeMessage(t, r, v, filter); got != `{"ev":"e1"}` {
				t.Errorf("after the snapshot: %s, want the event's delta", got)
			}
			_, peak, _ := b.snaps.stats()
			_, waited := b.snaps.waits()
			t.Logf("%d bytes at most, limit %d; %d waited", peak, limit, waited)
			if peak > limit {
				t.Errorf("%d bytes of snapshots held at most, over MaxSnapshotBytes %d", peak, limit)
			}
			r.c.Close()
			waitSnapshotBytes(t, b, 0)
		})
	}
}

// TestSubscribeGuessesShareBudget: the snapshot estimates of one
// SUBSCRIBE's $sync filters walk at most the budget's worth of rows
// together, not the budget's worth each, and every filter is still
// granted (the client counts the largest of its snapshots). Before, 40
// filters of a 27 MB tree walked 40 times the tree on the loop.
func TestSubscribeGuessesShareBudget(t *testing.T) {
	const (
		rows    = 20_000 // estimated ~27 MB
		limit   = 32 << 20
		filters = 40
	)
	b := start(t, Options{MaxSnapshotBytes: limit, WriteTimeout: 5 * testTimeout})
	value := `"` + strings.Repeat("x", 1000) + `"`
	for i := range rows {
		loadRow(b, fmt.Sprintf("snap/r%05d", i), value)
	}
	if err := b.Sync(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	c, err := dialSmallRcvbuf(b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	r := connectRaw(t, c, "many", 5, true, packets.Properties{}) // and never reads its snapshots
	body := []byte{0, 1, 0}
	for i := range filters {
		f := fmt.Sprintf("$sync.%dms/snap/#", i+1) // all alike, each its own subscription
		body = binary.BigEndian.AppendUint16(body, uint16(len(f)))
		body = append(append(body, f...), 0)
	}
	before := b.guessed.Load()
	r.write(append(append([]byte{0x82}, varint(len(body))...), body...))
	var codes []byte
	for {
		if typ, p := r.read(); typ == packets.Suback {
			codes = p[len(p)-filters:]
			break
		}
	}
	for i, code := range codes {
		if code != 0 {
			t.Errorf("filter %d: SUBACK %#x, want 0", i+1, code)
		}
	}
	walked := b.guessed.Load() - before
	_, peak, _ := b.snaps.stats()
	t.Logf("%d filters: estimates walked %d KiB of rows (limit %d KiB); %d KiB held at most", filters, walked>>10, limit>>10, peak>>10)
	if walked > limit+64<<10 { // the budget, and the row that passed it
		t.Errorf("the estimates of one SUBSCRIBE walked %d bytes of rows, past the budget %d", walked, limit)
	}
	if peak > limit+64<<10 {
		t.Errorf("%d bytes held at most, over the budget %d", peak, limit)
	}
}

// TestEstimateSlotsShared: the doors' estimates (AnswerSize) and the
// $sync SUBSCRIBEs' take the same few slots: with every slot held, an
// estimate waits (here until its context ends) and a $sync SUBSCRIBE is
// not answered; one slot let go, both are. Before, HTTP estimates had
// slots of their own (httpapi) and AnswerSize took none.
func TestEstimateSlotsShared(t *testing.T) {
	b := start(t, Options{})
	loadRow(b, "es/a", "1")
	if err := b.Sync(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	slots := b.EstimateSlots()
	for range cap(slots) {
		slots <- struct{}{}
	}
	ctx, cancel := context.WithTimeout(testCtx(t), 200*time.Millisecond)
	defer cancel()
	if n, err := b.AnswerSize(ctx, systemPrincipal, "es/#", nil); err == nil {
		t.Fatalf("estimated %d bytes with every slot held", n)
	}
	r := dialRaw(t, b, "es", 5, true, packets.Properties{})
	r.write(subscribeBytes(1, "$sync/es/#", true))
	<-slots
	if n, err := b.AnswerSize(testCtx(t), systemPrincipal, "es/#", nil); err != nil || n == 0 {
		t.Fatalf("with a slot free: %d, %v", n, err)
	}
	for {
		if typ, _ := r.read(); typ == packets.Suback {
			break
		}
	}
	for range cap(slots) - 1 {
		<-slots
	}
}
