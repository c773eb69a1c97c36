package broker

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/mote-mqtt/mote/broker/auth"
	"github.com/mote-mqtt/mote/retain"
)

// Red team of delta folding reading the tree's rows (h-rtf, main 7893d35:
// Tree.AppendChanges, a queued delta's own rows, the batch's row slices
// always recycled). Beside the RTL model's retained rows, publishers send
// events (non-retained rows, of keys they hold), deletions and sets of a
// key back to back (so one batch has an event and a retained row of a
// topic, a deletion then a set), and every subscriber is private: an ACL
// gives each a read check, and hides one key from some of them (their
// client id names it). Stalled, paced, '#', each codec, awaiting
// (subscribed midway, paced or not): each message holds only values of
// the key it names, never older than one seen, never a hidden key; each
// copy ends as the store (less its hidden key); each queue's count of
// bytes returns to 0.

// rtfACL lets everyone read and write, but not a key named as its id.
const rtfACL = "topic readwrite #\npattern deny rtl/+/%c\n"

// rtfScripts is rtlScripts with events and deletions, and a last
// retained publish of each publisher's keys (fresh values over its
// events): model is the store's tree at the end.
func rtfScripts(t *testing.T, seed uint64, pubs, n, keys int) ([]rtlScript, map[string]any) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 91))
	model := map[string]any{}
	scripts := make([]rtlScript, pubs)
	for p := range pubs {
		sc := &scripts[p]
		sc.v5 = p%2 == 1
		state := map[string]any{} // what the store holds of p's keys
		id := func() uint16 {
			if sc.v5 || r.IntN(3) != 0 {
				return 0
			}
			return uint16(1 + len(sc.packets))
		}
		plain := func(k int, payload []byte, retained bool) {
			pk := rtlPacket(sc.v5, fmt.Sprintf("rtl/p%d/k%d", p, k), payload, id())
			if !retained {
				pk[0] &^= 1
			}
			sc.packets = append(sc.packets, pk)
		}
		tree := func(topic string, rows map[string]string, cb, retained bool) {
			var payload []byte
			var err error
			if cb {
				topic = strings.Replace(topic, "$tree/", "$tree.cbor/", 1)
				payload, err = cbor.Marshal(rows)
			} else {
				payload, err = json.Marshal(rows)
			}
			if err != nil {
				t.Fatal(err)
			}
			pk := rtlPacket(sc.v5, topic, payload, id())
			if !retained {
				pk[0] &^= 1
			}
			sc.packets = append(sc.packets, pk)
		}
		seq := 0 // every value p publishes takes the next: a key's values grow in the order sent
		next := func(k int) string { seq++; return rtlValue(p, k, seq) }
		for range n {
			k := r.IntN(keys)
			key := "k" + strconv.Itoa(k)
			switch kind := r.IntN(10); {
			case kind < 3: // a tree publish of a few keys
				rows := map[string]string{key: next(k)}
				for range r.IntN(3) {
					k2 := r.IntN(keys)
					rows["k"+strconv.Itoa(k2)] = next(k2)
				}
				tree(fmt.Sprintf("$tree/rtl/p%d", p), rows, kind == 2, true)
				for k, v := range rows {
					state[k] = v
				}
			case kind < 4: // .replace: the keys not in it are deleted
				rows := map[string]string{key: next(k)}
				tree(fmt.Sprintf("$tree.replace/rtl/p%d/+", p), rows, false, true)
				clear(state)
				state[key] = rows[key]
			case kind < 6: // a deletion, then (often) a set of the same key
				plain(k, nil, true)
				delete(state, key)
				if r.IntN(2) == 0 {
					v := next(k)
					plain(k, []byte(strconv.Quote(v)), true)
					state[key] = v
				}
			case kind < 8: // an event of a key held, plain or in a tree
				if _, ok := state[key]; !ok {
					continue
				}
				v := next(k)
				if kind == 6 {
					plain(k, []byte(strconv.Quote(v)), false)
				} else {
					tree(fmt.Sprintf("$tree/rtl/p%d", p), map[string]string{key: v}, false, false)
				}
				// The store keeps its retained value; the last publish
				// overwrites the event in every copy. Now and then a
				// retained value right after it.
				if r.IntN(2) == 0 {
					v = next(k)
					plain(k, []byte(strconv.Quote(v)), true)
					state[key] = v
				}
			default: // a retained plain publish
				v := next(k)
				plain(k, []byte(strconv.Quote(v)), true)
				state[key] = v
			}
		}
		if len(state) > 0 {
			rows := map[string]string{}
			for key := range state {
				k, _ := strconv.Atoi(key[1:])
				rows[key] = next(k)
				state[key] = rows[key]
			}
			tree(fmt.Sprintf("$tree/rtl/p%d", p), rows, false, true)
			model["p"+strconv.Itoa(p)] = state
		}
	}
	return scripts, model
}

