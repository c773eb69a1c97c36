package tree

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

var allCodecs = []wire.Codec{wire.CodecJSON, wire.CodecCBOR, wire.CodecMsgPack, wire.CodecOriginal}

// estimate is what an estimate walk gives for filter: the snapshot's
// framing and MatchSizes' sizes of the rows matching.
func estimate(s *Store, filter string) int64 {
	size := int64(SnapshotFraming)
	s.MatchSizes(filter, func(_ string, _ wire.Value, n int64) bool {
		size += n
		return true
	})
	return size
}

// checkBound fails the test if a snapshot of filter, in any codec, is
// larger than its estimate.
func checkBound(t *testing.T, tr *Tree, filter, what string) {
	t.Helper()
	est := estimate(tr.Store(), filter)
	for _, c := range allCodecs {
		if got := int64(len(tr.Snapshot(filter, c, nil))); got > est {
			t.Errorf("%s: %s snapshot of %q: %d bytes, estimate %d", what, c, filter, got, est)
		}
	}
}

// hostileValues are payloads whose trees grow most beyond their bytes:
// control characters (6× in JSON), quotes and backslashes (2×), invalid
// UTF-8 (U+FFFD, 3×; bytes: base64), floats with short text (9 bytes in
// CBOR and MessagePack), long strings (heads), many members.
func hostileValues() []string {
	rep := strings.Repeat
	floats := func(n int, f string) string { return "[" + strings.TrimSuffix(rep(f+",", n), ",") + "]" }
	members := func(n int) string {
		var b strings.Builder
		b.WriteString("{")
		for i := range n {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, `"%d":0.1`, i)
		}
		return b.String() + "}"
	}
	return []string{
		"", "x", "\x01", rep("\x01", 1000), rep("\x1f\x00", 300), rep(`"`, 500), rep(`\`, 500),
		rep("\n\t\r", 100), rep("\xff", 1000), "\xc3", rep("é\xff\x01", 200), rep("€", 100),
		"0.1", "9e9", "-0.1", "1e-7", floats(1, "0.1"), floats(23, "0.1"), floats(24, "9e9"), floats(300, "0.1"),
		floats(70_000, "0.1"), "[" + floats(30, "0.1") + "," + floats(30, "0.3") + "]",
		members(3), members(30), members(300), `{"a":[0.1,{"b":9e9}],"c":"` + rep("y", 300) + `"}`,
		`"` + rep("z", 300) + `"`, `"` + rep("z", 70_000) + `"`, `"\u0001\u0001"`, `"\ud800\ud800"`,
		"[" + rep(`"\u0001",`, 100) + `""]`, "18446744073709551616", "-18446744073709551616", "123456789012345678901234",
		"true", "[true,false,null]", rep("[", 40) + rep("]", 40), "[[],[],[],{},{}]", rep("\x00", 70_000),
	}
}

// TestSizeBoundHostile: the estimate walk's sizes (MatchSizes) bound the
// snapshots built for hostile rows, in every codec and every value kind,
// for filters with and without wildcards, with their keys (levels of one
// control character, thousands of levels, rows with rows below them,
// hundreds of siblings). The estimate before (topic + value × 4/3 + 16 a
// row) was 4.5 times short of a JSON tree of control characters.
func TestSizeBoundHostile(t *testing.T) {
	kinds := map[wire.Kind]int{}
	for i, p := range hostileValues() {
		for _, topic := range []string{"a", "a/b", "\x01/\x01/\x01", `"\/"`, strings.Repeat("a/", 2000) + "a", "/x/"} {
			tr := New()
			v := wire.TypePlain([]byte(p))
			kinds[v.Kind]++
			tr.Store().Set(topic, v, 0)
			tr.Store().Set(topic+"/sub", v, 0) // the "/" form: a row with a row below it
			what := fmt.Sprintf("value %d (%s, %d bytes) at %.20q", i, v.Kind, len(p), topic)
			for _, f := range []string{"#", topic, topic + "/#", "+/#", "+"} {
				checkBound(t, tr, f, what)
			}
		}
		// Values of each kind as they are, whatever TypePlain would make of
		// the bytes: a tree publish's string of invalid UTF-8, bytes that
		// are text.
		for _, k := range []wire.Kind{wire.String, wire.Bytes} {
			tr := New()
			tr.Store().Set("k", wire.Value{Kind: k, Data: p}, 0)
			checkBound(t, tr, "#", fmt.Sprintf("value %d as %s", i, k))
			checkBound(t, tr, "k", fmt.Sprintf("value %d as %s", i, k))
		}
	}
	// A row alone under a deep topic: every level a key of an object of
	// its own, of one byte, or one escaped in JSON.
	for _, name := range []string{"a", "\x01", `"`, "\xff", ""} {
		for _, p := range []string{"", "\x01"} {
			tr := New()
			topic := strings.Repeat(name+"/", 3000) + name
			tr.Store().Set(topic, wire.TypePlain([]byte(p)), 0)
			checkBound(t, tr, "#", fmt.Sprintf("%q/… 3,001 levels, value %q", name, p))
		}
	}
	// Combs: every level of a deep topic a row, with a row below it and a
	// sibling (every level's object holds a "/" and two members), of
	// one-byte names, or names of control characters escaped in JSON.
	for _, name := range []string{"a", "\x01", strings.Repeat("\x01", 40), ""} {
		for _, p := range []string{"", "0.1", "\x01"} {
			tr := New()
			topic := name
			for range 300 {
				tr.Store().Set(topic, wire.TypePlain([]byte(p)), 0)
				tr.Store().Set(topic+"/"+name+"x", wire.TypePlain([]byte(p)), 0)
				topic += "/" + name
			}
			for _, f := range []string{"#", "+/#", name + "/#"} {
				checkBound(t, tr, f, fmt.Sprintf("comb of %q, value %q", name, p))
			}
		}
	}
	for _, k := range []wire.Kind{wire.String, wire.Bytes, wire.JSON, wire.Object} {
		if kinds[k] == 0 {
			t.Errorf("no hostile value typed %s", k)
		}
	}
}

