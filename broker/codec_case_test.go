package broker

import (
	"testing"

	paho5 "github.com/eclipse/paho.golang/paho"
)

// TestCodecNamesCase: SPEC §2, §4 and §11 spell the codec options and
// mote-codec values in lower case (json, cbor, msgpack). MQTT topics are
// case-sensitive, so another case is not the option: a tree SUBSCRIBE or
// PUBLISH naming one is refused with the MQTT 5 reason code (SUBACK
// 0x8F, PUBACK 0x90), never taken as a plain subscription or publish,
// while the lower-case forms work.
func TestCodecNamesCase(t *testing.T) {
	b := start(t, Options{})
	c := dialTree5(t, b, "c")
	for _, s := range []struct {
		filter string
		props  []string
		want   byte
	}{
		{"$sync.CBOR/cc/+", nil, 0x8F},
		{"$tree.MsgPack/cc/+", nil, 0x8F},
		{"$sync.Json/cc/+", nil, 0x8F},
		{"cc/+", []string{"mote", "sync", "mote-codec", "CBOR"}, 0x8F},
		{"cc/+", []string{"mote", "SYNC"}, 0x8F},
		{"$sync.cbor/cc/+", nil, 1}, // granted QoS 1
		{"cc/+", []string{"mote", "tree", "mote-codec", "msgpack"}, 1},
	} {
		if got := c.subscribe(t, s.filter, s.props...); got != s.want {
			t.Errorf("SUBSCRIBE %s %q: %#x, want %#x", s.filter, s.props, got, s.want)
		}
	}
	w := dialTree5(t, b, "w")
	for _, p := range []struct {
		topic string
		props []string
		want  byte
	}{
		{"$tree.CBOR/cc/x", nil, 0x90},
		{"$tree.JSON/cc/x", nil, 0x90},
		{"cc/x", []string{"mote", "tree", "mote-codec", "Json"}, 0x90},
		{"$tree.json/cc/x", nil, 0},
		{"cc/y", []string{"mote", "tree", "mote-codec", "json"}, 0},
	} {
		pp := &paho5.Publish{Topic: p.topic, QoS: 1, Retain: true, Payload: []byte(`1`), Properties: &paho5.PublishProperties{}}
		for k := 0; k+1 < len(p.props); k += 2 {
			pp.Properties.User = append(pp.Properties.User, paho5.UserProperty{Key: p.props[k], Value: p.props[k+1]})
		}
		r, _ := w.Publish(testCtx(t), pp)
		if r == nil || r.ReasonCode != p.want {
			t.Errorf("PUBLISH %s %q: %+v, want %#x", p.topic, p.props, r, p.want)
		}
	}
}
