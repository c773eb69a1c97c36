package broker

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	"github.com/fxamacker/cbor/v2"

	"github.com/mote-mqtt/mote/retain"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// Red team 12: revisions, resume, history and paced deltas.

// TestRedTeam12MarkLogChurn: the in-memory deletion marker log (a broker
// without a store) must not copy every marker it keeps each time it drops
// one. Once it is full (its byte bound, reached by one client creating and
// deleting rows), every later deletion drops the oldest marker; the log
// then moved all ~500,000 remaining markers down (~12 MB) per deletion, on
// the message loop: 2,000 deletions cost seconds of loop time, and a
// client deleting rows in a loop stalls the broker for everyone.
func TestRedTeam12MarkLogChurn(t *testing.T) {
	l := markLog{window: 1 << 40}
	topic := "churn/0123456789abcdef" // 22 bytes: a marker counts 62
	row := []tree.Row{{Topic: topic, Retain: true}}
	rev := uint64(0)
	for l.bytes+markCost(mark{topic: topic}) <= markLogBytes {
		rev++
		l.note(row, rev)
	}
	full := len(l.marks)
	if full < 400_000 {
		t.Fatalf("only %d markers before the bound", full)
	}
	const n = 2000
	start := time.Now()
	for range n {
		rev++
		l.note(row, rev)
	}
	took := time.Since(start)
	if len(l.marks) < full-1 || l.floor == 0 || l.bytes > markLogBytes {
		t.Fatalf("after churn: %d markers (was %d), floor %d, %d bytes", len(l.marks), full, l.floor, l.bytes)
	}
	if got := l.marks[len(l.marks)-1].rev; got != rev {
		t.Fatalf("newest marker at %d, want %d", got, rev)
	}
	if l.marks[0].rev <= l.floor {
		t.Fatalf("oldest marker %d at or below the floor %d", l.marks[0].rev, l.floor)
	}
	if took > time.Second {
		t.Fatalf("%d deletions on a full marker log took %v (%v each): each copies all %d markers", n, took, took/n, full)
	}
}

// TestRedTeam12StorelessRestartResume: SPEC §8, the revision "survives
// restarts, and never goes back". A broker without a store starts again at
// revision 0, so a client that saw revision R before the restart and
// resumes once the new run passed R gets a resume delta (mote-resume=1)
// computed against a different history: the rows the restart lost are
// never reported deleted, and its copy keeps them forever.
func TestRedTeam12StorelessRestartResume(t *testing.T) {
	b := start(t, Options{})
	c := dialTree5(t, b, "w")
	c.pub(t, "k/a", "1")
	c.pub(t, "k/b", "2")
	settle(t, b)
	c.subscribe(t, "$sync/k/+")
	r0 := revOf(t, c.next(t))
	c.Disconnect(&paho5.Disconnect{})
	b.Close()

	b = start(t, Options{}) // the restart: nothing survives but the client's copy and r0
	c = dialTree5(t, b, "w2")
	for i := 0; rev(t, b) <= r0+1; i++ {
		c.pub(t, "other/"+strconv.Itoa(i), "1")
	}
	c.pub(t, "k/c", "3")
	settle(t, b)
	r := dialTree5(t, b, "r")
	r.subscribe(t, "$sync/k/+", "mote-since", strconv.FormatUint(r0, 10))
	p := r.next(t)
	if p.Properties.User.Get("mote-resume") == "1" {
		t.Fatalf("resume from revision %d of the previous run (now %d) answered as a resume delta %s: k/a and k/b stay in the client's copy", r0, revOf(t, p), p.Payload)
	}
	if !jsonEqual(t, string(p.Payload), `{"c":3}`) {
		t.Fatalf("snapshot %s", p.Payload)
	}
}

