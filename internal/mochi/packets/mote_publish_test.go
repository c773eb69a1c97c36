package packets

// mote: change 41, PUBLISH encoded straight into the buffer.

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// upstreamPublishEncode is mochi's PublishEncode as it was before change
// 41, through the generic Properties.Encode: the reference of the bytes.
func upstreamPublishEncode(pk *Packet, buf *bytes.Buffer) error {
	nb := new(bytes.Buffer)
	nb.Write(encodeString(pk.TopicName))
	if pk.FixedHeader.Qos > 0 {
		if pk.PacketID == 0 {
			return ErrProtocolViolationNoPacketID
		}
		nb.Write(encodeUint16(pk.PacketID))
	}
	if pk.ProtocolVersion == 5 {
		pb := new(bytes.Buffer)
		pk.Properties.Encode(pk.FixedHeader.Type, pk.Mods, pb, nb.Len()+len(pk.Payload))
		nb.Write(pb.Bytes())
	}
	pk.FixedHeader.Remaining = nb.Len() + len(pk.Payload)
	pk.FixedHeader.Encode(buf)
	buf.Write(nb.Bytes())
	buf.Write(pk.Payload)
	return nil
}

// checkPublishEncode fails t unless PublishEncode writes, after what the
// buffer holds, what upstreamPublishEncode writes (nothing on an error),
// with the same error and Remaining.
func checkPublishEncode(t *testing.T, pk Packet) {
	t.Helper()
	want, got := new(bytes.Buffer), bytes.NewBufferString("before|")
	wantPk, gotPk := pk, pk
	wantErr := upstreamPublishEncode(&wantPk, want)
	gotErr := gotPk.PublishEncode(got)
	if wantErr != gotErr {
		t.Fatalf("error %v, want %v", gotErr, wantErr)
	}
	if wantErr != nil {
		if got.String() != "before|" {
			t.Fatalf("wrote %d bytes on an error", got.Len()-len("before|"))
		}
		return
	}
	if g, w := got.Bytes()[len("before|"):], want.Bytes(); !bytes.Equal(g, w) {
		t.Fatalf("encoded %d bytes, want %d:\n%x…\nwant\n%x…", len(g), len(w), g[:min(len(g), 256)], w[:min(len(w), 256)])
	}
	if gotPk.FixedHeader.Remaining != wantPk.FixedHeader.Remaining {
		t.Fatalf("Remaining %d, want %d", gotPk.FixedHeader.Remaining, wantPk.FixedHeader.Remaining)
	}
}

