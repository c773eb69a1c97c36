package broker

import (
	"strconv"
	"testing"

	paho5 "github.com/eclipse/paho.golang/paho"
)

// SPEC §7 and §8, sentence by sentence: the sentences no other test
// checked (the others: original_test.go, revisions_test.go,
// redteam12b_test.go, rtroom_test.go, rtlast_leftout_test.go).

// TestSpecOriginalTreeOnlyRetained: §7 "a tree publish with a trailing /
// on a *retained* PUBLISH topic". A non-retained PUBLISH to "T/" is a
// plain event on "T/", its payload as sent, and no row, as in the
// original (models/messages.py from_raw_data: tree only when retained).
func TestSpecOriginalTreeOnlyRetained(t *testing.T) {
	b := startOriginal(t, Options{})
	native := dial3(t, b, "native", true)
	waitTok(t, "subscribe", native.Subscribe("ev/#", 1, nil))
	c := dialOriginal(t, b)
	c.mustConnect("native-1")
	c.publish(1, "ev/x/", `{"k":"1"}`, 1, false)
	c.publish(2, "ev/y/", `{"k":"2"}`, 1, true) // the retained one is a tree publish: row ev/y/k
	got := native.wait(t, 2)
	if got[0].topic != "ev/x/" || got[0].payload != `{"k":"1"}` || got[0].retained {
		t.Errorf("non-retained T/: got %+v, want the event on ev/x/ as sent", got[0])
	}
	if got[1].topic != "ev/y/k" || got[1].payload != "2" {
		t.Errorf("retained T/: got %+v, want row ev/y/k = 2", got[1])
	}
	settle(t, b)
	if rows := treeJSON(t, b, "ev/#"); !sameJSON(rows, `{"y":{"k":2}}`) {
		t.Errorf("rows %s, want only ev/y/k", rows)
	}
}

// TestSpecRevOnEveryDelta: §8 "every snapshot, part and delta carries
// the user property mote-rev = the revision that the receiver's copy
// reflects once it has applied the message" — for $tree deltas and
// paced $sync deltas too (TestRevisions checks $sync), and for a paced
// delta that folds several batches, the revision after the last of them.
// The default resume_window is 1,000,000 revisions.
func TestSpecRevOnEveryDelta(t *testing.T) {
	b := start(t, Options{})
	if w := b.opts.Retain.ResumeWindow; w != 1_000_000 || b.marks.window != 1_000_000 {
		t.Errorf("resume window %d (marks %d), want 1,000,000", w, b.marks.window)
	}
	c := dialTree5(t, b, "revall")
	c.pub(t, "rv/a", "1")
	settle(t, b)
	for _, f := range []string{"$tree/rv/+", "$sync.200ms/rv/+"} {
		r := dialTree5(t, b, "r"+strconv.Itoa(len(f)))
		r.subscribe(t, f)
		if f[1] == 's' {
			if p := r.next(t); revOf(t, p) != rev(t, b) {
				t.Fatalf("%s snapshot rev %d, want %d", f, revOf(t, p), rev(t, b))
			}
		}
		c.pub(t, "rv/a", "2")
		c.pub(t, "rv/b", "3")
		c.pub(t, "rv/a", "4")
		settle(t, b)
		want := rev(t, b)
		doc := map[string]any{}
		var last *paho5.Publish
		for doc["a"] != float64(4) || doc["b"] == nil {
			last = r.next(t)
			merge1(t, doc, last.Payload)
		}
		if revOf(t, last) != want {
			t.Errorf("%s: last delta %s rev %d, want %d", f, last.Payload, revOf(t, last), want)
		}
		r.Disconnect(&paho5.Disconnect{})
	}
}

// TestSpecResumeUnderHash: §8 "exactly the rows matching F changed after
// R, deleted ones as null", in §3's shape below a #: a node's own value
// deleted while its children stay is null under "/", a deleted leaf is
// null under its key, and a changed node value with children sits under
// "/" as a delta's would.
func TestSpecResumeUnderHash(t *testing.T) {
	b := start(t, Options{})
	c := dialTree5(t, b, "w")
	for _, r := range [][2]string{{"rh/b", "1"}, {"rh/b/c", "2"}, {"rh/d", "3"}, {"rh/d/e", "4"}, {"rh/f/g", "5"}} {
		c.pub(t, r[0], r[1])
	}
	settle(t, b)
	c.subscribe(t, "$sync/rh/#")
	r0 := revOf(t, c.next(t))
	c.pub(t, "rh/b", "")   // own value gone, child stays
	c.pub(t, "rh/d", "30") // own value changed, child stays
	c.pub(t, "rh/f/g", "") // a leaf gone
	settle(t, b)
	r := dialTree5(t, b, "rh")
	r.subscribe(t, "$sync/rh/#", "mote-since", strconv.FormatUint(r0, 10))
	p := r.next(t)
	if p.Properties.User.Get("mote-resume") != "1" || !jsonEqual(t, string(p.Payload), `{"b":{"/":null},"d":{"/":30},"f":{"g":null}}`) {
		t.Errorf("resume delta %s %v", p.Payload, p.Properties.User)
	}
}
