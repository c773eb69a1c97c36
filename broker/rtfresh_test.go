package broker

import (
	"strings"
	"testing"

	paho5 "github.com/eclipse/paho.golang/paho"
)

// TestMotePropsOnce: Mote's user properties given twice were read as
// their first value and the rest ignored (mote=tree then mote=sync
// subscribed $tree; mote-replace 0 then 1 did not replace), where
// mote-interval twice was already refused; mote-replace=yes was silently
// no replace, and mote-replace=1 or mote-codec on a $tree topic silently
// ignored. Each is now refused: SUBSCRIBE 0x8F, PUBLISH 0x90, nothing
// applied; the forms that mean one thing still work.
func TestMotePropsOnce(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	w.pub(t, "mp/old", "1")
	settle(t, b)
	c := dialTree5(t, b, "c")
	subs := []struct {
		filter string
		props  []string
		want   byte
	}{
		{"mp/+", []string{"mote", "tree", "mote", "sync"}, 0x8F},
		{"mp/+", []string{"mote", "sync", "mote", "sync"}, 0x8F},
		{"mp/+", []string{"mote", "sync", "mote-codec", "cbor", "mote-codec", "json"}, 0x8F},
		{"mp/+", []string{"mote", "sync", "mote-since", "1", "mote-since", "2"}, 0x8F},
		{"mp/+", []string{"mote", "hist", "mote-limit", "1", "mote-limit", "5"}, 0x8F},
		{"mp/+", []string{"mote", "hist", "mote-from", "1", "mote-from", "2"}, 0x8F},
		{"$hist/mp/+", []string{"mote-to", "1", "mote-to", "2"}, 0x8F},
		{"mp/+", []string{"mote", "sync", "mote-interval", "10", "mote-interval", "10"}, 0x8F},
		{"mp/+", []string{"mote", "tree", "mote-codec", "cbor"}, 1},
		{"mp/#", nil, 1},
	}
	for _, s := range subs {
		if got := c.subscribe(t, s.filter, s.props...); got != s.want {
			t.Errorf("SUBSCRIBE %s %q: %#x, want %#x", s.filter, s.props, got, s.want)
		}
	}
	// The retained row first, before anything is published.
	first := c.next(t)
	if first.Topic != "mp/old" {
		t.Fatalf("first %s %q, want the retained mp/old", first.Topic, first.Payload)
	}
	pubs := []struct {
		topic string
		props []string
		want  byte
	}{
		{"mp", []string{"mote", "tree", "mote", "sync"}, 0x90},
		{"mp", []string{"mote", "tree", "mote", "tree"}, 0x90},
		{"mp", []string{"mote", "tree", "mote-codec", "json", "mote-codec", "cbor"}, 0x90},
		{"mp", []string{"mote", "tree", "mote-replace", "0", "mote-replace", "1"}, 0x90},
		{"mp", []string{"mote", "tree", "mote-replace", "yes"}, 0x90},
		{"$tree.replace/mp", []string{"mote-replace", "0"}, 0x90},
		{"$tree.json/mp", []string{"mote-codec", "cbor"}, 0x90},
		{"$tree/mp", []string{"mote-codec", "cbor"}, 0x99}, // a JSON payload read as CBOR
		{"$tree/mp", []string{"mote-replace", "1", "mote-replace", "1"}, 0x90},
		{"$set/mp/+", []string{"mote-replace", "1"}, 0x90},
		{"$set/mp/+", []string{"mote-codec", "json"}, 0x90},
		{"mp", []string{"mote", "tree", "mote-replace", "0"}, 0},
		{"mp", []string{"mote", "tree", "mote-replace", "true"}, 0},
	}
	for i, p := range pubs {
		pp := &paho5.Publish{Topic: p.topic, QoS: 1, Retain: true, Payload: []byte(`{"p` + string(rune('a'+i)) + `":1}`),
			Properties: &paho5.PublishProperties{}}
		for k := 0; k+1 < len(p.props); k += 2 {
			pp.Properties.User = append(pp.Properties.User, paho5.UserProperty{Key: p.props[k], Value: p.props[k+1]})
		}
		r, _ := w.Publish(testCtx(t), pp)
		if r == nil || r.ReasonCode != p.want {
			t.Errorf("PUBLISH %s %q: %+v, want %#x", p.topic, p.props, r, p.want)
		}
	}
	w.pub(t, "mp/end", "1")
	// The plain mp/# subscriber saw only the two
	// publishes accepted (the second a replace: mp/old and mp/pi deleted),
	// then the marker.
	got := []string{first.Topic + "=" + string(first.Payload)}
	for {
		p := c.next(t)
		if strings.HasPrefix(p.Topic, "mp/+") {
			continue // the mote=tree subscription's deltas
		}
		got = append(got, p.Topic+"="+string(p.Payload))
		if p.Topic == "mp/end" {
			break
		}
	}
	want := "mp/old=1 mp/pl=1 mp/pm=1 mp/old= mp/pl= mp/end=1"
	if strings.Join(got, " ") != want {
		t.Errorf("plain subscriber got %q, want %q", got, want)
	}
	alive(t, b)
}