// TestMotePublishEncodeBytes: PublishEncode writes, byte for byte, what
// upstream's wrote, for MQTT 3.1.1 and 5, with and without properties
// (every one a PUBLISH carries, and some it must not), at every QoS,
// with the Mods that drop some, and long lengths (a multi-byte remaining
// length, property length and subscription identifier).
func TestMotePublishEncodeBytes(t *testing.T) {
	all := Properties{
		PayloadFormat: 1, PayloadFormatFlag: true, MessageExpiryInterval: 3600,
		ContentType: "application/json", ResponseTopic: "re/ply", CorrelationData: []byte{1, 2, 3},
		SubscriptionIdentifier: []int{1, 0, 200, 268435455}, TopicAlias: 7, TopicAliasFlag: true,
		User: []UserProperty{{Key: "k", Val: "v"}, {Key: "", Val: ""}, {Key: "mote-seq", Val: "42"}},
		// not a PUBLISH's: never written
		SessionExpiryInterval: 9, SessionExpiryIntervalFlag: true, ReasonString: "no", ReceiveMaximum: 5,
		TopicAliasMaximum: 3, MaximumPacketSize: 100, AssignedClientID: "x", ServerKeepAlive: 3, ServerKeepAliveFlag: true,
		MaximumQos: 1, MaximumQosFlag: true, RetainAvailable: 1, RetainAvailableFlag: true,
	}
	long := strings.Repeat("p", 20000)
	cases := []struct {
		name string
		pk   Packet
	}{
		{"v3 qos0", Packet{TopicName: "a/b", Payload: []byte("hello")}},
		{"v3 qos0 retain empty", Packet{FixedHeader: FixedHeader{Retain: true}, TopicName: "a/b"}},
		{"v3 qos1 dup", Packet{FixedHeader: FixedHeader{Qos: 1, Dup: true}, PacketID: 0x1234, TopicName: "a", Payload: []byte("x")}},
		{"v3 qos2 long", Packet{FixedHeader: FixedHeader{Qos: 2}, PacketID: 9, TopicName: "t/" + long[:300], Payload: []byte(long)}},
		{"v3 props ignored", Packet{TopicName: "a", Payload: []byte("x"), Properties: all}},
		{"v5 qos0 none", Packet{ProtocolVersion: 5, TopicName: "a/b", Payload: []byte("hello")}},
		{"v5 qos0 alias only", Packet{ProtocolVersion: 5, Payload: []byte("x"),
			Properties: Properties{TopicAlias: 3, TopicAliasFlag: true}}},
		{"v5 alias without flag", Packet{ProtocolVersion: 5, TopicName: "a", Properties: Properties{TopicAlias: 3}}},
		{"v5 subids", Packet{ProtocolVersion: 5, TopicName: "a", Properties: Properties{SubscriptionIdentifier: []int{5, 128, 16384}}}},
		{"v5 all", Packet{ProtocolVersion: 5, FixedHeader: FixedHeader{Qos: 1}, PacketID: 2, TopicName: "a/b", Payload: []byte("{}"), Properties: all}},
		{"v5 all response info", Packet{ProtocolVersion: 5, TopicName: "a/b", Payload: []byte("{}"), Properties: all, Mods: Mods{AllowResponseInfo: true}}},
		{"v5 all no problem info", Packet{ProtocolVersion: 5, TopicName: "a/b", Properties: all, Mods: Mods{AllowResponseInfo: true, DisallowProblemInfo: true, MaxSize: 10}}},
		{"v5 wildcard response topic", Packet{ProtocolVersion: 5, TopicName: "a", Properties: Properties{ResponseTopic: "r/#"}, Mods: Mods{AllowResponseInfo: true}}},
		{"v5 long user property", Packet{ProtocolVersion: 5, FixedHeader: FixedHeader{Qos: 2}, PacketID: 65535, TopicName: "a",
			Payload: []byte(long), Properties: Properties{User: []UserProperty{{Key: long[:200], Val: long[:300]}}}, Mods: Mods{MaxSize: 50}}},
		{"v5 qos1 no packet id", Packet{ProtocolVersion: 5, FixedHeader: FixedHeader{Qos: 1}, TopicName: "a"}},
		{"v3 qos2 no packet id", Packet{FixedHeader: FixedHeader{Qos: 2}, TopicName: "a"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.pk.FixedHeader.Type = Publish
			checkPublishEncode(t, tc.pk)
		})
	}
}

