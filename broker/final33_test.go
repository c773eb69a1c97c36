package broker

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/pprof"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestResubscribeSyncBudgetFull: a client re-SUBSCRIBEs the $sync filter
// it holds, in a loop, while a client that never reads holds the
// snapshot budget: every one is refused, its subscription stays (a row
// changed reaches it), the refusal lines stay bounded, and the budget
// goes back to 0 once the non-reader goes.
func TestResubscribeSyncBudgetFull(t *testing.T) {
	const (
		rows  = 8_000
		limit = 12 << 20
		loops = 300
	)
	for _, tc := range []struct {
		v    byte
		want byte
	}{
		{5, packets.ErrQuotaExceeded.Code},
		{4, packets.ErrUnspecifiedError.Code},
	} {
		t.Run(fmt.Sprintf("v%d", tc.v), func(t *testing.T) {
			b, logs := startLogged(t, Options{MaxSnapshotBytes: limit, WriteTimeout: 5 * testTimeout, RefusalLog: LogLimit{Interval: time.Hour}})
			value := `"` + strings.Repeat("x", 1000) + `"`
			for i := range rows {
				loadRow(b, fmt.Sprintf("snap/r%04d", i), value)
			}
			if err := b.Sync(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			rd := dialRaw(t, b, "resub", tc.v, true, packets.Properties{})
			if code := rd.subscribeCode(1, "$sync/snap/#"); code != 0 {
				t.Fatalf("first SUBACK %#x", code)
			}
			if !rd.snapshot(testTimeout) {
				t.Fatal("no snapshot")
			}
			waitSnapshotBytes(t, b, 0)
			st := dialRaw(t, b, "stall", tc.v, true, packets.Properties{})
			st.c.(*net.TCPConn).SetReadBuffer(4096)
			if code := st.subscribeCode(1, "$sync.cbor/snap/#"); code != 0 {
				t.Fatalf("stalled SUBACK %#x", code)
			}
			held, _, _ := b.snaps.stats()
			if held == 0 {
				t.Fatal("the staller holds nothing")
			}
			for i := range loops {
				if code := rd.subscribeCode(uint16(2+i), "$sync/snap/#"); code != tc.want {
					t.Fatalf("re-SUBSCRIBE %d: %#x, want %#x", i, code, tc.want)
				}
			}
			for i := range loops / 10 {
				// A filter the client did not hold, refused: never filed.
				if code := rd.subscribeCode(uint16(1000+i), "$sync/snap/+"); code != tc.want {
					t.Fatalf("new filter %d: %#x, want %#x", i, code, tc.want)
				}
			}
			if cl, ok := b.server.Clients.Get("resub"); !ok || cl.State.Subscriptions.Len() != 1 {
				t.Errorf("mochi's subscriptions of the client: %v, want only $sync/snap/#", cl.State.Subscriptions.GetAll())
			}
			if h, _, _ := b.snaps.stats(); h > limit || h == 0 {
				t.Errorf("after %d refusals: %d bytes held (first %d)", loops, h, held)
			}
			loadRow(b, "snap/r0001", `"changed-final33"`)
			deadline := time.Now().Add(testTimeout)
			for {
				rd.c.SetReadDeadline(deadline)
				typ, body := rd.read()
				if typ == packets.Publish && bytes.Contains(body, []byte("changed-final33")) {
					break
				}
			}
			st.c.Close()
			waitSnapshotBytes(t, b, 0)
			b.Close()
			var lines int
			for _, l := range logLines(t, logs.String()) {
				if strings.Contains(fmt.Sprint(l), "snapshot") {
					lines++
				}
				if testing.Verbose() {
					t.Log(l)
				}
			}
			t.Logf("%d log lines naming snapshots", lines)
			if lines > 12 {
				t.Errorf("%d log lines for %d refusals", lines, loops)
			}
		})
	}
}

// TestTakeoverSharedSnapshotChurn: clients that never read take their
// ids over from each other, clean and persistent, each subscribing to
// the same $sync filter (a shared snapshot) and re-subscribing, while a
// writer changes rows: once they all went the budget is back at 0 and no
// shared snapshot is left.
func TestTakeoverSharedSnapshotChurn(t *testing.T) {
	const (
		rows   = 2_000
		ids    = 4
		rounds = 8
	)
	for _, tc := range []struct {
		v     byte
		clean bool
	}{{5, true}, {5, false}, {4, true}, {4, false}} {
		t.Run(fmt.Sprintf("v%d-clean=%v", tc.v, tc.clean), func(t *testing.T) {
			b := start(t, Options{MaxSnapshotBytes: 6 << 20, WriteTimeout: 5 * testTimeout})
			value := `"` + strings.Repeat("y", 1000) + `"`
			for i := range rows {
				loadRow(b, fmt.Sprintf("tk/r%04d", i), value)
			}
			if err := b.Sync(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			wrote := make(chan struct{})
			go func() {
				defer close(wrote)
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					loadRow(b, fmt.Sprintf("tk/r%04d", i%rows), fmt.Sprintf(`"v%d"`, i))
					time.Sleep(200 * time.Microsecond)
				}
			}()
			done := make(chan []*raw, ids)
			for k := range ids {
				go func() {
					var mine []*raw
					defer func() { done <- mine }()
					for r := range rounds {
						c, err := dialSmallRcvbuf(b.TCPAddr())
						if err != nil {
							t.Error(err)
							return
						}
						rc := connectRaw(t, c, fmt.Sprintf("tk%d", k), tc.v, tc.clean, packets.Properties{})
						mine = append(mine, rc)
						if err := subscribeDiag(rc, uint16(1+r), "$sync/tk/#"); err != nil {
							t.Errorf("id %d round %d first: %v", k, r, err)
							return
						}
						if r%3 == 0 {
							if err := subscribeDiag(rc, uint16(100+r), "$sync/tk/#"); err != nil {
								t.Errorf("id %d round %d again: %v", k, r, err)
								return
							}
						}
					}
				}()
			}
			var all []*raw
			for range ids {
				all = append(all, <-done...)
			}
			close(stop)
			<-wrote
			for _, r := range all {
				r.c.Close()
			}
			b.Sync(testCtx(t))
			waitSnapshotBytes(t, b, 0)
			deadline := time.Now().Add(testTimeout)
			for {
				b.shares.mu.Lock()
				n := len(b.shares.byKey)
				b.shares.mu.Unlock()
				if n == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d shared snapshots left", n)
				}
				time.Sleep(time.Millisecond)
			}
			_, peak, refused := b.snaps.stats()
			t.Logf("peak %d KiB, %d refused", peak>>10, refused)
		})
	}
}

