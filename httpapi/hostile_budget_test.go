package httpapi

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/mote-mqtt/mote/broker"
	"github.com/mote-mqtt/mote/internal/mochi/packets"
	"github.com/rs/zerolog"
)

// TestHostileStreamEstimateKept: deliver keeps the snapshot's estimate
// counted until the first message's size is (Budget.Resize), given back
// by a defer otherwise. On every path of the first message (refusal, not
// a tree message, behind, non-big, big resized, resize refused and take
// refused, a panic) and the stream's end after it, the answer budget ends
// at what others hold: nothing leaks, nothing is given twice.
func TestHostileStreamEstimateKept(t *testing.T) {
	const est = 70 << 10
	seq := func(n string) packets.Properties {
		return packets.Properties{User: []packets.UserProperty{{Key: "mote-seq", Val: n}, {Key: "mote-rev", Val: "1"}}}
	}
	small, big := []byte(`{"a":1}`), []byte(strings.Repeat("x", 150<<10))
	cases := []struct {
		name  string
		d     broker.Delivery
		other int64 // held by another answer meanwhile
		panic bool
		stops bool // the path ends the stream (else, for a tree message, queues it)
	}{
		{name: "refused", d: broker.Delivery{Err: &broker.Refusal{Code: packets.ErrPacketTooLarge, Err: errors.New("row too large")}}},
		{name: "not a tree message", d: broker.Delivery{Payload: small}},
		{name: "behind", d: broker.Delivery{Payload: small, Properties: seq("5")}, stops: true},
		{name: "non-big first", d: broker.Delivery{Payload: small, Properties: seq("0")}},
		{name: "big resized", d: broker.Delivery{Payload: big, Properties: seq("0")}},
		{name: "resize and take refused", d: broker.Delivery{Payload: big, Properties: seq("0")}, other: 100 << 10, stops: true},
		{name: "panic", d: broker.Delivery{Payload: small, Properties: seq("0")}, panic: true, stops: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ans := answerBudget{broker.NewBudget(200<<10, 0)}
			if c.other > 0 && !ans.take(c.other, false) {
				t.Fatal("other: no room")
			}
			if !ans.take(est, false) {
				t.Fatal("estimate: no room")
			}
			var total, behind atomic.Int64
			st := &streamState{ev: eventWriter{rc: http.NewResponseController(httptest.NewRecorder())},
				end: make(chan struct{}), wake: make(chan struct{}, 1), room: make(chan struct{}, 1), reserved: est,
				log: zerolog.Nop(), answers: &ans, maxAnswer: 200 << 10, maxBacklog: 1 << 30,
				total: &total, maxTotal: 1 << 30, behindCount: &behind}
			if c.panic {
				st.total = nil // the first message's count dereferences it
			}
			st.deliver(c.d)
			if st.stopped != c.stops {
				t.Errorf("stopped %v, want %v (the path under test not taken)", st.stopped, c.stops)
			}
			if want := !c.stops && c.d.Err == nil && c.d.Seq() >= 0; (len(st.queue) == 1) != want {
				t.Errorf("queued %d events, want queued %v", len(st.queue), want)
			}
			if got := ans.load(); got < c.other {
				t.Errorf("after deliver: budget holds %d, less than the other answer's %d (given twice)", got, c.other)
			}
			st.finish()
			if got := ans.load(); got != c.other {
				t.Errorf("after finish: budget holds %d, want %d (the other answer's)", got, c.other)
			}
		})
	}
}
