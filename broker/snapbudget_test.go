package broker

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// subscribeCode sends one SUBSCRIBE of filter and returns its SUBACK's
// reason code, reading (and dropping) what comes before it.
func (r *raw) subscribeCode(id uint16, filter string) byte {
	body := binary.BigEndian.AppendUint16(nil, id)
	if r.v5 {
		body = append(body, 0)
	}
	body = binary.BigEndian.AppendUint16(body, uint16(len(filter)))
	body = append(append(body, filter...), 0)
	r.write(append(append([]byte{0x82}, varint(len(body))...), body...))
	for {
		if typ, b := r.read(); typ == packets.Suback {
			return b[len(b)-1]
		}
	}
}

// waitSnapshotBytes waits, for testTimeout at most, until the broker
// counts n bytes of snapshots held.
func waitSnapshotBytes(t *testing.T, b *Broker, n int64) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		held, _, _ := b.snaps.stats()
		if held == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshot bytes held: %d, want %d", held, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestSnapshotBudget: $sync subscribers that never read hold their
// snapshots until the write timeout; the broker counts them against
// MaxSnapshotBytes and refuses the SUBSCRIBEs past it (MQTT 5 SUBACK
// 0x97, 3.1.1 0x80). Once they went, a client that reads gets its
// snapshot, and the budget is whole again once it is written. Without
// the budget every subscriber held its snapshot (20 of them on a
// 13 MB tree: 786 MB of RSS, h32 get-huge).
func TestSnapshotBudget(t *testing.T) {
	const (
		rows  = 8_000 // an 8 MB snapshot: more than loopback's socket buffers take (4 MiB)
		limit = 24 << 20
		n     = 8
	)
	for _, tc := range []struct {
		v    byte
		want byte
	}{
		{5, packets.ErrQuotaExceeded.Code},
		{4, packets.ErrUnspecifiedError.Code},
	} {
		t.Run(fmt.Sprintf("v%d", tc.v), func(t *testing.T) {
			b := start(t, Options{MaxSnapshotBytes: limit, WriteTimeout: 5 * testTimeout})
			value := []byte(`"` + strings.Repeat("x", 1000) + `"`)
			for i := range rows {
				loadRow(b, fmt.Sprintf("snap/r%04d", i), string(value))
			}
			if err := b.Sync(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			// Snapshots of different filters or codecs: none shared.
			filters := []string{"$sync/snap/#", "$sync/+/#", "$sync/#", "$sync/snap/+", "$sync.cbor/snap/#", "$sync.cbor/+/#", "$sync.cbor/#", "$sync.cbor/snap/+"}
			var granted, refused int
			var stalled []*raw
			for i := range n {
				r := dialRaw(t, b, fmt.Sprint("stall", i), tc.v, true, packets.Properties{})
				r.c.(*net.TCPConn).SetReadBuffer(4096)
				switch code := r.subscribeCode(1, filters[i]); code {
				case 0:
					granted++
				case tc.want:
					refused++
				default:
					t.Errorf("subscriber %d: SUBACK %#x, want 0 or %#x", i, code, tc.want)
				}
				stalled = append(stalled, r) // and never read again
				if held, _, _ := b.snaps.stats(); held > limit {
					t.Errorf("after subscriber %d: %d snapshot bytes held, over the limit %d", i, held, limit)
				}
			}
			_, peak, _ := b.snaps.stats()
			t.Logf("%d granted, %d refused; at most %d KiB held", granted, refused, peak>>10)
			if granted == 0 || refused == 0 || peak > limit {
				t.Errorf("%d granted, %d refused, %d bytes held at most: want some of each, at most %d", granted, refused, peak, limit)
			}

			for _, r := range stalled {
				r.c.Close()
			}
			waitSnapshotBytes(t, b, 0) // they went: what they held is given back
			r := dialRaw(t, b, "reader", tc.v, true, packets.Properties{})
			if code := r.subscribeCode(1, "$sync/snap/#"); code != 0 {
				t.Fatalf("the reading client's SUBACK: %#x", code)
			}
			typ, body := r.read()
			if typ != packets.Publish {
				t.Fatalf("after SUBACK: packet type %d, want the snapshot", typ)
			}
			at := 2 + int(binary.BigEndian.Uint16(body)) // topic; QoS 0: no packet id
			if tc.v == 5 {
				props, k := binary.Uvarint(body[at:]) // lengths below 128 bytes per varint byte: as MQTT's
				at += k + int(props)
			}
			var snap map[string]any
			if err := json.Unmarshal(body[at:], &snap); err != nil || len(snap) != rows {
				t.Fatalf("the snapshot: %d rows (%v), want %d", len(snap), err, rows)
			}
			waitSnapshotBytes(t, b, 0) // written: given back
		})
	}
}

// sharedWriters waits, for testTimeout at most, until one shared
// snapshot is being written to n clients; it returns its size.
func sharedWriters(t *testing.T, b *Broker, n int) int64 {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		b.shares.mu.Lock()
		refs, size := 0, int64(0)
		for _, sh := range b.shares.byKey {
			refs, size = sh.refs, int64(len(sh.payload))
		}
		entries := len(b.shares.byKey)
		b.shares.mu.Unlock()
		if entries == 1 && refs == n {
			return size
		}
		if time.Now().After(deadline) {
			t.Fatalf("shared snapshots: %d, the last with %d writers; want 1 with %d", entries, refs, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestSnapshotShared: $sync subscribers that never read, asking for the
// same snapshot while the rows stay the same, share one encoded copy,
// counted once: all of them fit a budget that holds two copies and an
// estimate (without sharing each counts its own ~20 MB copy: with
// distinct filters TestSnapshotBudget gets 2 granted, 6 refused).
func TestSnapshotShared(t *testing.T) {
	const (
		rows  = 20_000
		limit = 68 << 20 // large snapshots have 15/16 of it: ~64 MiB
		n     = 8
	)
	b := start(t, Options{MaxSnapshotBytes: limit, WriteTimeout: 5 * testTimeout})
	value := `"` + strings.Repeat("x", 1000) + `"`
	for i := range rows {
		loadRow(b, fmt.Sprintf("snap/r%04d", i), value)
	}
	if err := b.Sync(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	var size int64
	for i := range n {
		r := dialRaw(t, b, fmt.Sprint("stall", i), 5, true, packets.Properties{})
		r.c.(*net.TCPConn).SetReadBuffer(4096)
		if code := r.subscribeCode(1, "$sync/snap/#"); code != 0 {
			held, _, _ := b.snaps.stats()
			t.Fatalf("subscriber %d: SUBACK %#x, want 0 (%d KiB held)", i, code, held>>10)
		}
		size = sharedWriters(t, b, i+1) // its writer took the snapshot
		// and gave back its SUBACK's estimate: the copy counted once. The
		// share's reference comes first; a SUBSCRIBE before the estimate
		// went back was refused (subscriber 5, once in a full -race run).
		waitSnapshotBytes(t, b, size)
	}
	_, peak, refused := b.snaps.stats()
	t.Logf("one %d KiB snapshot for %d subscribers; at most %d KiB held", size>>10, n, peak>>10)
	if refused != 0 || peak > limit {
		t.Errorf("%d refused, %d bytes held at most: want none refused, at most %d", refused, peak, limit)
	}
}

// TestSnapshotBudgetOneClient: a client's writer makes one snapshot at a
// time, so one SUBSCRIBE of many $sync filters counts the largest, not
// their sum: all granted, reading or not (summed, the third of these
// would not fit).
func TestSnapshotBudgetOneClient(t *testing.T) {
	const (
		rows  = 20_000
		limit = 64 << 20
	)
	b := start(t, Options{MaxSnapshotBytes: limit, WriteTimeout: 5 * testTimeout})
	value := `"` + strings.Repeat("x", 1000) + `"`
	for i := range rows {
		loadRow(b, fmt.Sprintf("snap/r%04d", i), value)
	}
	if err := b.Sync(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	filters := []string{"$sync/snap/#", "$sync/+/#", "$sync/#", "$sync/snap/+", "$sync.cbor/snap/#", "$sync.cbor/+/#", "$sync.cbor/#", "$sync.cbor/snap/+"}
	r := dialRaw(t, b, "many", 5, true, packets.Properties{})
	r.c.(*net.TCPConn).SetReadBuffer(4096)
	body := []byte{0, 1, 0}
	for _, f := range filters {
		body = binary.BigEndian.AppendUint16(body, uint16(len(f)))
		body = append(append(body, f...), 0)
	}
	r.write(append(append([]byte{0x82}, varint(len(body))...), body...))
	var codes []byte
	for {
		if typ, b := r.read(); typ == packets.Suback {
			codes = b[len(b)-len(filters):]
			break
		}
	}
	for i, code := range codes {
		if code != 0 {
			t.Errorf("%s: SUBACK %#x, want 0", filters[i], code)
		}
	}
	held, peak, _ := b.snaps.stats()
	t.Logf("%d KiB held, at most %d KiB", held>>10, peak>>10)
	if peak > limit {
		t.Errorf("%d bytes held at most, over the limit %d", peak, limit)
	}
}