// TestTreeFilterNamesNoRow: a tree subscription whose filter begins with
// one of Mote's verbs or $share ($sync/$tree/x, or $tree/x with
// mote=sync) can match no row (no client may write one, SPEC §5) and was
// granted an empty tree that never changed; it is refused 0x8F with the
// reason. Filters of rows that exist, $SYS's included, are granted.
func TestTreeFilterNamesNoRow(t *testing.T) {
	b := start(t, Options{})
	c := dialTree5(t, b, "c")
	cases := []struct {
		filter string
		props  []string
		want   byte
	}{
		{"$sync/$tree/x", nil, 0x8F},
		{"$sync/$sync/#", nil, 0x8F},
		{"$tree.cbor/$set/x/+", nil, 0x8F},
		{"$hist/$hist/x", nil, 0x8F},
		{"$sync/$share/g/x", nil, 0x8F},
		{"$tree/x/+", []string{"mote", "sync"}, 0x8F},
		{"$sync.cbor/x", []string{"mote", "tree"}, 0x8F},
		{"$SHARE/g/x", []string{"mote", "hist"}, 0x8F},
		{"$sync/x/+", nil, 1},
		{"$sync/$SYS/broker/#", nil, 1},
		{"x/+", []string{"mote", "sync"}, 1},
		{"$tree/x", []string{"mote", "tree"}, 0x8F},
	}
	for _, tc := range cases {
		if got := c.subscribe(t, tc.filter, tc.props...); got != tc.want {
			t.Errorf("SUBSCRIBE %s %q: %#x, want %#x", tc.filter, tc.props, got, tc.want)
		}
	}
	alive(t, b)
}

// TestTreeTopicTakesMoteProps: SPEC §4 gives mote-replace=1 as the MQTT 5
// form of .replace and mote-codec of the codec options; on a $tree topic
// they apply as the topic's own options would (red team h-rtfresh had
// them refused there; before, they were ignored: no replace).
func TestTreeTopicTakesMoteProps(t *testing.T) {
	b := start(t, Options{})
	w := dialTree5(t, b, "w")
	pub := func(topic string, payload []byte, props ...string) byte {
		t.Helper()
		pp := &paho5.Publish{Topic: topic, QoS: 1, Retain: true, Payload: payload, Properties: &paho5.PublishProperties{}}
		for k := 0; k+1 < len(props); k += 2 {
			pp.Properties.User = append(pp.Properties.User, paho5.UserProperty{Key: props[k], Value: props[k+1]})
		}
		r, err := w.Publish(testCtx(t), pp)
		if err != nil || r == nil {
			t.Fatalf("PUBLISH %s: %v", topic, err)
		}
		return r.ReasonCode
	}
	if rc := pub("$tree/tp", []byte(`{"a":1,"b":2}`)); rc != 0 {
		t.Fatalf("tree publish: %#x", rc)
	}
	// {"c":3} in CBOR: a1 61 63 03.
	if rc := pub("$tree/tp", []byte{0xa1, 0x61, 0x63, 0x03}, "mote-replace", "1", "mote-codec", "cbor"); rc != 0 {
		t.Fatalf("tree publish with mote-replace and mote-codec: %#x", rc)
	}
	settle(t, b)
	c := dialTree5(t, b, "c")
	c.subscribe(t, "$sync/tp/#")
	if got := string(c.next(t).Payload); got != `{"c":3}` {
		t.Fatalf("snapshot %s, want {\"c\":3}: the replace and the codec applied", got)
	}
}
