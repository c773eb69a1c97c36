package broker

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/mote-mqtt/mote/internal/mochi/packets"
)

// TestNoLocalTree: MQTT 5 No Local [MQTT-3.8.3-3] on $sync and $tree
// subscriptions (docs/spec-audit-x5.md X2). A delta leaves out every row
// whose newest change came from the subscriber's own client (a plain
// publish of a row, a row of its $tree publish); a delta left empty is
// not sent and takes no mote-seq (the count goes on without a gap); a
// row its client changed and then someone else did goes with the other's
// value, one someone else changed and then its client did is left out —
// in one batch, in a paced subscription's window, in a delta folding in
// the queue. The snapshot is the store as it is, own rows included.
func TestNoLocalTree(t *testing.T) {
	type env struct {
		b    *Broker
		c, w *x5Peer
		id   string // c's client id
	}
	cases := []struct {
		name   string
		paced  bool
		recv   uint16 // c's Receive Maximum (0: the default)
		run    func(t *testing.T, e env)
		seq    int      // the mote-seq of the first delta of deltas
		deltas []string // the deltas that follow (as JSON): consecutive ones may come folded into one
	}{
		{
			name: "plain publish",
			run: func(t *testing.T, e env) {
				e.c.row(t, "nl/o", `"own1"`) // only its own row: no delta, no mote-seq
				settle(t, e.b)
				e.w.row(t, "nl/b", "2")
			},
			seq: 1, deltas: []string{`{"b":2}`},
		},
		{
			name: "tree publish",
			run: func(t *testing.T, e env) {
				e.c.row(t, "$tree/nl", `{"o":"own1","p":"own2"}`)
				settle(t, e.b)
				e.w.row(t, "nl/b", "2")
				e.c.row(t, "$tree/nl", `{"p":"own3"}`)
				settle(t, e.b)
				e.w.row(t, "$tree/nl", `{"c":3}`)
			},
			seq: 1, deltas: []string{`{"b":2}`, `{"c":3}`},
		},
		{
			name: "mixed batch",
			run: func(t *testing.T, e env) {
				release := holdLoop(t, e.b) // the publishes below wait together: one batch
				e.c.row(t, "nl/x", `"own1"`)
				e.w.row(t, "nl/y", "2")
				e.w.row(t, "nl/x", "3")      // after its own: the other's value goes
				e.c.row(t, "nl/y", `"own4"`) // newest is its own: left out
				e.c.row(t, "$tree/nl", `{"z":"own5","v":"own7"}`)
				e.w.row(t, "nl/z", "6")
				release()
				settle(t, e.b)
				e.c.row(t, "nl/v", `"own8"`)
				settle(t, e.b)
				e.w.row(t, "nl/end", "9")
			},
			seq: 1, deltas: []string{`{"x":3,"z":6}`, `{"end":9}`},
		},
		{
			name:  "paced",
			paced: true,
			run: func(t *testing.T, e env) {
				e.w.row(t, "nl/a", "1")
				if p := e.c.publish(t, true); user(p, "mote-seq") != "1" {
					t.Fatalf("%q seq %s, want delta 1", p.Payload, user(p, "mote-seq"))
				}
				// Within the interval after it: held, then one delta.
				e.c.row(t, "nl/b", `"own1"`)
				e.w.row(t, "nl/c", "2")
				e.c.row(t, "nl/c", `"own5"`) // newest its own: left out
				e.w.row(t, "nl/b", "7")      // newest the other's: goes
				e.c.row(t, "nl/d", `"own8"`)
				if p := e.c.publish(t, true); user(p, "mote-seq") != "2" || !nlEqual(t, p, `{"b":7}`) {
					t.Fatalf("%q seq %s, want delta 2 {\"b\":7}", p.Payload, user(p, "mote-seq"))
				}
				e.c.row(t, "nl/e", `"own9"`) // held alone, or not: nothing goes
				settle(t, e.b)
				e.w.row(t, "nl/f", "2")
			},
			seq: 3, deltas: []string{`{"f":2}`},
		},
		{
			name: "queued fold",
			recv: 1,
			run: func(t *testing.T, e env) {
				q := e.b.connByID(e.id).q
				taken := func(what string) { // the writer took every queued item
					t.Helper()
					waitFor(t, what, func() bool {
						q.mu.Lock()
						defer q.mu.Unlock()
						return q.head == len(q.items)
					})
				}
				e.w.row(t, "nl/a", "1")
				first := e.c.publish(t, false) // in flight: what follows waits in the queue
				if user(first, "mote-seq") != "1" {
					t.Fatalf("%q seq %s, want delta 1", first.Payload, user(first, "mote-seq"))
				}
				e.w.row(t, "nl/b", "2")
				settle(t, e.b) // queued first: taken must not see the queue empty before it
				taken("delta 2 taken by the writer, waiting for room")
				e.c.row(t, "nl/x", `"own1"`) // nothing to fold into: nothing sent
				e.w.row(t, "nl/y", "3")      // delta 3, queued
				settle(t, e.b)
				e.c.row(t, "nl/y", `"own4"`) // folds into it: nothing of it left, its mote-seq given back
				settle(t, e.b)
				e.c.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: first.PacketID})
				second := e.c.publish(t, false)
				if user(second, "mote-seq") != "2" || !nlEqual(t, second, `{"b":2}`) {
					t.Fatalf("%q seq %s, want delta 2 {\"b\":2}", nlJSON(t, second), user(second, "mote-seq"))
				}
				taken("the emptied delta taken (and skipped)")
				e.w.row(t, "nl/z", "5") // delta 3 after all, no gap
				settle(t, e.b)          // queued (the PUBACK may come before the loop applies it)
				taken("delta 3 taken")
				e.w.row(t, "nl/u", "6") // delta 4, queued
				settle(t, e.b)
				e.c.row(t, "nl/u", `"own7"`) // empties it: mote-seq 4 given back
				e.w.row(t, "nl/w", "8")      // delta 4 again
				settle(t, e.b)
				e.c.write(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: second.PacketID})
			},
			seq: 3, deltas: []string{`{"z":5}`, `{"w":8}`},
		},
	}
	for _, mode := range []string{"$sync", "$tree"} {
		for _, codec := range []string{"", ".cbor"} {
			for _, tc := range cases {
				t.Run(mode+codec+"/"+tc.name, func(t *testing.T) {
					t.Parallel()
					b := start(t, Options{})
					id := "nlc"
					w := x5Writer(t, b, "nlw")
					w.row(t, "nl/a", "0")
					c, _ := x5Dial(t, b, 5, id, true, packets.Properties{ReceiveMaximum: tc.recv})
					c.row(t, "nl/o", `"own0"`)
					settle(t, b)
					filter := mode + codec
					if tc.paced {
						filter += ".1000ms"
					}
					filter += "/nl/+"
					c.sub(t, packets.Properties{}, x5Sub(filter, func(s *packets.Subscription) { s.NoLocal = true }))
					if mode == "$sync" {
						// The snapshot is the store, the client's own row too.
						if p := c.publish(t, true); user(p, "mote-seq") != "0" || !nlEqual(t, p, `{"a":0,"o":"own0"}`) {
							t.Fatalf("snapshot %q seq %s, want {\"a\":0,\"o\":\"own0\"}", p.Payload, user(p, "mote-seq"))
						}
					}
					tc.run(t, env{b: b, c: c, w: w, id: id})
					for i, seq := 0, tc.seq; i < len(tc.deltas); seq++ {
						// The next message is delta seq: the next expected
						// delta, or it and those after it folded (SPEC §2:
						// the writer had not taken the first yet).
						p := c.publish(t, true)
						got := nlJSON(t, p)
						j := nlFolded(t, got, tc.deltas[i:])
						if p.TopicName != filter || user(p, "mote-seq") != strconv.Itoa(seq) || j == 0 {
							t.Fatalf("%s %s seq %s, want seq %d %s (or it folded with those after it: %v)", p.TopicName, got, user(p, "mote-seq"), seq, tc.deltas[i], tc.deltas[i:])
						}
						i += j
					}
					if mode == "$sync" {
						// A SUBSCRIBE again: a snapshot of the store, every own row in it.
						c.sub(t, packets.Properties{}, x5Sub(filter, func(s *packets.Subscription) { s.NoLocal = true }))
						p := c.publish(t, true)
						want, _ := json.Marshal(treeNow(t, b, "nl/+"))
						if user(p, "mote-seq") != "0" || !nlEqual(t, p, string(want)) || !strings.Contains(string(want), "own") {
							t.Fatalf("snapshot %q seq %s, want %s", nlJSON(t, p), user(p, "mote-seq"), want)
						}
					}
					// Nothing else came: a PINGREQ's answer is next.
					if _, err := c.c.Write([]byte{0xc0, 0}); err != nil { // PINGREQ
						t.Fatal(err)
					}
					c.until(t, packets.Pingresp)
					if len(c.pending) > 0 {
						t.Fatalf("%s %q more than expected", c.pending[0].TopicName, nlJSON(t, c.pending[0]))
					}
				})
			}
		}
	}
}

