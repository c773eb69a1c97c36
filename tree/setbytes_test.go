package tree

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/mote-mqtt/mote/wire"
)

// TestSetBytes: a $set may write no more bytes in all (its value's size
// times the rows it sets) than a tree publish may carry.
func TestSetBytes(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxPayload = 1000
	ps, err := NewParser(lim)
	if err != nil {
		t.Fatal(err)
	}
	tr := New()
	for i := range 10 {
		tr.Store().Set(fmt.Sprintf("s/%d", i), wire.Value{Kind: wire.JSON, Data: "0"}, 0)
	}
	for _, tc := range []struct {
		payload string
		ok      bool
	}{
		{strings.Repeat("x", 100), true},  // 10 × 100 = 1000
		{strings.Repeat("x", 101), false}, // 1010
		{"", true},                        // deletes
	} {
		op, err := ps.Op(wire.Publish{Op: wire.PubSet, Topic: "s/+"}, []byte(tc.payload), true, 1)
		if err != nil {
			t.Fatal(err)
		}
		if a := tr.Plan(&op); (a.Err == nil) != tc.ok || (a.Err != nil && !errors.Is(a.Err, ErrLimit)) {
			t.Errorf("$set of %d bytes over 10 rows: %v", len(tc.payload), a.Err)
		}
	}
}