// TestMotePublishEncodeAllocs: a PUBLISH, MQTT 3.1.1 or 5 with
// properties, is encoded into a buffer with room without allocating
// (upstream's took scratch buffers from a pool and allocated for long
// strings).
func TestMotePublishEncodeAllocs(t *testing.T) {
	pk := Packet{FixedHeader: FixedHeader{Type: Publish}, ProtocolVersion: 5, TopicName: strings.Repeat("t", 100), Payload: []byte("x"),
		Properties: Properties{ContentType: "application/json", User: []UserProperty{{Key: "mote-seq", Val: "1"}}, TopicAlias: 1, TopicAliasFlag: true}}
	buf := bytes.NewBuffer(make([]byte, 0, 4096))
	if n := testing.AllocsPerRun(100, func() {
		buf.Reset()
		if err := pk.PublishEncode(buf); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("%v allocations an encode", n)
	}
}

// BenchmarkMotePublishEncode: one PUBLISH encoded into a buffer with
// room: a plain MQTT 3.1.1 forward, MQTT 5 with no properties (a topic
// alias), MQTT 5 with a tree message's (content type, two user
// properties, a subscription identifier).
func BenchmarkMotePublishEncode(b *testing.B) {
	payload := []byte(strings.Repeat("x", 64))
	cases := []struct {
		name string
		pk   Packet
	}{
		{"v3", Packet{ProtocolVersion: 4, TopicName: "fan/12", Payload: payload}},
		{"v5-alias", Packet{ProtocolVersion: 5, TopicName: "fan/12", Payload: payload, Properties: Properties{TopicAlias: 1, TopicAliasFlag: true}}},
		{"v5-props", Packet{ProtocolVersion: 5, TopicName: "fan/12", Payload: payload, Properties: Properties{ContentType: "application/json",
			User: []UserProperty{{Key: "mote-seq", Val: "12345"}, {Key: "mote-rev", Val: "678"}}, SubscriptionIdentifier: []int{3}}}},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			tc.pk.FixedHeader.Type = Publish
			buf := bytes.NewBuffer(make([]byte, 0, 4096))
			b.ReportAllocs()
			for b.Loop() {
				buf.Reset()
				if err := tc.pk.PublishEncode(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestMoteDecodeBytesAsDecode: change 42's decodeBytes reads what Decode
// reads from a bytes.Buffer: the same properties, byte count and error,
// for well-formed properties, every malformed length (cut short, five
// bytes, past the end), a property cut short, one not a PUBLISH's and one
// given twice.
func TestMoteDecodeBytesAsDecode(t *testing.T) {
	var full bytes.Buffer
	all := Properties{PayloadFormat: 1, PayloadFormatFlag: true, MessageExpiryInterval: 60, ContentType: "c",
		ResponseTopic: "r", CorrelationData: []byte{1}, SubscriptionIdentifier: []int{3, 300}, TopicAlias: 2, TopicAliasFlag: true,
		User: []UserProperty{{Key: "k", Val: "v"}, {Key: "k", Val: "w"}}}
	all.Encode(Publish, Mods{AllowResponseInfo: true}, &full, 0)
	inputs := [][]byte{
		{}, {0}, {0, 'p', 'a', 'y'}, full.Bytes(), append(full.Bytes(), "payload"...),
		{0x80}, {0x80, 0x80, 0x80, 0x80, 0x00}, {0xff, 0xff, 0xff, 0x7f}, {5, 0x01}, {2, 0x02, 0},
		{2, 0x11, 0}, {4, 0x01, 1, 0x01, 1}, {3, 0x23, 0, 1}, {2, 0x0B, 0}, {1, 0xff}, {3, 0x26, 0, 1},
	}
	for _, in := range inputs {
		var want, got Properties
		wn, werr := want.Decode(Publish, bytes.NewBuffer(append([]byte(nil), in...)))
		gn, gerr := got.decodeBytes(Publish, in, Mods{})
		if wn != gn || (werr == nil) != (gerr == nil) || (werr != nil && werr.Error() != gerr.Error()) {
			t.Errorf("%x: decodeBytes %d, %v; Decode %d, %v", in, gn, gerr, wn, werr)
		}
		if werr == nil && !reflect.DeepEqual(want, got) {
			t.Errorf("%x: decodeBytes %+v; Decode %+v", in, got, want)
		}
	}
}

// TestMotePublishDecodeAllocs: an MQTT 5 PUBLISH without properties is
// decoded without allocating (a bytes.Buffer for its properties was one
// allocation a packet before change 42).
func TestMotePublishDecodeAllocs(t *testing.T) {
	body := []byte{0, 3, 'a', '/', 'b', 0, 'x', 'y'}
	pk := Packet{FixedHeader: FixedHeader{Type: Publish}, ProtocolVersion: 5}
	if n := testing.AllocsPerRun(100, func() {
		if err := pk.PublishDecode(body); err != nil || pk.TopicName != "a/b" || string(pk.Payload) != "xy" {
			t.Fatalf("%v %+v", err, pk)
		}
	}); n != 0 {
		t.Fatalf("%v allocations a decode", n)
	}
}

// FuzzMoteHasWildcard: change 43's hasWildcard is strings.ContainsAny(s,
// "+#"), invalid UTF-8 included.
func FuzzMoteHasWildcard(f *testing.F) {
	for _, s := range []string{"", "a/b", "a/+", "#", "\xc3+", "\xff#", "日本/x", "r/#/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if hasWildcard(s) != strings.ContainsAny(s, "+#") {
			t.Fatalf("hasWildcard(%q) = %v", s, hasWildcard(s))
		}
	})
}

// FuzzMotePublishEncode: change 41's PublishEncode writes, byte for byte,
// what upstream's algorithm (upstreamPublishEncode) writes, with the same
// error and Remaining, for any PUBLISH: MQTT 3.1.1 and 5, every QoS, DUP
// and RETAIN, a packet id or none, an empty topic (a topic alias), every
// PUBLISH property (strings and data up to 64 KiB, subscription
// identifiers up to and past 268435455), properties a PUBLISH does not
// carry, the Mods, and payloads up to past 2 MiB (a four-byte remaining
// length).
func FuzzMotePublishEncode(f *testing.F) {
	f.Add(byte(0), uint16(0), "a/b", uint32(5), byte(0), uint32(0), "", "", []byte(nil), 0, uint16(0), "", "", byte(0))
	f.Add(byte(0xff), uint16(1), "", uint32(2<<20+7), byte(1), uint32(3600), "application/json", "re/ply", []byte{1, 2}, 268435455, uint16(9), "k", "v", byte(7))
	f.Add(byte(0x36), uint16(65535), "t/日本", uint32(0), byte(0), uint32(1), "c", "r/#", []byte{0}, 128, uint16(1), "", "", byte(2))
	f.Add(byte(0x15), uint16(0), "x", uint32(127), byte(2), uint32(0), strings.Repeat("c", 70000), "", []byte(nil), -1, uint16(0), strings.Repeat("k", 65536), "", byte(5))
	f.Fuzz(func(t *testing.T, flags byte, id uint16, topic string, payloadLen uint32, pf byte, expiry uint32,
		contentType, responseTopic string, corr []byte, subID int, alias uint16, key, val string, mods byte) {
		pk := Packet{
			FixedHeader: FixedHeader{Type: Publish, Dup: flags&1 != 0, Retain: flags&2 != 0, Qos: (flags >> 2) % 3},
			PacketID:    id, TopicName: topic, Payload: make([]byte, payloadLen%(3<<20)),
			Properties: Properties{PayloadFormat: pf, PayloadFormatFlag: flags&0x10 != 0, MessageExpiryInterval: expiry,
				ContentType: contentType, ResponseTopic: responseTopic, CorrelationData: corr,
				TopicAlias: alias, TopicAliasFlag: flags&0x20 != 0,
				ReasonString: key, SessionExpiryInterval: expiry, SessionExpiryIntervalFlag: true, ReceiveMaximum: alias},
			Mods: Mods{AllowResponseInfo: mods&1 != 0, DisallowProblemInfo: mods&2 != 0, MaxSize: uint32(mods) * 3},
		}
		for i := range pk.Payload {
			pk.Payload[i] = byte(i)
		}
		if flags&0x40 != 0 {
			pk.ProtocolVersion = 5
		} else if flags&0x80 != 0 {
			pk.ProtocolVersion = 4
		}
		if subID != 0 {
			pk.Properties.SubscriptionIdentifier = []int{subID, subID / 2, subID % 300}
		}
		if key != "" || val != "" || mods&4 != 0 {
			pk.Properties.User = []UserProperty{{Key: key, Val: val}, {Key: val, Val: key}}
		}
		checkPublishEncode(t, pk)
	})
}
