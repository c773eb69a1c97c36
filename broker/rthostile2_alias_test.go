package broker

import "testing"

// TestHostileAliasBounds: change 78 makes a client's inbound topic
// aliases on first use (nil until then). A client whose first PUBLISH
// carries an alias past the broker's maximum (maxTopicAliases, the
// CONNACK's Topic Alias Maximum), or alias 0, gets DISCONNECT 0x94 Topic
// Alias invalid (§3.3.2.3.4); an alias-only publish before any alias was
// set gets 0x82 Protocol Error; and no panic (a nil map dereferenced).
func TestHostileAliasBounds(t *testing.T) {
	b := start(t, Options{})
	cases := []struct {
		name string
		send [][]byte
		want []string
	}{
		{"alias past maximum, first packet", [][]byte{hxPublish("hb/p", 1, 1, hxProps(hxU16(0x23, maxTopicAliases+1)), "x")}, []string{"e0:94*", "closed"}},
		{"alias 65535, alias only, first packet", [][]byte{hxPublish("", 0, 0, hxProps(hxU16(0x23, 0xFFFF)), "x")}, []string{"e0:94*", "closed"}},
		{"alias 0", [][]byte{hxPublish("hb/p", 1, 1, hxProps(hxU16(0x23, 0)), "x")}, []string{"e0:94*", "closed"}},
		{"alias only before any set", [][]byte{hxPublish("", 1, 1, hxProps(hxU16(0x23, 1)), "x")}, []string{"e0:82*", "closed"}},
		{"alias set, then past maximum", [][]byte{
			hxPublish("hb/p", 1, 1, hxProps(hxU16(0x23, 2)), "1"),
			hxPublish("", 1, 2, hxProps(hxU16(0x23, maxTopicAliases+1)), "2"),
		}, []string{"40:00 01", "e0:94*", "closed"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := hxExchange(t, b.TCPAddr(), 5, "hb", c.send...)
			if !hxMatch(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
	if n := b.stats.Panics.Load(); n != 0 {
		t.Errorf("%d panics", n)
	}
	alive(t, b)
}