// TestRedTeam12DollarSysPrefix: isSys tests the first four bytes, not the
// first level, so rows of a client's own "$SYSTEM/…" or "$sysfoo/…"
// topics (not the broker's $SYS: clients may write them) are treated as the
// broker's counters: their deletions leave no marker, and a resume misses
// them.
func TestRedTeam12DollarSysPrefix(t *testing.T) {
	for _, store := range []bool{false, true} {
		t.Run(fmt.Sprint("store=", store), func(t *testing.T) {
			var opts Options
			if store {
				st, err := retain.Open(t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				opts.Store = st
			}
			b := start(t, opts)
			c := dialTree5(t, b, "w")
			c.pub(t, "$tree/$SYSTEM/+", `{"a":1,"b":2}`) // mochi refuses a plain publish to $SYS…, not a tree publish
			settle(t, b)
			c.subscribe(t, "$sync/$SYSTEM/+")
			p := c.next(t)
			if !jsonEqual(t, string(p.Payload), `{"a":1,"b":2}`) {
				t.Fatalf("snapshot %s: the client cannot write $SYSTEM/…", p.Payload)
			}
			r0 := revOf(t, p)
			c.pub(t, "$tree/$SYSTEM/+", `{"a":null}`)
			c.next(t)
			settle(t, b)
			r := dialTree5(t, b, "r")
			r.subscribe(t, "$sync/$SYSTEM/+", "mote-since", strconv.FormatUint(r0, 10))
			p = r.next(t)
			if p.Properties.User.Get("mote-resume") == "1" && !jsonEqual(t, string(p.Payload), `{"a":null}`) {
				t.Fatalf("resume delta %s, want {\"a\":null}: the deletion of $SYSTEM/a left no marker", p.Payload)
			}
		})
	}
}

// TestRedTeam12HistCBORBytes: a $hist.cbor answer carries a raw-bytes
// row's values as CBOR byte strings, as $sync.cbor does (SPEC §1, §11);
// the history is built as JSON text and transcoded, so they arrive as
// base64 text strings.
func TestRedTeam12HistCBORBytes(t *testing.T) {
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Store: st, Retain: retain.Options{History: []retain.HistoryRule{{Filter: "bin/#", Keep: 3}}}})
	c := dialTree5(t, b, "w")
	raw := "\xff\x00\xfe"
	c.pub(t, "bin/x", raw)
	settle(t, b)
	for _, tc := range []struct{ filter string }{{"$sync.cbor/bin/+"}, {"$hist.cbor/bin/+"}} {
		t.Run(tc.filter, func(t *testing.T) {
			r := dialTree5(t, b, fmt.Sprint("r", time.Now().UnixNano()))
			r.subscribe(t, tc.filter)
			p := r.next(t)
			var doc map[string]any
			if err := cbor.Unmarshal(p.Payload, &doc); err != nil {
				t.Fatal(err)
			}
			v := doc["x"]
			if pairs, ok := v.([]any); ok { // $hist: [[t, value]]
				v = pairs[len(pairs)-1].([]any)[1]
			}
			if got, ok := v.([]byte); !ok || string(got) != raw {
				t.Fatalf("value %#v (%T), want the byte string %q", v, v, raw)
			}
		})
	}
}

var _ = wire.None

// TestRedTeam12HistResumedSession: a $hist subscription that comes back
// with a resumed session (CleanStart false) is registered with a zero
// treeOpts, whose histQuery selects times in [0, 0] (readTreeOpts sets
// from/to to MinInt64/MaxInt64; the zero value does not): its first
// message drops every pair with a real time, so the client's history
// comes back empty.
func TestRedTeam12HistResumedSession(t *testing.T) {
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Store: st, Retain: retain.Options{History: []retain.HistoryRule{{Filter: "sensor/#", Keep: 3}}}})
	w := dialTree5(t, b, "w")
	w.pub(t, "sensor/a", "1")
	w.pub(t, "sensor/a", "2")
	settle(t, b)
	expiry := uint32(600)
	cp := func() *paho5.Connect {
		return &paho5.Connect{CleanStart: false, Properties: &paho5.ConnectProperties{SessionExpiryInterval: &expiry}}
	}
	for _, filter := range []string{"$hist/sensor/+", "$hist.cbor/sensor/+"} {
		t.Run(filter, func(t *testing.T) {
			got := make(chan *paho5.Publish, 10)
			cfg := paho5.ClientConfig{OnPublishReceived: []func(paho5.PublishReceived) (bool, error){
				func(p paho5.PublishReceived) (bool, error) { got <- p.Packet; return true, nil },
			}}
			id := "keep" + strconv.Itoa(len(filter))
			c := dial5(t, b, id, cfg, cp())
			if _, err := c.Subscribe(testCtx(t), &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: filter, QoS: 1}}}); err != nil {
				t.Fatal(err)
			}
			first := <-got
			c.Disconnect(&paho5.Disconnect{})
			waitTreeSubs(t, b, 0)
			dial5(t, b, id, cfg, cp())
			var again *paho5.Publish
			select {
			case again = <-got:
			case <-time.After(testTimeout):
				t.Fatal("nothing after the session resumed")
			}
			if string(again.Payload) != string(first.Payload) {
				t.Fatalf("history after the session resumed %q, at subscribe %q", again.Payload, first.Payload)
			}
		})
	}
}

