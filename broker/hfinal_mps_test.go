package broker

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestSyncMaxPacketSweep: MQTT 5 and 3.1.1 clients with every Maximum
// Packet Size from 2 to 720 (HF_MPS=lo-hi narrows it) subscribe to
// $sync of a tree of 40 rows (one of them 120 bytes) with the longest
// subscription identifier, one after the other.
// No packet may exceed the client's limit; a snapshot that comes
// (whole or in parts) must merge to the tree; a marker published after
// the subscription must arrive after it (no hang, the connection kept);
// from minSplit on, the snapshot must come; it comes in one message
// exactly when that packet fits the limit (about 700 bytes here). Below
// minSplit a snapshot that comes lacks the 120-byte row (left out, it
// fits no part) and holds only rows of the tree.
func TestSyncMaxPacketSweep(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	want := map[string]any{}
	for i := range 40 {
		v := strconv.Quote(strings.Repeat("v", i%7))
		if i == 13 {
			v = strconv.Quote(strings.Repeat("B", 120))
		}
		w.pub(t, fmt.Sprintf("mps/k%02d", i), v)
		var x any
		json.Unmarshal([]byte(v), &x)
		want[fmt.Sprintf("k%02d", i)] = x
	}
	settle(t, b)
	for _, v := range []byte{5, 4} {
		for mps := 2; mps <= 720; mps++ {
			if lo, hi, ok := hfRange(); ok && (mps < lo || mps > hi) || v == 4 && mps%50 != 0 {
				continue // MQTT 3.1.1 has no Maximum Packet Size: a few rounds
			}
			id := fmt.Sprintf("m%d-%d", v, mps)
			got, report, parts, rev := syncAt(t, b, w, v, id, mps)
			if v == 4 || mps >= minSplit {
				want["zz"] = float64(mps)
			}
			if got != nil && v == 5 && mps < minSplit {
				// The 120-byte row, and below some limit more, fit no
				// part: they are left out, the rest comes.
				if _, ok := got["k13"]; ok {
					t.Fatalf("v%d mps %d: snapshot %v with k13, which fits no part", v, mps, got)
				}
				for k, x := range got {
					if y, ok := want[k]; !ok || x != y {
						t.Fatalf("v%d mps %d: snapshot %v, want part of %v", v, mps, got, want)
					}
				}
			} else if got != nil && !jsonEqualMaps(got, want) {
				t.Fatalf("v%d mps %d: snapshot %v, want %v", v, mps, got, want)
			}
			if got == nil && v == 5 && mps >= minSplit {
				t.Errorf("v%d mps %d: no snapshot (report %q)", v, mps, report)
			}
			// SPEC §2: only a snapshot over the limit is split. The
			// whole one's packet, encoded from what it carries (the
			// JSON's length does not depend on the order of its keys).
			if got != nil && v == 5 && mps >= minSplit {
				whole, _ := json.Marshal(got)
				size := treePacketAt(t, "$sync/mps/+", 0, rev, "", 268435455, whole)
				if (size <= mps) != (parts == 1) {
					t.Errorf("v%d mps %d: %d parts; the whole snapshot is a %d-byte packet", v, mps, parts, size)
				}
			}
			t.Logf("v%d mps %d: snapshot %v (%d parts) report %v", v, mps, got != nil, parts, report != "")
		}
	}
}

// minSplit is the smallest Maximum Packet Size for which the sweep's
// whole snapshot comes in parts: below it the value of 120 bytes cannot
// fit a part (130 bytes of payload, and 107 of header, properties and a
// mote-part counted at "999/999") and is left out, and the delta of the
// barrier does not fit either.
const minSplit = 237

