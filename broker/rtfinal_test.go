package broker

import (
	"errors"
	"testing"

	"github.com/mote-mqtt/mote/retain"
)

// TestReloadHistoryWithoutStore: a broker without a store (mote broker
// --data off) refuses a reload that brings history rules, as its start
// does: history is kept in the store, and a reload that took them would
// log "history (1 rule; changed)" and keep nothing. A reload without
// history rules still applies.
func TestReloadHistoryWithoutStore(t *testing.T) {
	b := start(t, Options{})
	err := b.Reload(Reload{History: []retain.HistoryRule{{Filter: "sensor/#", Keep: 10}}})
	if !errors.Is(err, ErrReload) {
		t.Fatalf("reload with history rules and no store: %v, want ErrReload", err)
	}
	if err := b.Reload(Reload{}); err != nil {
		t.Errorf("reload without history rules and no store: %v", err)
	}
}
