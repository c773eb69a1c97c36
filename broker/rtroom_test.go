package broker

import (
	"bufio"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestEmptySnapshotOverLimit: an empty snapshot ("{}") whose packet is
// over the client's Maximum Packet Size (a long filter) cannot be split:
// it is refused (counted, reported where the report fits), as a
// non-empty one is; zero parts would send nothing and say nothing, and
// the client would wait for its snapshot for ever (SPEC §2: sent even
// when nothing matches).
func TestEmptySnapshotOverLimit(t *testing.T) {
	b := start(t, Options{})
	filter := "$sync/" + strings.Repeat("l", 120) + "/+" // nothing matches
	c := dialRoom(t, b, "c", 110)                        // endFilter's "{}" fits; filter's does not
	refused := b.stats.Refused.Load()
	parts, _ := c.readSnapshot(t, filter, 0)
	if parts != nil {
		t.Fatalf("parts %q over a 110-byte limit", parts)
	}
	if got := b.stats.Refused.Load() - refused; got != 1 {
		t.Errorf("%d refusals, want 1 (the empty snapshot does not fit)", got)
	}
}

// TestSnapshotFitsWithKnownAlias: SPEC §2 splits only a snapshot larger
// than the client's Maximum Packet Size. Once a client that allows Topic
// Aliases knows the alias of a subscription's topic (its first snapshot
// set it), a second snapshot on that topic (it subscribes again, as a
// client that saw a gap does) is sent with the alias and no topic name:
// a client whose limit is that packet's size gets it whole, not in parts.
func TestSnapshotFitsWithKnownAlias(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	for _, k := range []string{"a", "b", "c", "d"} {
		w.pub(t, "ka/"+strings.Repeat("l", 40)+"/"+k, `"`+strings.Repeat(k, 30)+`"`)
	}
	settle(t, b)
	filter := "$sync/ka/" + strings.Repeat("l", 40) + "/+"

	ref := dialRoomWith(t, b, "ref", 0, 10)
	parts, _ := ref.readSnapshot(t, filter, 7)
	if len(parts) != 1 {
		t.Fatalf("ref: %d parts", len(parts))
	}
	ref.subscribe(t, filter, 7) // again: the topic's alias is known
	pk, size := ref.next(t)
	if propOf(pk, "mote-seq") != "0" || propOf(pk, "mote-part") != "" || pk.Properties.TopicAlias == 0 {
		t.Fatalf("ref: %s seq %q part %q alias %d, want the whole snapshot again by its alias", pk.TopicName, propOf(pk, "mote-seq"), propOf(pk, "mote-part"), pk.Properties.TopicAlias)
	}
	t.Logf("second snapshot, topic by alias: %d bytes", size)

	c := dialRoomWith(t, b, "c", size, 10)
	first, _ := c.readSnapshot(t, filter, 7) // the topic and its alias: over the limit, in parts
	if len(first) < 2 {
		t.Fatalf("first snapshot at limit %d: %d parts, want parts (it carries the %d-byte topic)", size, len(first), len(filter))
	}
	if again, _ := c.readSnapshot(t, filter, 7); len(again) != 1 {
		t.Errorf("second snapshot at limit %d (its size by alias): %d parts, want 1", size, len(again))
	}
}

// dialRoomSession connects MQTT 5 client id with a persistent session (Clean
// Start 0, Session Expiry 300 s), Maximum Packet Size limit and, if
// noProblemInfo, Request Problem Information 0; it returns the
// connection after the CONNACK.
func dialRoomSession(t *testing.T, b *Broker, id string, limit int, noProblemInfo bool) (*roomClient, bool) {
	t.Helper()
	nc := hxDial(t, b.TCPAddr())
	cp := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: false, Keepalive: 30, ClientIdentifier: id},
		Properties:      packets.Properties{MaximumPacketSize: uint32(limit), SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true},
	}
	if noProblemInfo {
		cp.Properties.RequestProblemInfo, cp.Properties.RequestProblemInfoFlag = 0, true
	}
	if _, err := nc.Write(ownerPacket(t, cp)); err != nil {
		t.Fatal(err)
	}
	c := &roomClient{id: id, limit: limit, nc: nc, r: bufio.NewReader(nc), alias: map[uint16]string{}}
	h, body, err := readPacketBody(c.r)
	if err != nil || h != 0x20 || len(body) < 2 || body[1] != 0 {
		t.Fatalf("%s: CONNACK %#x %x %v", id, h, body, err)
	}
	return c, body[0]&1 == 1
}

