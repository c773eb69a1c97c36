package broker

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"

	mqtt "github.com/mote-mqtt/mote/internal/mochi"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestIDSpacesBeginAllocates: idSpaces.begin, run for every client packet
// with an id, allocates only when it displaces one of the broker's
// deliveries. It moved the in-flight packet it reads to the heap for
// every QoS 1 and 2 publish (900 bytes each; h-storm3).
func TestIDSpacesBeginAllocates(t *testing.T) {
	cl := &mqtt.Client{}
	cl.State.Inflight = mqtt.NewInflights()
	var s idSpaces
	pk := &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7}
	for _, c := range []struct {
		name      string
		inflight  *packets.Packet // in mochi's map under id 7 before begin
		maxAllocs float64
	}{
		{"nothing in flight", nil, 0},
		{"the client's own ack in flight", &packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: 7}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.inflight != nil {
				cl.State.Inflight.Set(*c.inflight)
				defer cl.State.Inflight.Delete(7)
			}
			got := testing.AllocsPerRun(100, func() {
				s.begin(cl, pk)
				s.end(cl, pk)
			})
			if got > c.maxAllocs {
				t.Errorf("%.1f allocations a publish, want at most %.0f", got, c.maxAllocs)
			}
		})
	}
	// A delivery under the same id is displaced and put back: still works.
	del := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 7, TopicName: "x"}
	cl.State.Inflight.Set(del)
	s.begin(cl, pk)
	if _, ok := cl.State.Inflight.Get(7); ok || s.displaced == nil || s.displaced.TopicName != "x" {
		t.Fatalf("the delivery under id 7 was not displaced: %+v", s.displaced)
	}
	s.end(cl, pk)
	if got, ok := cl.State.Inflight.Get(7); !ok || got.TopicName != "x" {
		t.Fatalf("the delivery under id 7 was not put back: %+v %v", got, ok)
	}
}

// TestStormRowsRecycled: tree publishes from several connections while a
// plain subscriber takes every row live, with and without a $sync
// subscriber (whose deltas keep the batch's rows, so they are not
// recycled then). The row slices go back to the Parser once a batch is
// done with them (Parser.Recycle, h-storm3); every row must reach the
// plain subscriber and the store with its own device's value: a slice
// reused too early would show another publish's rows (and -race a race).
func TestStormRowsRecycled(t *testing.T) {
	const devices, rows, conns = 300, 50, 6
	for _, c := range []struct {
		name string
		sync bool
	}{{"plain subscriber", false}, {"plain and $sync subscribers", true}} {
		t.Run(c.name, func(t *testing.T) {
			br := start(t, Options{})
			ctx := testCtx(t)
			if c.sync {
				s, err := rawSubscribe(ctx, br.TCPAddr(), "dash", "$sync/boot/+/r07")
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				go io.Copy(io.Discard, s) //nolint:errcheck // its snapshot and deltas, read until it closes
			}
			sub, err := rawSubscribe(ctx, br.TCPAddr(), "live", "boot/#")
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			got := make(chan error, 1)
			go func() { got <- checkStormRows(sub, devices*rows) }()
			var wg sync.WaitGroup
			errs := make(chan error, conns)
			for w := range conns {
				wg.Go(func() {
					if err := stormPublisher(ctx, br.TCPAddr(), w, conns, devices, rows, true); err != nil {
						errs <- err
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			select {
			case err := <-got:
				if err != nil {
					t.Fatal(err)
				}
			case <-ctx.Done():
				t.Fatal("the live subscriber did not get every row in time")
			}
			if err := br.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			// The store is the loop's (Get builds its index as it reads):
			// read it there.
			var bad string
			if !br.onLoop(ctx.Done(), func() {
				for d := range devices {
					for i := range rows {
						topic := fmt.Sprintf("boot/d%05d/r%02d", d, i)
						if v, ok := br.tree.Store().Get(topic); !ok || v.Data != strconv.Itoa(d+i) {
							bad = fmt.Sprintf("%s = %q %v, want %d", topic, v.Data, ok, d+i)
							return
						}
					}
				}
			}) {
				t.Fatal("the loop did not run the check")
			}
			if bad != "" {
				t.Fatal(bad)
			}
		})
	}
}

// rawSubscribe connects (MQTT 3.1.1) and subscribes to filter at QoS 0,
// returning once the SUBACK is read.
func rawSubscribe(ctx context.Context, addr, id, filter string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl) //nolint:errcheck // a failing deadline fails the reads
	}
	if _, err := c.Write(connectSubscribe(id, filter)); err != nil {
		c.Close()
		return nil, err
	}
	var hdr [4]byte
	for _, want := range []byte{0x20, 0x90} { // CONNACK, SUBACK
		if _, err := io.ReadFull(c, hdr[:2]); err != nil || hdr[0] != want {
			c.Close()
			return nil, fmt.Errorf("want packet %#x, got %#x: %v", want, hdr[0], err)
		}
		if _, err := io.ReadFull(c, hdr[:hdr[1]]); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// checkStormRows reads n QoS 0 publishes of boot/dNNNNN/rNN and checks
// that each carries its device's value, dev+row (deviceTree's).
func checkStormRows(c net.Conn, n int) error {
	r := bufio.NewReader(c)
	for got := 0; got < n; {
		h, err := r.ReadByte()
		if err != nil {
			return fmt.Errorf("after %d rows: %w", got, err)
		}
		size, err := binary.ReadUvarint(r)
		if err != nil {
			return err
		}
		body := make([]byte, size)
		if _, err := io.ReadFull(r, body); err != nil {
			return err
		}
		if h>>4 != 3 {
			continue
		}
		got++
		tl := int(body[0])<<8 | int(body[1])
		topic, payload := string(body[2:2+tl]), string(body[2+tl:])
		var dev, row int
		if _, err := fmt.Sscanf(topic, "boot/d%05d/r%02d", &dev, &row); err != nil {
			return fmt.Errorf("row %d: topic %q: %w", got, topic, err)
		}
		if payload != strconv.Itoa(dev+row) {
			return fmt.Errorf("row %d: %s = %q, want %d", got, topic, payload, dev+row)
		}
	}
	return nil
}
