package bench

import (
	"strconv"
	"testing"
	"time"
)

// TestLiveTally feeds the live dashboard's accounting messages as its
// subscribers would get them and checks what it counts: lost = changes ×
// subscribers − rows delivered, duplicates, the retained replay, a tree's
// snapshot, and values that are no live change.
func TestLiveTally(t *testing.T) {
	type msg struct {
		sub      int
		retained bool
		payload  string
	}
	live := func(i int) string { return strconv.Itoa(liveBase + i) }
	const changes, subs = 3, 2
	every := func() []msg { // every change to every subscriber, once
		var ms []msg
		for s := range subs {
			for i := range changes {
				ms = append(ms, msg{sub: s, payload: live(i)})
			}
		}
		return ms
	}
	tests := []struct {
		name                                      string
		snap                                      bool
		msgs                                      []msg
		rows, lost, dups, retained, notLive, live int64
	}{
		{name: "plain, every row", msgs: every(), rows: 6, live: 6},
		{name: "plain, replay, a duplicate, a loaded row live, garbage",
			msgs: append(every(), msg{0, true, "1"}, msg{1, true, "0"}, msg{1, false, live(2)},
				msg{0, false, "1"}, msg{0, false, "x"}, msg{1, false, live(changes)}),
			rows: 6, dups: 1, retained: 2, notLive: 3, live: 10},
		{name: "plain, one subscriber got nothing (its connection ended)",
			msgs: []msg{{0, true, "0"}, {0, false, live(0)}, {0, false, live(1)}, {0, false, live(2)}},
			rows: 3, lost: 3, retained: 1, live: 3},
		{name: "tree, snapshots and deltas", snap: true,
			msgs: []msg{{0, false, `{"d1":0,"d2":1}`}, {1, true, `{"d1":0}`},
				{0, false, `{"d1":` + live(0) + `,"d2":` + live(1) + `}`},
				{1, false, `{"x":{"d1":` + live(0) + `}}`}, {1, false, `{"d2":` + live(1) + `,"d3":` + live(2) + `}`},
				{0, false, `{"d2":` + live(1) + `}`}, {0, false, `{"d3":1}`}},
			rows: 5, lost: 1, dups: 1, notLive: 1, live: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tl := newLiveTally(changes, tt.snap, time.Now())
			seen := []*liveSeen{tl.subscriber(), tl.subscriber()}
			for _, m := range tt.msgs {
				tl.take(seen[m.sub], m.retained, []byte(m.payload))
			}
			got := []int64{tl.rows.Load(), tl.lost(subs), tl.dups.Load(), tl.retained.Load(), tl.notLive.Load(), tl.msgs.Load(), tl.arrived.Load()}
			want := []int64{tt.rows, tt.lost, tt.dups, tt.retained, tt.notLive, tt.live, int64(len(tt.msgs))}
			for i, name := range []string{"rows", "lost", "dups", "retained", "not-live", "live messages", "arrived"} {
				if got[i] != want[i] {
					t.Errorf("%s = %d, want %d", name, got[i], want[i])
				}
			}
			if tt.snap && tl.ready.Load() != subs {
				t.Errorf("ready = %d, want %d", tl.ready.Load(), subs)
			}
		})
	}
}

// TestPublishPayload reads a PUBLISH's payload past its topic and, at QoS
// 1 or 2, its packet identifier; a body too short for them is an error.
func TestPublishPayload(t *testing.T) {
	tests := []struct {
		h    byte
		body string
		want string
		ok   bool
	}{
		{0x30, "\x00\x01t12", "12", true},
		{0x31, "\x00\x01t12", "12", true},
		{0x32, "\x00\x01t\x00\x0712", "12", true},
		{0x30, "\x00\x01t", "", true},
		{0x30, "\x00", "", false},
		{0x30, "\x00\x05t", "", false},
		{0x34, "\x00\x01t\x00", "", false},
	}
	for _, tt := range tests {
		got, err := publishPayload(tt.h, []byte(tt.body))
		if (err == nil) != tt.ok || string(got) != tt.want {
			t.Errorf("publishPayload(%#x, %q) = %q, %v; want %q, ok %v", tt.h, tt.body, got, err, tt.want, tt.ok)
		}
	}
}