func jsonEqualMaps(a, b map[string]any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// syncAt connects a client of MQTT version v with Maximum Packet Size
// mps (v5; v3 has none: the broker's own is 300 for it via the option),
// subscribes to $sync/mps/+ and its error topic, then has w publish a
// marker to a topic it subscribed to; it reads until the marker and
// returns the snapshot merged (nil if none completed), any report, the
// number of messages the snapshot came in and its mote-rev.
func syncAt(t *testing.T, b *Broker, w *tree5, v byte, id string, mps int) (doc map[string]any, report string, parts int, rev uint64) {
	t.Helper()
	nc, err := net.Dial("tcp", b.TCPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		nc.Close()
		waitTreeSubs(t, b, 0)
	}()
	nc.SetDeadline(time.Now().Add(testTimeout))
	cp := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: v,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id},
	}
	if v == 4 {
		cp.Connect.ProtocolName = []byte("MQTT")
	} else {
		cp.Properties.MaximumPacketSize = uint32(mps)
	}
	if _, err := nc.Write(ownerPacket(t, cp)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(nc)
	h, body, err := readPacketBody(r)
	if err != nil { // a CONNACK over the client's limit is not sent
		t.Logf("%s: no CONNACK: %v", id, err)
		return nil, "no connack", 0, 0
	}
	if h != 0x20 || body[1] != 0 {
		t.Fatalf("%s: CONNACK %#x %x", id, h, body)
	}
	sp := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: v,
		PacketID:        1,
		Filters: packets.Subscriptions{
			{Filter: ErrorTopic + id, Qos: 1},
			{Filter: "$sync/mps/+", Qos: 1},
		},
	}
	if v == 5 {
		sp.Properties.SubscriptionIdentifier = []int{268435455}
	}
	if _, err := nc.Write(ownerPacket(t, sp)); err != nil {
		t.Fatal(err)
	}
	// The marker's subscription has no identifier: its PUBLISH is 6
	// bytes.
	mp := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		ProtocolVersion: v,
		PacketID:        2,
		Filters:         packets.Subscriptions{{Filter: "z", Qos: 0}},
	}
	if _, err := nc.Write(ownerPacket(t, mp)); err != nil {
		t.Fatal(err)
	}
	// Once both SUBACKs are in, the snapshot is on its way (publishes
	// before them are read too) and the barrier is sent: a delta of the
	// same subscription, which comes after its snapshot (seq 1); where
	// the delta cannot fit (a small v5 limit), a plain marker instead,
	// which may overtake the snapshot.
	deltaFits := v == 4 || mps >= minSplit
	acks := 0
	complete := false
	for {
		h, body, err := readPacketBody(r)
		if err != nil {
			t.Fatalf("%s: before the barrier: %v (acks %d, parts %d, report %q)", id, err, acks, parts, report)
		}
		checkSize(t, id, mps, v, body)
		if _, _, ok := hfRange(); ok {
			t.Logf("%s: %#x %d bytes %.80q", id, h, len(body), body)
		}
		if h>>4 == packets.Suback {
			if acks++; acks == 2 {
				waitTreeSubs(t, b, 1) // the snapshot is queued once the loop has the subscription
				if deltaFits {
					w.pub(t, "mps/zz", strconv.Itoa(mps))
				} else if _, err := w.Publish(testCtx(t), &paho5.Publish{Topic: "z", QoS: 1}); err != nil {
					t.Fatal(err)
				}
			}
		}
		if h>>4 != packets.Publish {
			continue
		}
		pk := packets.Packet{ProtocolVersion: v}
		if err := pk.FixedHeader.Decode(h); err != nil {
			t.Fatal(err)
		}
		pk.FixedHeader.Remaining = len(body)
		if err := pk.PublishDecode(body); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if pk.FixedHeader.Qos > 0 {
			nc.Write([]byte{0x40, 2, byte(pk.PacketID >> 8), byte(pk.PacketID)})
		}
		var part, seq, prev string
		for _, u := range pk.Properties.User {
			switch u.Key {
			case "mote-part":
				part = u.Val
			case "mote-seq":
				seq = u.Val
			case "mote-rev":
				prev = u.Val
			}
		}
		switch {
		case pk.TopicName == "z" && !deltaFits: // may overtake the snapshot: no barrier
			if !complete {
				doc = nil
			}
			return doc, report, parts, rev
		case pk.TopicName == ErrorTopic+id:
			report = string(pk.Payload)
		case pk.TopicName == "$sync/mps/+" && (seq == "0" || v == 4 && doc == nil):
			if complete {
				t.Fatalf("%s: a second snapshot", id)
			}
			parts++
			rev, _ = strconv.ParseUint(prev, 10, 64)
			if doc == nil {
				doc = map[string]any{}
			}
			merge1(t, doc, pk.Payload)
			if part != "" {
				i, n, _ := strings.Cut(part, "/")
				if i != strconv.Itoa(parts) {
					t.Fatalf("%s: part %s is the %dth", id, part, parts)
				}
				complete = i == n
			} else {
				complete = true
			}
			if complete && deltaFits && doc["zz"] == float64(mps) {
				return doc, report, parts, rev // taken after the barrier's publish: no delta follows
			}
		case pk.TopicName == "$sync/mps/+": // the delta
			if parts > 0 && !complete {
				t.Fatalf("%s: %d parts but not all of them", id, parts)
			}
			if doc != nil {
				merge1(t, doc, pk.Payload)
			}
			return doc, report, parts, rev
		default:
			t.Fatalf("%s: unexpected %s", id, pk.TopicName)
		}
	}
}

func checkSize(t *testing.T, id string, mps int, v byte, body []byte) {
	t.Helper()
	if size := 1 + len(varint(len(body))) + len(body); v == 5 && size > mps {
		t.Fatalf("%s: a %d-byte packet, over the client's %d", id, size, mps)
	}
}

// hfRange is HF_MPS, "lo-hi" or "n": the sweep's range when debugging.
func hfRange() (int, int, bool) {
	s := os.Getenv("HF_MPS")
	if s == "" {
		return 0, 0, false
	}
	a, z, ok := strings.Cut(s, "-")
	if !ok {
		z = a
	}
	lo, _ := strconv.Atoi(a)
	hi, _ := strconv.Atoi(z)
	return lo, hi, true
}