// rtfHide is model without key (a subscriber's ACL hides it).
func rtfHide(model map[string]any, key string) map[string]any {
	out := map[string]any{}
	for p, v := range model {
		kids := map[string]any{}
		for k, v := range v.(map[string]any) {
			if k != key {
				kids[k] = v
			}
		}
		if len(kids) > 0 {
			out[p] = kids
		}
	}
	return out
}

func TestRTFPrivateDeltasWithEventsMatchModel(t *testing.T) {
	for _, o := range []struct {
		name string
		opts func(t *testing.T) Options
	}{
		{"acl", func(*testing.T) Options { return Options{} }},
		{"acl, retainer, sync-retain", func(t *testing.T) Options {
			st, err := retain.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return Options{Store: st, SyncRetain: true}
		}},
	} {
		t.Run(o.name, func(t *testing.T) {
			seed := uint64(time.Now().UnixNano())
			t.Logf("seed %d", seed)
			const pubs, n, keys = 6, 400, 6
			scripts, model := rtfScripts(t, seed, pubs, n, keys)
			acl, err := auth.ParseACL("acl", []byte(rtfACL))
			if err != nil {
				t.Fatal(err)
			}
			opts := o.opts(t)
			opts.ACL = acl
			b := start(t, opts)
			var ids []string
			t.Cleanup(func() {
				if !t.Failed() {
					return
				}
				for _, id := range ids { // what the slow-client policy dropped, if it did
					if c := b.connByID(id); c != nil {
						t.Logf("%s: %d dropped", id, c.dropped.Load())
					}
				}
				t.Logf("dropped %d, too large %d", b.stats.Dropped.Load(), b.stats.TooLarge.Load())
			})
			hide := func(c *rtlCopy, key string) { c.hidden = key }
			var fast []*rtlPaho
			var raw []*rtlRaw
			paho := func(id, filter string, pause bool) {
				ids = append(ids, id)
				c := dialRTLPaho(t, b, id, filter, pause)
				if id[0] == 'k' {
					hide(c.copy, id)
				}
				fast = append(fast, c)
			}
			stalled := func(id, filter string, v byte) {
				ids = append(ids, id)
				c := dialRTLRaw(t, b, id, filter, v)
				if id[0] == 'k' {
					hide(c.copy, id)
				}
				raw = append(raw, c)
			}
			paho("rtlfast", "$sync/rtl/+/+", false)
			paho("rtlpausing", "$sync/rtl/#", true)
			paho("k1", "$sync.250ms/rtl/+/+", false)
			paho("rtlpacedcbor", "$sync.cbor.250ms/rtl/#", true)
			stalled("k2", "$sync/rtl/+/+", 4)
			stalled("rtlstalled5cbor", "$sync.cbor/rtl/#", 5)
			stalled("rtlstalled3msgpack", "$sync.msgpack/rtl/+/+", 4)
			wg, half := runRTLScripts(t, b.TCPAddr(), scripts)
			<-half // snapshots taken while deltas queue
			paho("k3", "$sync/rtl/+/+", false)
			paho("k4", "$sync.msgpack/rtl/#", true)
			paho("k5", "$sync.cbor.100ms/rtl/#", false)
			paho("rtlmidwaypaced", "$sync.100ms/rtl/+/+", true)
			wg.Wait()
			deadline := time.Now().Add(testTimeout)
			for !reflect.DeepEqual(treeNow2(t, b, "rtl"), model) {
				if time.Now().After(deadline) {
					t.Fatalf("the store holds %v, the model %v", treeNow2(t, b, "rtl"), model)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if n := b.stats.Refused.Load(); n != 0 { // (a $tree publish of CBOR was, once)
				t.Fatalf("%d publishes refused: the script is wrong", n)
			}
			want := func(c *rtlCopy) map[string]any {
				if c.hidden != "" {
					return rtfHide(model, c.hidden)
				}
				return model
			}
			for _, c := range fast {
				c.checkUntil(t, want(c.copy))
			}
			for _, c := range raw {
				c.readUntil(t, want(c.copy))
				go io.Copy(io.Discard, c.r) //nolint:errcheck // ends with the connection, closed at the test's end
			}
			// Every queue's count returns to 0 once it is written: held
			// and folded rows, and the rows queued deltas keep, given back.
			for _, id := range ids {
				conn := b.connOf(t, id)
				for queued(conn) != 0 {
					if time.Now().After(deadline) {
						t.Fatalf("%s: its queue counts %d bytes, nothing left to write", id, queued(conn))
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			t.Logf("messages: fast %d, stalled %d; folded %d, direct %d", fast[0].copy.n, raw[0].copy.n, b.stats.Folded.Load(), b.stats.Direct.Load())
		})
	}
}
