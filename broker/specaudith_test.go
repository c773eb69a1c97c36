package broker

import (
	"testing"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/mote-mqtt/mote/broker/auth"
)

// TestSpecHTreeDeniedReasonString: SPEC §5 says a refused tree publish
// gets "PUBACK/PUBREC reason 0x99 … or 0x87 (not authorized), with a
// Reason String", and §6 refuses a tree publish or $set touching a row the
// client may not write with 0x87. The ack of such a tree publish or $set
// names the row in its Reason String, for QoS 1 (PUBACK) and 2 (PUBREC),
// in each form (a $tree topic, mote=tree, $set). A plain publish the ACL
// refuses keeps Mosquitto's bare 0x87 (the Paho interop suite's client
// refuses an ack with properties; it never sends a tree publish).
func TestSpecHTreeDeniedReasonString(t *testing.T) {
	acl, err := auth.ParseACL("acl", []byte("user bob\ntopic readwrite ok/#\ntopic read no/#\n"))
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Users: users(t), ACL: acl})
	bob, _, err := dial5As(t, b, "bob", "bob", nil, paho5.ClientConfig{})
	if err != nil {
		t.Fatal(err)
	}
	loadRow(b, "no/x", "1")
	settle(t, b)
	cases := []struct {
		name, topic, payload string
		props                paho5.UserProperties
		reason               bool // a Reason String is due
	}{
		{"tree", "$tree/no/+", `{"x":2}`, nil, true},
		{"tree mixed", "$tree/+/x", `{"ok":1,"no":2}`, nil, true},
		{"mote=tree", "no", `{"x":2}`, paho5.UserProperties{{Key: "mote", Value: "tree"}}, true},
		{"set", "$set/no/+", "3", nil, true},
		{"plain", "no/x", "4", nil, false},
	}
	for _, tc := range cases {
		for qos := byte(1); qos <= 2; qos++ {
			pk := &paho5.Publish{Topic: tc.topic, QoS: qos, Retain: true, Payload: []byte(tc.payload),
				Properties: &paho5.PublishProperties{User: tc.props}}
			r, _ := bob.Publish(testCtx(t), pk)
			if r == nil {
				t.Fatalf("%s QoS %d: no ack", tc.name, qos)
			}
			rs := ""
			if r.Properties != nil {
				rs = r.Properties.ReasonString
			}
			if r.ReasonCode != 0x87 || (rs != "") != tc.reason {
				t.Errorf("%s QoS %d: reason code %#x, Reason String %q; want 0x87 with a Reason String: %v", tc.name, qos, r.ReasonCode, rs, tc.reason)
			}
		}
	}
	settle(t, b)
	got := &tree5{got: make(chan *paho5.Publish, 10)}
	got.Client, _, err = dial5As(t, b, "bob", "reader", nil, paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
		func(p paho5.PublishReceived) (bool, error) { got.got <- p.Packet; return true, nil },
	}})
	if err != nil {
		t.Fatal(err)
	}
	got.subscribe(t, "$sync/+/x")
	if p := got.next(t); !jsonEqual(t, string(p.Payload), `{"no":1}`) {
		t.Fatalf("rows after the refusals: %s, want nothing applied", p.Payload)
	}
}

// TestSpecHReplaceWithoutRetain: SPEC §4 handles a tree publish's rows "as
// if each had been published alone with the packet's QoS and retain flag",
// and docs/protocol.md says of a non-retained tree publish "nothing is
// stored". A .replace without the retain flag deleted the retained rows
// its tree did not mention (while storing none of its own): the store
// ended neither as it was nor as the tree said. Now it is events only:
// its rows reach subscribers, and every retained row stays. With the
// retain flag, .replace deletes as before.
func TestSpecHReplaceWithoutRetain(t *testing.T) {
	cases := []struct {
		name, topic string
		props       paho5.UserProperties
	}{
		{"option", "$tree.replace/r", nil},
		{"mote-replace", "$tree/r", paho5.UserProperties{{Key: "mote-replace", Value: "1"}}},
		{"mote=tree", "r", paho5.UserProperties{{Key: "mote", Value: "tree"}, {Key: "mote-replace", Value: "1"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := start(t, Options{})
			c := dialTree5(t, b, "pub")
			c.pub(t, "r/a", "1")
			c.pub(t, "r/b", "2")
			plain := dial3(t, b, "plain", true)
			plain.sub(t, "r/#", 1)
			publish := func(retain bool, payload string) {
				t.Helper()
				pk := &paho5.Publish{Topic: tc.topic, QoS: 1, Retain: retain, Payload: []byte(payload), Properties: &paho5.PublishProperties{User: tc.props}}
				if r, err := c.Publish(testCtx(t), pk); err != nil || r.ReasonCode != 0 {
					t.Fatalf("publish %s: %v %v", tc.topic, r, err)
				}
				settle(t, b)
			}
			publish(false, `{"a":5}`)
			if _, err := c.Publish(testCtx(t), &paho5.Publish{Topic: "r/end", QoS: 1, Payload: []byte("x")}); err != nil {
				t.Fatal(err)
			}
			got := plain.wait(t, 4) // r/a and r/b retained, then what the publishes sent
			if got[2].topic != "r/a" || got[2].payload != "5" || got[3].topic != "r/end" {
				t.Fatalf("plain subscriber got %+v, want the event r/a = 5 and r/end", got[2:])
			}
			s := dialTree5(t, b, "sync")
			s.subscribe(t, "$sync/r/#")
			if p := s.next(t); !jsonEqual(t, string(p.Payload), `{"a":1,"b":2}`) {
				t.Fatalf("after a .replace without retain: %s, want the rows unchanged", p.Payload)
			}
			publish(true, `{"a":5}`)
			if p := s.next(t); !jsonEqual(t, string(p.Payload), `{"a":5,"b":null}`) {
				t.Fatalf("retained .replace: delta %s", p.Payload)
			}
		})
	}
}
