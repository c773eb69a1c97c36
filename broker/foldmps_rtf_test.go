package broker

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestFoldsFitMaxPacketSize (h-rtf): stalled MQTT 5 subscribers (a 4 KiB
// socket buffer, not read while the publishers write) with a Maximum
// Packet Size of 700 bytes, of each codec, under '+' and '#': the deltas
// of 600 tree publishes of small rows fold while they wait (deltaBound
// decides how far; one publish a batch, each delta alone under the
// limit, the tree far over it), yet no packet the client reads is over 700 bytes and
// no delta is skipped as too large (each alone fits: a fold past the
// limit would be skipped whole); each copy ends as the store.
func TestFoldsFitMaxPacketSize(t *testing.T) {
	const limit = 700
	b := start(t, Options{})
	filters := []string{"$sync/mp/+/+", "$sync.cbor/mp/#", "$sync.msgpack/mp/+/+", "$sync/mp/#"}
	type sub struct {
		filter string
		nc     interface{ Close() error }
		r      *bufio.Reader
		doc    map[string]any
	}
	var subs []*sub
	for i, f := range filters {
		nc := dialSmallRcvBuf(t, b)
		t.Cleanup(func() { nc.Close() })
		pk := packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Connect},
			ProtocolVersion: 5,
			Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 60, ClientIdentifier: fmt.Sprintf("mps%d", i)},
			Properties:      packets.Properties{MaximumPacketSize: limit},
		}
		var buf bytes.Buffer
		if err := pk.ConnectEncode(&buf); err != nil {
			t.Fatal(err)
		}
		body := binary.BigEndian.AppendUint16(nil, 1)
		body = append(body, 0) // no properties
		body = binary.BigEndian.AppendUint16(body, uint16(len(f)))
		body = append(append(body, f...), 0)
		buf.Write(append(append([]byte{0x82}, varint(len(body))...), body...))
		if _, err := nc.Write(buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		s := &sub{filter: f, nc: nc, r: bufio.NewReader(nc), doc: map[string]any{}}
		for _, want := range []byte{0x20, 0x90} { // CONNACK, SUBACK
			if h, _, err := readPacketBody(s.r); err != nil || h != want {
				t.Fatalf("%s: %#x %v, want %#x", f, h, err, want)
			}
		}
		subs = append(subs, s)
	}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))
	model := map[string]any{}
	for i := range 600 {
		rows := map[string]any{}
		for range 1 + r.IntN(4) {
			k := fmt.Sprintf("k%d", r.IntN(30))
			if r.IntN(8) == 0 {
				rows[k] = nil
			} else {
				rows[k] = fmt.Sprintf("%d:%s", i, strings.Repeat("v", r.IntN(60)))
			}
		}
		p := fmt.Sprintf("p%d", r.IntN(5))
		payload, err := json.Marshal(rows)
		if err != nil {
			t.Fatal(err)
		}
		// One publish a batch (applied before the next is sent): each
		// delta alone fits the limit, though the tree is far larger.
		if err := b.Publish(testCtx(t), systemPrincipal, Message{Topic: "$tree/mp/" + p, Payload: payload, Retain: true}); err != nil {
			t.Fatal(err)
		}
		own, _ := model[p].(map[string]any)
		if own == nil {
			own = map[string]any{}
			model[p] = own
		}
		for k, v := range rows {
			if v == nil {
				delete(own, k)
			} else {
				own[k] = v
			}
		}
		if len(own) == 0 {
			delete(model, p)
		}
	}
	deadline := time.Now().Add(testTimeout)
	for !reflect.DeepEqual(treeNowAt(t, b, "mp/+/+"), model) {
		if time.Now().After(deadline) {
			t.Fatalf("the store holds %v, the model %v", treeNowAt(t, b, "mp/+/+"), model)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, s := range subs {
		s.nc.(interface{ SetReadDeadline(time.Time) error }).SetReadDeadline(deadline) //nolint:errcheck // the read fails
		n := 0
		for !reflect.DeepEqual(s.doc, model) {
			h, body, err := readPacketBody(s.r)
			if err != nil {
				t.Fatalf("%s after %d messages (dropped %d, too large %d, folded %d): %v; copy %v, want %v", s.filter, n, b.stats.Dropped.Load(), b.stats.TooLarge.Load(), b.stats.Folded.Load(), err, s.doc, model)
			}
			if size := 1 + len(varint(len(body))) + len(body); size > limit {
				t.Fatalf("%s: a %d-byte packet, over the client's %d", s.filter, size, limit)
			}
			if n := b.stats.TooLarge.Load(); n != 0 {
				t.Fatalf("%s: %d deltas skipped as too large: each alone fits, a fold past the limit did not", s.filter, n)
			}
			if h>>4 != packets.Publish {
				continue
			}
			n++
			tl := int(binary.BigEndian.Uint16(body))
			body = body[2+tl:]
			if h&6 != 0 {
				body = body[2:]
			}
			plen, used := binary.Uvarint(body)
			body = body[used+int(plen):]
			for p, v := range decodeTree(t, s.filter, body) {
				own, _ := s.doc[p].(map[string]any)
				if own == nil {
					own = map[string]any{}
					s.doc[p] = own
				}
				for k, v := range v.(map[string]any) {
					if v == nil {
						delete(own, k)
					} else {
						own[k] = v
					}
				}
				if len(own) == 0 {
					delete(s.doc, p)
				}
			}
		}
		t.Logf("%s: %d messages", s.filter, n)
	}
	if n := b.stats.TooLarge.Load(); n != 0 {
		t.Fatalf("%d deltas skipped as too large: each alone fits, a fold past the limit did not", n)
	}
	t.Logf("folded %d", b.stats.Folded.Load())
}

// treeNowAt is the store's tree under filter (two levels) now.
func treeNowAt(t *testing.T, b *Broker, filter string) map[string]any {
	t.Helper()
	raw, _, err := b.Tree(testCtx(t), systemPrincipal, filter, 0)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}