// TestSnapshotResendAfterReconnect: a QoS 1 snapshot in parts that the
// client did not acknowledge is resent when it resumes its session
// (DUP set, the same tree properties: mote-seq, mote-rev, mote-part), also
// to a client that asked for no problem information (Request Problem
// Information 0 forbids Reason Strings and User Properties on packets
// other than PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29], not on a
// PUBLISH); one that resumes with a smaller Maximum Packet Size gets no
// packet over it (the parts over it are dropped [MQTT-3.1.2-25]).
func TestSnapshotResendAfterReconnect(t *testing.T) {
	const filter = "$sync/rs/+"
	for _, tc := range []struct {
		name          string
		again         int // the limit it resumes with
		noProblemInfo bool
		takeover      bool // it resumes while its first connection is open
	}{
		{"same limit", 200, false, false},
		{"no problem information", 200, true, false},
		{"smaller limit", 120, false, false},
		{"takeover", 200, false, true},
		{"takeover, smaller limit", 120, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			w := dialTree5(t, b, "w")
			for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
				w.pub(t, "rs/"+k, `"`+strings.Repeat(k, 40)+`"`)
			}
			settle(t, b)
			id := "rs"
			c, _ := dialRoomSession(t, b, id, 200, false)
			c.subscribe(t, filter, 3)
			// The parts, not acknowledged.
			var sent []packets.Packet
			for done := false; !done; {
				h, body, err := readPacketBody(c.r)
				if err != nil {
					t.Fatal(err)
				}
				if h>>4 != packets.Publish {
					continue
				}
				pk := packets.Packet{ProtocolVersion: 5}
				pk.FixedHeader.Decode(h)
				pk.FixedHeader.Remaining = len(body)
				if err := pk.PublishDecode(body); err != nil {
					t.Fatal(err)
				}
				sent = append(sent, pk)
				part := propOf(pk, "mote-part")
				if part == "" {
					t.Fatalf("a whole snapshot at limit 200: %d bytes of payload", len(pk.Payload))
				}
				i, n, _ := strings.Cut(part, "/")
				done = i == n
			}
			if tc.takeover {
				defer c.nc.Close() // still connected: the next CONNECT takes it over
			} else {
				c.nc.Close()
				waitConnGone(t, b, id) // a resumption, not a takeover
			}

			r, present := dialRoomSession(t, b, id, tc.again, tc.noProblemInfo)
			if !present {
				t.Fatal("the session was not resumed")
			}
			r.subscribe(t, endFilter, 0)
			got, again := 0, 0 // resent; a new snapshot of the resumed subscription
			for {
				pk, size := r.next(t) // fails on a packet over the limit
				if pk.TopicName == endFilter {
					break
				}
				if pk.TopicName != filter {
					t.Fatalf("%s %q", pk.TopicName, pk.Payload)
				}
				if pk.FixedHeader.Dup {
					got++
				} else {
					again++
				}
				if propOf(pk, "mote-seq") != "0" || propOf(pk, "mote-part") == "" || propOf(pk, "mote-rev") == "" {
					t.Errorf("a resent part (%d bytes) without its tree properties: %+v", size, pk.Properties.User)
				}
			}
			if tc.again >= 200 && got != len(sent) {
				t.Errorf("%d of %d parts resent (DUP)", got, len(sent))
			}
			t.Logf("%d parts sent, %d resent (DUP) at limit %d, then %d of a new snapshot", len(sent), got, tc.again, again)
			r.nc.Close()
		})
	}
}
