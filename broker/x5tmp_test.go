package broker

import (
	"testing"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

func TestX5TmpBare(t *testing.T) {
	b := start(t, Options{})
	w := x5Writer(t, b, "w")
	props := packets.Properties{SessionExpiryInterval: 300, SessionExpiryIntervalFlag: true}
	c, _ := x5Dial(t, b, 5, "bb", false, props)
	c.sub(t, packets.Properties{}, x5Sub("$tree/bb/x"))
	w.row(t, "bb/x", "1")
	p := c.publish(t, true)
	t.Logf("delta %s seq %s", p.Payload, user(p, "mote-seq"))
	x5Away(t, b, c, "bb")
	w.row(t, "bb/x", "2")
	settle(t, b)
	c, _ = x5Dial(t, b, 5, "bb", false, props)
	p = c.publish(t, true)
	t.Logf("resume %s seq %s resume %s", p.Payload, user(p, "mote-seq"), user(p, "mote-resume"))
	x5Away(t, b, c, "bb")
	w.row(t, "bb/x", "")
	settle(t, b)
	c, _ = x5Dial(t, b, 5, "bb", false, props)
	p = c.publish(t, true)
	t.Logf("resume %s seq %s resume %s", p.Payload, user(p, "mote-seq"), user(p, "mote-resume"))
	w.row(t, "bb/x", "3")
	p = c.publish(t, true)
	t.Logf("delta %s seq %s resume %s", p.Payload, user(p, "mote-seq"), user(p, "mote-resume"))
	w.row(t, "bb/x", "")
	p = c.publish(t, true)
	t.Logf("delta %q seq %s resume %s", p.Payload, user(p, "mote-seq"), user(p, "mote-resume"))
}
