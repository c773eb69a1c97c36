package broker

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/mote-mqtt/mote/retain"
)

// damageLeaf gives every leaf page of the store file in dir that holds
// key no page type, while the broker runs on it (bbolt reads the file
// through a shared mapping): the next write to that page makes bbolt
// panic, as a page damaged on disk does.
func damageLeaf(t *testing.T, dir, key string) {
	t.Helper()
	path := filepath.Join(dir, retain.FileName)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, n := os.Getpagesize(), 0 // bbolt's page size
	for off := 0; off+size <= len(data); off += size {
		p := data[off : off+size]
		if binary.LittleEndian.Uint16(p[8:]) == 0x02 && bytes.Contains(p, []byte(key)) { // a leaf page
			if _, err := f.WriteAt([]byte{0x40, 0}, int64(off+8)); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	if n == 0 {
		t.Fatalf("no leaf page holds %q", key)
	}
}

// TestRetainerDamagedStoreServes: a store found damaged while the broker
// runs (a commit makes bbolt panic) costs persistence only. The
// --sync-retain publisher is refused with 0x83 naming the damage, plain
// MQTT goes on (live and retained delivery from memory), health says the
// store is damaged, a resume (SPEC §8) from before a deletion made after
// the damage is a full snapshot or names the deletion, history is the
// stored values and the current one, Close reports the
// loss, and a restart on the file refuses it clearly.
func TestRetainerDamagedStoreServes(t *testing.T) {
	dir := t.TempDir()
	st, err := retain.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := start(t, Options{Store: st, SyncRetain: true, Retain: retain.Options{History: []retain.HistoryRule{{Filter: "k/a", Keep: 5}}}})
	w := dialTree5(t, b, "w")
	var rows strings.Builder
	rows.WriteString(`{"a":1,"b":1`)
	for i := range 2000 { // rows over many leaf pages
		fmt.Fprintf(&rows, `,"r%05d":1`, i)
	}
	rows.WriteString("}")
	w.pub(t, "$tree/k", rows.String()) // acknowledged once committed
	w.subscribe(t, "$sync/k/+")
	r0 := revOf(t, w.next(t))

	damageLeaf(t, dir, "k/r00000")
	for _, p := range []struct{ topic, payload string }{{"k/r00000", "2"}, {"k/b", ""}, {"k/a", "2"}} {
		res, _ := w.Publish(testCtx(t), &paho5.Publish{Topic: p.topic, QoS: 1, Retain: true, Payload: []byte(p.payload)})
		if res == nil || res.ReasonCode != 0x83 || res.Properties == nil || !strings.Contains(res.Properties.ReasonString, "damaged") {
			t.Errorf("PUBLISH %s: %+v, want 0x83 saying the store is damaged", p.topic, res)
		}
	}
	settle(t, b)

	// Plain MQTT still works, retained rows from memory.
	pub := dial3(t, b, "plain-pub", true)
	sub := dial3(t, b, "plain-sub", true)
	sub.sub(t, "plain/#", 1)
	pub.pub(t, "plain/live", 1, false, "hello")
	if m := sub.wait(t, 1); m[0].topic != "plain/live" || m[0].payload != "hello" {
		t.Errorf("plain delivery: %+v", m)
	}
	late := dial3(t, b, "late", true)
	late.sub(t, "k/b", 1)
	late.sub(t, "k/r00000", 1)
	if m := late.wait(t, 1); m[0].topic != "k/r00000" || m[0].payload != "2" || !m[0].retained {
		t.Errorf("retained from memory: %+v", m)
	}

	if err := b.Health(testCtx(t)); err == nil || !errors.Is(err, retain.ErrCorrupt) || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("Health: %v", err)
	}

	// History (SPEC §9): the stored value, then the current one, from memory.
	h := dialTree5(t, b, "h")
	h.subscribe(t, "$hist/k/+")
	var hist map[string][]any
	if err := json.Unmarshal([]byte(trimTimes(t, h.next(t).Payload)), &hist); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(hist["a"]); got != "[1 2]" {
		t.Errorf("history of k/a: %s, want [1 2]", got)
	}

	// A client that saw r0 resumes: b's deletion must not be left out.
	r := dialTree5(t, b, "r")
	r.subscribe(t, "$sync/k/+", "mote-since", strconv.FormatUint(r0, 10))
	p := r.next(t)
	resumed := p.Properties.User.Get("mote-resume") == "1"
	if resumed && !strings.Contains(string(p.Payload), `"b":null`) {
		t.Errorf("resume delta from %d leaves out the deletion of k/b: %.200s", r0, p.Payload)
	}
	if !resumed && strings.Contains(string(p.Payload), `"b":`) {
		t.Errorf("snapshot holds the deleted k/b: %.200s", p.Payload)
	}

	if err := b.Close(); !errors.Is(err, retain.ErrLost) || !errors.Is(err, retain.ErrCorrupt) {
		t.Errorf("Close: %v", err)
	}
	again, err := retain.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if again.Meta().Clean {
		t.Error("the damaged store was marked clean")
	}
	b2, err := New(Options{TCP: "127.0.0.1:0", WS: "off", Store: again})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if err := b2.Start(); !errors.Is(err, retain.ErrCorrupt) || !strings.Contains(err.Error(), retain.FileName) {
		t.Errorf("restart on the damaged file: %v", err)
	}
}
