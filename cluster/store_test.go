package cluster

import (
	"errors"
	"testing"

	"github.com/mote-mqtt/mote/retain"
)

// TestStoreBind: a copy follows one log; a fresh copy takes any; a copy
// that holds rows but names no log is refused.
func TestStoreBind(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m := s.Meta(); !m.Clean || m.Fresh || s.Next() != 1 {
		t.Errorf("fresh copy: meta %+v, next %d", m, s.Next())
	}
	for _, id := range []string{"A t1", "A t1"} {
		if err := s.Bind(id); err != nil {
			t.Fatalf("bind %q: %v", id, err)
		}
	}
	if err := s.Bind("A t2"); !errors.Is(err, ErrOtherLog) {
		t.Fatalf("bind another: %v, want ErrOtherLog", err)
	}
	if _, err := s.Commit(retain.Batch{Changes: []retain.Change{{Topic: "a", Value: str("x"), Rev: 5}}, Rev: 5}); err != nil {
		t.Fatal(err)
	}
	if s.Next() != 6 {
		t.Errorf("next %d after revision 5", s.Next())
	}
	s.Close()

	s, err = OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Next() != 6 {
		t.Errorf("reopened: next %d, want 6", s.Next())
	}
	if err := s.Bind("A t2"); !errors.Is(err, ErrOtherLog) {
		t.Fatalf("reopened, bind another: %v, want ErrOtherLog", err)
	}
	other, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Commit(retain.Batch{Changes: []retain.Change{{Topic: "a", Value: str("x"), Rev: 1}}, Rev: 1}); err != nil {
		t.Fatal(err)
	}
	if err := other.Bind("A t1"); !errors.Is(err, ErrOtherLog) {
		t.Fatalf("rows without a log: %v, want ErrOtherLog", err)
	}
}
