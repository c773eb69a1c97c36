package retain

import (
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestResumeOverUnpersistedDeletions: a deletion the retainer could not
// persist (the store refused it, or is damaged: in the commit that found
// the damage, or any after) must not be missing from a resume (SPEC §8).
// The broker answers a resume from below Floor with a full snapshot, else
// with the rows changed since and the topics Deleted reports: so either
// Floor rises past the revision before the deletion, or Deleted reports
// it. Neither did: the resume delta left the deletion out.
func TestResumeOverUnpersistedDeletions(t *testing.T) {
	damaged := func(t *testing.T) *Store {
		s, err := Open(damagedStore(t, "rows"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	type step struct {
		changes []Change
		deleted string // deleted in changes, at their last revision
		corrupt bool   // the waiter is told the store is damaged
	}
	for _, c := range []struct {
		name  string
		store func(t *testing.T) *Store
		steps []step
	}{
		{"damaged store", damaged, []step{
			// row/00001 is on the damaged page: this commit panics.
			{[]Change{{Topic: "row/00001", Value: val("w"), Rev: 2001}, {Topic: "row/01999", Rev: 2001}}, "row/01999", true},
			{[]Change{{Topic: "row/01998", Rev: 2002}}, "row/01998", true},
		}},
		{"a row's key is a nested bucket", func(t *testing.T) *Store { return storeWithBucket(t, bucketRows, []byte("bad")) }, []step{
			{[]Change{{Topic: "ok", Value: val("1"), Rev: 5}, {Topic: "bad", Rev: 5}}, "bad", false},
		}},
		{"a marker's key is a nested bucket", func(t *testing.T) *Store { return storeWithBucket(t, bucketDead, deadKey(5, "gone")) }, []step{
			{[]Change{{Topic: "ok", Value: val("1"), Rev: 5}, {Topic: "gone", Rev: 5}}, "gone", false},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := must(New(c.store(t), Options{Interval: time.Millisecond}, zerolog.Nop()))
			for _, st := range c.steps {
				w := make(chan error, 1)
				r.Add(st.changes, w)
				if err := recv(t, w, "waiter"); !errors.Is(err, ErrUnstorable) || errors.Is(err, ErrCorrupt) != st.corrupt {
					t.Fatalf("waiter: %v", err)
				}
				rev := st.changes[len(st.changes)-1].Rev
				since := rev - 1 // a client that saw the revision before the deletion
				reported := false
				if err := r.Deleted(since, rev, func(topic string, _ uint64) bool {
					reported = reported || topic == st.deleted
					return true
				}); err != nil {
					t.Fatal(err)
				}
				if !reported && r.Floor() <= since {
					t.Errorf("a resume from %d would leave out %s, deleted at %d (floor %d)", since, st.deleted, rev, r.Floor())
				}
			}
			if err := closeWithin(t, r); !errors.Is(err, ErrLost) {
				t.Errorf("Close: %v", err)
			}
		})
	}
}
