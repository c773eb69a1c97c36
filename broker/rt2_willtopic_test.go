package broker

import (
	"fmt"
	"testing"
)

// TestRT2EmptyWillTopics (red team of mochi change 85): a will with an
// empty payload is still refused at CONNECT on a topic no PUBLISH may
// name (wildcards, $SYS, $share, the broker's $ verbs that are not
// publishes); on the tree verbs it is taken or refused as the door
// decides for a PUBLISH ($tree refused 0x99, $set taken); the broker
// still serves after each connection drops. Passes (change 85 holds).
func TestRT2EmptyWillTopics(t *testing.T) {
	cases := []struct {
		topic   string
		refused bool
	}{
		{"rt2/plain", false},
		{"rt2/+", true},
		{"rt2/#", true},
		{"$SYS/rt2", true},
		{"$share/g/rt2", true},
		{"$hist/rt2", true},
		{"$sync/rt2", true},
		{"$tree/rt2", true}, // empty: no tree document (0x99), as a PUBLISH
		{"$set/rt2", false}, // as a PUBLISH of $set with no value
	}
	b := start(t, Options{})
	for n, tc := range cases {
		t.Run(tc.topic, func(t *testing.T) {
			for _, v := range []byte{4, 5} {
				id := fmt.Sprint("rt2-wt-", n, "-", v)
				w := &rawWill{topic: tc.topic, retain: true}
				a, _, code := rawPeer(t, b.TCPAddr(), rawConnect(t, v, id, true, 0, w))
				t.Logf("v%d will on %q: CONNACK %#x", v, tc.topic, code)
				if (code != 0) != tc.refused {
					t.Errorf("v%d will on %q: CONNACK %#x, want refused %v", v, tc.topic, code, tc.refused)
				}
				resetConn(a.c)
				p, _, code := rawPeer(t, b.TCPAddr(), rawConnect(t, 5, id+"-after", true, 0, nil))
				if code != 0 {
					t.Fatalf("after: CONNACK %#x", code)
				}
				p.ping(t, "after")
			}
		})
	}
}
