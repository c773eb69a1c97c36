package retain

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// TestHistorySizesOddTopics (RV8): a wildcard estimate's walk of the
// rows past the filter's literal prefix, in chunks, reports every row the
// filter matches exactly once, and no other, whatever bytes the topics
// hold: 0xff and bytes below '/', empty levels, a leading or trailing '/',
// '$' topics, with more rows than a chunk on each side of the range.
func TestHistorySizesOddTopics(t *testing.T) {
	rnd := rand.New(rand.NewPCG(8, 8))
	levels := []string{"site", "7", "70", "7\xff", "7.", "7 ", "", "x", "\xff", "$x", "site\x00", "sitf", "#a", "a+"}
	var s Store
	h := &s.hsizes
	h.mu.Lock()
	var all []string
	seen := map[string]bool{}
	for len(all) < 3*histChunk {
		n := 1 + rnd.IntN(4)
		topic := ""
		for i := range n {
			if i > 0 {
				topic += "/"
			}
			topic += levels[rnd.IntN(len(levels))]
		}
		if topic == "" || seen[topic] {
			continue
		}
		seen[topic] = true
		all = append(all, topic)
		h.addLocked(topic, int64(len(topic)))
	}
	h.mu.Unlock()
	for _, filter := range []string{"#", "+/#", "+", "/#", "+/+", "site/#", "site/7/#", "site/+/#", "site/+",
		"site//#", "site/7/+", "/+", "+/7", "\xff/#", "$x/#", "site\x00/#", "7\xff/#", "site/7\xff/#", "#a/#", "a+/#"} {
		got := map[string]int{}
		if !s.HistorySizes(filter, func(topic string, size HistSize) bool {
			got[topic]++
			if size.Values != 1 || size.Bytes != int64(len(topic)) {
				t.Errorf("%q: %q %+v", filter, topic, size)
			}
			return true
		}) {
			t.Fatal("unknown")
		}
		want := 0
		for _, topic := range all {
			m := wire.Match(filter, topic)
			if m {
				want++
			}
			if n := got[topic]; n != map[bool]int{true: 1}[m] {
				t.Errorf("%q: %q reported %d times, matches %v", filter, topic, n, m)
			}
		}
		if len(got) != want {
			t.Errorf("%q: %d rows reported, %d match", filter, len(got), want)
		}
		t.Log(fmt.Sprintf("%q: %d rows", filter, want))
	}
}