// subscribeDiag sends a SUBSCRIBE of filter at QoS 1 and reads until
// its SUBACK, each packet within testTimeout; the error says how far it
// got.
func subscribeDiag(r *raw, id uint16, filter string) error {
	body := binary.BigEndian.AppendUint16(nil, id)
	if r.v5 {
		body = append(body, 0)
	}
	body = binary.BigEndian.AppendUint16(body, uint16(len(filter)))
	body = append(append(body, filter...), 1)
	r.write(append(append([]byte{0x82}, varint(len(body))...), body...))
	br := &connByteReader{r.c}
	for pk := 0; ; pk++ {
		start := time.Now()
		r.c.SetReadDeadline(start.Add(testTimeout))
		h, err := br.ReadByte()
		if err != nil {
			return fmt.Errorf("packet %d header: %w", pk, err)
		}
		n, mult := 0, 1
		for {
			c, err := br.ReadByte()
			if err != nil {
				return fmt.Errorf("packet %d length: %w", pk, err)
			}
			n += int(c&0x7f) * mult
			mult *= 128
			if c&0x80 == 0 {
				break
			}
		}
		got, err := io.CopyN(io.Discard, br, int64(n))
		if err != nil {
			if f, ferr := os.Create("/tmp/final33-stacks.txt"); ferr == nil {
				pprof.Lookup("goroutine").WriteTo(f, 2)
				f.Close()
			}
			return fmt.Errorf("packet %d type %d: %d of %d bytes in %v: %w", pk, h>>4, got, n, time.Since(start), err)
		}
		if h>>4 == packets.Suback {
			return nil
		}
	}
}

// dialSmallRcvbuf dials addr with a 4 KiB receive buffer set before the
// handshake, so the window the client advertises matches it.
func dialSmallRcvbuf(addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: testTimeout, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) }); err != nil {
			return err
		}
		return serr
	}}
	return d.Dial("tcp", addr)
}

// connByteReader reads a connection without reading ahead: each SUBSCRIBE's
// reads start where the last ones stopped.
type connByteReader struct{ io.Reader }

// ReadByte reads one byte.
func (b *connByteReader) ReadByte() (byte, error) {
	var p [1]byte
	_, err := io.ReadFull(b.Reader, p[:])
	return p[0], err
}

