package retain

import (
	"fmt"
	"math/rand/v2"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/mote-mqtt/mote/wire"
)

// leafFill is how full the rows bucket's leaf pages are (bytes in use
// over the pages' bytes).
func leafFill(t *testing.T, s *Store) float64 {
	t.Helper()
	var fill float64
	err := s.db.View(func(tx *bolt.Tx) error {
		st := tx.Bucket(bucketRows).Stats()
		fill = float64(st.LeafInuse) / float64(st.LeafAlloc)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fill
}

// TestAppendsFillPages: commits whose rows come after every stored key (a
// boot storm's, nearly in key order) leave full pages, not half-full ones
// (fillFor); commits of rows landing anywhere use bbolt's default; every
// row reads back either way.
func TestAppendsFillPages(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := map[string]string{}
	commit := func(topics []string) {
		t.Helper()
		cs := make([]Change, len(topics))
		for i, topic := range topics {
			v := fmt.Sprint(rand.IntN(1000))
			cs[i] = Change{Topic: topic, Value: wire.Value{Kind: wire.JSON, Data: v}, QoS: 1, Rev: 1, MS: 1}
			want[topic] = v
		}
		if _, err := s.Commit(Batch{Changes: cs, Rev: 1}); err != nil {
			t.Fatal(err)
		}
	}
	// Four commits of 250 devices, each past the last: appends.
	for k := range 4 {
		var ts []string
		for d := k * 250; d < (k+1)*250; d++ {
			for r := range 50 {
				ts = append(ts, fmt.Sprintf("boot/d%05d/r%02d", d, r))
			}
		}
		rand.Shuffle(len(ts), func(i, j int) { ts[i], ts[j] = ts[j], ts[i] })
		commit(ts)
	}
	if f := leafFill(t, s); f < 0.9 {
		t.Errorf("after appends, leaf pages %.0f%% full, want ≥ 90%%", 100*f)
	}
	// New rows between the stored ones (not appends), and changed ones.
	var ts []string
	for d := range 1000 {
		ts = append(ts, fmt.Sprintf("boot/d%05d/r%02d/x", d, d%50), fmt.Sprintf("boot/d%05d/r%02d", d, (d+1)%50))
	}
	cs := make([]Change, len(ts))
	for i, topic := range ts {
		cs[i].Topic = topic
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		if got := fillFor(tx.Bucket(bucketRows), cs, sortedOrder(cs)); got != bolt.DefaultFillPercent {
			t.Errorf("fillFor of rows between the stored ones = %v, want bbolt's default", got)
		}
		if got := fillFor(tx.Bucket(bucketRows), nil, nil); got != appendFill {
			t.Errorf("fillFor of nothing = %v", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	commit(ts)
	n := 0
	err = s.Load(func(r Row) error {
		n++
		if want[r.Topic] != r.Value.Data {
			return fmt.Errorf("row %s = %q, want %q", r.Topic, r.Value.Data, want[r.Topic])
		}
		return nil
	})
	if err != nil || n != len(want) {
		t.Fatalf("%d rows read back, want %d: %v", n, len(want), err)
	}
}
