package broker

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/mote-mqtt/mote/clients/client"
	"github.com/mote-mqtt/mote/tree"
	"github.com/mote-mqtt/mote/wire"
)

// TestTreePublishScratchNoAlias: tree publishes decode and explode into
// scratch memory that the next publish reuses (wire.Scratch, the Parser's
// pool). Many clients publish different JSON trees at once — escapes,
// numbers, arrays, objects as row values ($tree/T/+) — and every row a
// plain subscriber receives, and every row kept, must be byte for byte
// the one its publish held, never a later publish's. One publish in three
// of $tree/rs/cN is CBOR, one MessagePack.
func TestTreePublishScratchNoAlias(t *testing.T) {
	b := start(t, Options{})
	sub := dial3(t, b, "alias-sub", true)
	sub.sub(t, "rs/#", 1)
	const clients, pubs = 6, 40
	// want[topic] is every payload a row of topic may carry; last[topic]
	// the one it holds at the end.
	var mu sync.Mutex
	want := map[string]map[string]bool{}
	last := map[string]string{}
	note := func(topic, payload string) {
		mu.Lock()
		defer mu.Unlock()
		if want[topic] == nil {
			want[topic] = map[string]bool{}
		}
		want[topic][payload] = true
		last[topic] = payload
	}
	var wg sync.WaitGroup
	for c := range clients {
		pub := dial3(t, b, fmt.Sprintf("alias-pub-%d", c), true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range pubs {
				id := fmt.Sprintf("c%d-%d", c, j)
				pad := strings.Repeat(string(rune('a'+c)), 1+(j*37)%300) // lengths vary, so reuse shows
				str := `é"` + id + `\` + pad
				num := fmt.Sprintf("%d.5", c*1000+j)
				arr := fmt.Sprintf(`["%s",{"x":"%d"},true]`, id, j)
				obj := fmt.Sprintf(`{"id":"%s","pad":"%s"}`, id, pad)
				payload := fmt.Sprintf(`{"s":"\u00e9\"%s\\%s","n":{"deep":%s},"a":%s,"o":{"k":%s},"%s":true}`,
					id, pad, num, arr, obj, "e"+id[:2])
				top := fmt.Sprintf("rs/c%d", c)
				note(top+"/s", str)
				note(top+"/n/deep", num)
				note(top+"/a", arr)
				note(top+"/o/k/id", id)
				note(top+"/o/k/pad", pad)
				note(top+"/e"+id[:2], "true")
				// Objects as row values: '+' levels end above them.
				note("rs/obj/"+id[:2]+"/k", obj)
				verb := "$tree/"
				if codec := []client.Codec{client.JSON, client.CBOR, client.MsgPack}[j%3]; codec != client.JSON {
					// The same tree in CBOR or MessagePack: the decode is
					// not pooled, the explosion's buffers are.
					var v any
					if err := json.Unmarshal([]byte(payload), &v); err != nil {
						panic(err)
					}
					b, err := client.Encode(codec, v)
					if err != nil {
						panic(err)
					}
					payload, verb = string(b), "$tree."+[]string{"", "cbor", "msgpack"}[j%3]+"/"
				}
				pub.pub(t, verb+top, 1, true, payload)
				pub.pub(t, "$tree/rs/obj/+/+", 1, true, fmt.Sprintf(`{"%s":{"k":%s}}`, id[:2], obj))
			}
		}()
	}
	wg.Wait()
	settle(t, b)
	check := func(topic, payload string) {
		t.Helper()
		if strings.HasPrefix(topic, "rs/obj/") { // an object's JSON text: compare decoded
			var got, w any
			if err := json.Unmarshal([]byte(payload), &got); err != nil {
				t.Fatalf("%s: %q is not JSON: %v", topic, payload, err)
			}
			for p := range want[topic] {
				json.Unmarshal([]byte(p), &w)
				if fmt.Sprint(w) == fmt.Sprint(got) {
					return
				}
			}
			t.Fatalf("%s: %q was never published there", topic, payload)
		}
		if !want[topic][payload] {
			t.Fatalf("%s: %q was never published there", topic, payload)
		}
	}
	total := clients * pubs * 7 // seven rows a client's two publishes
	for _, m := range sub.wait(t, total) {
		check(m.topic, m.payload)
	}
	fresh := dial3(t, b, "alias-fresh", true)
	fresh.sub(t, "rs/#", 1)
	got := fresh.wait(t, len(last))
	for _, m := range got {
		if !m.retained {
			continue
		}
		check(m.topic, m.payload)
		if !strings.HasPrefix(m.topic, "rs/obj/") && m.payload != last[m.topic] {
			t.Fatalf("%s holds %q, want the last published %q", m.topic, m.payload, last[m.topic])
		}
	}
}

// TestTreeRowsReachEveryShape: a tree publish's rows skip the plain lookup
// only when nothing can match below their common levels; subscribers of
// every shape that matches a row get it (retained and not).
func TestTreeRowsReachEveryShape(t *testing.T) {
	b := start(t, Options{})
	filters := []string{"+/+/+", "gs/#", "#", "$share/g/gs/d1/+", "gs/+/x", "+/d1/y", "gs/d1/x"}
	subs := make([]*v3, len(filters))
	for i, f := range filters {
		subs[i] = dial3(t, b, "gate-"+string(rune('a'+i)), true)
		subs[i].sub(t, f, 1)
	}
	pub := dial3(t, b, "gate-pub", true)
	pub.pub(t, "$tree/gs/d1", 1, true, `{"x":1,"y":"two"}`)
	pub.pub(t, "$tree/gs/d1", 1, false, `{"x":3}`)
	settle(t, b)
	want := map[string][]string{ // the rows each filter gets, in order
		"+/+/+":            {"gs/d1/x=1", "gs/d1/y=two", "gs/d1/x=3"},
		"gs/#":             {"gs/d1/x=1", "gs/d1/y=two", "gs/d1/x=3"},
		"#":                {"gs/d1/x=1", "gs/d1/y=two", "gs/d1/x=3"},
		"$share/g/gs/d1/+": {"gs/d1/x=1", "gs/d1/y=two", "gs/d1/x=3"},
		"gs/+/x":           {"gs/d1/x=1", "gs/d1/x=3"},
		"+/d1/y":           {"gs/d1/y=two"},
		"gs/d1/x":          {"gs/d1/x=1", "gs/d1/x=3"},
	}
	for i, f := range filters {
		got := subs[i].wait(t, len(want[f]))
		var rows []string
		for _, m := range got {
			rows = append(rows, m.topic+"="+m.payload)
		}
		if len(rows) != len(want[f]) {
			t.Fatalf("%s: %q, want %q", f, rows, want[f])
		}
		seen := map[string]bool{}
		for _, r := range rows {
			seen[r] = true
		}
		for _, w := range want[f] {
			if !seen[w] {
				t.Fatalf("%s: %q, want %q", f, rows, want[f])
			}
		}
	}
}

// TestMarkLogPinsNoPublish: a tree publish's row topics are pieces of one
// string (tree.Explode), so a deletion marker that keeps its row's topic
// as it is keeps every topic of that publish alive for the resume window,
// while markLogBytes counts one: a publish of 10,000 rows and one null
// pinned all 10,000 topics per marker. The marker holds a copy.
func TestMarkLogPinsNoPublish(t *testing.T) {
	var all strings.Builder
	var ends []int
	for i := range 10_000 {
		fmt.Fprintf(&all, "pin/some/longer/level/row%05d", i)
		ends = append(ends, all.Len())
	}
	s := all.String()
	rows := make([]tree.Row, len(ends))
	from := 0
	for i, end := range ends {
		rows[i] = tree.Row{Topic: s[from:end], Value: wire.Value{Kind: wire.JSON, Data: "1"}, Retain: true}
		from = end
	}
	rows[0].Value = wire.Value{} // the one deletion
	l := markLog{window: 1 << 40}
	l.note(rows, 1)
	if len(l.marks) != 1 || l.marks[0].topic != rows[0].Topic {
		t.Fatalf("markers %+v, want one for %s", l.marks, rows[0].Topic)
	}
	p, base := uintptr(unsafe.Pointer(unsafe.StringData(l.marks[0].topic))), uintptr(unsafe.Pointer(unsafe.StringData(s)))
	if p >= base && p < base+uintptr(len(s)) {
		t.Fatalf("the marker's topic points into the publish's %d bytes of topics", len(s))
	}
}