// TestSizeBoundRandom: random trees of hostile rows (many siblings, so
// that CBOR and MessagePack maps take longer heads; shared levels; mixed
// kinds) are never larger than their estimates, in any codec.
func TestSizeBoundRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	values := hostileValues()
	levels := []string{"a", "b", "", "\x01", `"`, "é", "\x7f", "$x", "long" + strings.Repeat("n", 300)}
	rounds := 60
	if testing.Short() {
		rounds = 10
	}
	for round := range rounds {
		tr := New()
		rows := 1 + rng.IntN(400)
		for range rows {
			depth := 1 + rng.IntN(4)
			parts := make([]string, depth)
			for j := range parts {
				if rng.IntN(3) == 0 {
					parts[j] = fmt.Sprint(rng.IntN(300)) // many siblings
				} else {
					parts[j] = levels[rng.IntN(len(levels))]
				}
			}
			p := values[rng.IntN(len(values))]
			if len(p) > 2000 {
				p = p[:rng.IntN(2000)]
			}
			tr.Store().Set(strings.Join(parts, "/"), wire.TypePlain([]byte(p)), 0)
		}
		for _, f := range []string{"#", "a/#", "+/+", "+/#", "+/+/+/+"} {
			checkBound(t, tr, f, fmt.Sprintf("round %d (%d rows)", round, rows))
		}
	}
}

// TestSizeBoundCached: a row's size is counted once per value, and
// counted again once the value changes.
func TestSizeBoundCached(t *testing.T) {
	tr := New()
	s := tr.Store()
	s.Set("a/b", wire.TypePlain([]byte("x")), 0)
	small := estimate(s, "#")
	s.Set("a/b", wire.TypePlain([]byte(strings.Repeat("\x01", 100))), 0)
	large := estimate(s, "#")
	if large < small+590 {
		t.Errorf("after the value grew 100 control characters: estimate %d, was %d", large, small)
	}
	if again := estimate(s, "#"); again != large {
		t.Errorf("estimated again: %d, then %d", large, again)
	}
	s.Set("a/b", wire.TypePlain([]byte("x")), 0)
	if back := estimate(s, "#"); back != small {
		t.Errorf("back to the first value: estimate %d, was %d", back, small)
	}
	checkBound(t, tr, "#", "changed row")
}

// oldGuess is the estimate before SizeBound: topic + value × 4/3 + 16 a
// row.
func oldGuess(s *Store, filter string) int64 {
	var size int64
	s.Match(filter, func(topic string, v wire.Value, _ byte) bool {
		size += int64(len(topic)) + int64(len(v.Data))*4/3 + 16
		return true
	})
	return size
}