// nlFolded returns how many of the deltas want (JSON, one '+' level),
// folded in order, make got; 0 if none.
func nlFolded(t *testing.T, got string, want []string) int {
	t.Helper()
	doc := map[string]any{}
	for j, w := range want {
		merge1(t, doc, []byte(w))
		js, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		if jsonEqual(t, got, string(js)) {
			return j + 1
		}
	}
	return 0
}

// nlJSON is a tree message's payload as JSON, CBOR decoded.
func nlJSON(t *testing.T, p packets.Packet) string {
	t.Helper()
	if !strings.Contains(p.TopicName, ".cbor") {
		return string(p.Payload)
	}
	var doc any
	if err := cbor.Unmarshal(p.Payload, &doc); err != nil {
		t.Fatalf("%s: %v", p.TopicName, err)
	}
	out, err := json.Marshal(stringKeys(doc))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// stringKeys turns CBOR's decoded maps into maps of strings, for JSON.
func stringKeys(v any) any {
	m, ok := v.(map[any]any)
	if !ok {
		return v
	}
	out := make(map[string]any, len(m))
	for k, x := range m {
		out[k.(string)] = stringKeys(x)
	}
	return out
}

// nlEqual reports whether p's payload is the tree want (JSON).
func nlEqual(t *testing.T, p packets.Packet, want string) bool {
	t.Helper()
	return jsonEqual(t, nlJSON(t, p), want)
}

// TestNoLocalFrontEndNames: a front end's name is not an MQTT client's
// [MQTT-3.8.3-3]. An MQTT client that chose the id "http" (the HTTP API's
// name in ACL patterns, SPEC §10) or "$mote" (the broker's) gets the
// publishes of that front end on its No Local subscriptions, plain and
// tree, as any other client's: they are not its own.
func TestNoLocalFrontEndNames(t *testing.T) {
	b := start(t, Options{})
	for _, tc := range []struct {
		id string
		p  Principal
	}{
		{"http", Principal{ClientID: "http", Answered: true}}, // as httpapi makes it
		{"$mote", systemPrincipal},
	} {
		t.Run(tc.id, func(t *testing.T) {
			c, _ := x5Dial(t, b, 5, tc.id, true, packets.Properties{})
			nl := func(s *packets.Subscription) { s.NoLocal = true }
			c.sub(t, packets.Properties{}, x5Sub("fe/+", nl), x5Sub("$sync/fe/+", nl))
			if p := c.publish(t, true); p.TopicName != "$sync/fe/+" || user(p, "mote-seq") != "0" {
				t.Fatalf("%s %q, want the snapshot", p.TopicName, p.Payload)
			}
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			if err := b.Publish(ctx, tc.p, Message{Topic: "$tree/fe", Payload: []byte(`{"a":1}`), QoS: 1, Retain: true}); err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for range 2 {
				p := c.publish(t, true)
				got[p.TopicName] = string(p.Payload)
			}
			if got["fe/a"] != "1" || got["$sync/fe/+"] != `{"a":1}` {
				t.Fatalf("got %v, want fe/a 1 and the delta {\"a\":1}", got)
			}
			// A publish of its own is still its own.
			c.row(t, "fe/b", "2")
			if err := b.Publish(ctx, tc.p, Message{Topic: "fe/c", Payload: []byte("3"), QoS: 1, Retain: true}); err != nil {
				t.Fatal(err)
			}
			got = map[string]string{}
			for range 2 {
				p := c.publish(t, true)
				got[p.TopicName] = string(p.Payload)
			}
			if len(got) != 2 || got["fe/c"] != "3" || got["$sync/fe/+"] != `{"c":3}` {
				t.Fatalf("got %v, want fe/c 3 and the delta {\"c\":3} (fe/b is its own)", got)
			}
			c.row(t, "$tree/fe", `{"a":null,"b":null,"c":null}`)
		})
	}
}