// TestRedTeam12ResumeReadsDiskOnLoop: a resume reads the deletion markers
// from bbolt on the message loop (resumeOf → Retainer.Deleted →
// Store.Deleted). A bbolt read waits behind a commit that grows the file's
// map, and that commit waits for every read transaction still open, such
// as a long $hist read (Store.History runs readHistory's callback inside
// its transaction, for the whole history of the filter). So one client
// resuming while another reads a large history stalls the loop, and every
// client with it, for as long as the history read lasts. The history read
// is held open here by its callback, standing for a long scan.
func TestRedTeam12ResumeReadsDiskOnLoop(t *testing.T) {
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Store: st, Retain: retain.Options{History: []retain.HistoryRule{{Filter: "h/#", Keep: 3}}}})
	w := dialTree5(t, b, "w")
	w.pub(t, "h/a", "1")
	w.pub(t, "k/a", "1")
	settle(t, b)
	r0 := rev(t, b)
	// Wait for the commit of h/a, as a $hist read does.
	flushed := make(chan error, 1)
	b.ret.Add(nil, flushed)
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	inside, release, returned := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	var once bool
	go func() {
		returned <- st.History("h/#", 0, func(string, []retain.Pair) bool { // a long $hist read
			if !once {
				once = true
				close(inside)
			}
			<-release
			return true
		})
	}()
	select {
	case <-inside:
	case err := <-returned:
		t.Fatalf("the history read found nothing (%v)", err)
	case <-time.After(testTimeout):
		t.Fatal("the history read never called back")
	}
	defer close(release)
	// Rows that grow the file: the retainer's commit must remap, and waits.
	big := string(make([]byte, 64<<10))
	for i := range 64 {
		w.pub(t, "big/"+strconv.Itoa(i), big)
	}
	settle(t, b)
	time.Sleep(200 * time.Millisecond) // the commit is under way
	r := dialTree5(t, b, "r")
	s := &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "$sync/k/+", QoS: 1}},
		Properties: &paho5.SubscribeProperties{User: paho5.UserProperties{{Key: "mote-since", Value: strconv.FormatUint(r0, 10)}}}}
	go r.Subscribe(testCtx(t), s)
	time.Sleep(200 * time.Millisecond) // the resume is on the loop
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := b.Rev(ctx); err != nil {
		t.Fatalf("the message loop is stuck behind a disk read (%v after %v): a resume read bbolt on the loop while a history read held the store", err, time.Since(start))
	}
}

// TestRedTeam12HistQoSOnly: republishing a row's value at another QoS
// changes the store (tree.Store.Put compares the QoS too), so the
// retainer records the same value again in the row's history: a device
// that alternates QoS 0 and 1 on an unchanged value fills its keep with
// copies and pushes its real earlier values out (SPEC §9: "earlier
// values").
func TestRedTeam12HistQoSOnly(t *testing.T) {
	st, err := retain.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Store: st, Retain: retain.Options{History: []retain.HistoryRule{{Filter: "s/#", Keep: 2}}}})
	w := dialTree5(t, b, "w")
	w.pub(t, "s/a", "1")
	w.pub(t, "s/a", "2")
	for _, qos := range []byte{0, 1, 0, 1} {
		if _, err := w.Publish(testCtx(t), &paho5.Publish{Topic: "s/a", QoS: qos, Retain: true, Payload: []byte("3")}); err != nil {
			t.Fatal(err)
		}
	}
	w.pub(t, "s/z", "0") // QoS 1: the QoS 0 ones are in before it
	settle(t, b)
	r := dialTree5(t, b, "r")
	r.subscribe(t, "$hist/s/+")
	p := r.next(t)
	if got := trimTimes(t, p.Payload); !jsonEqual(t, got, `{"a":[1,2,3],"z":[0]}`) {
		t.Fatalf("history %s, want the values 1, 2, 3 once each", got)
	}
}