// TestSizeBoundTypical: for an ordinary home-automation tree (short
// strings, numbers, small JSON objects) the estimate stays near what it
// was, so that a $sync/# which fitted the budget still fits.
func TestSizeBoundTypical(t *testing.T) {
	tr := New()
	s := tr.Store()
	rooms := []string{"kitchen", "living_room", "bedroom", "bathroom", "hall", "garage", "office", "garden"}
	for _, room := range rooms {
		for d := range 12 {
			dev := fmt.Sprintf("zigbee2mqtt/%s/device_%02d", room, d)
			for topic, payload := range map[string]string{
				"/state":       []string{"ON", "OFF"}[d%2],
				"/brightness":  fmt.Sprint(d * 21),
				"/temperature": fmt.Sprintf("%.1f", 18+float64(d)/3),
				"/name":        "Lamp " + room + " " + fmt.Sprint(d),
				"/available":   "online",
				"/attributes":  fmt.Sprintf(`{"battery":%d,"linkquality":%d,"update":{"state":"idle"},"voltage":3.%d}`, 60+d, 100+d, d),
			} {
				s.Set(dev+topic, wire.TypePlain([]byte(payload)), 0)
			}
		}
	}
	s.Set("zigbee2mqtt/bridge/state", wire.TypePlain([]byte(`{"state":"online"}`)), 0)
	old, est := oldGuess(s, "#"), estimate(s, "#")
	for _, c := range allCodecs[:3] {
		got := len(tr.Snapshot("#", c, nil))
		t.Logf("%s: snapshot %d bytes; estimate before %d (%.2f×), now %d (%.2f×)", c, got, old, float64(old)/float64(got), est, float64(est)/float64(got))
	}
	if float64(est) > 1.5*float64(old) {
		t.Errorf("a typical tree: estimate %d, %.2f times the one before (%d)", est, float64(est)/float64(old), old)
	}
	checkBound(t, tr, "#", "typical tree")
}

// typicalStore is a store of rows rows under home/dNNNNN/…: short
// strings, numbers and small objects.
func typicalStore(rows int) *Store {
	s := &New().store
	for i := range rows {
		var p string
		switch i % 4 {
		case 0:
			p = "ON"
		case 1:
			p = fmt.Sprintf("%.1f", float64(i%300)/10)
		case 2:
			p = fmt.Sprintf(`{"battery":%d,"linkquality":%d}`, i%100, i%255)
		default:
			p = "Lamp " + fmt.Sprint(i)
		}
		s.Set(fmt.Sprintf("home/d%05d/%d", i/4, i%4), wire.TypePlain([]byte(p)), 0)
	}
	return s
}

// forget drops every row's counted size, as a change of every value
// would.
func forget(n *node) {
	n.grow = 0
	for _, c := range n.kids() {
		forget(c)
	}
}

// BenchmarkEstimateWalk: an estimate's walk of 100,000 typical rows on
// the loop: as before (topic + value × 4/3 + 16, from Match), with the
// sizes counted already (MatchSizes, warm), counting them (cold: as
// after every value changed in R3, each row's text read once), and the
// first walk after every row's value changed by a put (changed: since
// h-snap counted at the put, R3's cold). The -evicted walks run after
// 64 MiB were written (the L3 cache is 32), so that no row's node or
// text is in a cache, as in a broker that did other work meanwhile.
func BenchmarkEstimateWalk(b *testing.B) {
	s := typicalStore(100_000)
	flush := make([]byte, 64<<20)
	evict := func() {
		for i := 0; i < len(flush); i += 64 {
			flush[i]++
		}
	}
	// change gives every row another value of the same shape (as a
	// device reporting again), through Store.Set.
	round := 0
	change := func() {
		round++
		for i := range 100_000 {
			var p string
			switch i % 4 {
			case 0:
				p = []string{"ON", "OFF"}[round%2]
			case 1:
				p = fmt.Sprintf("%.1f", float64((i+round)%300)/10)
			case 2:
				p = fmt.Sprintf(`{"battery":%d,"linkquality":%d}`, (i+round)%100, (i+round)%255)
			default:
				p = "Lamp " + fmt.Sprint(i+round)
			}
			s.Set(fmt.Sprintf("home/d%05d/%d", i/4, i%4), wire.TypePlain([]byte(p)), 0)
		}
	}
	b.Run("before", func(b *testing.B) {
		for range b.N {
			oldGuess(s, "#")
		}
	})
	b.Run("before-evicted", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			evict()
			b.StartTimer()
			oldGuess(s, "#")
		}
	})
	b.Run("warm", func(b *testing.B) {
		estimate(s, "#")
		b.ResetTimer()
		for range b.N {
			estimate(s, "#")
		}
	})
	b.Run("cold", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			forget(&s.root)
			b.StartTimer()
			estimate(s, "#")
		}
	})
	b.Run("cold-evicted", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			forget(&s.root)
			evict()
			b.StartTimer()
			estimate(s, "#")
		}
	})
	b.Run("changed", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			change()
			runtime.GC() // the changes' garbage: not the walk's cost
			b.StartTimer()
			estimate(s, "#")
		}
	})
	b.Run("changed-evicted", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			change()
			runtime.GC()
			evict()
			b.StartTimer()
			estimate(s, "#")
		}
	})
}