// TestResumedSnapshotsBudget: clients with persistent $sync sessions of
// their own filters come back, after their rows changed, and never
// read: what their resumed subscriptions hold is measured against
// MaxSnapshotBytes (a resumed subscription has no SUBACK to refuse: its
// snapshot waits for room, awaitSnapshotRoom).
//
// A defect found by the final33 attack: before the fix 6 clients held
// 11.8 MiB against a 4 MiB budget, 12 held 23.7 MiB (one ~2 MB first
// message each, counted whatever the room: resizeSnapshot).
func TestResumedSnapshotsBudget(t *testing.T) {
	const (
		n     = 6
		rows  = 2_000
		limit = 4 << 20
	)
	b := start(t, Options{MaxSnapshotBytes: limit, WriteTimeout: 5 * testTimeout})
	persist := packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true}
	value := `"` + strings.Repeat("z", 1000) + `"`
	load := func(v string) {
		for i := range n {
			for j := range rows {
				loadRow(b, fmt.Sprintf("p%d/r%04d", i, j), v)
			}
		}
		if err := b.Sync(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	load(value)
	for i := range n {
		r := dialRaw(t, b, fmt.Sprint("res", i), 5, false, persist)
		if code := r.subscribeCode(1, fmt.Sprintf("$sync/p%d/#", i)); code != 0 {
			t.Fatalf("client %d: SUBACK %#x", i, code)
		}
		if !r.snapshot(testTimeout) {
			t.Fatalf("client %d: no snapshot", i)
		}
		r.c.Close()
		waitSnapshotBytes(t, b, 0)
	}
	load(`"` + strings.Repeat("w", 1000) + `"`)
	for i := range n {
		c, err := dialSmallRcvbuf(b.TCPAddr())
		if err != nil {
			t.Fatal(err)
		}
		connectRaw(t, c, fmt.Sprint("res", i), 5, false, persist) // and never read
	}
	// Until the budget is passed (the defect), or one snapshot is held
	// and the other resumes wait for room.
	deadline := time.Now().Add(testTimeout)
	for {
		_, peak, _ := b.snaps.stats()
		if waiting, _ := b.snaps.waits(); peak > limit || waiting == n-1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	held, peak, refused := b.snaps.stats()
	waiting, _ := b.snaps.waits()
	t.Logf("%d resumed: %d KiB held, %d KiB at most, %d refused, %d waiting; limit %d KiB", n, held>>10, peak>>10, refused, waiting, limit>>10)
	if peak > limit {
		t.Errorf("resumed subscriptions held %d bytes at most, over MaxSnapshotBytes %d", peak, limit)
	}
	if waiting != n-1 {
		t.Errorf("%d resumed snapshots wait for room, want %d (one is written)", waiting, n-1)
	}
}

// TestAliasAcrossTakeover: a Topic Alias a connection set on a $tree
// topic (or mote=tree) is the connection's: the connection that takes
// its client id over and sends the alias alone is disconnected with
// 0x82 (MQTT 5 §3.3.2.3.4: aliases end with the network connection), and nothing
// of it is applied.
func TestAliasAcrossTakeover(t *testing.T) {
	b := start(t, Options{})
	watch := dial3(t, b, "watch", true)
	watch.sub(t, "hy/#", 0)
	alias := func(a uint16, more ...[]byte) []byte { return hxProps(append([][]byte{hxU16(0x23, a)}, more...)...) }
	for _, c := range []struct {
		name  string
		first []byte
	}{
		{"$tree", hxPublish("$tree/hy/m", 1, 1, alias(3), `{"a":1}`)},
		{"mote=tree", hxPublish("hy/t", 1, 1, alias(3, hxUser("mote", "tree")), `{"b":2}`)},
		{"plain", hxPublish("hy/p", 1, 1, alias(3), "p")},
	} {
		t.Run(c.name, func(t *testing.T) {
			nc := hxDial(t, b.TCPAddr())
			defer nc.Close()
			r := bufio.NewReader(nc)
			if _, err := nc.Write(connectPacket(5, "hy")); err != nil {
				t.Fatal(err)
			}
			if h, _, err := readPacketBody(r); err != nil || h>>4 != 2 {
				t.Fatalf("no CONNACK: %#x %v", h, err)
			}
			nc.Write(c.first) //nolint:errcheck // its PUBACK is read next
			if h, body, err := readPacketBody(r); err != nil || h != 0x40 {
				t.Fatalf("first publish: %#x % x %v", h, body, err)
			}
			got := hxExchange(t, b.TCPAddr(), 5, "hy", hxPublish("", 1, 2, alias(3), `{"z":9}`))
			if !hxMatch(got, []string{"e0:82*", "closed"}) {
				t.Errorf("alias-only publish after the takeover: %q, want DISCONNECT 0x82", got)
			}
		})
	}
	settle(t, b)
	watch.pub(t, "hy/end", 1, false, "end")
	want := []string{"hy/m/a=1", "hy/t/b=2", "hy/p=p", "hy/end=end"}
	var got []string
	for _, m := range watch.wait(t, len(want)) {
		got = append(got, m.topic+"="+m.payload)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("bystander got %q, want %q", got, want)
	}
}
