package broker

import (
	"strings"
	"testing"
)

// TestTopicAliasOfRefusedTopic: a PUBLISH with a Topic Alias and a topic
// sets the alias whatever becomes of the publish (MQTT 5 §3.3.2.3.4: the
// receiver records the mapping of a PUBLISH with both), so the client's
// next alias-only PUBLISH is the same publish: refused the same way, or
// applied. The broker refused a topic alias on a Mote topic (0x90,
// errAlias) and left it unset, as it did one on a topic over
// max_topic_length and (mochi) on a publish over max_user_properties: the
// next alias-only PUBLISH was DISCONNECT 0x82 Protocol Error, or went to
// the topic the alias named before.
func TestTopicAliasOfRefusedTopic(t *testing.T) {
	b := start(t, Options{MaxTopicLen: 100, MaxUserProperties: 2})
	watch := dial3(t, b, "watch", true)
	watch.sub(t, "hx/#", 0)
	alias := func(a uint16, more ...[]byte) []byte { return hxProps(append([][]byte{hxU16(0x23, a)}, more...)...) }
	tree := hxUser("mote", "tree")
	over := [][]byte{hxUser("a", "1"), hxUser("b", "2"), hxUser("c", "3")}
	long := "hx/" + strings.Repeat("l", 200)      // over max_topic_length and any prefix
	edge := "$tree/hx/" + strings.Repeat("e", 95) // 104 bytes; its row, 98, within the limit
	cases := []struct {
		name string
		send [][]byte
		want []string
	}{
		{"$sync topic, then alias only: both 0x90", [][]byte{
			hxPublish("$sync/hx/m", 1, 1, alias(3), "x"),
			hxPublish("", 1, 2, alias(3), "y"),
		}, []string{"40:00 01 90*", "40:00 02 90*"}},
		{"$tree topic, then alias only: both applied", [][]byte{
			hxPublish("$tree/hx/m", 1, 1, alias(3), `{"c":1}`),
			hxPublish("", 1, 2, alias(3), `{"d":2}`),
		}, []string{"40:00 01", "40:00 02"}},
		{"mote=tree, then alias only, with and without mote=tree", [][]byte{
			hxPublish("hx/t", 1, 1, alias(4, tree), `{"c":3}`),
			hxPublish("", 1, 2, alias(4, tree), `{"d":4}`),
			hxPublish("", 1, 3, alias(4), "plain"),
		}, []string{"40:00 01", "40:00 02", "40:00 03"}},
		{"over max_user_properties, then alias only: 0x97, then delivered", [][]byte{
			hxPublish("hx/u", 1, 1, alias(5, over...), "x"),
			hxPublish("", 1, 2, alias(5), "u"),
		}, []string{"40:00 01 97*", "40:00 02"}},
		{"over max_topic_length, then alias only: both 0x90", [][]byte{
			hxPublish(long, 1, 1, alias(6), "x"),
			hxPublish("", 1, 2, alias(6), "y"),
		}, []string{"40:00 01 90*", "40:00 02 90*"}},
		{"$tree topic longer than max_topic_length, its row within it", [][]byte{
			hxPublish(edge, 1, 1, alias(7), "5"),
			hxPublish("", 1, 2, alias(7), "6"),
		}, []string{"40:00 01", "40:00 02"}},
		{"alias moved to a refused topic no longer names the old one", [][]byte{
			hxPublish("hx/p", 1, 1, alias(8), "p"),
			hxPublish("$sync/hx/p", 1, 2, alias(8), "x"),
			hxPublish("", 1, 3, alias(8), "y"),
		}, []string{"40:00 01", "40:00 02 90*", "40:00 03 90*"}},
		{"alias over the maximum on a Mote topic: 0x94", [][]byte{
			hxPublish("$tree/hx/z", 1, 1, alias(maxTopicAliases+1), `{"z":1}`),
		}, []string{"e0:94*", "closed"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := hxExchange(t, b.TCPAddr(), 5, "hx", c.send...)
			if !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	// Tree publishes are acknowledged before the loop delivers their rows:
	// wait for it, then for a message of the bystander's own.
	settle(t, b)
	watch.pub(t, "hx/end", 1, false, "end")
	want := []string{"hx/m/c=1", "hx/m/d=2", "hx/t/c=3", "hx/t/d=4", "hx/t=plain", "hx/u=u",
		edge[len("$tree/"):] + "=5", edge[len("$tree/"):] + "=6", "hx/p=p", "hx/end=end"}
	msgs := watch.wait(t, len(want))
	var got []string
	for _, m := range msgs {
		got = append(got, m.topic+"="+m.payload)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("bystander got %q, want %q", got, want)
	}
	if n := b.stats.Panics.Load(); n != 0 {
		t.Errorf("%d panics", n)
	}
	alive(t, b)
}

// TestAliasTopicCut: what an alias keeps of a topic too long for the door
// is still too long for it, with any Mote prefix, cut at a rune boundary.
func TestAliasTopicCut(t *testing.T) {
	for _, c := range []struct {
		topic string
		max   int
		want  int
	}{
		{strings.Repeat("a", 1000), 100, 100 + maxPrefixLen + 1},
		{strings.Repeat("é", 500), 100, 100 + maxPrefixLen + 1 + 1}, // 2-byte runes: to the rune's end
		{strings.Repeat("a", 164) + "€€€", 100, 164 + 3},            // the first € from its byte 164
	} {
		got := aliasTopic(c.topic, c.max)
		if len(got) != c.want || !strings.HasPrefix(c.topic, got) || len(got)-maxPrefixLen <= c.max {
			t.Errorf("aliasTopic(%d bytes, %d): %d bytes, want %d", len(c.topic), c.max, len(got), c.want)
		}
	}
}