// checkSizes fails the test unless every row of s gives MatchSizes
// exactly SizeBound of its topic and value (the counts kept in its node
// are the ones counted from its text), and every node's tgrow is its
// topic's growth, or 0 where that does not fit.
func checkSizes(t *testing.T, s *Store, what string) {
	t.Helper()
	s.MatchSizes("#", func(topic string, v wire.Value, size int64) bool {
		if want := SizeBound(topic, v); size != want {
			t.Errorf("%s: %.30q (%s, %d bytes): size %d, SizeBound %d", what, topic, v.Kind, len(v.Data), size, want)
		}
		return true
	})
	var walk func(n *node, fits bool)
	walk = func(n *node, fits bool) {
		for _, c := range n.kids() {
			want := topicGrowth(c.topic())
			ok := fits && want <= math.MaxUint16
			if ok && int64(c.tgrow) != want || !ok && c.tgrow != 0 {
				t.Errorf("%s: %.30q: tgrow %d, topic growth %d", what, c.topic(), c.tgrow, want)
			}
			walk(c, ok)
		}
	}
	walk(&s.root, true)
}

// TestSizeCountedAtPut: a short value's size is counted when it is put
// (the first estimate after a storm of changes reads no row's text), a
// long one's when an estimate first asks; either way the size is exactly
// SizeBound's, for hostile topics and values, for rows made fresh, over
// parents, changed, deleted and put again, and under topics whose growth
// does not fit a node (counted from the text).
func TestSizeCountedAtPut(t *testing.T) {
	huge := strings.Repeat("\x01", 14_000) // one level past tgrow
	mid := strings.Repeat("\x01", 3_000)   // levels crossing it
	topics := []string{"a", "a/b", "\x01/\x01/\x01", `"\/"`, "/x/", "é/\xff/\xc3", "", "a/", huge, huge + "/a", strings.Repeat(mid+"/", 6) + "z"}
	tr := New()
	s := tr.Store()
	values := hostileValues()
	for i, topic := range topics {
		for j, p := range values {
			if len(topic)+len(p) > 70_000 {
				continue
			}
			v := wire.TypePlain([]byte(p))
			if (i+j)%3 == 0 {
				v.Kind = wire.String
			}
			s.Set(topic, v, 0)
			n := s.find(topic)
			counted := n.tgrow != 0 && len(p) <= eagerLeaf
			if got := n.grow != 0; got != counted {
				t.Errorf("%.30q value %d (%d bytes): counted at put %v, want %v", topic, j, len(p), got, counted)
			}
			if counted && int64(n.grow)-1 != rowGrowth(topic, v) {
				t.Errorf("%.30q value %d: counted %d at put, rowGrowth %d", topic, j, n.grow-1, rowGrowth(topic, v))
			}
			s.Set(topic+"/sub", v, 0) // a row below: topic's node is a parent too
			checkSizes(t, s, fmt.Sprintf("%.30q value %d", topic, j))
		}
		s.Delete(topic)
		s.Set(topic, wire.TypePlain([]byte("1.5")), 0) // put again after a delete
		checkSizes(t, s, fmt.Sprintf("%.30q put again", topic))
	}
	if s.find(huge).tgrow != 0 || s.find(huge+"/a").tgrow != 0 {
		t.Errorf("a topic whose growth does not fit: tgrow %d, %d, want 0 (counted from the text)", s.find(huge).tgrow, s.find(huge+"/a").tgrow)
	}
	checkSizes(t, typicalStore(5_000), "typical")
}
